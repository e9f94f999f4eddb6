"""Delivery of span batches to one OTLP/HTTP destination, with a bounded retry backlog and a
bounded exit.

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
processor. :func:`export_stats` gives the counters of every destination.

Exit: :func:`set_exit_timeout` (the middleware's ``flush_timeout``) bounds the whole
process exit: an ``atexit`` handler, registered after the Langfuse client's and the tracer
provider's own so it runs before them, flushes the providers and waits for the backlogs
until the deadline (every send in flight is cut at it), then closes every destination (what
is left is counted and logged). Langfuse's and OpenTelemetry's exit handlers then find
nothing left to wait for. :func:`deadline` bounds a flush the same way (lifespan shutdown).
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import math
import random
import threading
import time
import weakref
import zlib
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, NamedTuple

import requests
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from .logs import logger
from .otlp import encode_request_parts

DEFAULT_MAX_BACKLOG_BYTES = 32 * 1024 * 1024
"""Compressed bytes kept for retry per destination (tens of thousands of traces)."""
DEFAULT_EXIT_TIMEOUT = 5.0
"""Seconds the process exit may spend delivering what is left (``flush_timeout``)."""
FIRST_BACKOFF = 1.0
MAX_BACKOFF = 15.0

_USER_AGENT = "lemma-middleware OTLP/HTTP"


class Answer(NamedTuple):
    """What one POST achieved: ``delivered``, or ``retry`` (with the server's requested
    delay, if any), or neither (rejected); ``detail`` says why."""

    delivered: bool
    retry: bool
    detail: str
    retry_after: float | None = None


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        return max(parsedate_to_datetime(value).timestamp() - time.time(), 0.0)
    except (TypeError, ValueError):
        return None


class OTLPHTTPSender:
    """POSTs gzipped OTLP protobuf payloads to one endpoint and classifies the answer."""

    def __init__(self, endpoint: str, headers: Mapping[str, str]) -> None:
        self.endpoint = endpoint
        self.session = requests.Session()
        self.session.headers.update(
            {
                "Content-Type": "application/x-protobuf",
                "Content-Encoding": "gzip",
                "User-Agent": _USER_AGENT,
                **headers,
            }
        )

    def send(self, payload: bytes, timeout: float) -> Answer:
        """One delivery attempt (a stale pooled connection is retried once at once)."""
        deadline = time.monotonic() + timeout
        try:
            try:
                response = self.session.post(self.endpoint, data=payload, timeout=timeout)
            except requests.ConnectionError:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise
                response = self.session.post(self.endpoint, data=payload, timeout=remaining)
        except requests.Timeout:
            return Answer(False, True, f"no answer within {timeout:.1f} s")
        except requests.RequestException as error:
            return Answer(False, True, f"connection failed ({type(error).__name__})")
        status = response.status_code
        response.close()
        if 200 <= status < 300:
            return Answer(True, False, f"HTTP {status}")
        retry = status == 429 or status >= 500
        detail = f"HTTP {status}"
        return Answer(False, retry, detail, _retry_after(response.headers.get("Retry-After")))

    def close(self) -> None:
        self.session.close()


def _gzip_compressor() -> Callable[..., Any]:
    """ISA-L's compressor (the same format as zlib's, at a fraction of its CPU), else
    zlib's; called as ``zlib.compressobj(level, method, wbits)``."""
    try:
        return importlib.import_module("isal.isal_zlib").compressobj  # type: ignore[no-any-return]
    except ImportError:  # a platform it ships no wheels for
        return zlib.compressobj


_compressor = _gzip_compressor()

GZIP_LEVEL = 1
"""Level 1, with ISA-L (``isal``, a dependency on the platforms it ships wheels for): per
request's root in batches of 128, 0.4 µs and 51 bytes for a short request (zlib at level 1:
1.8 µs, 55 bytes), 20-40 µs and 2-5 KB for one carrying a 28 KB conversation history
(zlib: 290 µs, 9 KB). Where ``isal`` is missing, zlib at level 1 (about half the CPU of its
level 6, for 4 % more bytes)."""

_GZIP = 31  # wbits: a gzip container
_CHUNK = 1 << 18  # bytes handed to the compressor at once


def encode_batch(spans: Sequence[ReadableSpan]) -> bytes:
    """The gzipped OTLP protobuf request for ``spans``, compressed as it is encoded (a batch
    of large traces is never one uncompressed buffer)."""
    compressor = _compressor(GZIP_LEVEL, zlib.DEFLATED, _GZIP)
    compressed: list[bytes] = []
    pending: list[bytes] = []
    size = 0
    for part in encode_request_parts(spans):
        pending.append(part)
        size += len(part)
        if size >= _CHUNK:
            compressed.append(compressor.compress(b"".join(pending)))
            pending.clear()
            size = 0
    compressed.append(compressor.compress(b"".join(pending)))
    compressed.append(compressor.flush())
    return b"".join(compressed)


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


