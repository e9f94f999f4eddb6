"""The counters of one destination."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class DeliveryStats:
    """Counters of one destination since start-up (spans, not batches)."""

    destination: str
    delivered: int = 0
    delivered_late: int = 0
    """Delivered by a retry, or after waiting in the backlog for the destination to
    recover (included in ``delivered``)."""
    dropped_backlog_full: int = 0
    dropped_rejected: int = 0
    dropped_at_exit: int = 0
    backlog_spans: int = 0
    backlog_bytes: int = 0
    down_since: float | None = None
    """``time.time()`` when the destination went down; None while it is up."""

    @property
    def dropped(self) -> int:
        return self.dropped_backlog_full + self.dropped_rejected + self.dropped_at_exit
