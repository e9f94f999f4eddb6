"""The export's counters: what each destination delivered, and what sampling kept."""

from __future__ import annotations

from dataclasses import dataclass

from lemma_middleware.delivery.exporter import delivery_stats
from lemma_middleware.delivery.stats import DeliveryStats
from lemma_middleware.request.sampling import SamplingStats, sampling_stats


@dataclass(frozen=True)
class ExportStats:
    """Counters since start-up: ``destinations`` (one :class:`DeliveryStats` each, by
    name) and ``sampling`` (turns kept and dropped, spans held)."""

    destinations: list[DeliveryStats]
    sampling: SamplingStats


def export_stats() -> ExportStats:
    """The counters of every destination the middleware delivers to in this process, and
    of sampling."""
    return ExportStats(delivery_stats(), sampling_stats())
