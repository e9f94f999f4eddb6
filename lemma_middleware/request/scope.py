"""The request side's span processors: they keep every span a request's code starts in the
request's tree, with the request's identity.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from opentelemetry import trace as otel_trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.trace import SpanContext, SpanKind

from lemma_middleware.core.logs import contained, log_once
from lemma_middleware.request.context import current, current_root_context
from lemma_middleware.request.trace import ENTERED
from lemma_middleware.sdk.client import ShouldExport
from lemma_middleware.sdk.spans import reparent


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
        exported: ShouldExport,
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
        with contained("the ancestry check", "the span keeps its parent", level=logging.DEBUG):
            nearest = self._nearest_exported(span, parent_context)
            if nearest is None:
                return
            if not self._exported(span):
                self._substitute[span.context.span_id] = nearest
            elif nearest.span_id != span.parent.span_id:
                reparent(span, nearest)

    def on_end(self, span: ReadableSpan) -> None:
        context = span.context
        if context is not None:
            self._substitute.pop(context.span_id, None)


class RequestScopeProcessor(SpanProcessor):
    """Gives every exported span started inside a traced request the raw Lemma keys and
    any identity bound late (bind(), auth user). Runs after the Langfuse span processor.
    Spans that are not exported (a framework's own) are left untouched."""

    exports_by_langfuse_filter = True  # it exports nothing

    def __init__(self, exported: ShouldExport) -> None:
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
        with contained(
            "the request scope", "the span lacks the request's keys", level=logging.DEBUG
        ):
            if self._exported(span):
                active.on_child_start(span)

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
