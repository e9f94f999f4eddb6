"""The trace page of the inbox's web view: a summary, the contract verdict, a waterfall on one
shared time axis with a ruler, and a side panel per span."""

from __future__ import annotations

import json
from collections.abc import Iterable
from html import escape
from typing import Any

from lemma_middleware.core.attributes import Keys
from lemma_middleware.inbox.html import duration, pretty, status, thread_link, when
from lemma_middleware.inbox.views import TraceRow, level
from lemma_middleware.testing.contract import check_trace
from lemma_middleware.testing.records import ReceivedSpan

WATERFALL_ROWS = 2000
"""The most spans a trace page draws (a note says how many more the trace has)."""


def _kind(span: ReceivedSpan) -> str:
    a = span.attributes
    return str(a.get(Keys.TYPE) or a.get("openinference.span.kind") or "span")


def _sections(span: ReceivedSpan) -> str:
    """A span's side panel: Input, Output, (model and usage), Metadata, Attributes."""
    a = span.attributes
    metadata: dict[str, Any] = {}
    attributes: dict[str, Any] = {}
    for key, value in sorted(a.items()):
        if key in (Keys.INPUT, Keys.OUTPUT):
            continue
        for prefix in (Keys.OBSERVATION_METADATA, Keys.TRACE_METADATA):
            if key.startswith(prefix):
                metadata[key[len(prefix) :]] = _decoded(value)
                break
        else:
            attributes[key] = _decoded(value)
    parts = [
        f"<h3>{escape(span.name)}</h3><p class='muted'>{escape(_kind(span))} · "
        f"{escape(level(span))} · {duration((span.end_ns - span.start_ns) / 1e6)}</p>"
    ]
    if a.get(Keys.STATUS_MESSAGE):
        parts.append(f"<div class='violation'>{escape(str(a[Keys.STATUS_MESSAGE]))}</div>")
    model = a.get(Keys.MODEL) or a.get("gen_ai.response.model") or a.get("gen_ai.request.model")
    usage = _usage(a)
    if model or usage:
        rows = ([("model", str(model))] if model else []) + [(k, str(v)) for k, v in usage.items()]
        cells = "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in rows)
        parts.append(f"<h4>Model</h4><dl class='summary model'>{cells}</dl>")
    for title, value in (("Input", a.get(Keys.INPUT)), ("Output", a.get(Keys.OUTPUT))):
        if value is not None:
            parts.append(f"<h4>{title}</h4><pre class='{title.lower()}'>{pretty(value)}</pre>")
    if metadata:
        parts.append(f"<h4>Metadata</h4><pre class='metadata'>{pretty(metadata)}</pre>")
    parts.append(f"<h4>Attributes</h4><pre class='attributes'>{pretty(attributes)}</pre>")
    return "".join(parts)


