"""The span exporter of one OTLP/HTTP destination, with a bounded retry backlog.

:class:`DeliveryExporter` is the span exporter behind every destination the middleware
builds (Lemma, Langfuse, any OTLP endpoint). Per batch it encodes OTLP protobuf once,
gzips it and POSTs it:

* 2xx: delivered.
* Timeout, connection error, 429 or 5xx: the batch goes to a backlog, the destination is
  marked *down* (one log line) and ``export`` returns at once from then on: batches queue
  behind, and a sender thread retries the oldest with exponential backoff (1 s doubling to
  15 s, ±20 %, or the server's ``Retry-After``). When it gets through, the backlog is sent
  and the destination is *recovered* (one log line with how long it was down and how many
  spans were sent late).
* Any other answer (400, 401, 403, 413, ...): the batch is rejected; its spans are dropped
  and counted (one log line per status).

The backlog is bounded in bytes (``max_backlog_bytes``, compressed payloads); a batch that
does not fit is dropped, counted and logged, never blocking a request or the batch
processor. :func:`delivery_stats` gives the counters of every destination.

Every send ends by the process's :mod:`~lemma_middleware.delivery.deadline` while a bounded
flush or the exit (:mod:`~lemma_middleware.delivery.exit`) runs.
"""

from __future__ import annotations

import math
import threading
import time
import weakref
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from lemma_middleware.core.logs import contained, logger
from lemma_middleware.delivery.backoff import Backoff
from lemma_middleware.delivery.deadline import DEADLINE
from lemma_middleware.delivery.http import Sender
from lemma_middleware.delivery.stats import DeliveryStats

DEFAULT_MAX_BACKLOG_BYTES = 32 * 1024 * 1024
"""Compressed bytes kept for retry per destination (tens of thousands of traces)."""


@dataclass(eq=False, slots=True)
class _Batch:
    payload: object
    size: int
    spans: int
    attempts: int = 0


