"""What the inbox's command and web view show of stored spans: threads (one grouping of
roots by thread, for both), a thread's turns, a trace as lines, an arriving trace's line."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from lemma_middleware.core.attributes import Keys
from lemma_middleware.testing.contract import group_by_trace, roots_of
from lemma_middleware.testing.records import ReceivedSpan

NO_THREAD = "(no thread)"
"""The thread a trace without a thread id is listed under (by the web view)."""


@dataclass
class ThreadSummary:
    """One conversation: its turns (the roots of its traces) and who it belongs to."""

    thread_id: str
    roots: list[ReceivedSpan]
    users: list[str]
    tenants: list[str]
    agents: list[str]
    turns: int
    errors: int
    last_activity_ns: int

    def as_json(self) -> dict[str, Any]:
        """Everything but the roots, for ``threads --json``."""
        return {k: v for k, v in vars(self).items() if k != "roots"}


def _values(roots: list[ReceivedSpan], key: str) -> list[str]:
    return sorted({str(r.attributes.get(key, "")) for r in roots} - {""})


def thread_of(root: ReceivedSpan) -> str | None:
    """The thread id of a trace's root, if it has one."""
    thread = root.attributes.get(Keys.THREAD)
    return str(thread) if thread else None


def thread_summaries(
    spans: Iterable[ReceivedSpan],
    *,
    without_thread: str | None = None,
    filters: Mapping[str, str] | None = None,
) -> list[ThreadSummary]:
    """Threads, most recently active first. Traces without a thread id are left out, or
    listed under ``without_thread``; ``filters`` (``user``, ``tenant``, ``agent``) keep the
    roots whose value is the one given."""
    keys = {"user": Keys.USER, "tenant": Keys.TENANT, "agent": Keys.AGENT}
    wanted = {keys[name]: value for name, value in (filters or {}).items() if value}
    by_thread: dict[str, list[ReceivedSpan]] = {}
    for root in roots_of(spans):
        thread = thread_of(root) or without_thread
        if thread is None:
            continue
        if all(str(root.attributes.get(key, "")) == value for key, value in wanted.items()):
            by_thread.setdefault(thread, []).append(root)
    summaries = [
        ThreadSummary(
            thread_id=thread,
            roots=roots,
            users=_values(roots, Keys.USER),
            tenants=_values(roots, Keys.TENANT),
            agents=_values(roots, Keys.AGENT),
            turns=len(roots),
            errors=sum(level(r) == "ERROR" for r in roots),
            last_activity_ns=max(r.end_ns for r in roots),
        )
        for thread, roots in by_thread.items()
    ]
    return sorted(summaries, key=lambda t: t.last_activity_ns, reverse=True)


def level(span: ReceivedSpan) -> str:
    """The span's Langfuse level (``DEFAULT`` when unset)."""
    return str(span.attributes.get(Keys.LEVEL, "DEFAULT"))


def turns_of(spans: list[ReceivedSpan], thread_or_trace_id: str) -> list[list[ReceivedSpan]]:
    """The traces of a thread (by thread id), or the one trace with that id; oldest first."""
    traces = group_by_trace(spans)
    if thread_or_trace_id in traces:
        return [traces[thread_or_trace_id]]
    chosen = [root.trace_id for root in roots_of(spans) if thread_of(root) == thread_or_trace_id]
    return [traces[trace_id] for trace_id in chosen]


def _trim(value: Any, width: int) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def summary_line(root: ReceivedSpan, batch: list[ReceivedSpan]) -> str:
    """One line for an arriving trace."""
    a = root.attributes
    children = sum(1 for s in batch if s.trace_id == root.trace_id and s is not root)
    duration_ms = (root.end_ns - root.start_ns) / 1e6
    return (
        f"trace {root.trace_id} agent={a.get(Keys.AGENT)} thread={a.get(Keys.THREAD)} "
        f"user={a.get(Keys.USER)} tenant={a.get(Keys.TENANT)} level={level(root)} "
        f"{duration_ms:.1f}ms children={children} input={_trim(a.get(Keys.TRACE_INPUT), 40)}"
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
