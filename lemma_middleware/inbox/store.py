"""The local trace inbox's store: spans kept durably in SQLite (see
:mod:`lemma_middleware.inbox.schema`), with the indexed queries behind the web view and
``lemma-middleware threads`` and ``show``.

Point ``LANGFUSE_HOST`` at the inbox (``http://127.0.0.1:8787`` by default) and every trace the
middleware exports lands here; nothing leaves the machine.

Every page reads a bounded number of indexed rows (a row per trace and per thread, built by
:mod:`lemma_middleware.inbox.indexing`) however much is stored. A ``version`` counter, bumped
by every batch, is the web view's change marker. Retention keeps at most ``max_spans`` spans
(whole traces, oldest received first) and, if set, nothing older than ``max_age`` seconds,
with a log line each time it deletes.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from lemma_middleware.core.redaction import Redactor
from lemma_middleware.inbox.indexing import rebuild_thread, reindex
from lemma_middleware.inbox.schema import (
    DERIVED_TABLES,
    SCHEMA,
    SCHEMA_VERSION,
    SPAN_COLUMNS,
    row_of,
    span_of,
    trace_spans,
    transaction,
)
from lemma_middleware.inbox.views import ThreadQuery, ThreadSummary, TraceRow
from lemma_middleware.testing.records import ReceivedSpan

logger = logging.getLogger("lemma_middleware.inbox")

DEFAULT_MAX_SPANS = 1_000_000
"""Retention's default bound: the oldest traces go once the store holds more spans."""


def _folded(text: str | None) -> str | None:
    """Text as short searches compare it: case-folded in Python (SQLite's ``lower()`` folds
    ASCII only)."""
    return text.casefold() if text is not None else None


