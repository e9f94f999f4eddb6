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
The trace page is drawn by :mod:`lemma_middleware.inbox.trace_page`.
"""

from __future__ import annotations

from html import escape
from typing import TYPE_CHECKING
from urllib.parse import quote, urlencode

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from lemma_middleware.inbox.html import duration, html_page, short, status, thread_link, when
from lemma_middleware.inbox.trace_page import trace_html
from lemma_middleware.inbox.views import NO_THREAD, ThreadQuery, ThreadSummary, TraceRow

if TYPE_CHECKING:
    from lemma_middleware.inbox.store import SpanStore

THREADS_PER_PAGE = 50
TURNS_PER_PAGE = 100


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
        f"<td>{thread_link(t.thread_id)}</td>"
        f"<td>{escape(', '.join(t.users))}</td><td>{escape(', '.join(t.tenants))}</td>"
        f"<td>{escape(', '.join(t.agents))}</td><td>{t.turns}</td>"
        f"<td class='{'error' if t.errors else ''}'>{t.errors}</td>"
        f"<td class='{'error' if t.violations else ''}'>{t.violations}</td>"
        f"<td class='io'>{short(t.last_said, 80)}</td>"
        f"<td>{when(t.last_activity_ns)}</td></tr>"
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
            f"<div class='turn-head'><b>turn {number}</b>{status(row)}"
            f"<span class='duration'>{duration(row.duration_ms)}</span>"
            f"<span>{when(row.start_ns)}</span>{flagged}"
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
        return html_page("threads", threads_html(found, params, page))

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
            return html_page(f"thread {shown}", content, 404)
        more = len(turns) > TURNS_PER_PAGE
        content = thread_html(thread_id, turns[:TURNS_PER_PAGE], first + 1, page, more)
        return html_page(f"thread {shown}", content)

    async def trace(request: Request) -> Response:
        trace_id = request.path_params["trace_id"]
        spans = await run_in_threadpool(store.trace, trace_id)
        if not spans:
            content = f"<h1>Trace {escape(trace_id)}</h1><p class='muted'>no such trace</p>"
            return html_page(f"trace {trace_id}", content, 404)
        row = await run_in_threadpool(store.trace_row, trace_id)
        return html_page(f"trace {trace_id}", trace_html(spans, row))

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
