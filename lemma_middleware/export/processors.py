"""The export side's span processors, and the one way the middleware's processors are wired
onto a tracer provider, for clients the middleware builds and for clients users bring alike.

Order on the provider: :class:`~lemma_middleware.request.scope.ExportedAncestryProcessor`
first (before Langfuse's own processor, which marks spans without an exported parent as trace
roots), Langfuse's, then :class:`~lemma_middleware.request.scope.RequestScopeProcessor`, then
one :class:`DestinationProcessor` per extra destination.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Sequence
from typing import Any

from langfuse import Langfuse
from langfuse.span_filter import (
    is_default_export_span,
    is_genai_span,
    is_known_llm_instrumentor,
    is_langfuse_span,
)
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

from lemma_middleware.core.logs import log_once
from lemma_middleware.delivery.exporter import DeliveryExporter, FlushWaitsForDelivery
from lemma_middleware.request.sampling import SamplingGate
from lemma_middleware.request.scope import ExportedAncestryProcessor, RequestScopeProcessor
from lemma_middleware.sdk.client import ClientAccess, ShouldExport, inspect_client
from lemma_middleware.sdk.media_screen import screen_media_pass
from lemma_middleware.sdk.root_shortcut import shortcut_roots
from lemma_middleware.sdk.spans import (
    add_processor_first,
    can_forget_spans,
    detach_client,
    flattened,
    forget_span,
    is_langfuse_processor,
    processor_filter,
    replace_processors,
)


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
        except Exception:  # the user's should_export_span: as Langfuse's processor does
            return False


class DestinationProcessor(BatchSpanProcessor):
    """A batch processor for one extra destination, exporting what Langfuse would."""

    def __init__(self, exporter: SpanExporter, exported: ExportFilter, **kwargs: Any) -> None:
        super().__init__(exporter, **kwargs)
        self.exported = exported
        self.exports_by_langfuse_filter = exported.is_default

    def on_end(self, span: ReadableSpan) -> None:
        if self.exported(span):
            super().on_end(span)


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


def wire_client(
    client: Langfuse,
    extra: Sequence[SpanExporter] = (),
    delivering: Sequence[DeliveryExporter] = (),
    **batch_options: Any,
) -> ClientAccess:
    """Add the middleware's processors to the tracer provider ``client`` really uses (the
    one path for clients built here and clients users bring): ancestry, request scope, a
    batch processor (``batch_options``) for each ``extra`` exporter, and last, when the
    client delivers through ``delivering``, :class:`FlushWaitsForDelivery`."""
    access = inspect_client(client)
    if access.provider is None or access.public_key is None:
        if access.enabled:
            log_once(
                "wire-client",
                logging.WARNING,
                "lemma_middleware: the Langfuse client's tracer provider is unknown; spans "
                "under never-exported parents are not re-parented and late identity is not "
                "propagated",
            )
        return access
    exported = ExportFilter(access.public_key, access.should_export)
    processors: tuple[SpanProcessor, ...] = tuple(
        DestinationProcessor(exporter, exported, **batch_options) for exporter in extra
    )
    if delivering:
        processors += (FlushWaitsForDelivery(delivering),)
    wire_provider(access.provider, exported, processors)
    screen_media_pass(access.provider, access.public_key)
    return shortcut_roots(client, access)


def gate_sampling(provider: TracerProvider) -> bool:
    """Put one :class:`~lemma_middleware.request.sampling.SamplingGate` in the place of
    every export processor on ``provider`` (each Langfuse client's and each destination
    processor; a gate already there is merged), so that spans of turns sampling holds or
    drops reach none of them. False when the provider cannot be gated (logged by the
    caller); processors added later are not gated."""
    if not can_forget_spans():
        return False

    def exports(processor: SpanProcessor) -> bool:
        return isinstance(processor, DestinationProcessor | SamplingGate) or (
            is_langfuse_processor(processor)
        )

    def gate(chosen: list[SpanProcessor]) -> SpanProcessor:
        inner = list(flattened(chosen))
        langfuse = [p for p in inner if is_langfuse_processor(p)]
        filters = [ExportFilter(*processor_filter(p)) for p in langfuse]
        filters += [p.exported for p in inner if isinstance(p, DestinationProcessor)]

        def exported(span: ReadableSpan) -> bool:
            return any(f(span) for f in filters)

        def forget(span: ReadableSpan) -> None:
            for processor in langfuse:
                forget_span(processor, span)

        return SamplingGate(inner, exported, forget)

    return replace_processors(provider, exports, gate)