class SpanStore:
    """Spans in a SQLite file: WAL mode, one connection per thread, one transaction per
    export batch (a batch is stored whole or not at all; its traces' and threads' rows are
    rebuilt in a transaction of their own, at once or by :meth:`index_pending`)."""

    def __init__(
        self,
        path: str | Path,
        *,
        max_spans: int | None = DEFAULT_MAX_SPANS,
        max_age: float | None = None,
    ) -> None:
        if (max_spans or 0) < 0 or (max_age or 0) < 0:
            bounds = f"max_spans ({max_spans}) and max_age ({max_age})"
            raise ValueError(f"{bounds} must be 0 (no bound) or more")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path = str(path)
        self.max_spans = max_spans or None
        self.max_age = max_age or None
        self._local = threading.local()
        self._age_checked = 0.0
        self._redactor = Redactor()
        connection = self._connection()
        self._drop_rows_of_another_version(connection)
        connection.executescript(SCHEMA)
        self._index_earlier_spans(connection)

    def _connection(self) -> sqlite3.Connection:
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            connection = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA busy_timeout=30000")
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.create_function("folded", 1, _folded, deterministic=True)
            self._local.connection = connection
        return connection

    def _drop_rows_of_another_version(self, connection: sqlite3.Connection) -> None:
        """Rows built by another version's indexing (``meta`` without this
        :data:`SCHEMA_VERSION`) are dropped; :meth:`_index_earlier_spans` rebuilds them."""
        with transaction(connection):
            tables = {
                r[0]
                for r in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
            if "meta" not in tables:
                return  # a new file, or one with spans only: indexed as it is opened
            row = connection.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            if row is not None and row[0] == SCHEMA_VERSION:
                return
            logger.info("inbox: rebuilding the trace and thread rows another version built")
            for table in DERIVED_TABLES:
                connection.execute(f"DROP TABLE IF EXISTS {table}")
            connection.execute("DELETE FROM meta WHERE key IN ('version', 'traces', 'schema')")

    def _index_earlier_spans(self, connection: sqlite3.Connection) -> None:
        """A file whose spans have no trace rows (new, written by an earlier version, or
        dropped by :meth:`_drop_rows_of_another_version`): index them once."""
        if connection.execute("SELECT 1 FROM meta WHERE key = 'version'").fetchone():
            return
        with transaction(connection):
            if connection.execute("SELECT 1 FROM meta WHERE key = 'version'").fetchone():
                return
            trace_ids = [r[0] for r in connection.execute("SELECT DISTINCT trace_id FROM spans")]
            if trace_ids:
                logger.info("inbox: indexing %d stored traces", len(trace_ids))
            connection.execute("INSERT OR REPLACE INTO meta VALUES ('traces', 0)")
            reindex(connection, trace_ids, time.time(), self._redactor)
            count = connection.execute("SELECT count(*) FROM spans").fetchone()[0]
            connection.executemany(
                "INSERT OR REPLACE INTO meta VALUES (?, ?)",
                [("version", 1), ("spans", count), ("schema", SCHEMA_VERSION)],
            )

    def add(self, spans: Iterable[ReceivedSpan], *, index: bool = True) -> None:
        """Store one export batch atomically (re-sent spans replace the earlier copy) and
        apply retention. Its traces' and threads' rows are rebuilt now, or with ``index=False``
        by the next :meth:`index_pending` (the inbox's indexer thread, so that receiving
        never waits on indexing)."""
        batch = list(spans)
        now = time.time()
        connection = self._connection()
        with transaction(connection):
            before = connection.total_changes
            connection.executemany(
                "INSERT OR IGNORE INTO spans VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [row_of(s, now) for s in batch],
            )
            added = connection.total_changes - before
            if added < len(batch):  # re-sent spans replace the earlier copy
                connection.executemany(
                    "INSERT OR REPLACE INTO spans VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [row_of(s, now) for s in batch],
                )
            connection.executemany(
                "INSERT OR IGNORE INTO pending VALUES (?)",
                [(trace_id,) for trace_id in dict.fromkeys(s.trace_id for s in batch)],
            )
            connection.execute("UPDATE meta SET value = value + ? WHERE key = 'spans'", (added,))
            connection.execute("UPDATE meta SET value = value + 1 WHERE key = 'version'")
        if index:
            self.index_pending()
        self._retain(connection)

    def index_pending(
        self,
        per_transaction: int = 100,
        stopping: Callable[[], bool] = lambda: False,
        pace: Callable[[float], int] | None = None,
    ) -> int:
        """Rebuild the rows of every trace stored since the last call, ``per_transaction``
        traces a transaction, until none is left or ``stopping()``; returns how many. A trace
        that cannot be indexed (its spans make the indexing fail) is set aside with a log
        line, its spans kept; a database error (a locked file, a full disk) is raised.
        ``pace``, called with the seconds each transaction took, may rest and returns how
        many traces the next one takes (the inbox's indexer yields to receiving so)."""
        done = 0
        connection = self._connection()
        while not stopping():
            started = time.monotonic()
            trace_ids = [
                r[0]
                for r in connection.execute(
                    "SELECT trace_id FROM pending LIMIT ?", (per_transaction,)
                )
            ]
            try:
                self._index(connection, trace_ids)
            except sqlite3.Error:
                raise
            except Exception:  # one trace at a time, to set aside the one that fails
                for trace_id in trace_ids:
                    try:
                        self._index(connection, [trace_id])
                    except sqlite3.Error:
                        raise
                    except Exception as error:
                        logger.warning(
                            "inbox: trace %s could not be indexed (%s: %s); its spans are "
                            "kept, it is not listed",
                            trace_id,
                            type(error).__name__,
                            error,
                        )
                        with transaction(connection):
                            connection.execute(
                                "DELETE FROM pending WHERE trace_id = ?", (trace_id,)
                            )
            done += len(trace_ids)
            if len(trace_ids) < per_transaction:
                break
            if pace is not None:
                per_transaction = pace(time.monotonic() - started)
        return done

    def _index(self, connection: sqlite3.Connection, trace_ids: list[str]) -> None:
        if not trace_ids:
            return
        with transaction(connection):
            reindex(connection, trace_ids, time.time(), self._redactor)
            connection.executemany(
                "DELETE FROM pending WHERE trace_id = ?", [(t,) for t in trace_ids]
            )
            connection.execute("UPDATE meta SET value = value + 1 WHERE key = 'version'")

    def _retain(self, connection: sqlite3.Connection) -> None:
        """Delete the oldest traces beyond ``max_spans`` (down to 95% of it, so deletion
        does not run on every batch) and those older than ``max_age``."""
        if self.max_spans is not None and self.span_count() > self.max_spans:
            excess = self.span_count() - int(self.max_spans * 0.95)
            chosen: list[str] = []
            total = 0
            for trace_id, count in connection.execute(
                "SELECT trace_id, span_count FROM traces ORDER BY received_at, id"
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
        with transaction(connection):
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
                connection.execute(
                    "DELETE FROM trace_text WHERE rowid = "
                    "(SELECT id FROM traces WHERE trace_id = ?)",
                    (trace_id,),
                )
                removed += connection.execute(
                    "DELETE FROM traces WHERE trace_id = ?", (trace_id,)
                ).rowcount
                connection.execute("DELETE FROM pending WHERE trace_id = ?", (trace_id,))
            for thread in threads:
                rebuild_thread(connection, thread)
            connection.execute("UPDATE meta SET value = value - ? WHERE key = 'spans'", (deleted,))
            connection.execute("UPDATE meta SET value = value - ? WHERE key = 'traces'", (removed,))
            connection.execute("UPDATE meta SET value = value + 1 WHERE key = 'version'")
        logger.info(
            "inbox: retention deleted %d spans of %d traces (%s)", deleted, len(trace_ids), why
        )

    # Reading

    def spans(self, where: str = "", args: tuple[Any, ...] = ()) -> list[ReceivedSpan]:
        """Stored spans (optionally filtered by an SQL condition), oldest first. Reads every
        matching span: the pages and commands use the indexed queries below."""
        query = f"SELECT {SPAN_COLUMNS} FROM spans"
        if where:
            query += f" WHERE {where}"
        rows = self._connection().execute(query + " ORDER BY start_ns", args).fetchall()
        return [span_of(r) for r in rows]

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        """One trace's spans, oldest first (empty for an unknown id)."""
        return trace_spans(self._connection(), trace_id)

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
        """Threads with a turn whose input or output (what the user said, what the agent
        answered) contains the text: the trigram index for three characters or more, a scan
        for shorter text."""
        return (
            "SELECT t.thread_id FROM traces t WHERE t.rooted AND (t.id IN "
            "(SELECT rowid FROM trace_text WHERE trace_text MATCH ?) OR (? AND "
            "(instr(folded(t.user_said), ?) OR instr(folded(t.agent_said), ?))))"
        )

    @staticmethod
    def _search_args(text: str) -> list[Any]:
        phrase = '"' + text.replace('"', '""') + '"'
        short = len(text) < 3
        return [phrase if not short else '""', short, _folded(text), _folded(text)]

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
