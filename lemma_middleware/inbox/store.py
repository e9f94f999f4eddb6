"""The local trace inbox: the OTLP receiver, storing spans durably in SQLite, plus the
indexed queries behind the web view and ``lemma-middleware threads`` and ``show``.

Point ``LANGFUSE_HOST`` at it (``http://127.0.0.1:8787`` by default) and every trace the
middleware exports lands here; nothing leaves the machine.

Besides the spans, the store keeps a row per trace (from its root: thread, user, tenant,
agent, status, duration, input, output, what the user said and what the agent answered,
contract violations) and a row per thread, both updated in the transaction that stores a
batch, so every page reads a bounded number of indexed rows however much is stored. A
``version`` counter, bumped by every batch, is the web view's change marker. Retention keeps
at most ``max_spans`` spans (whole traces, oldest received first) and, if set, nothing older
than ``max_age`` seconds, with a log line each time it deletes.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from lemma_middleware.core.attributes import Keys
from lemma_middleware.core.environment import variable
from lemma_middleware.inbox.receiver import OTLPReceiver
from lemma_middleware.inbox.views import (
    ThreadQuery,
    ThreadSummary,
    TraceRow,
    level,
    said,
    summary_line,
    thread_of,
)
from lemma_middleware.inbox.web import view_routes
from lemma_middleware.testing.contract import check_trace, roots_of
from lemma_middleware.testing.records import ReceivedSpan

logger = logging.getLogger("lemma_middleware.inbox")

DEFAULT_PORT = 8787
DEFAULT_MAX_SPANS = 1_000_000
"""Retention's default bound: the oldest traces go once the store holds more spans."""
PREVIEW_CHARS = 4000
"""How much of a trace's input and output the trace rows keep (for lists and search)."""
_SPAN_COLUMNS = (
    "trace_id, span_id, parent_span_id, name, start_ns, end_ns, attributes, resource, scope, "
    "status_code"
)


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
CREATE TABLE IF NOT EXISTS traces (
    trace_id TEXT PRIMARY KEY,
    thread_id TEXT,
    user_id TEXT,
    tenant_id TEXT,
    agent TEXT,
    level TEXT,
    http_status INTEGER,
    status_message TEXT,
    start_ns INTEGER,
    end_ns INTEGER,
    input TEXT,
    output TEXT,
    user_said TEXT,
    agent_said TEXT,
    span_count INTEGER NOT NULL DEFAULT 0,
    violations INTEGER NOT NULL DEFAULT 0,
    rooted INTEGER NOT NULL DEFAULT 0,
    received_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS traces_by_thread ON traces (thread_id, start_ns);
CREATE INDEX IF NOT EXISTS traces_by_received ON traces (received_at);
CREATE INDEX IF NOT EXISTS traces_by_user ON traces (user_id);
CREATE INDEX IF NOT EXISTS traces_by_tenant ON traces (tenant_id);
CREATE INDEX IF NOT EXISTS traces_by_agent ON traces (agent);
CREATE TABLE IF NOT EXISTS threads (
    thread_id TEXT PRIMARY KEY,
    users TEXT NOT NULL,
    tenants TEXT NOT NULL,
    agents TEXT NOT NULL,
    turns INTEGER NOT NULL,
    errors INTEGER NOT NULL,
    violations INTEGER NOT NULL,
    first_ns INTEGER NOT NULL,
    last_ns INTEGER NOT NULL,
    last_said TEXT
);
CREATE INDEX IF NOT EXISTS threads_by_last ON threads (last_ns);
CREATE VIRTUAL TABLE IF NOT EXISTS trace_text USING fts5 (
    trace_id UNINDEXED, input, output, tokenize = 'trigram'
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""
NO_THREAD_KEY = ""
"""The threads row of traces without a thread id."""


def _row_of(span: ReceivedSpan, received_at: float) -> tuple[Any, ...]:
    return (
        span.trace_id,
        span.span_id,
        span.parent_span_id,
        span.name,
        span.start_ns,
        span.end_ns,
        json.dumps(span.attributes),
        json.dumps(span.resource),
        span.scope,
        span.status_code,
        received_at,
    )


def _span_of(row: Sequence[Any]) -> ReceivedSpan:
    return ReceivedSpan(
        row[0],
        row[1],
        row[2],
        row[3],
        row[4],
        row[5],
        json.loads(row[6]),
        json.loads(row[7]),
        row[8],
        row[9],
    )


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return (value if isinstance(value, str) else json.dumps(value))[:PREVIEW_CHARS]


def _http_status(root: ReceivedSpan) -> int | None:
    value = root.attributes.get(Keys.HTTP_STATUS)
    try:
        return int(json.loads(value)) if isinstance(value, str) else None
    except (ValueError, TypeError):
        return None


class SpanStore:
    """Spans in a SQLite file: WAL mode, one connection per thread, one transaction per
    export batch (a batch is stored whole or not at all, with its trace and thread rows)."""

    def __init__(
        self,
        path: str | Path,
        *,
        max_spans: int | None = DEFAULT_MAX_SPANS,
        max_age: float | None = None,
    ) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path = str(path)
        self.max_spans = max_spans or None
        self.max_age = max_age or None
        self._local = threading.local()
        self._age_checked = 0.0
        connection = self._connection()
        connection.executescript(_SCHEMA)
        self._index_earlier_spans(connection)

    def _connection(self) -> sqlite3.Connection:
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            connection = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA busy_timeout=30000")
            connection.execute("PRAGMA synchronous=NORMAL")
            self._local.connection = connection
        return connection

    def _index_earlier_spans(self, connection: sqlite3.Connection) -> None:
        """A file written by an earlier version has spans but no trace rows: index them once."""
        if connection.execute("SELECT 1 FROM meta WHERE key = 'version'").fetchone():
            return
        connection.execute("BEGIN IMMEDIATE")
        try:
            if connection.execute("SELECT 1 FROM meta WHERE key = 'version'").fetchone() is None:
                trace_ids = [
                    r[0] for r in connection.execute("SELECT DISTINCT trace_id FROM spans")
                ]
                if trace_ids:
                    logger.info(
                        "inbox: indexing %d traces stored by an earlier version", len(trace_ids)
                    )
                connection.execute("INSERT OR REPLACE INTO meta VALUES ('traces', 0)")
                self._reindex(connection, trace_ids, time.time())
                count = connection.execute("SELECT count(*) FROM spans").fetchone()[0]
                connection.executemany(
                    "INSERT OR REPLACE INTO meta VALUES (?, ?)",
                    [("version", 1), ("spans", count), ("traces", len(trace_ids))],
                )
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")

    def add(self, spans: Iterable[ReceivedSpan]) -> None:
        """Store one export batch atomically (re-sent spans replace the earlier copy), update
        its traces' and threads' rows, then apply retention."""
        batch = list(spans)
        now = time.time()
        connection = self._connection()
        connection.execute("BEGIN IMMEDIATE")
        try:
            before = connection.total_changes
            connection.executemany(
                "INSERT OR IGNORE INTO spans VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [_row_of(s, now) for s in batch],
            )
            added = connection.total_changes - before
            if added < len(batch):  # re-sent spans replace the earlier copy
                connection.executemany(
                    "INSERT OR REPLACE INTO spans VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [_row_of(s, now) for s in batch],
                )
            self._reindex(connection, list(dict.fromkeys(s.trace_id for s in batch)), now)
            connection.execute("UPDATE meta SET value = value + ? WHERE key = 'spans'", (added,))
            connection.execute("UPDATE meta SET value = value + 1 WHERE key = 'version'")
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")
        self._retain(connection)

    def _reindex(self, connection: sqlite3.Connection, trace_ids: list[str], now: float) -> None:
        """Rebuild the rows of ``trace_ids`` and of the threads they belong to."""
        threads: set[str] = set()
        for trace_id in trace_ids:
            earlier = connection.execute(
                "SELECT thread_id, received_at FROM traces WHERE trace_id = ?", (trace_id,)
            ).fetchone()
            if earlier is not None and earlier[0] is not None:
                threads.add(earlier[0])
            if earlier is None:
                connection.execute("UPDATE meta SET value = value + 1 WHERE key = 'traces'")
            spans = self._trace_spans(connection, trace_id)
            roots = roots_of(spans)
            received_at = earlier[1] if earlier is not None else now
            connection.execute("DELETE FROM trace_text WHERE trace_id = ?", (trace_id,))
            if not roots:
                connection.execute(
                    "INSERT OR REPLACE INTO traces (trace_id, span_count, received_at) "
                    "VALUES (?, ?, ?)",
                    (trace_id, len(spans), received_at),
                )
                continue
            root = roots[0]
            a = root.attributes
            thread = thread_of(root) or NO_THREAD_KEY
            threads.add(thread)
            row = TraceRow(
                trace_id=trace_id,
                thread_id=thread,
                user_id=_text(a.get(Keys.USER)),
                tenant_id=_text(a.get(Keys.TENANT)),
                agent=_text(a.get(Keys.AGENT)),
                level=level(root),
                http_status=_http_status(root),
                status_message=_text(a.get(Keys.STATUS_MESSAGE)),
                start_ns=root.start_ns,
                end_ns=root.end_ns,
                input=_text(a.get(Keys.TRACE_INPUT)),
                output=_text(a.get(Keys.TRACE_OUTPUT)),
                user_said=said(a.get(Keys.TRACE_INPUT), role="user"),
                agent_said=said(a.get(Keys.TRACE_OUTPUT), role="assistant"),
                span_count=len(spans),
                violations=len(check_trace(spans)),
            )
            connection.execute(
                "INSERT OR REPLACE INTO traces VALUES "
                "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?)",
                (*row.as_tuple(), received_at),
            )
            connection.execute(
                "INSERT INTO trace_text VALUES (?, ?, ?)", (trace_id, row.input, row.output)
            )
        for thread in threads:
            self._rebuild_thread(connection, thread)

    def _rebuild_thread(self, connection: sqlite3.Connection, thread: str) -> None:
        summary = connection.execute(
            "SELECT count(*), sum(level = 'ERROR'), sum(violations), min(start_ns), "
            "max(end_ns) FROM traces WHERE thread_id = ? AND rooted",
            (thread,),
        ).fetchone()
        if not summary[0]:
            connection.execute("DELETE FROM threads WHERE thread_id = ?", (thread,))
            return

        def distinct(column: str) -> str:
            values = connection.execute(
                f"SELECT DISTINCT {column} FROM traces WHERE thread_id = ? AND rooted "
                f"AND {column} IS NOT NULL AND {column} != '' ORDER BY {column}",
                (thread,),
            )
            return json.dumps([v[0] for v in values])

        last = connection.execute(
            "SELECT user_said FROM traces WHERE thread_id = ? AND rooted "
            "ORDER BY start_ns DESC LIMIT 1",
            (thread,),
        ).fetchone()
        connection.execute(
            "INSERT OR REPLACE INTO threads VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                thread,
                distinct("user_id"),
                distinct("tenant_id"),
                distinct("agent"),
                summary[0],
                summary[1] or 0,
                summary[2] or 0,
                summary[3],
                summary[4],
                last[0] if last else None,
            ),
        )

    def _retain(self, connection: sqlite3.Connection) -> None:
        """Delete the oldest traces beyond ``max_spans`` (down to 95% of it, so deletion
        does not run on every batch) and those older than ``max_age``."""
        if self.max_spans is not None and self.span_count() > self.max_spans:
            excess = self.span_count() - int(self.max_spans * 0.95)
            chosen: list[str] = []
            total = 0
            for trace_id, count in connection.execute(
                "SELECT trace_id, span_count FROM traces ORDER BY received_at, rowid"
            ):
                chosen.append(trace_id)
                total += count
                if total >= excess:
                    break
            self._delete(connection, chosen, f"over --max-spans {self.max_spans}")
        now = time.time()
        if self.max_age is not None and now - self._age_checked >= min(60.0, self.max_age):
            self._age_checked = now
            old = [
                r[0]
                for r in connection.execute(
                    "SELECT trace_id FROM traces WHERE received_at < ?", (now - self.max_age,)
                )
            ]
            self._delete(connection, old, f"older than --max-age {self.max_age:g} s")

    def _delete(self, connection: sqlite3.Connection, trace_ids: list[str], why: str) -> None:
        if not trace_ids:
            return
        connection.execute("BEGIN IMMEDIATE")
        try:
            threads: set[str] = set()
            deleted = removed = 0
            for trace_id in trace_ids:
                thread = connection.execute(
                    "SELECT thread_id FROM traces WHERE trace_id = ?", (trace_id,)
                ).fetchone()
                if thread is not None and thread[0] is not None:
                    threads.add(thread[0])
                deleted += connection.execute(
                    "DELETE FROM spans WHERE trace_id = ?", (trace_id,)
                ).rowcount
                removed += connection.execute(
                    "DELETE FROM traces WHERE trace_id = ?", (trace_id,)
                ).rowcount
                connection.execute("DELETE FROM trace_text WHERE trace_id = ?", (trace_id,))
            for thread in threads:
                self._rebuild_thread(connection, thread)
            connection.execute("UPDATE meta SET value = value - ? WHERE key = 'spans'", (deleted,))
            connection.execute("UPDATE meta SET value = value - ? WHERE key = 'traces'", (removed,))
            connection.execute("UPDATE meta SET value = value + 1 WHERE key = 'version'")
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")
        logger.info(
            "inbox: retention deleted %d spans of %d traces (%s)", deleted, len(trace_ids), why
        )

    # Reading

    def spans(self, where: str = "", args: tuple[Any, ...] = ()) -> list[ReceivedSpan]:
        """Stored spans (optionally filtered by an SQL condition), oldest first. Reads every
        matching span: the pages and commands use the indexed queries below."""
        query = f"SELECT {_SPAN_COLUMNS} FROM spans"
        if where:
            query += f" WHERE {where}"
        rows = self._connection().execute(query + " ORDER BY start_ns", args).fetchall()
        return [_span_of(r) for r in rows]

    @staticmethod
    def _trace_spans(connection: sqlite3.Connection, trace_id: str) -> list[ReceivedSpan]:
        rows = connection.execute(
            f"SELECT {_SPAN_COLUMNS} FROM spans WHERE trace_id = ? ORDER BY start_ns", (trace_id,)
        ).fetchall()
        return [_span_of(r) for r in rows]

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        """One trace's spans, oldest first (empty for an unknown id)."""
        return self._trace_spans(self._connection(), trace_id)

    def version(self) -> int:
        """The change marker: different after every stored batch and every deletion."""
        row = self._connection().execute("SELECT value FROM meta WHERE key = 'version'").fetchone()
        return int(row[0]) if row else 0

    def span_count(self) -> int:
        """How many spans are stored (a counter, not a scan)."""
        row = self._connection().execute("SELECT value FROM meta WHERE key = 'spans'").fetchone()
        return int(row[0]) if row else 0

    def trace_count(self) -> int:
        """How many traces are stored (a counter, not a scan)."""
        row = self._connection().execute("SELECT value FROM meta WHERE key = 'traces'").fetchone()
        return int(row[0]) if row else 0

    def threads(self, query: ThreadQuery | None = None) -> list[ThreadSummary]:
        """Threads, most recently active first, filtered and paged by ``query``."""
        query = query or ThreadQuery()
        conditions: list[str] = []
        args: list[Any] = []
        if not query.include_unthreaded:
            conditions.append("thread_id != ''")
        for column, value in (
            ("user_id", query.user),
            ("tenant_id", query.tenant),
            ("agent", query.agent),
        ):
            if value:
                conditions.append(
                    f"thread_id IN (SELECT thread_id FROM traces WHERE {column} = ? AND rooted)"
                )
                args.append(value)
        if query.errors:
            conditions.append("errors > 0")
        if query.search:
            conditions.append(f"thread_id IN ({self._search_traces()})")
            args.extend(self._search_args(query.search))
        sql = (
            "SELECT thread_id, users, tenants, agents, turns, errors, violations, first_ns, "
            "last_ns, last_said FROM threads"
        )
        if conditions:
            sql += " WHERE " + " AND ".join(conditions)
        sql += " ORDER BY last_ns DESC"
        if query.limit is not None:
            sql += " LIMIT ? OFFSET ?"
            args.extend((query.limit, query.offset))
        return [
            ThreadSummary(
                thread_id=r[0],
                users=json.loads(r[1]),
                tenants=json.loads(r[2]),
                agents=json.loads(r[3]),
                turns=r[4],
                errors=r[5],
                violations=r[6],
                first_activity_ns=r[7],
                last_activity_ns=r[8],
                last_said=r[9],
            )
            for r in self._connection().execute(sql, args)
        ]

    @staticmethod
    def _search_traces() -> str:
        """Threads with a turn whose input or output contains the text: the trigram index
        for three characters or more, a scan of the previews for shorter text."""
        return (
            "SELECT t.thread_id FROM traces t WHERE t.rooted AND (t.trace_id IN "
            "(SELECT trace_id FROM trace_text WHERE trace_text MATCH ?) OR (? AND "
            "(instr(lower(t.input), ?) OR instr(lower(t.output), ?))))"
        )

    @staticmethod
    def _search_args(text: str) -> list[Any]:
        phrase = '"' + text.replace('"', '""') + '"'
        short = len(text) < 3
        return [phrase if not short else '""', short, text.lower(), text.lower()]

    def turns(self, thread: str, *, limit: int | None = None, offset: int = 0) -> list[TraceRow]:
        """A thread's turns (its rooted traces), oldest first."""
        sql = f"SELECT {TraceRow.COLUMNS} FROM traces WHERE thread_id = ? AND rooted "
        sql += "ORDER BY start_ns"
        args: list[Any] = [thread]
        if limit is not None:
            sql += " LIMIT ? OFFSET ?"
            args.extend((limit, offset))
        return [TraceRow(*r) for r in self._connection().execute(sql, args)]

    def trace_row(self, trace_id: str) -> TraceRow | None:
        """A trace's row (``None`` for an unknown id or a trace whose root has not arrived)."""
        row = (
            self._connection()
            .execute(
                f"SELECT {TraceRow.COLUMNS} FROM traces WHERE trace_id = ? AND rooted", (trace_id,)
            )
            .fetchone()
        )
        return TraceRow(*row) if row else None

    def close(self) -> None:
        """Close this thread's connection."""
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None


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
