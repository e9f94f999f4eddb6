"""The inbox's web view, served by the inbox on the same port as the receiver.

* ``/``: the threads, with user, tenant, agent, turns, errors, contract violations and last
  activity; filter by ``?user=``, ``?tenant=``, ``?agent=``;
* ``/threads/{id}``: a thread as its turns, each with its input and output;
* ``/traces/{id}``: a trace as a waterfall (the span tree on a time axis: type, level,
  duration; a span's attributes open on click) and its contract violations;
* ``/api/state``: how many traces and spans are stored; each page polls it every second
  and redraws itself when it changes, so new traces appear without a reload.

Server-rendered HTML and a few lines of script; nothing is fetched from the internet.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable
from html import escape
from typing import Any
from urllib.parse import quote

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route

from lemma_middleware.core.attributes import Keys
from lemma_middleware.inbox.views import NO_THREAD, level, thread_of, thread_summaries
from lemma_middleware.testing.contract import Violation, check_trace, group_by_trace, roots_of
from lemma_middleware.testing.records import ReceivedSpan

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
a { color: #0b5cad; text-decoration: none; } a:hover { text-decoration: underline; }
table { border-collapse: collapse; width: 100%; } td, th { padding: .3em .6em; text-align: left;
  border-bottom: 1px solid #eee; vertical-align: top; } th { background: #f6f6f6; }
.error { color: #b00020; font-weight: 600; } .warning { color: #a15c00; }
.violation { background: #fff1f0; border-left: 4px solid #b00020; padding: .3em .6em;
  margin: .2em 0; } .muted { color: #777; } .io { white-space: pre-wrap; max-width: 60em; }
.row { display: flex; align-items: center; gap: .5em; }
.name { width: 24em; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.axis { position: relative; flex: 1; height: 1.1em; background: #f4f4f4; }
.bar { position: absolute; top: 0; bottom: 0; background: #5b8def; min-width: 2px; }
.bar.ERROR { background: #d93025; } .bar.WARNING { background: #f29900; }
details > summary { cursor: pointer; list-style: none; } form input { width: 10em; }
"""


_SCRIPT = """
let seen = null;
async function poll() {
  try {
    const state = await (await fetch('/api/state')).json();
    const now = state.traces + ':' + state.spans;
    if (seen !== null && now !== seen) {
      const html = await (await fetch(location.href)).text();
      const fresh = new DOMParser().parseFromString(html, 'text/html');
      document.getElementById('content').replaceWith(fresh.getElementById('content'));
    }
    seen = now;
  } catch (e) {}
  setTimeout(poll, 1000);
}
poll();
"""


def _page(title: str, content: str) -> HTMLResponse:
    return HTMLResponse(
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{escape(title)} · lemma inbox</title><style>{_STYLE}</style></head><body>"
        f"<p class='muted'><a href='/'>lemma-middleware inbox</a></p>"
        f"<div id='content'>{content}</div><script>{_SCRIPT}</script></body></html>"
    )


def _text(value: Any, width: int = 200) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return escape(text if len(text) <= width else text[: width - 1] + "…")


def _when(ns: int) -> str:
    moment = datetime.datetime.fromtimestamp(ns / 1e9, datetime.UTC)
    return f"{moment:%Y-%m-%d %H:%M:%S}"


def _violations(spans: list[ReceivedSpan]) -> dict[str, list[Violation]]:
    return {
        trace_id: check_trace(trace_spans)
        for trace_id, trace_spans in group_by_trace(spans).items()
    }


def _thread_rows(spans: list[ReceivedSpan], filters: dict[str, str]) -> list[dict[str, Any]]:
    violations = _violations(spans)
    return [
        {
            "thread": summary.thread_id,
            "users": summary.users,
            "tenants": summary.tenants,
            "agents": summary.agents,
            "turns": summary.turns,
            "errors": summary.errors,
            "violations": sum(len(violations.get(r.trace_id, [])) for r in summary.roots),
            "last": summary.last_activity_ns,
        }
        for summary in thread_summaries(spans, without_thread=NO_THREAD, filters=filters)
    ]


def threads_html(spans: list[ReceivedSpan], filters: dict[str, str]) -> str:
    """The threads page's content."""
    rows = _thread_rows(spans, filters)
    inputs = "".join(
        f"<label>{name} <input name='{name}' value='{escape(filters.get(name, ''))}'></label> "
        for name in ("user", "tenant", "agent")
    )
    form = f"<form method='get' class='row'>{inputs}<button>filter</button></form>"
    if not rows:
        return f"<h1>Threads</h1>{form}<p class='muted'>no traces yet</p>"
    body = "".join(
        "<tr>"
        f"<td><a class='thread' href='/threads/{quote(row['thread'], safe='')}'>"
        f"{escape(row['thread'])}</a></td>"
        f"<td>{escape(', '.join(row['users']))}</td><td>{escape(', '.join(row['tenants']))}</td>"
        f"<td>{escape(', '.join(row['agents']))}</td><td>{row['turns']}</td>"
        f"<td class='{'error' if row['errors'] else ''}'>{row['errors']}</td>"
        f"<td class='{'error' if row['violations'] else ''}'>{row['violations']}</td>"
        f"<td>{_when(row['last'])}</td></tr>"
        for row in rows
    )
    return (
        f"<h1>Threads</h1>{form}<table><tr><th>thread</th><th>user</th><th>tenant</th>"
        "<th>agent</th><th>turns</th><th>errors</th><th>contract violations</th>"
        f"<th>last activity (UTC)</th></tr>{body}</table>"
    )