@dataclass(eq=False, slots=True)
class _Batch:
    payload: bytes
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
        sender: OTLPHTTPSender,
        *,
        timeout: float = 5.0,
        max_backlog_bytes: int = DEFAULT_MAX_BACKLOG_BYTES,
    ) -> None:
        self.name = name
        self.sender = sender
        self.timeout = timeout
        self.max_backlog_bytes = max_backlog_bytes
        self.stats = DeliveryStats(name)
        self._backlog: deque[_Batch] = deque()
        self._changed = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._rejections_logged: set[str] = set()
        _exporters.add(self)

    # The batch processor's side ------------------------------------------------------

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if not spans:
            return SpanExportResult.SUCCESS
        try:
            batch = _Batch(encode_batch(spans), len(spans))
        except Exception as error:
            logger.error(
                "lemma_middleware: %s: %d spans could not be encoded and are dropped: %r",
                self.name,
                len(spans),
                error,
            )
            return SpanExportResult.FAILURE
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
                remaining = min(give_up - time.monotonic(), _deadline.remaining(math.inf))
                if remaining <= 0:
                    break
                self._changed.wait(min(remaining, 0.1))
            return not self._backlog

    def shutdown(self) -> None:
        """Deliver the backlog until the deadline of the exit (else within one attempt's
        ``timeout``), then drop and count what is left."""
        self.force_flush(int(_deadline.remaining(self.timeout) * 1000))
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
        size = len(batch.payload)
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
        backoff = FIRST_BACKOFF
        while True:
            with self._changed:
                while not self._closed and (not self._backlog or _deadline.passed()):
                    self._changed.wait(0.05 if self._backlog else None)
                if self._closed:
                    return
                batch = self._backlog[0]
                batch.attempts += 1
            answer = self.sender.send(batch.payload, _deadline.cap(self.timeout))
            if not answer.delivered and not answer.retry:
                self._rejected(batch, answer.detail)
            with self._changed:
                if self._closed:
                    return
                if answer.delivered or not answer.retry:
                    self._settle(batch, answer.delivered)
                    backoff = FIRST_BACKOFF
                    continue
                self._went_down(answer.detail)
                self._changed.notify_all()
                delay = answer.retry_after if answer.retry_after is not None else backoff
                backoff = min(backoff * 2, MAX_BACKOFF)
                retry_at = time.monotonic() + min(delay, MAX_BACKOFF) * random.uniform(0.8, 1.2)
                while not self._closed and (wait := retry_at - time.monotonic()) > 0:
                    self._changed.wait(_deadline.cap(wait))
                    if _deadline.passed():
                        break

    def _settle(self, batch: _Batch, delivered: bool) -> None:
        """``batch`` has left the backlog (called with the lock held)."""
        self._backlog.popleft()
        self.stats.backlog_spans -= batch.spans
        self.stats.backlog_bytes -= len(batch.payload)
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


_exporters: weakref.WeakSet[DeliveryExporter] = weakref.WeakSet()
_providers: weakref.WeakSet[TracerProvider] = weakref.WeakSet()


def export_stats() -> list[DeliveryStats]:
    """Counters of every destination the middleware delivers to in this process."""
    return sorted((exporter.stats for exporter in list(_exporters)), key=lambda s: s.destination)


# Process exit ----------------------------------------------------------------------------


class _Deadline:
    """The moment every send must be done by, while a bounded flush or the exit runs."""

    def __init__(self) -> None:
        self.exit_timeout: float | None = None
        self.at: float | None = None

    def remaining(self, default: float) -> float:
        if self.at is None:
            return default
        return max(self.at - time.monotonic(), 0.0)

    def cap(self, seconds: float) -> float:
        """``seconds``, but no later than the deadline (at least 1 ms)."""
        return max(min(seconds, self.remaining(seconds)), 0.001)

    def passed(self) -> bool:
        return self.at is not None and time.monotonic() >= self.at


_deadline = _Deadline()


def set_exit_timeout(seconds: float) -> None:
    """Let the process exit spend at most ``seconds`` delivering traces (the largest value
    any middleware of the process asked for)."""
    _deadline.exit_timeout = max(seconds, _deadline.exit_timeout or 0.0)


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Within the block, every send (and :func:`wait_for_backlogs`) ends ``seconds`` from
    now at the latest."""
    previous = _deadline.at
    at = time.monotonic() + seconds
    _deadline.at = at if previous is None else min(previous, at)
    try:
        yield
    finally:
        _deadline.at = previous


def wait_for_backlogs() -> bool:
    """Wait until every destination's backlog is delivered, or the current deadline; log
    what is still waiting then (kept for retry while the process runs)."""
    delivered = True
    for exporter in list(_exporters):
        if not exporter.force_flush(int(_deadline.remaining(30.0) * 1000)):
            delivered = False
            logger.warning(
                "lemma_middleware: %s: %d spans not delivered within flush_timeout (%s); "
                "kept for retry while the process runs",
                exporter.name,
                exporter.stats.backlog_spans,
                exporter.state(),
            )
    return delivered


def watch_provider(provider: TracerProvider) -> None:
    """Flush ``provider`` at exit within the budget, before Langfuse's and OpenTelemetry's
    own exit handlers (registered earlier, so run later) get to it."""
    _providers.add(provider)
    atexit.unregister(_deliver_at_exit)
    atexit.register(_deliver_at_exit)


def _deliver_at_exit() -> None:
    """Deliver what is pending within the exit timeout, then close every destination, so
    the exit handlers that run after this one have nothing left to wait for."""
    _deadline.at = time.monotonic() + (_deadline.exit_timeout or DEFAULT_EXIT_TIMEOUT)
    try:
        for provider in list(_providers):
            provider.force_flush(int(_deadline.remaining(0.0) * 1000))
        wait_for_backlogs()
    except Exception:
        logger.exception("lemma_middleware: flush at exit failed")
    finally:
        for exporter in list(_exporters):
            exporter.close()
