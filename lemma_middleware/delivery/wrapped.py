"""A span exporter the user brought, behind the middleware's retry backlog.

Wrap, never redirect: the spans still go where the user's exporter sends them, through that
exporter. What the middleware adds around it is what it gives its own destinations: a batch
the exporter fails on is kept (bounded) and retried with backoff by a thread of its own,
the exit is bounded by ``flush_timeout``, and the counters are in ``export_stats()``.
An exporter only says success or failure, so every failure is retried: one that can never
succeed fills the backlog, and what does not fit is dropped, counted and logged.
"""

from __future__ import annotations

from collections.abc import Sequence

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from lemma_middleware.delivery.http import Answer

_SPAN_OVERHEAD = 200
"""Bytes counted per span besides its text attributes (ids, times, names)."""


def approximate_size(spans: Sequence[ReadableSpan]) -> int:
    """About the memory ``spans`` hold: their text attributes and a fixed part each."""
    size = 0
    for span in spans:
        size += _SPAN_OVERHEAD + len(span.name)
        for value in (span.attributes or {}).values():
            if isinstance(value, str):
                size += len(value)
    return size


class ExporterSender:
    """Sends each batch through ``exporter`` (a :class:`~.http.Sender`)."""

    def __init__(self, exporter: SpanExporter) -> None:
        self.exporter = exporter
        self.endpoint = type(exporter).__name__
        """What the exporter is (for messages; it knows its own destination)."""

    def prepare(self, spans: Sequence[ReadableSpan]) -> tuple[tuple[ReadableSpan, ...], int]:
        """The spans themselves are kept; their size is estimated."""
        return tuple(spans), approximate_size(spans)

    def send(self, payload: tuple[ReadableSpan, ...], timeout: float) -> Answer:
        """One call of the exporter (its own timeout applies)."""
        try:
            result = self.exporter.export(payload)
        except Exception as error:  # the user's exporter: a failure like any other
            return Answer(False, True, f"{type(error).__name__}: {error}")
        if result is SpanExportResult.SUCCESS:
            return Answer(True, False, "exported")
        return Answer(False, True, "the exporter reported a failure")

    def close(self) -> None:
        """Shut the exporter down."""
        self.exporter.shutdown()
