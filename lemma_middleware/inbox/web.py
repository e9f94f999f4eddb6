"""The inbox's web view, served by the inbox on the same port as the receiver.

* ``/``: the threads, most recently active first, 50 a page (``?page=``): user, tenant,
  agent, turns, failed turns, contract violations, what was last said, last activity;
  search over turns' inputs and outputs (``?q=``), filters ``?user=``, ``?tenant=``,
  ``?agent=`` and ``?errors=1``;
* ``/threads/{id}``: a thread as a conversation, oldest turn first, 100 a page: what the user
  said and what the agent answered, status, duration, errors inline, a link to each trace;
* ``/traces/{id}``: a trace's summary (agent, thread, user, tenant, status, duration, input,
  output), its contract verdict, and a waterfall on one shared time axis with a ruler; a
  click on a span opens its Input / Output / Metadata / Attributes (and, for generations,
  model and token usage) in the side panel;
* ``/api/state``: the store's change marker (``version``) and counts; each page polls it
  every second and redraws itself when it changes, so new traces appear without a reload.

Every page reads a bounded number of indexed rows (see :mod:`lemma_middleware.inbox.store`),
so it costs the same at a hundred spans and at a million. Unknown threads and traces answer
404. Server-rendered HTML and a few lines of script; nothing is fetched from the internet.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterable
from html import escape
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route

from lemma_middleware.core.attributes import Keys
from lemma_middleware.inbox.views import NO_THREAD, ThreadQuery, ThreadSummary, TraceRow, level
from lemma_middleware.testing.contract import check_trace
from lemma_middleware.testing.records import ReceivedSpan

if TYPE_CHECKING:
    from lemma_middleware.inbox.store import SpanStore

THREADS_PER_PAGE = 50
TURNS_PER_PAGE = 100
WATERFALL_ROWS = 2000
"""The most spans a trace page draws (a note says how many more the trace has)."""
DETAIL_CHARS = 20_000
"""The most of one value the side panel shows."""

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
a { color: #0b5cad; text-decoration: none; } a:hover { text-decoration: underline; }
table { border-collapse: collapse; width: 100%; } td, th { padding: .3em .6em; text-align: left;
  border-bottom: 1px solid #eee; vertical-align: top; } th { background: #f6f6f6; }
.error { color: #b00020; font-weight: 600; } .warning { color: #a15c00; }
.violation { background: #fff1f0; border-left: 4px solid #b00020; padding: .3em .6em;
  margin: .2em 0; } .muted { color: #777; } .io { white-space: pre-wrap; max-width: 60em; }
form.filters { display: flex; gap: .6em; flex-wrap: wrap; align-items: center; margin: .5em 0; }
form.filters input[type=text] { width: 10em; } form.filters input[name=q] { width: 18em; }
.pages { margin: .8em 0; display: flex; gap: 1em; }
.summary { display: grid; grid-template-columns: max-content 1fr; gap: .2em 1em; }
.summary dt { color: #777; } .summary dd { margin: 0; }
pre { white-space: pre-wrap; word-break: break-word; background: #f7f7f7; padding: .5em;
  margin: .2em 0; max-height: 30em; overflow: auto; }
.turn-card { border: 1px solid #e4e4e4; border-radius: 6px; margin: .8em 0; padding: .6em .8em; }
.turn-card.ERROR { border-color: #d93025; }
.turn-head { display: flex; gap: 1em; align-items: baseline; color: #555; }
.said { margin: .4em 0; padding: .4em .7em; border-radius: 6px; white-space: pre-wrap; }
.said.user { background: #eef4ff; } .said.agent { background: #f3f3f3; }
.said .who { font-size: 12px; color: #777; display: block; }
.layout { display: flex; gap: 1em; align-items: flex-start; }
.waterfall { flex: 1; min-width: 0; }
.wf-row { display: grid; grid-template-columns: 26em 1fr; align-items: center;
  cursor: pointer; border-bottom: 1px solid #f1f1f1; }
.wf-row:hover, .wf-row.selected { background: #f0f6ff; }
.wf-label { display: flex; gap: .5em; overflow: hidden; white-space: nowrap; padding: .1em 0; }
.wf-label .name { overflow: hidden; text-overflow: ellipsis; }
.track { position: relative; height: 1.1em; background: #f7f7f7; }
.bar { position: absolute; top: 0; bottom: 0; background: #5b8def; min-width: 2px; }
.bar.ERROR { background: #d93025; } .bar.WARNING { background: #f29900; }
.ruler { cursor: default; border-bottom: 1px solid #ccc; } .ruler .track { background: none;
  height: 1.4em; } .tick { position: absolute; top: 0; bottom: 0; border-left: 1px solid #bbb;
  font-size: 11px; color: #666; padding-left: 2px; white-space: nowrap; }
#panel { width: 34em; position: sticky; top: 1em; max-height: 90vh; overflow: auto;
  border-left: 1px solid #ddd; padding-left: 1em; }
#panel h3 { margin: .2em 0; } #panel h4 { margin: .8em 0 .2em; }
.detail { display: none; }
"""

