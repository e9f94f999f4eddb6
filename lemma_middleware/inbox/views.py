"""What the inbox's command and web view show of stored traces: a thread's and a trace's
row, what a turn's input and output say (for the conversation view), a trace as lines, and
an arriving trace's line."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, ClassVar

from lemma_middleware.core.attributes import Keys
from lemma_middleware.testing.records import ReceivedSpan

NO_THREAD = "(no thread)"
"""The thread a trace without a thread id is listed under (by the web view)."""


@dataclass
class ThreadSummary:
    """One conversation: who it belongs to, its turns, failed turns, contract violations,
    and what was last said in it."""

    thread_id: str
    users: list[str]
    tenants: list[str]
    agents: list[str]
    turns: int
    errors: int
    violations: int
    first_activity_ns: int
    last_activity_ns: int
    last_said: str | None

    def as_json(self) -> dict[str, Any]:
        """The summary as ``threads --json`` prints it."""
        return dict(vars(self))


@dataclass(frozen=True)
class ThreadQuery:
    """What the threads list shows: filters (exact ``user``, ``tenant``, ``agent``; ``errors``
    only threads with a failed turn; ``search``: text in a turn's input or output) and a page."""

    user: str = ""
    tenant: str = ""
    agent: str = ""
    search: str = ""
    errors: bool = False
    include_unthreaded: bool = True
    limit: int | None = 50
    offset: int = 0


@dataclass
class TraceRow:
    """One trace as lists show it, from its root: a turn of a thread."""

    trace_id: str
    thread_id: str
    user_id: str | None
    tenant_id: str | None
    agent: str | None
    level: str
    http_status: int | None
    status_message: str | None
    start_ns: int
    end_ns: int
    user_said: str | None
    agent_said: str | None
    span_count: int
    violations: int

    COLUMNS: ClassVar[str] = (
        "trace_id, thread_id, user_id, tenant_id, agent, level, http_status, status_message, "
        "start_ns, end_ns, user_said, agent_said, span_count, violations"
    )

    def as_tuple(self) -> tuple[Any, ...]:
        """The row's values in :attr:`COLUMNS` order."""
        return tuple(vars(self).values())

    @property
    def duration_ms(self) -> float:
        """The root's duration."""
        return (self.end_ns - self.start_ns) / 1e6


def thread_of(root: ReceivedSpan) -> str | None:
    """The thread id of a trace's root, if it has one."""
    thread = root.attributes.get(Keys.THREAD)
    return str(thread) if thread else None


def level(span: ReceivedSpan) -> str:
    """The span's Langfuse level (``DEFAULT`` when unset)."""
    return str(span.attributes.get(Keys.LEVEL, "DEFAULT"))


_SAID_KEYS = (
    "message", "input", "prompt", "query", "question", "text", "content",
    "answer", "output", "reply", "response", "result",
)  # fmt: skip
"""Fields whose value is what a turn says, in the order they are looked for."""


def said(value: Any, *, role: str, depth: int = 0) -> str | None:
    """What a turn's input (``role="user"``) or output (``role="assistant"``) says, for the
    conversation view: the last message of that role in a chat history (``messages``, or a
    list of ``{"role", "content"}``), else the first of the :data:`_SAID_KEYS` fields, else the
    value itself as text. ``value`` is what the root recorded (JSON text or a plain string)."""
    if value is None or depth > 4:
        return None
    if isinstance(value, str) and depth == 0:
        try:
            value = json.loads(value)
        except ValueError:
            return str(value)[:2000]
    if isinstance(value, str):
        return value[:2000]
    if isinstance(value, list):
        chat = [m for m in value if isinstance(m, dict) and "content" in m]
        mine = [m for m in chat if m.get("role") == role] or chat
        if mine:
            return said(mine[-1]["content"], role=role, depth=depth + 1)
        texts = [t for t in (said(v, role=role, depth=depth + 1) for v in value) if t]
        return " ".join(texts)[:2000] if texts else None
    if isinstance(value, dict):
        if isinstance(value.get("messages"), list):
            return said(value["messages"], role=role, depth=depth + 1)
        if value.get("type") == "text" and isinstance(value.get("text"), str):
            return str(value["text"])[:2000]
        for key in _SAID_KEYS:
            if value.get(key) is not None:
                return said(value[key], role=role, depth=depth + 1)
        return json.dumps(value)[:2000]
    return json.dumps(value)[:2000]


def _trim(value: Any, width: int) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def summary_line(root: ReceivedSpan, batch: list[ReceivedSpan]) -> str:
    """One line for an arriving trace (values the trace does not have are left out)."""
    a = root.attributes
    children = sum(1 for s in batch if s.trace_id == root.trace_id and s is not root)
    duration_ms = (root.end_ns - root.start_ns) / 1e6
    known = " ".join(
        f"{label}={a[key]}"
        for label, key in (
            ("agent", Keys.AGENT),
            ("thread", Keys.THREAD),
            ("user", Keys.USER),
            ("tenant", Keys.TENANT),
        )
        if a.get(key) not in (None, "")
    )
    line = f"trace {root.trace_id} {known} level={level(root)} {duration_ms:.1f}ms"
    line += f" children={children}"
    if a.get(Keys.TRACE_INPUT) is not None:
        line += f" input={_trim(a[Keys.TRACE_INPUT], 40)}"
    return line


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
        kind = a.get(Keys.TYPE, "span")
        duration = (span.end_ns - span.start_ns) / 1e6
        lines.append(f"{indent}- {span.name} [{kind}] {level(span)} {duration:.1f}ms")
        if a.get(Keys.INPUT) is not None:
            lines.append(f"{indent}    in : {_trim(a[Keys.INPUT], width)}")
        if a.get(Keys.OUTPUT) is not None:
            lines.append(f"{indent}    out: {_trim(a[Keys.OUTPUT], width)}")
        if a.get(Keys.STATUS_MESSAGE):
            lines.append(f"{indent}    status: {_trim(a[Keys.STATUS_MESSAGE], width)}")
        for child in children.get(span.span_id, []):
            walk(child, depth + 1)

    tops = [s for s in spans if s.parent_span_id is None or s.parent_span_id not in ids]
    for top in sorted(tops, key=lambda s: s.start_ns):
        walk(top, 0)
    return lines
