"""The inbox as a server: the OTLP receiver storing into a :class:`SpanStore`, an indexer
thread, and the web view (:mod:`lemma_middleware.inbox.web`) on the same port."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from lemma_middleware.core.logs import contained
from lemma_middleware.inbox.receiver import OTLPReceiver
from lemma_middleware.inbox.schema import default_db
from lemma_middleware.inbox.store import DEFAULT_MAX_SPANS, SpanStore
from lemma_middleware.inbox.views import summary_line
from lemma_middleware.inbox.web import view_routes
from lemma_middleware.testing.contract import roots_of
from lemma_middleware.testing.records import ReceivedSpan

logger = logging.getLogger("lemma_middleware.inbox")

DEFAULT_PORT = 8787
BUSY_SECONDS = 1.0
"""Receiving counts as busy while spans arrived this recently."""
BUSY_SHARE = 0.25
"""The share of its time the indexer works while receiving is busy (it rests the rest)."""
BUSY_PER_TRANSACTION = 20
"""Traces an indexing transaction takes while receiving is busy (the write lock held
briefly)."""
QUIET_PER_TRANSACTION = 100
"""Traces an indexing transaction takes otherwise."""


class Inbox:
    """The receiver wired to a :class:`SpanStore`, printing a line per arriving trace, with
    the web view (:mod:`lemma_middleware.inbox.web`) on the same port."""

    def __init__(
        self,
        db: str | Path | None = None,
        *,
        port: int = DEFAULT_PORT,
        keys: dict[str, str] | None = None,
        bearer: str | None = None,
        announce: Callable[[str], None] | None = print,
        max_spans: int | None = DEFAULT_MAX_SPANS,
        max_age: float | None = None,
    ) -> None:
        self.store = SpanStore(
            db if db is not None else default_db(), max_spans=max_spans, max_age=max_age
        )
        self.announce = announce
        self._stored = threading.Event()
        self._last_stored = 0.0
        """When spans last arrived (``time.monotonic()``)."""
        self._stopping = threading.Event()
        self._indexer: threading.Thread | None = None
        self.receiver = OTLPReceiver(
            port=port,
            keys=keys,
            bearer=bearer,
            on_spans=self._on_spans,
            routes=view_routes(self.store),
        )

    @property
    def base_url(self) -> str:
        """What ``LANGFUSE_HOST`` points at, and where the web view is."""
        return self.receiver.base_url

    def _on_spans(self, spans: list[ReceivedSpan]) -> None:
        self.store.add(spans, index=False)
        self._last_stored = time.monotonic()
        self._stored.set()
        if self.announce is not None:
            for root in roots_of(spans):
                self.announce(summary_line(root, spans))

    def receiving_busy(self) -> bool:
        """Whether spans arrived in the last :data:`BUSY_SECONDS`."""
        return time.monotonic() - self._last_stored < BUSY_SECONDS

    def _pace(self, spent: float) -> int:
        """Between two indexing transactions: while receiving is busy, rest so that
        indexing takes :data:`BUSY_SHARE` of the time, in small transactions (receiving
        keeps the CPU and the write lock; the rows catch up once it slows down)."""
        if not self.receiving_busy():
            return QUIET_PER_TRANSACTION
        self._stopping.wait(spent * (1 - BUSY_SHARE) / BUSY_SHARE)
        return BUSY_PER_TRANSACTION

    def _index_forever(self) -> None:
        """The indexer thread: rebuilds the rows of what was stored (see
        :meth:`SpanStore.index_pending`) shortly after it arrives, a pass per wake-up,
        yielding to receiving while it is busy (:meth:`_pace`)."""
        while not self._stopping.is_set():
            self._stored.wait(timeout=1.0)
            self._stored.clear()
            try:
                self.store.index_pending(
                    per_transaction=(
                        BUSY_PER_TRANSACTION if self.receiving_busy() else QUIET_PER_TRANSACTION
                    ),
                    stopping=self._stopping.is_set,
                    pace=self._pace,
                )
            except Exception:  # a bad moment (a locked file, a full disk): the next pass retries
                logger.exception("inbox: indexing stored traces failed; retrying")
                self._stopping.wait(1.0)
        self.store.close()

    def _start_indexer(self) -> None:
        self._stopping.clear()
        self._stored.set()  # traces an earlier run stored and did not index
        self._indexer = threading.Thread(
            target=self._index_forever, name="lemma-inbox-indexer", daemon=True
        )
        self._indexer.start()

    def _stop_indexer(self) -> None:
        if self._indexer is not None:
            self._stopping.set()
            self._stored.set()
            self._indexer.join(timeout=30)
            self._indexer = None
        with contained("indexing what arrived last", "it is indexed when the inbox next opens"):
            self.store.index_pending()  # what arrived last is indexed before the inbox ends

    def start(self) -> Inbox:
        """Serve in a background thread."""
        self._start_indexer()
        self.receiver.start()
        return self

    def serve_forever(self) -> None:
        """Serve in this thread until interrupted (SIGINT, SIGTERM)."""
        self._start_indexer()
        try:
            self.receiver.serve_forever()
        finally:
            self._stop_indexer()

    def stop(self) -> None:
        """Stop serving."""
        self.receiver.stop()
        self._stop_indexer()

    def __enter__(self) -> Inbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