_SCRIPT = """
let seen = null;
async function poll() {
  try {
    const state = await (await fetch('/api/state')).json();
    if (seen !== null && state.version !== seen) {
      const html = await (await fetch(location.href)).text();
      const fresh = new DOMParser().parseFromString(html, 'text/html');
      const panel = document.getElementById('panel');
      const open = panel && panel.dataset.span;
      document.getElementById('content').replaceWith(fresh.getElementById('content'));
      wire();
      if (open) { show(open); }
    }
    seen = state.version;
  } catch (e) {}
  setTimeout(poll, 1000);
}
function show(spanId) {
  const detail = document.getElementById('detail-' + spanId);
  const panel = document.getElementById('panel');
  if (!detail || !panel) { return; }
  panel.innerHTML = detail.innerHTML;
  panel.dataset.span = spanId;
  document.querySelectorAll('.wf-row.selected').forEach(r => r.classList.remove('selected'));
  const row = document.querySelector('.wf-row[data-span="' + spanId + '"]');
  if (row) { row.classList.add('selected'); }
}
function wire() {
  document.querySelectorAll('.wf-row[data-span]').forEach(row => {
    row.addEventListener('click', () => show(row.dataset.span));
  });
}
wire();
poll();
"""


def _page(title: str, content: str, status_code: int = 200) -> HTMLResponse:
    return HTMLResponse(
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{escape(title)} · lemma inbox</title><style>{_STYLE}</style></head><body>"
        f"<p class='muted'><a href='/'>lemma-middleware inbox</a></p>"
        f"<div id='content'>{content}</div><script>{_SCRIPT}</script></body></html>",
        status_code=status_code,
    )


def _short(value: str | None, width: int = 200) -> str:
    text = " ".join((value or "").split())
    return escape(text if len(text) <= width else text[: width - 1] + "…")


def pretty(value: Any, limit: int = DETAIL_CHARS) -> str:
    """A recorded value for reading: JSON text indented, other text as it is; cut at ``limit``."""
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except ValueError:
            text = value
        else:
            text = (
                json.dumps(parsed, indent=2, ensure_ascii=False)
                if not isinstance(parsed, str)
                else parsed
            )
    else:
        text = json.dumps(value, indent=2, ensure_ascii=False)
    if len(text) > limit:
        text = text[:limit] + f"\n… ({len(text) - limit:,} more characters)"
    return escape(text)


def _when(ns: int) -> str:
    moment = datetime.datetime.fromtimestamp(ns / 1e9, datetime.UTC)
    return f"{moment:%Y-%m-%d %H:%M:%S}"


def _duration(ms: float) -> str:
    return f"{ms:.1f} ms" if ms < 1000 else f"{ms / 1000:.2f} s"


def _status(row: TraceRow) -> str:
    parts = [str(row.http_status)] if row.http_status is not None else []
    if row.level != "DEFAULT" or not parts:
        parts.append(row.level)
    return f"<span class='status {row.level.lower()}'>{escape(' '.join(parts))}</span>"


