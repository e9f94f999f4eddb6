"""A speed-up (deletable with its test and its one call in ``export.client``): export batches
that cannot hold media skip Langfuse's media pass, which would send them unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

from langfuse._client.span_exporter import LangfuseTransformingSpanExporter
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import ReadableSpan, Span, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from lemma_middleware.sdk.probe import KeepSpans, report_missing
from lemma_middleware.sdk.spans import langfuse_batch

# Every string Langfuse's media pass can change contains one of these (a data URI, or JSON
# with inline data); a batch without any is exported by it as an identical copy.
_MEDIA_MARKERS = ("data:", "inline_data", "inlineData", '"data"')


def _may_hold_media(spans: Sequence[ReadableSpan]) -> bool:
    short: list[str] = []  # searched together
    long: dict[int, str] = {}  # searched one by one, once: the root's input and output are
    for span in spans:  # each two attributes holding one object
        for value in (span.attributes or {}).values():
            if isinstance(value, str):
                if len(value) < 1024:
                    short.append(value)
                else:
                    long[id(value)] = value
            elif isinstance(value, tuple | list):
                short.extend(item for item in value if isinstance(item, str))
    return any(_holds_media_marker(text) for text in ("\n".join(short), *long.values()))


def _holds_media_marker(text: str) -> bool:
    return "ata" in text and any(marker in text for marker in _MEDIA_MARKERS)  # all hold "ata"


class MediaScreenedExporter(SpanExporter):
    """Langfuse's transforming exporter for batches that may hold media; the exporter
    behind it, directly, for batches that cannot (what Langfuse would send, unchanged)."""

    def __init__(self, transforming: LangfuseTransformingSpanExporter, inner: SpanExporter):
        self.transforming = transforming
        self.inner = inner

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if _may_hold_media(spans):
            return self.transforming.export(spans)
        return self.inner.export(spans)

    def shutdown(self) -> None:
        self.transforming.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.transforming.force_flush(timeout_millis)


def _media_pass_is_identity(transforming: LangfuseTransformingSpanExporter) -> bool:
    """Whether Langfuse's media pass, as configured on this client, sends a span without
    media unchanged: the same OTLP bytes."""
    provider = TracerProvider()
    span = cast(Span, provider.get_tracer("lemma_middleware.check").start_span("check"))
    span.set_attributes(
        {
            "langfuse.observation.input": '{"message": "where is my parcel?"}',
            "langfuse.trace.metadata.http.route": '"/chat"',
            "langfuse.observation.output": "plain text",
            "gen_ai.request.model": "m",
            "tags": ("a", "b"),
            "count": 3,
        }
    )
    span.end()
    keep = KeepSpans()
    probe = LangfuseTransformingSpanExporter(
        exporter=keep,
        media_manager=transforming._media_manager,
        mask_otel_spans=None,
    )
    probe.export([span])
    provider.shutdown()
    return len(keep.spans) == 1 and (
        encode_spans(keep.spans).SerializeToString() == encode_spans([span]).SerializeToString()
    )


def langfuse_exporter(provider: TracerProvider, public_key: str) -> SpanExporter | None:
    """What the Langfuse processor of ``public_key`` exports each batch through (for the
    benchmark's export-cost figures)."""
    try:
        batch = langfuse_batch(provider, public_key)
    except Exception:
        return None
    return cast(SpanExporter, batch._exporter) if batch is not None else None


def screen_media_pass(provider: TracerProvider, public_key: str) -> bool:
    """Let batches without media skip the media pass of the Langfuse processor of
    ``public_key`` on ``provider``. False (and nothing changed) where that cannot be done
    safely: a client-level ``mask_otel_spans``, an unknown processor layout, or a media pass
    that changes spans without media."""
    try:
        batch = langfuse_batch(provider, public_key)
        transforming = batch._exporter if batch is not None else None
        if batch is not None and not isinstance(transforming, LangfuseTransformingSpanExporter):
            return False  # no media pass at all (or already screened): nothing to skip
        if isinstance(transforming, LangfuseTransformingSpanExporter):
            if transforming._mask_otel_spans is not None:
                return False  # the client masks spans at export: leave the pass whole
            inner = transforming._exporter
            if isinstance(inner, SpanExporter) and _media_pass_is_identity(transforming):
                batch._exporter = MediaScreenedExporter(transforming, inner)
                return True
    except Exception:
        pass
    report_missing(
        "LangfuseSpanProcessor._batch_processor._exporter",
        "every export batch goes through Langfuse's media pass (slower export)",
    )
    return False