def thread_html(spans: list[ReceivedSpan], thread: str) -> str:
    """A thread's page content: its turns, oldest first."""
    traces = group_by_trace(spans)
    roots = [r for r in roots_of(spans) if (thread_of(r) or NO_THREAD) == thread]
    if not roots:
        return f"<h1>Thread {escape(thread)}</h1><p class='muted'>no such thread</p>"
    items = []
    for number, root in enumerate(roots, 1):
        a = root.attributes
        problems = check_trace(traces[root.trace_id])
        root_level = level(root)
        output = a.get(Keys.TRACE_OUTPUT) or a.get(Keys.STATUS_MESSAGE)
        items.append(
            f"<tr><td>{number}</td><td><a class='turn' href='/traces/{root.trace_id}'>"
            f"{root.trace_id[:12]}…</a></td><td class='{root_level.lower()}'>"
            f"{escape(root_level)}</td><td class='io'>{_text(a.get(Keys.TRACE_INPUT, ''))}</td>"
            f"<td class='io'>{_text(output or '')}</td>"
            f"<td class='{'error' if problems else ''}'>{len(problems)}</td>"
            f"<td>{_when(root.start_ns)}</td></tr>"
        )
    first = roots[0].attributes
    who = ", ".join(
        f"{label} {escape(str(first.get(key)))}"
        for label, key in (("user", Keys.USER), ("tenant", Keys.TENANT))
        if first.get(key)
    )
    return (
        f"<h1>Thread {escape(thread)}</h1><p class='muted'>{who}</p><table><tr><th>turn</th>"
        "<th>trace</th><th>level</th><th>input</th><th>output</th><th>violations</th>"
        f"<th>started (UTC)</th></tr>{''.join(items)}</table>"
    )


def trace_html(spans: list[ReceivedSpan], trace_id: str) -> str:
    """A trace's page content: violations, then the waterfall."""
    trace = group_by_trace(spans).get(trace_id)
    if not trace:
        return f"<h1>Trace {escape(trace_id)}</h1><p class='muted'>no such trace</p>"
    problems = check_trace(trace)
    start = min(s.start_ns for s in trace)
    total = max(max(s.end_ns for s in trace) - start, 1)
    children: dict[str | None, list[ReceivedSpan]] = {}
    ids = {s.span_id for s in trace}
    for span in sorted(trace, key=lambda s: s.start_ns):
        parent = span.parent_span_id if span.parent_span_id in ids else None
        children.setdefault(parent, []).append(span)
    rows: list[str] = []

    def walk(span: ReceivedSpan, depth: int) -> None:
        a = span.attributes
        kind = a.get(Keys.TYPE) or a.get("openinference.span.kind") or "span"
        span_level = level(span)
        left = (span.start_ns - start) / total * 100
        width = (span.end_ns - span.start_ns) / total * 100
        mine = [v for v in problems if f"{span.name!r}" in v.message]
        flags = "".join(f"<div class='violation'>{escape(v.message)}</div>" for v in mine)
        attributes = "".join(
            f"<tr><td>{escape(k)}</td><td class='io'>{_text(v, 2000)}</td></tr>"
            for k, v in sorted(a.items())
        )
        rows.append(
            f"<details class='span'><summary class='row'>"
            f"<span class='name' style='padding-left:{depth * 1.2}em'>{escape(span.name)}</span>"
            f"<span class='muted'>{escape(str(kind))}</span>"
            f"<span class='{span_level.lower()}'>{escape(span_level)}</span>"
            f"<span>{(span.end_ns - span.start_ns) / 1e6:.1f} ms</span>"
            f"<span class='axis'><span class='bar {escape(span_level)}' "
            f"style='left:{left:.2f}%;width:{width:.2f}%'></span></span></summary>"
            f"{flags}<table>{attributes}</table></details>"
        )
        for child in children.get(span.span_id, []):
            walk(child, depth + 1)

    for top in children.get(None, []):
        walk(top, 0)
    verdict = (
        "".join(
            f"<div class='violation'>{escape(v.rule)}: {escape(v.message)}</div>" for v in problems
        )
        if problems
        else "<p class='muted'>conformant</p>"
    )
    root = next((s for s in trace if s.parent_span_id is None), trace[0])
    thread = thread_of(root)
    back = (
        f"<p>thread <a href='/threads/{quote(str(thread), safe='')}'>{escape(str(thread))}</a></p>"
        if thread
        else ""
    )
    return (
        f"<h1>Trace {escape(trace_id)}</h1>{back}<h2>Contract</h2>{verdict}"
        f"<h2>Spans</h2><div class='waterfall'>{''.join(rows)}</div>"
    )


def view_routes(stored: Callable[[], list[ReceivedSpan]]) -> list[BaseRoute]:
    """The web view's routes over the spans ``stored()`` returns (the inbox's store)."""

    async def spans() -> list[ReceivedSpan]:
        return await run_in_threadpool(stored)

    async def threads(request: Request) -> Response:
        filters = {
            k: v for k, v in request.query_params.items() if k in ("user", "tenant", "agent") and v
        }
        return _page("threads", threads_html(await spans(), filters))

    async def thread(request: Request) -> Response:
        thread_id = request.path_params["thread_id"]
        return _page(f"thread {thread_id}", thread_html(await spans(), thread_id))

    async def trace(request: Request) -> Response:
        trace_id = request.path_params["trace_id"]
        return _page(f"trace {trace_id}", trace_html(await spans(), trace_id))

    async def state(request: Request) -> Response:
        stored = await spans()
        return JSONResponse({"traces": len({s.trace_id for s in stored}), "spans": len(stored)})

    return [
        Route("/", threads),
        Route("/threads/{thread_id:path}", thread),
        Route("/traces/{trace_id}", trace),
        Route("/api/state", state),
    ]
