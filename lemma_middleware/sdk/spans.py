"""Span and provider surgery: re-parenting a span, putting a processor first, finding and
taking off a client's Langfuse processor (checked once at start-up).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Any, cast

from langfuse._client.span_processor import LangfuseSpanProcessor
from opentelemetry.sdk.trace import Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.trace import SpanContext

from lemma_middleware.sdk.probe import report_missing


@cache
def check_span_internals() -> tuple[bool, bool]:
    """Whether spans can be re-parented and processors put first (checked once)."""
    provider = TracerProvider()
    span = cast(Span, provider.get_tracer("lemma_middleware.check").start_span("check"))
    span.end()
    can_reparent = "_parent" in vars(span)
    if can_reparent:
        substitute = SpanContext(1, 2, is_remote=False)
        span._parent = substitute
        can_reparent = span.parent is substitute
    if not can_reparent:
        report_missing("Span._parent", "spans under never-exported parents are not re-parented")
    multi = getattr(provider, "_active_span_processor", None)
    can_prepend = isinstance(getattr(multi, "_span_processors", None), tuple) and hasattr(
        getattr(multi, "_lock", None), "__enter__"
    )
    if not can_prepend:
        report_missing(
            "TracerProvider._active_span_processor",
            "the ancestry processor runs after Langfuse's when the client already exists",
        )
    provider.shutdown()
    return can_reparent, can_prepend


def reparent(span: Span, parent: SpanContext) -> None:
    """Make ``parent`` the parent ``span`` is exported with."""
    if check_span_internals()[0]:
        span._parent = parent


def add_processor_first(provider: TracerProvider, processor: SpanProcessor) -> None:
    """Add ``processor`` so that it runs before every processor already added."""
    if not check_span_internals()[1]:
        provider.add_span_processor(processor)
        return
    multi: Any = provider._active_span_processor
    with multi._lock:
        multi._span_processors = (processor, *multi._span_processors)


def langfuse_processor(provider: TracerProvider, public_key: str) -> LangfuseSpanProcessor | None:
    multi: Any = provider._active_span_processor
    for processor in multi._span_processors:
        if (
            isinstance(processor, LangfuseSpanProcessor)
            and getattr(processor, "public_key", None) == public_key
        ):
            return processor
    return None


def langfuse_batch(provider: TracerProvider, public_key: str) -> Any:
    """The batch processor inside the Langfuse processor of ``public_key`` (None if the
    layout is not the known one)."""
    processor = langfuse_processor(provider, public_key)
    if processor is None:
        return None
    batch = getattr(processor, "_batch_processor", None)
    return batch if isinstance(getattr(batch, "_exporter", None), SpanExporter) else None


def detach_client(provider: TracerProvider, public_key: str, processors: Sequence[Any]) -> None:
    """Take the Langfuse processor of ``public_key`` and ``processors`` off ``provider`` and
    forget Langfuse's client for the key (the production capture of the testing helpers,
    whose clients live on the process's global provider one test at a time)."""
    if check_span_internals()[1]:
        multi: Any = provider._active_span_processor
        with multi._lock:
            multi._span_processors = tuple(
                p
                for p in multi._span_processors
                if p not in processors
                and not (isinstance(p, LangfuseSpanProcessor) and p.public_key == public_key)
            )
    try:
        from langfuse._client.resource_manager import LangfuseResourceManager

        LangfuseResourceManager._instances.pop(public_key, None)
    except Exception:
        pass
