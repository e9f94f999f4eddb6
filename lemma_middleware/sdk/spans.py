"""Span and provider surgery: re-parenting a span, putting a processor first, putting one
processor in the place of several (the sampling gate), finding and taking off a client's
Langfuse processor (checked once at start-up).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
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


def flattened(processors: Iterable[Any]) -> Iterator[Any]:
    """``processors``, with each sampling gate (a processor with ``inner``) replaced by the
    processors it stands for."""
    for processor in processors:
        inner = getattr(processor, "inner", None)
        if isinstance(inner, tuple):
            yield from inner
        else:
            yield processor


def is_langfuse_processor(processor: SpanProcessor) -> bool:
    """Whether ``processor`` is a Langfuse client's span processor."""
    return isinstance(processor, LangfuseSpanProcessor)


def replace_processors(
    provider: TracerProvider,
    replaced: Callable[[SpanProcessor], bool],
    replacement: Callable[[list[SpanProcessor]], SpanProcessor],
) -> bool:
    """Put ``replacement(those)`` in the place of the first of the processors ``replaced``
    selects, the others taken off; False (nothing changed) when there are none or the
    provider's layout is not the known one."""
    if not check_span_internals()[1]:
        return False
    multi: Any = provider._active_span_processor
    with multi._lock:
        current = multi._span_processors
        chosen = [p for p in current if replaced(p)]
        if not chosen:
            return False
        first = current.index(chosen[0])
        rest = tuple(p for p in current if p not in chosen)
        multi._span_processors = (*rest[:first], replacement(chosen), *rest[first:])
    return True


def processor_filter(processor: LangfuseSpanProcessor) -> tuple[str, Any]:
    """A Langfuse processor's public key and span filter (None: Langfuse's default)."""
    return processor.public_key, getattr(processor, "_should_export_span", None)


def forget_span(processor: LangfuseSpanProcessor, span: Any) -> None:
    """Let a Langfuse processor forget ``span``, which it saw start and will not see end
    (what its ``on_end`` does after exporting; without it the processor's per-span record
    would stay)."""
    cleanup = getattr(processor, "_cleanup_app_root_state", None)
    if cleanup is not None:
        cleanup(span)


def can_forget_spans() -> bool:
    """Whether Langfuse's processor has the per-span cleanup :func:`forget_span` calls."""
    return callable(getattr(LangfuseSpanProcessor, "_cleanup_app_root_state", None))


def langfuse_processor(provider: TracerProvider, public_key: str) -> LangfuseSpanProcessor | None:
    multi: Any = provider._active_span_processor
    for processor in flattened(multi._span_processors):
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

        def kept(processor: Any) -> bool:
            if hasattr(processor, "inner"):  # the sampling gate: what it stands for
                processor.inner = tuple(p for p in processor.inner if kept(p))
            return processor not in processors and not (
                isinstance(processor, LangfuseSpanProcessor) and processor.public_key == public_key
            )

        multi: Any = provider._active_span_processor
        with multi._lock:
            multi._span_processors = tuple(p for p in multi._span_processors if kept(p))
    try:
        from langfuse._client.resource_manager import LangfuseResourceManager

        LangfuseResourceManager._instances.pop(public_key, None)
    except Exception:
        pass
