"""Indexing: a trace's spans become its row (from its root) and its thread's row.

Run in a transaction of its own after spans are stored (at once, or by the inbox's indexer
thread for what the receiver stored: the ``pending`` table), and when retention deletes.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from lemma_middleware.core.attributes import Keys
from lemma_middleware.core.redaction import Redactor
from lemma_middleware.inbox.schema import NO_THREAD_KEY, trace_spans
from lemma_middleware.inbox.views import TraceRow, level, said, thread_of
from lemma_middleware.testing.contract import check_trace, roots_of
from lemma_middleware.testing.records import ReceivedSpan

PREVIEW_CHARS = 2000
"""How much of a value (user, tenant, a status message) a trace row keeps."""


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


def reindex(
    connection: sqlite3.Connection, trace_ids: list[str], now: float, redactor: Redactor
) -> None:
    """Rebuild the rows of ``trace_ids`` and of the threads they belong to."""
    threads: set[str] = set()
    for trace_id in trace_ids:
        earlier = connection.execute(
            "SELECT thread_id, received_at, id FROM traces WHERE trace_id = ?", (trace_id,)
        ).fetchone()
        if earlier is not None and earlier[0] is not None:
            threads.add(earlier[0])
        known = earlier[2] if earlier is not None else None
        if known is not None:
            connection.execute("DELETE FROM trace_text WHERE rowid = ?", (known,))
        if earlier is None:
            connection.execute("UPDATE meta SET value = value + 1 WHERE key = 'traces'")
        spans = trace_spans(connection, trace_id)
        roots = roots_of(spans)
        received_at = earlier[1] if earlier is not None else now
        if not roots:
            connection.execute(
                "INSERT OR REPLACE INTO traces (id, trace_id, span_count, received_at) "
                "VALUES (?, ?, ?, ?)",
                (known, trace_id, len(spans), received_at),
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
            user_said=said(a.get(Keys.TRACE_INPUT), role="user"),
            agent_said=said(a.get(Keys.TRACE_OUTPUT), role="assistant"),
            span_count=len(spans),
            violations=len(check_trace(spans, redactor)),
        )
        stored = connection.execute(
            f"INSERT OR REPLACE INTO traces (id, {TraceRow.COLUMNS}, rooted, received_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?)",
            (known, *row.as_tuple(), received_at),
        )
        connection.execute(
            "INSERT INTO trace_text (rowid, user_said, agent_said) VALUES (?, ?, ?)",
            (stored.lastrowid, row.user_said, row.agent_said),
        )
    for thread in threads:
        rebuild_thread(connection, thread)


def rebuild_thread(connection: sqlite3.Connection, thread: str) -> None:
    """Rebuild a thread's row from its traces' rows (deleted when none is left)."""
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