def _thread_link(thread: str) -> str:
    shown = thread or NO_THREAD
    return f"<a class='thread' href='/threads/{quote(shown, safe='')}'>{escape(shown)}</a>"


def _pages(path: str, params: dict[str, str], page: int, more: bool) -> str:
    def link(number: int, label: str) -> str:
        query = urlencode({**params, "page": str(number)})
        return f"<a class='page' href='{escape(path)}?{escape(query)}'>{label}</a>"

    links = []
    if page > 1:
        links.append(link(page - 1, "← newer" if path == "/" else "← earlier"))
    if page > 1 or more:
        links.append(f"<span class='muted'>page {page}</span>")
    if more:
        links.append(link(page + 1, "older →" if path == "/" else "later →"))
    return f"<div class='pages'>{''.join(links)}</div>" if links else ""


def threads_html(threads: list[ThreadSummary], params: dict[str, str], page: int) -> str:
    """The threads page's content (``threads``: one more than a page, to know if one follows)."""
    more = len(threads) > THREADS_PER_PAGE
    threads = threads[:THREADS_PER_PAGE]
    inputs = "".join(
        f"<label>{label} <input type='text' name='{name}' "
        f"value='{escape(params.get(name, ''))}'></label>"
        for name, label in (("q", "search"), ("user", "user"), ("tenant", "tenant"),
                            ("agent", "agent"))
    )  # fmt: skip
    checked = " checked" if params.get("errors") else ""
    form = (
        f"<form method='get' class='filters'>{inputs}<label><input type='checkbox' "
        f"name='errors' value='1'{checked}> with errors</label><button>filter</button></form>"
    )
    if not threads:
        empty = "no threads match" if params else "no traces yet"
        return f"<h1>Threads</h1>{form}<p class='muted'>{empty}</p>"
    body = "".join(
        "<tr>"
        f"<td>{_thread_link(t.thread_id)}</td>"
        f"<td>{escape(', '.join(t.users))}</td><td>{escape(', '.join(t.tenants))}</td>"
        f"<td>{escape(', '.join(t.agents))}</td><td>{t.turns}</td>"
        f"<td class='{'error' if t.errors else ''}'>{t.errors}</td>"
        f"<td class='{'error' if t.violations else ''}'>{t.violations}</td>"
        f"<td class='io'>{_short(t.last_said, 80)}</td>"
        f"<td>{_when(t.last_activity_ns)}</td></tr>"
        for t in threads
    )
    return (
        f"<h1>Threads</h1>{form}<table><tr><th>thread</th><th>user</th><th>tenant</th>"
        "<th>agent</th><th>turns</th><th>errors</th><th>contract violations</th>"
        f"<th>last said</th><th>last activity (UTC)</th></tr>{body}</table>"
        + _pages("/", params, page, more)
    )


