"""A speed-up (deletable with its test and its one call in ``export.client``): Langfuse's span
processor's part for the middleware's roots, done directly.
"""

from __future__ import annotations

import copy
import dataclasses
from functools import cache
from typing import Any, cast

from langfuse import Langfuse
from langfuse._client.constants import LANGFUSE_TRACER_NAME
from langfuse._client.span_processor import LangfuseSpanProcessor
from langfuse.span_filter import is_default_export_span
from opentelemetry import baggage
from opentelemetry import trace as otel_trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import format_span_id

from lemma_middleware.core.attributes import Keys
from lemma_middleware.sdk.client import ClientAccess, StartRoot, client_internal, tracer_start_root
from lemma_middleware.sdk.probe import KeepSpans, report_missing
from lemma_middleware.sdk.spans import langfuse_processor

_PROPAGATED_PREFIX = "langfuse.propagated."


_NO_ROOT_SHORTCUT = (
    "LangfuseSpanProcessor's app-root bookkeeping as this version knows it",
    "roots go through Langfuse's span processor (slower)",
)


_IS_APP_ROOT = Keys.IS_APP_ROOT


def _propagates_nothing(context: Context | None) -> bool:
    """Whether Langfuse's processor finds no propagated attribute in ``context`` (no value
    set by ``propagate_attributes``, no baggage)."""
    if context is None:
        return False
    return not any(
        isinstance(key, str) and key.startswith(_PROPAGATED_PREFIX) for key in context
    ) and not baggage.get_all(context)


class _RootProcessors(SpanProcessor):
    """The provider's span processors, in their order, as they run for the middleware's
    roots: Langfuse's processor of the client's key does its part for a root directly.

    For a parentless span of its own client, started in a context with nothing
    propagated, that processor (``LangfuseSpanProcessor.on_start``/``on_end``) finds no
    attribute to propagate, marks the span as the trace's app root, remembers that it is
    exported (children look that up), and at the end hands it to its batch queue and
    forgets it. Done directly, the same work costs a fraction (no export-filter calls, no
    id formatting twice, no attribute-limit pass). :func:`root_shortcut_works` checks at
    start-up that both give the same spans."""

    def __init__(self, multi: Any, langfuse: LangfuseSpanProcessor) -> None:
        self._multi = multi
        self._langfuse = langfuse
        self._expected: dict[str, bool] = langfuse._span_export_expectation_by_id
        self._lock = langfuse._app_root_lock

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        for processor in self._multi._span_processors:
            if self._langfuse in getattr(processor, "inner", ()):  # the sampling gate
                for inner in processor.inner:
                    self.on_start_one(inner, span, parent_context)
            else:
                self.on_start_one(processor, span, parent_context)

    def on_start_one(self, processor: Any, span: Span, parent_context: Context | None) -> None:
        if processor is self._langfuse:  # every span started here is a marked root
            with self._lock:
                self._expected[format_span_id(span.context.span_id)] = True
        else:
            processor.on_start(span, parent_context=parent_context)

    def _on_ending(self, span: Span) -> None:
        for processor in self._multi._span_processors:
            processor._on_ending(span)

    def on_end(self, span: ReadableSpan) -> None:
        for processor in self._multi._span_processors:
            if self._langfuse in getattr(processor, "inner", ()):  # the sampling gate
                if processor.passes(span):
                    for inner in processor.inner:
                        self.on_end_one(inner, span)
                else:
                    self.forget(span)
            else:
                self.on_end_one(processor, span)

    def on_end_one(self, processor: Any, span: ReadableSpan) -> None:
        if processor is self._langfuse:
            try:
                BatchSpanProcessor.on_end(processor, span)
            finally:
                self.forget(span)
        else:
            processor.on_end(span)

    def forget(self, span: ReadableSpan) -> None:
        """Drop Langfuse's note that ``span`` (a root) is exported."""
        with self._lock:
            self._expected.pop(format_span_id(span.context.span_id), None)


def _shortcut_start_root(tracer: Any, langfuse: LangfuseSpanProcessor, multi: Any) -> StartRoot:
    root_tracer = copy.copy(tracer)
    root_tracer.span_processor = _RootProcessors(multi, langfuse)
    room = getattr(getattr(tracer, "_span_limits", None), "max_span_attributes", 128)
    room = float("inf") if room is None else room  # None: no limit

    def start_root(name: str, parent: Context, attributes: dict[str, Any]) -> Span:
        if (
            len(attributes) >= room  # Langfuse would drop its mark rather than evict ours
            or otel_trace.get_current_span(parent).get_span_context().is_valid
            or not _propagates_nothing(parent)
        ):
            return cast(Span, tracer.start_span(name, context=parent, attributes=attributes))
        span = root_tracer.start_span(
            name, context=parent, attributes={**attributes, _IS_APP_ROOT: True}
        )
        return cast(Span, span)

    return start_root


