"""The inbox's SQLite file: its tables, where it lives, and how a span becomes a row and back.

Besides the spans, the file keeps a row per trace (from its root: thread, user, tenant,
agent, status, duration, what the user said and what the agent answered, contract
violations; see :mod:`lemma_middleware.inbox.indexing`), a row per thread, a full-text index
(trigram) over what each turn said, the traces stored but not yet indexed (``pending``), and
counters (``meta``: spans, traces, and ``version``, the web view's change marker).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from lemma_middleware.core.environment import variable
from lemma_middleware.testing.records import ReceivedSpan

SPAN_COLUMNS = (
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


SCHEMA_VERSION = 2
"""The layout of the rows built from the spans (``meta``'s ``schema``): a file whose rows
another version built has them dropped and rebuilt from its spans when opened."""
DERIVED_TABLES = ("traces", "threads", "trace_text", "pending")
"""What is built from the spans (the spans themselves are never dropped)."""

SCHEMA = """
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
    id INTEGER PRIMARY KEY,
    trace_id TEXT NOT NULL UNIQUE,
    thread_id TEXT,
    user_id TEXT,
    tenant_id TEXT,
    agent TEXT,
    level TEXT,
    http_status INTEGER,
    status_message TEXT,
    start_ns INTEGER,
    end_ns INTEGER,
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
    user_said, agent_said, tokenize = 'trigram'
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS pending (trace_id TEXT PRIMARY KEY);
"""
NO_THREAD_KEY = ""
"""The threads row of traces without a thread id."""


def row_of(span: ReceivedSpan, received_at: float) -> tuple[Any, ...]:
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


def span_of(row: Sequence[Any]) -> ReceivedSpan:
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


def trace_spans(connection: sqlite3.Connection, trace_id: str) -> list[ReceivedSpan]:
    """One trace's spans, oldest first (empty for an unknown id)."""
    rows = connection.execute(
        f"SELECT {SPAN_COLUMNS} FROM spans WHERE trace_id = ? ORDER BY start_ns", (trace_id,)
    ).fetchall()
    return [span_of(r) for r in rows]


@contextlib.contextmanager
def transaction(connection: sqlite3.Connection) -> Iterator[None]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``; rolled back if anything in it fails (the commit
    included), so the connection is never left inside a transaction."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise
