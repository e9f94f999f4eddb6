"""What the start-up checks of SDK internals share: the one report of a missing internal
(an error naming what is lost, logged once) and an exporter that keeps what it is given.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from lemma_middleware.core.logs import log_once

MISSING = object()


def report_missing(what: str, consequence: str) -> None:
    log_once(
        f"sdk-internal:{what}",
        logging.ERROR,
        "lemma_middleware: this langfuse/opentelemetry version has no %s; %s",
        what,
        consequence,
    )


class KeepSpans(SpanExporter):
    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans.extend(spans)
        return SpanExportResult.SUCCESS
