"""The local trace inbox: the OTLP receiver, storing spans durably in SQLite, plus the
queries behind ``lemma-middleware threads`` and ``show``.

Point ``LANGFUSE_HOST`` at it (``http://127.0.0.1:8787`` by default) and every trace the
middleware exports lands here; nothing leaves the machine.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from lemma_middleware.core.environment import variable
from lemma_middleware.inbox.receiver import OTLPReceiver
from lemma_middleware.inbox.views import summary_line
from lemma_middleware.inbox.web import view_routes
from lemma_middleware.testing.contract import roots_of
from lemma_middleware.testing.records import ReceivedSpan

DEFAULT_PORT = 8787


def default_db() -> Path:
    """Where the inbox and its views keep traces, whatever the working directory:
    ``LEMMA_INBOX_DB``, else ``$XDG_DATA_HOME/lemma-middleware/inbox.sqlite3`` (by default
    ``~/.local/share/lemma-middleware/inbox.sqlite3``). The folder is created."""
    configured = variable("LEMMA_INBOX_DB")
    if configured:
        return Path(configured)
    data = Path(variable("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    folder = data / "lemma-middleware"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / "inbox.sqlite3"


_SCHEMA = """
CREATE TABLE IF NOT EXISTS spans (
    trace_id TEXT NOT NULL,
    span_id TEXT NOT NULL,
    parent_span_id TEXT,
    name TEXT NOT NULL,
    start_ns INTEGER NOT NULL,
    end_ns INTEGER NOT NULL,
    attributes TEXT NOT NULL,
    resource TEXT NOT NULL,
    scope TEXT NOT NULL,
    status_code INTEGER NOT NULL,
    received_at REAL NOT NULL,
    PRIMARY KEY (trace_id, span_id)
);
CREATE INDEX IF NOT EXISTS spans_by_parent ON spans (trace_id, parent_span_id);
"""


class SpanStore:
    """Spans in a SQLite file: WAL mode, one connection per thread, one transaction per
    export batch (a batch is stored whole or not at all)."""

    def __init__(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path = str(path)
        self._local = threading.local()
        with self._connection() as connection:
            connection.executescript(_SCHEMA)

    def _connection(self) -> sqlite3.Connection:
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            connection = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA busy_timeout=30000")
            self._local.connection = connection
        return connection

    def add(self, spans: Iterable[ReceivedSpan]) -> None:
        """Store one export batch atomically (re-sent spans replace the earlier copy)."""
        rows = [
            (
                s.trace_id,
                s.span_id,
                s.parent_span_id,
                s.name,
                s.start_ns,
                s.end_ns,
                json.dumps(s.attributes),
                json.dumps(s.resource),
                s.scope,
                s.status_code,
                time.time(),
            )
            for s in spans
        ]
        connection = self._connection()
        connection.execute("BEGIN IMMEDIATE")
        try:
            connection.executemany(
                "INSERT OR REPLACE INTO spans VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows
            )
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")

    def spans(self, where: str = "", args: tuple[Any, ...] = ()) -> list[ReceivedSpan]:
        """Stored spans (optionally filtered by an SQL condition), oldest first."""
        query = "SELECT trace_id, span_id, parent_span_id, name, start_ns, end_ns, attributes, "
        query += "resource, scope, status_code FROM spans"
        if where:
            query += f" WHERE {where}"
        rows = self._connection().execute(query + " ORDER BY start_ns", args).fetchall()
        return [
            ReceivedSpan(
                r[0], r[1], r[2], r[3], r[4], r[5], json.loads(r[6]), json.loads(r[7]), r[8], r[9]
            )
            for r in rows
        ]

    def close(self) -> None:
        """Close this thread's connection."""
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None


class Inbox:
    """The receiver wired to a :class:`SpanStore`, printing a line per arriving trace, with
    the web view (:mod:`lemma_middleware.web`) on the same port."""

    def __init__(
        self,
        db: str | Path | None = None,
        *,
        port: int = DEFAULT_PORT,
        keys: dict[str, str] | None = None,
        bearer: str | None = None,
        announce: Callable[[str], None] | None = print,
    ) -> None:
        self.store = SpanStore(db if db is not None else default_db())
        self.announce = announce
        self.receiver = OTLPReceiver(
            port=port,
            keys=keys,
            bearer=bearer,
            on_spans=self._on_spans,
            routes=view_routes(self.store.spans),
        )

    @property
    def base_url(self) -> str:
        """What ``LANGFUSE_HOST`` points at, and where the web view is."""
        return self.receiver.base_url

    def _on_spans(self, spans: list[ReceivedSpan]) -> None:
        self.store.add(spans)
        if self.announce is not None:
            for root in roots_of(spans):
                self.announce(summary_line(root, spans))

    def start(self) -> Inbox:
        """Serve in a background thread."""
        self.receiver.start()
        return self

    def serve_forever(self) -> None:
        """Serve in this thread until interrupted (SIGINT, SIGTERM)."""
        self.receiver.serve_forever()

    def stop(self) -> None:
        """Stop serving."""
        self.receiver.stop()

    def __enter__(self) -> Inbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