def _can_shortcut(tracer: Any, langfuse: LangfuseSpanProcessor, public_key: str) -> bool:
    """Whether this client's roots are what the shortcut assumes (started by its own
    Langfuse tracer, exported by Langfuse's default filter, no skills to attach), and the
    processor keeps its app-root bookkeeping where the shortcut expects it (logged if not)."""
    scope = getattr(tracer, "_instrumentation_scope", None)
    if not (
        getattr(scope, "name", None) == LANGFUSE_TRACER_NAME
        and (getattr(scope, "attributes", None) or {}).get("public_key") == public_key
        and getattr(langfuse, "_should_export_span", None) is is_default_export_span
        and getattr(langfuse, "_available_skills", None) is None
    ):
        return False  # the client's own configuration: Langfuse's processor does its work
    if (
        isinstance(tracer, otel_trace.Tracer)
        and hasattr(tracer, "span_processor")
        and isinstance(getattr(langfuse, "_span_export_expectation_by_id", None), dict)
        and hasattr(getattr(langfuse, "_app_root_lock", None), "__enter__")
    ):
        return True
    report_missing(*_NO_ROOT_SHORTCUT)
    return False


def _probe_roots(shortcut: bool) -> list[tuple[Any, ...]]:
    """A root and a child started as the middleware starts them, on a private provider with
    a Langfuse processor, through the shortcut or not; what the processor exported, and
    what it still remembers afterwards."""
    keep = KeepSpans()
    provider = TracerProvider()
    processor = LangfuseSpanProcessor(
        public_key="pk-lemma-check",
        secret_key="sk-lemma-check",
        base_url="http://127.0.0.1:9",
        span_exporter=keep,
    )
    try:
        provider.add_span_processor(processor)
        tracer = provider.get_tracer(
            LANGFUSE_TRACER_NAME, "check", attributes={"public_key": "pk-lemma-check"}
        )
        start_root = (
            _shortcut_start_root(tracer, processor, provider._active_span_processor)
            if shortcut
            else tracer_start_root(tracer)
        )
        parent = otel_trace.set_span_in_context(otel_trace.INVALID_SPAN, Context())
        root = start_root("agent", parent, {"langfuse.observation.type": "agent", "n": 1})
        root.set_attributes({"langfuse.observation.input": '{"q": "x"}'})
        inside = otel_trace.set_span_in_context(root, parent)
        child = tracer.start_span("llm", context=inside, attributes={"gen_ai.system": "x"})
        child.end()
        root.end()
        processor.force_flush()
        remembered = dict(processor._span_export_expectation_by_id)
    finally:
        processor.shutdown()  # type: ignore[no-untyped-call]
        provider.shutdown()
    return [
        (
            s.name,
            tuple((s.attributes or {}).items()),
            s.parent is not None,
            s.kind,
            s.status.status_code,
        )
        for s in keep.spans
    ] + [("remembered", tuple(remembered.items()))]


@cache
def root_shortcut_works() -> bool:
    """Whether roots started through the shortcut come out as Langfuse's processor makes
    them (checked once, on a private provider)."""
    try:
        works = _probe_roots(shortcut=True) == _probe_roots(shortcut=False)
    except Exception:
        works = False
    if not works:
        report_missing(*_NO_ROOT_SHORTCUT)
    return works


def shortcut_roots(client: Langfuse, access: ClientAccess) -> ClientAccess:
    """``access`` starting roots through :class:`_RootProcessors` when the client and this
    Langfuse version allow it; unchanged otherwise."""
    if access.provider is None or access.public_key is None:
        return access
    tracer = client_internal(client, "tracer")
    try:
        langfuse = langfuse_processor(access.provider, access.public_key)
        if langfuse is None or not _can_shortcut(tracer, langfuse, access.public_key):
            return access
        if not root_shortcut_works():
            return access
        multi = access.provider._active_span_processor
        return dataclasses.replace(access, start_root=_shortcut_start_root(tracer, langfuse, multi))
    except Exception:
        return access