def thread_html(thread: str, turns: list[TraceRow], first: int, page: int, more: bool) -> str:
    """A thread's page content: its turns as a conversation, oldest first (``first``: the
    number of this page's first turn)."""
    cards = []
    for number, row in enumerate(turns, first):
        answer = (
            f"<div class='said agent'><span class='who'>{escape(row.agent or 'agent')}</span>"
            f"{escape(row.agent_said or '')}</div>"
            if row.agent_said
            else ""
        )
        error = (
            f"<div class='violation error-message'>{escape(row.status_message)}</div>"
            if row.status_message
            else ""
        )
        flagged = (
            f"<span class='error'>{row.violations} contract violation"
            f"{'s' if row.violations != 1 else ''}</span>"
            if row.violations
            else ""
        )
        cards.append(
            f"<div class='turn-card {escape(row.level)}' data-trace='{row.trace_id}'>"
            f"<div class='turn-head'><b>turn {number}</b>{_status(row)}"
            f"<span class='duration'>{_duration(row.duration_ms)}</span>"
            f"<span>{_when(row.start_ns)}</span>{flagged}"
            f"<a class='turn' href='/traces/{row.trace_id}'>trace {row.trace_id[:12]}… →</a>"
            "</div>"
            f"<div class='said user'><span class='who'>{escape(row.user_id or 'user')}</span>"
            f"{escape(row.user_said or '')}</div>{error}{answer}</div>"
        )
    who = " · ".join(
        f"{label} {escape(value)}"
        for label, value in (
            ("user", ", ".join(sorted({t.user_id for t in turns if t.user_id}))),
            ("tenant", ", ".join(sorted({t.tenant_id for t in turns if t.tenant_id}))),
        )
        if value
    )
    return (
        f"<h1>Thread {escape(thread or NO_THREAD)}</h1><p class='muted'>{who}</p>"
        f"<div class='conversation'>{''.join(cards)}</div>"
        + _pages(f"/threads/{quote(thread or NO_THREAD, safe='')}", {}, page, more)
    )


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
        f"{escape(level(span))} · {_duration((span.end_ns - span.start_ns) / 1e6)}</p>"
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
        f"{_duration(total_ns * fraction / 1e6)}</span>"
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
            f"<span class='{span_level.lower()}'>{escape(span_level)}</span>"
            f"<span>{_duration((span.end_ns - span.start_ns) / 1e6)}</span></div>"
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
        ("thread", _thread_link(row.thread_id) if row.thread_id else ""),
        ("user", escape(row.user_id or "")),
        ("tenant", escape(row.tenant_id or "")),
        ("status", _status(row)),
        ("duration", _duration(row.duration_ms)),
        ("started (UTC)", _when(row.start_ns)),
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


def _page_number(request: Request) -> int:
    try:
        return max(1, int(request.query_params.get("page", "1")))
    except ValueError:
        return 1


def view_routes(store: SpanStore) -> list[BaseRoute]:
    """The web view's routes over the inbox's store."""

    async def threads(request: Request) -> Response:
        params = {
            k: v.strip()
            for k, v in request.query_params.items()
            if k in ("q", "user", "tenant", "agent", "errors") and v.strip()
        }
        page = _page_number(request)
        query = ThreadQuery(
            user=params.get("user", ""),
            tenant=params.get("tenant", ""),
            agent=params.get("agent", ""),
            search=params.get("q", ""),
            errors=bool(params.get("errors")),
            limit=THREADS_PER_PAGE + 1,
            offset=(page - 1) * THREADS_PER_PAGE,
        )
        found = await run_in_threadpool(store.threads, query)
        return _page("threads", threads_html(found, params, page))

    async def thread(request: Request) -> Response:
        shown = request.path_params["thread_id"]
        thread_id = "" if shown == NO_THREAD else shown
        page = _page_number(request)
        first = (page - 1) * TURNS_PER_PAGE
        turns = await run_in_threadpool(
            store.turns, thread_id, limit=TURNS_PER_PAGE + 1, offset=first
        )
        if not turns:
            content = f"<h1>Thread {escape(shown)}</h1><p class='muted'>no such thread</p>"
            return _page(f"thread {shown}", content, 404)
        more = len(turns) > TURNS_PER_PAGE
        content = thread_html(thread_id, turns[:TURNS_PER_PAGE], first + 1, page, more)
        return _page(f"thread {shown}", content)

    async def trace(request: Request) -> Response:
        trace_id = request.path_params["trace_id"]
        spans = await run_in_threadpool(store.trace, trace_id)
        if not spans:
            content = f"<h1>Trace {escape(trace_id)}</h1><p class='muted'>no such trace</p>"
            return _page(f"trace {trace_id}", content, 404)
        row = await run_in_threadpool(store.trace_row, trace_id)
        return _page(f"trace {trace_id}", trace_html(spans, row))

    async def state(request: Request) -> Response:
        def read() -> dict[str, int]:
            return {
                "version": store.version(),
                "traces": store.trace_count(),
                "spans": store.span_count(),
            }

        return JSONResponse(await run_in_threadpool(read))

    return [
        Route("/", threads),
        Route("/threads/{thread_id:path}", thread),
        Route("/traces/{trace_id}", trace),
        Route("/api/state", state),
    ]