class DeliveryExporter(SpanExporter):
    """The span exporter for one destination.

    :meth:`export` encodes the batch and queues it (bounded in bytes) for a sender thread
    that does all network I/O, in order; it never waits for the network, so the batch
    processor's queue does not overflow behind a slow destination while the backlog has
    room. While the destination is down the sender retries the oldest batch with backoff.
    A flush of the provider still means delivered while the destination answers:
    :class:`FlushWaitsForDelivery`."""

    def __init__(
        self,
        name: str,
        sender: Sender,
        *,
        timeout: float = 5.0,
        max_backlog_bytes: int = DEFAULT_MAX_BACKLOG_BYTES,
        send_first: bool = False,
    ) -> None:
        """``send_first``: while nothing waits in the backlog, :meth:`export` sends the batch
        itself, and only a batch that fails waits for the sender thread (for an exporter
        the user brought: it behaves as before while it succeeds)."""
        self.name = name
        self.send_first = send_first
        self.sender = sender
        self.timeout = timeout
        self.max_backlog_bytes = max_backlog_bytes
        self.stats = DeliveryStats(name)
        self._backlog: deque[_Batch] = deque()
        self._changed = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._rejections_logged: set[str] = set()
        exporters.add(self)

    # The batch processor's side ------------------------------------------------------

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if not spans:
            return SpanExportResult.SUCCESS
        batch = None
        with contained(f"{self.name}: encoding a batch", "its spans are dropped"):
            payload, size = self.sender.prepare(spans)
            batch = _Batch(payload, size, len(spans))
        if batch is None:
            return SpanExportResult.FAILURE
        if self.send_first and not self._backlog and not self._closed:
            batch.attempts = 1
            answer = self.sender.send(batch.payload, DEADLINE.cap(self.timeout))
            if answer.delivered:
                with self._changed:
                    self.stats.delivered += batch.spans
                return SpanExportResult.SUCCESS
        with self._changed:
            if self._closed:
                self.stats.dropped_at_exit += batch.spans
                return SpanExportResult.FAILURE
            if not self._queue(batch):
                return SpanExportResult.FAILURE
            return SpanExportResult.SUCCESS  # sent in order by the sender thread

    def wait_while_up(self, timeout: float) -> bool:
        """Wait until the backlog is delivered while the destination answers (at most
        ``timeout`` seconds); return at once while it is down (the backlog is kept for
        retry). True when nothing is waiting."""
        return self._wait_for_backlog(timeout, while_down=False)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Wait until the backlog is delivered, at most ``timeout_millis``."""
        return self._wait_for_backlog(timeout_millis / 1000, while_down=True)

    def _wait_for_backlog(self, timeout: float, *, while_down: bool) -> bool:
        """Wait until the backlog is empty, at most ``timeout`` seconds and never past a
        bounded flush's deadline; ``while_down`` False: stop waiting while it is down."""
        give_up = time.monotonic() + timeout
        with self._changed:
            while (
                self._backlog and not self._closed and (while_down or self.stats.down_since is None)
            ):
                remaining = min(give_up - time.monotonic(), DEADLINE.remaining(math.inf))
                if remaining <= 0:
                    break
                self._changed.wait(min(remaining, 0.1))
            return not self._backlog

    def shutdown(self) -> None:
        """Deliver the backlog until the deadline of the exit (else within one attempt's
        ``timeout``), then drop and count what is left."""
        self.force_flush(int(DEADLINE.remaining(self.timeout) * 1000))
        self.close()

    def close(self) -> None:
        """Stop delivering: what is still in the backlog is counted as dropped at exit."""
        with self._changed:
            if self._closed:
                return
            self._closed = True
            state = self.state()
            left = sum(batch.spans for batch in self._backlog)
            self._backlog.clear()
            self.stats.dropped_at_exit += left
            self.stats.backlog_spans = self.stats.backlog_bytes = 0
            self._changed.notify_all()
        if left:
            logger.error(
                "lemma_middleware: %s: %d spans not delivered at exit (%s; flush_timeout reached)",
                self.name,
                left,
                state,
            )
        self.sender.close()

    def state(self) -> str:
        """``up``, or since when and why not."""
        if self.stats.down_since is not None:
            return f"down for {time.time() - self.stats.down_since:.1f} s"
        return "waiting for an answer" if self._backlog else "up"

    # The sender's side ---------------------------------------------------------------

    def _queue(self, batch: _Batch) -> bool:
        """Add ``batch`` to the backlog, or count it as dropped if it does not fit (called
        with the lock held)."""
        size = batch.size
        if self.stats.backlog_bytes + size > self.max_backlog_bytes:
            self.stats.dropped_backlog_full += batch.spans
            if self.stats.dropped_backlog_full == batch.spans:
                logger.error(
                    "lemma_middleware: %s: retry backlog full (%d bytes); new spans are "
                    "dropped until the destination answers (counted in export_stats())",
                    self.name,
                    self.max_backlog_bytes,
                )
            return False
        self._backlog.append(batch)
        self.stats.backlog_spans += batch.spans
        self.stats.backlog_bytes += size
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._send_loop, name=f"lemma-delivery-{self.name}", daemon=True
            )
            self._thread.start()
        self._changed.notify_all()
        return True

    def _send_loop(self) -> None:
        """Send the oldest batch, backing off while the destination fails."""
        backoff = Backoff()
        while True:
            with self._changed:
                while not self._closed and (not self._backlog or DEADLINE.passed()):
                    self._changed.wait(0.05 if self._backlog else None)
                if self._closed:
                    return
                batch = self._backlog[0]
                batch.attempts += 1
            answer = self.sender.send(batch.payload, DEADLINE.cap(self.timeout))
            if not answer.delivered and not answer.retry:
                self._rejected(batch, answer.detail)
            with self._changed:
                if self._closed:
                    return
                if answer.delivered or not answer.retry:
                    self._settle(batch, answer.delivered)
                    backoff.succeeded()
                    continue
                self._went_down(answer.detail)
                self._changed.notify_all()
                retry_at = time.monotonic() + backoff.failed(answer.retry_after)
                while not self._closed and (wait := retry_at - time.monotonic()) > 0:
                    self._changed.wait(DEADLINE.cap(wait))
                    if DEADLINE.passed():
                        break

    def _settle(self, batch: _Batch, delivered: bool) -> None:
        """``batch`` has left the backlog (called with the lock held)."""
        self._backlog.popleft()
        self.stats.backlog_spans -= batch.spans
        self.stats.backlog_bytes -= batch.size
        if delivered:
            self.stats.delivered += batch.spans
            if batch.attempts > 1 or self.stats.down_since is not None:
                self.stats.delivered_late += batch.spans
        if self.stats.down_since is not None and not self._backlog:
            self._recovered()
        self._changed.notify_all()

    def _went_down(self, detail: str) -> None:
        if self.stats.down_since is None:
            self.stats.down_since = time.time()
            logger.warning(
                "lemma_middleware: %s is down (%s); spans are kept for retry (up to %d MB)",
                self.name,
                detail,
                self.max_backlog_bytes // (1024 * 1024),
            )

    def _rejected(self, batch: _Batch, detail: str) -> None:
        with self._changed:
            self.stats.dropped_rejected += batch.spans
            first = detail not in self._rejections_logged
            self._rejections_logged.add(detail)
        if first:
            logger.error(
                "lemma_middleware: %s rejected %d spans (%s); dropped (each rejection "
                "is counted in export_stats(); this line is logged once per status)",
                self.name,
                batch.spans,
                detail,
            )

    def _recovered(self) -> None:
        """The backlog is delivered (called with the lock held)."""
        down_since = self.stats.down_since
        self.stats.down_since = None
        logger.warning(
            "lemma_middleware: %s recovered after %.1f s; %d spans delivered late so far, "
            "%d dropped (backlog full %d, rejected %d)",
            self.name,
            time.time() - (down_since or time.time()),
            self.stats.delivered_late,
            self.stats.dropped,
            self.stats.dropped_backlog_full,
            self.stats.dropped_rejected,
        )


class FlushWaitsForDelivery(SpanProcessor):
    """Added last to a provider whose spans go through delivery exporters: a flush of the
    provider (Langfuse's ``flush()``) returns once what the processors before it handed
    over is delivered, as long as the destinations answer (see
    :meth:`DeliveryExporter.wait_while_up`), or its timeout passed."""

    exports_by_langfuse_filter = True  # it exports nothing

    def __init__(self, exporters: Sequence[DeliveryExporter]) -> None:
        self.exporters = tuple(exporters)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        deadline = time.monotonic() + timeout_millis / 1000
        return all(
            exporter.wait_while_up(max(deadline - time.monotonic(), 0.0))
            for exporter in self.exporters
        )


exporters: weakref.WeakSet[DeliveryExporter] = weakref.WeakSet()


def delivery_stats() -> list[DeliveryStats]:
    """Counters of every destination the middleware delivers to in this process."""
    return sorted((exporter.stats for exporter in list(exporters)), key=lambda s: s.destination)