def _decoded(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in ("{", "[", '"'):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _usage(a: dict[str, Any]) -> dict[str, Any]:
    """Token usage: Langfuse's usage details, else OpenTelemetry's gen_ai usage keys."""
    details = _decoded(a.get(Keys.USAGE))
    if isinstance(details, dict) and details:
        return details
    found = {
        name: a[key]
        for name, key in (
            ("input tokens", "gen_ai.usage.input_tokens"),
            ("output tokens", "gen_ai.usage.output_tokens"),
            ("input tokens", "gen_ai.usage.prompt_tokens"),
            ("output tokens", "gen_ai.usage.completion_tokens"),
        )
        if key in a
    }
    return found


def _ruler(total_ns: int) -> str:
    ticks = "".join(
        f"<span class='tick' style='left:{fraction * 100:.0f}%'>"
        f"{duration(total_ns * fraction / 1e6)}</span>"
        for fraction in (0, 0.2, 0.4, 0.6, 0.8)
    )
    return (
        "<div class='wf-row ruler'><div class='wf-label'></div>"
        f"<div class='track'>{ticks}</div></div>"
    )


def _ordered(trace: list[ReceivedSpan]) -> Iterable[tuple[ReceivedSpan, int]]:
    """The spans depth-first (children by start time), each with its depth."""
    children: dict[str | None, list[ReceivedSpan]] = {}
    ids = {s.span_id for s in trace}
    for span in sorted(trace, key=lambda s: s.start_ns):
        parent = span.parent_span_id if span.parent_span_id in ids else None
        children.setdefault(parent, []).append(span)
    stack = [(top, 0) for top in reversed(children.get(None, []))]
    while stack:
        span, depth = stack.pop()
        yield span, depth
        stack.extend((child, depth + 1) for child in reversed(children.get(span.span_id, [])))


def trace_html(trace: list[ReceivedSpan], row: TraceRow | None) -> str:
    """A trace's page content: the summary, the contract verdict, the waterfall and the
    side panel."""
    trace_id = trace[0].trace_id
    problems = check_trace(trace)
    start = min(s.start_ns for s in trace)
    total = max(max(s.end_ns for s in trace) - start, 1)
    rows: list[str] = []
    details: list[str] = []
    for span, depth in _ordered(trace):
        if len(rows) == WATERFALL_ROWS:
            break
        span_level = level(span)
        left = (span.start_ns - start) / total * 100
        width = (span.end_ns - span.start_ns) / total * 100
        mine = "".join(
            f"<div class='violation'>{escape(v.message)}</div>"
            for v in problems
            if f"{span.name!r}" in v.message
        )
        rows.append(
            f"<div class='wf-row span' data-span='{span.span_id}'><div class='wf-label'>"
            f"<span class='name' style='padding-left:{depth * 1.2}em'>{escape(span.name)}</span>"
            f"<span class='muted'>{escape(_kind(span))}</span>"
            f"<span class='{escape(span_level.lower())}'>{escape(span_level)}</span>"
            f"<span>{duration((span.end_ns - span.start_ns) / 1e6)}</span></div>"
            f"<div class='track'><span class='bar {escape(span_level)}' "
            f"style='left:{left:.3f}%;width:{width:.3f}%'></span></div></div>"
        )
        details.append(
            f"<div class='detail' id='detail-{span.span_id}'>{mine}{_sections(span)}</div>"
        )
    note = (
        f"<p class='muted'>the first {WATERFALL_ROWS:,} of {len(trace):,} spans</p>"
        if len(trace) > WATERFALL_ROWS
        else ""
    )
    verdict = (
        "".join(
            f"<div class='violation'>{escape(v.rule)}: {escape(v.message)}</div>" for v in problems
        )
        if problems
        else "<p class='muted'>conformant</p>"
    )
    return (
        f"<h1>Trace {escape(trace_id)}</h1>{_summary(trace, row)}<h2>Contract</h2>{verdict}"
        f"<h2>Spans</h2>{note}<div class='layout'><div class='waterfall'>{_ruler(total)}"
        f"{''.join(rows)}</div><aside id='panel'><p class='muted'>click a span to see its "
        f"input, output, metadata and attributes</p></aside></div>{''.join(details)}"
    )


def _summary(trace: list[ReceivedSpan], row: TraceRow | None) -> str:
    if row is None:  # the root has not arrived (yet): what the spans say
        root = min(trace, key=lambda s: s.start_ns)
        return (
            "<p class='muted'>this trace's root has not arrived; its spans so far:</p>"
            f"<dl class='summary'><dt>first span</dt><dd>{escape(root.name)}</dd></dl>"
        )
    fields = [
        ("agent", escape(row.agent or "")),
        ("thread", thread_link(row.thread_id) if row.thread_id else ""),
        ("user", escape(row.user_id or "")),
        ("tenant", escape(row.tenant_id or "")),
        ("status", status(row)),
        ("duration", duration(row.duration_ms)),
        ("started (UTC)", when(row.start_ns)),
        ("spans", str(len(trace))),
    ]
    cells = "".join(
        f"<dt>{name}</dt><dd class='{name.split()[0]}'>{value}</dd>" for name, value in fields
        if value
    )  # fmt: skip
    if row.status_message:
        cells += f"<dt>error</dt><dd class='error'>{escape(row.status_message)}</dd>"
    root = next(s for s in trace if s.parent_span_id is None)
    for title, key in (("input", Keys.TRACE_INPUT), ("output", Keys.TRACE_OUTPUT)):
        value = root.attributes.get(key)
        if value is not None:
            cells += f"<dt>{title}</dt><dd><pre class='trace-{title}'>{pretty(value)}</pre></dd>"
    return f"<dl class='summary'>{cells}</dl>"
