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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lemma_middleware.core.environment import variable
from lemma_middleware.inbox.receiver import OTLPReceiver
from lemma_middleware.inbox.web import view_routes
from lemma_middleware.testing.contract import group_by_trace, roots_of
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


@dataclass
class ThreadSummary:
    """One conversation: its turns (traces) and who it belongs to."""

    thread_id: str
    users: list[str]
    tenants: list[str]
    turns: int
    last_activity_ns: int


def thread_summaries(spans: Iterable[ReceivedSpan]) -> list[ThreadSummary]:
    """Threads, most recently active first (traces without a thread id are left out)."""
    by_thread: dict[str, list[ReceivedSpan]] = {}
    for root in roots_of(spans):
        thread = root.attributes.get("session.id")
        if thread:
            by_thread.setdefault(str(thread), []).append(root)
    summaries = [
        ThreadSummary(
            thread_id=thread,
            users=sorted(
                {str(r.attributes["user.id"]) for r in roots if r.attributes.get("user.id")}
            ),
            tenants=sorted(
                {
                    str(r.attributes["app.tenant.id"])
                    for r in roots
                    if r.attributes.get("app.tenant.id")
                }
            ),
            turns=len(roots),
            last_activity_ns=max(r.end_ns for r in roots),
        )
        for thread, roots in by_thread.items()
    ]
    return sorted(summaries, key=lambda t: t.last_activity_ns, reverse=True)


def turns_of(spans: list[ReceivedSpan], thread_or_trace_id: str) -> list[list[ReceivedSpan]]:
    """The traces of a thread (by thread id), or the one trace with that id; oldest first."""
    traces = group_by_trace(spans)
    if thread_or_trace_id in traces:
        return [traces[thread_or_trace_id]]
    chosen = [
        root.trace_id
        for root in roots_of(spans)
        if root.attributes.get("session.id") == thread_or_trace_id
    ]
    return [traces[trace_id] for trace_id in chosen]


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


def _trim(value: Any, width: int) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def summary_line(root: ReceivedSpan, batch: list[ReceivedSpan]) -> str:
    """One line for an arriving trace."""
    a = root.attributes
    children = sum(1 for s in batch if s.trace_id == root.trace_id and s is not root)
    level = a.get("langfuse.observation.level", "DEFAULT")
    duration_ms = (root.end_ns - root.start_ns) / 1e6
    return (
        f"trace {root.trace_id} agent={a.get('langfuse.trace.name')} thread={a.get('session.id')} "
        f"user={a.get('user.id')} tenant={a.get('app.tenant.id')} level={level} "
        f"{duration_ms:.1f}ms children={children} input={_trim(a.get('langfuse.trace.input'), 40)}"
    )


def render_tree(spans: list[ReceivedSpan], width: int = 80) -> list[str]:
    """A trace as indented lines: name, type, level, duration, input and output (trimmed)."""
    children: dict[str | None, list[ReceivedSpan]] = {}
    for span in sorted(spans, key=lambda s: s.start_ns):
        children.setdefault(span.parent_span_id, []).append(span)
    ids = {s.span_id for s in spans}
    lines: list[str] = []

    def walk(span: ReceivedSpan, depth: int) -> None:
        a = span.attributes
        indent = "  " * depth
        kind = a.get("langfuse.observation.type", "span")
        level = a.get("langfuse.observation.level", "DEFAULT")
        duration = (span.end_ns - span.start_ns) / 1e6
        lines.append(f"{indent}- {span.name} [{kind}] {level} {duration:.1f}ms")
        if a.get("langfuse.observation.input") is not None:
            lines.append(f"{indent}    in : {_trim(a['langfuse.observation.input'], width)}")
        if a.get("langfuse.observation.output") is not None:
            lines.append(f"{indent}    out: {_trim(a['langfuse.observation.output'], width)}")
        if a.get("langfuse.observation.status_message"):
            lines.append(
                f"{indent}    status: {_trim(a['langfuse.observation.status_message'], width)}"
            )
        for child in children.get(span.span_id, []):
            walk(child, depth + 1)

    tops = [s for s in spans if s.parent_span_id is None or s.parent_span_id not in ids]
    for top in sorted(tops, key=lambda s: s.start_ns):
        walk(top, 0)
    return lines
