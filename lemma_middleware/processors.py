"""The span processors the middleware adds to a tracer provider, and the one way they are
wired, for clients the middleware builds and for clients users bring alike.

Order on the provider: :class:`ExportedAncestryProcessor` first (before Langfuse's own
processor, which marks spans without an exported parent as trace roots), Langfuse's, then
:class:`RequestScopeProcessor`, then one :class:`DestinationProcessor` per extra destination.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable
from typing import Any

from langfuse.span_filter import (
    is_default_export_span,
    is_genai_span,
    is_known_llm_instrumentor,
    is_langfuse_span,
)
from opentelemetry import trace as otel_trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import SpanContext, SpanKind

from .context import ENTERED, current, current_root_context
from .logs import log_once, logger
from .sdk import ShouldExport, add_processor_first, detach_client, reparent


class ExportFilter:
    """Decides, like the Langfuse span processor, whether a span is exported.

    With Langfuse's default filter, the scope half of the decision (about 40 prefix tests)
    is made once per instrumentation scope; a span's ``gen_ai.*`` attributes are checked
    every time."""

    def __init__(self, public_key: str, should_export: ShouldExport | None = None) -> None:
        self.public_key = public_key
        self.should_export = should_export or is_default_export_span
        self.is_default = self.should_export is is_default_export_span
        """Whether this is Langfuse's default filter (which never exports framework spans)."""
        self._llm_scopes: dict[str | None, bool] = {}

    def __call__(self, span: ReadableSpan) -> bool:
        if is_langfuse_span(span):
            scope = span.instrumentation_scope
            attributes = scope.attributes if scope is not None else None
            return attributes is not None and attributes.get("public_key") == self.public_key
        if self.is_default:
            scope_name = span.instrumentation_scope.name if span.instrumentation_scope else None
            known = self._llm_scopes.get(scope_name)
            if known is None:
                known = self._llm_scopes[scope_name] = is_known_llm_instrumentor(span)
            return known or is_genai_span(span)
        try:
            return bool(self.should_export(span))
        except Exception:
            return False


class DestinationProcessor(BatchSpanProcessor):
    """A batch processor for one extra destination, exporting what Langfuse would."""

    def __init__(self, exporter: SpanExporter, exported: ExportFilter, **kwargs: Any) -> None:
        super().__init__(exporter, **kwargs)
        self._exported = exported
        self.exports_by_langfuse_filter = exported.is_default

    def on_end(self, span: ReadableSpan) -> None:
        if self._exported(span):
            super().on_end(span)


class ExportedAncestryProcessor(SpanProcessor):
    """Keeps the exported tree whole: an exported span whose parent is never exported
    (FastAPI's native telemetry spans, OpenTelemetry ASGI server spans, ...) is re-parented
    to the nearest exported ancestor, or to the request's root.

    It must run before the Langfuse span processor, which marks spans without an exported
    parent as trace roots.
    """

    exports_by_langfuse_filter = True  # it exports nothing

    def __init__(
        self,
        exported: ExportFilter,
        request_root: Callable[[], SpanContext | None] = current_root_context,
    ) -> None:
        self._exported = exported
        self._request_root = request_root
        self._substitute: dict[int, SpanContext] = {}

    def _nearest_exported(self, span: Span, parent_context: Context | None) -> SpanContext | None:
        parent = span.parent
        if parent is None or parent.is_remote:
            return None
        parent_span = otel_trace.get_current_span(parent_context)
        if not isinstance(parent_span, ReadableSpan):
            return None  # non-recording parents carry their own parent's context
        if parent_span.get_span_context().span_id != parent.span_id:
            return None
        if self._exported(parent_span):
            return parent
        substitute = self._substitute.get(parent.span_id)
        if substitute is not None:
            return substitute
        root = self._request_root()
        if root is not None and root.trace_id == parent.trace_id:
            return root
        return None

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        if span.parent is None:
            return
        try:
            nearest = self._nearest_exported(span, parent_context)
            if nearest is None:
                return
            if not self._exported(span):
                self._substitute[span.context.span_id] = nearest
            elif nearest.span_id != span.parent.span_id:
                reparent(span, nearest)
        except Exception:  # never break span creation
            logger.debug("lemma_middleware: ancestry check failed", exc_info=True)

    def on_end(self, span: ReadableSpan) -> None:
        context = span.context
        if context is not None:
            self._substitute.pop(context.span_id, None)


class RequestScopeProcessor(SpanProcessor):
    """Gives every exported span started inside a traced request the raw Lemma keys and
    any identity bound late (bind(), auth user). Runs after the Langfuse span processor.
    Spans that are not exported (a framework's own) are left untouched."""

    exports_by_langfuse_filter = True  # it exports nothing

    def __init__(self, exported: ExportFilter) -> None:
        self._exported = exported

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        active = current(parent_context)
        if active is None:
            if span.kind is SpanKind.SERVER and ENTERED.get() is not None:
                _report_detached(span)
            return
        if span is active.span:
            return
        if span.context.trace_id != active.span_context.trace_id:
            return
        try:
            if not self._exported(span):
                return
            active.on_child_start(span)
        except Exception:
            logger.debug("lemma_middleware: request scope failed", exc_info=True)

    def on_end(self, span: ReadableSpan) -> None:
        return None


def _report_detached(span: Span) -> None:
    scope = span.instrumentation_scope.name if span.instrumentation_scope else "?"
    log_once(
        f"detached:{scope}",
        logging.WARNING,
        "lemma_middleware: %r started a server span of its own inside a traced request (it "
        "takes its parent from the request headers only), so what runs under it is not part "
        "of the request's trace. Put LemmaMiddleware inside it: app.add_middleware("
        "LemmaMiddleware, ...) for FastAPI's native telemetry or OpenTelemetry's ASGI "
        "middleware (or FastAPI(telemetry={'tracing': False}))",
        scope,
    )


_wired: weakref.WeakKeyDictionary[TracerProvider, dict[str, tuple[SpanProcessor, ...]]] = (
    weakref.WeakKeyDictionary()
)


def wire_provider(
    provider: TracerProvider, exported: ExportFilter, extra: tuple[SpanProcessor, ...] = ()
) -> None:
    """Add the middleware's processors for one client to ``provider``, whose Langfuse
    processor is already there: ancestry first, request scope and ``extra`` after it.
    Once per provider and public key."""
    wired = _wired.setdefault(provider, {})
    if exported.public_key in wired:
        return
    added = (ExportedAncestryProcessor(exported), RequestScopeProcessor(exported), *extra)
    wired[exported.public_key] = added
    add_processor_first(provider, added[0])
    for processor in added[1:]:
        provider.add_span_processor(processor)


def unwire_provider(provider: TracerProvider, public_key: str) -> None:
    """Take one client off ``provider``: its Langfuse processor and the middleware's."""
    added = _wired.get(provider, {}).pop(public_key, ())
    detach_client(provider, public_key, added)
    for processor in added:
        processor.shutdown()
