"""The local inbox at scale: how long its pages, its live-update poll and the ``threads``
command take with 200,000 and 1,000,000 spans stored, beside the inbox before the indexed
store (the same pages over the same file, at the smaller size only: it reads every span).

The stored traces are copies of one real turn: the FastAPI agent of :mod:`bench.apps` with
the middleware, a 4 KB conversation history as its body, a tool call and a generation under
the root, exported through the real SDK to an in-memory exporter. Each copy gets its own
trace and span ids, thread (3 turns each), user (500) and tenant (5); 2% fail. They go in
through ``SpanStore.add`` in batches of 512 (what Langfuse's batch processor sends, and the
call the inbox's receiver makes per export). The pages are then fetched over HTTP from the
inbox command serving that file in its own process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx

from bench.harness import HEADERS, ROOT, Inbox
from bench.traffic import conversation
from lemma_middleware.core.attributes import Keys
from lemma_middleware.inbox.store import SpanStore
from lemma_middleware.testing.records import ReceivedSpan

BEFORE = "bcd2d69"
"""The last commit whose inbox read every stored span per page."""
BATCH = 512
RARE_WORD = "zanzibar"
"""A word one turn in a thousand says: a search that finds few threads."""
PAGES = {
    "threads (first page)": "/",
    "threads, page 100": "/?page=100",
    "threads, user filter": "/?user=user-7",
    "threads, with errors": "/?errors=1",
    "search, a common word": "/?q=parcel",
    "search, a rare word": f"/?q={RARE_WORD}",
    "a thread": "/threads/{thread}",
    "a trace": "/traces/{trace}",
    "live-update poll": "/api/state",
}


@dataclass
class InboxFigures:
    """One size's figures: milliseconds per page (median), the threads command, ingestion."""

    spans: int
    pages_ms: dict[str, float]
    threads_command_s: float
    ingest_spans_per_s: float
    index_traces_per_s: float
    file_mb: float
    before_ms: dict[str, float] | None = None


def real_turn() -> list[ReceivedSpan]:
    """One turn of the benchmark's agent, as the middleware exports it."""
    from bench.apps import make_asgi
    from lemma_middleware.testing import TraceCapture
    from lemma_middleware.testing.contract import as_records

    capture = TraceCapture()
    app = make_asgi("lemma", capture.client, agent=True)

    async def send() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as http:
            response = await http.post("/agent", content=conversation(4_000), headers=HEADERS)
            response.raise_for_status()

    asyncio.run(send())
    spans = as_records(capture.spans())
    assert len(spans) == 3, [s.name for s in spans]
    return spans


def copies(template: list[ReceivedSpan], count: int) -> Iterator[list[ReceivedSpan]]:
    """``count`` spans as batches of :data:`BATCH`: copies of ``template`` with their own ids."""
    base = 1_764_000_000 * 10**9
    first = min(s.start_ns for s in template)
    rare_input = _saying(template, RARE_WORD)
    batch: list[ReceivedSpan] = []
    for number in range(count // len(template)):
        trace_id = f"{number + 1:032x}"
        thread, user, tenant = f"conv-{number // 3}", f"user-{number % 500}", f"t-{number % 5}"
        shift = base + number * 10**9 - first
        for span in template:
            a = dict(span.attributes)
            identity = {Keys.THREAD: thread, Keys.LEMMA_THREAD: thread, Keys.USER: user}
            for key, value in {**identity, Keys.TENANT: tenant}.items():
                if key in a:
                    a[key] = value
            if span.parent_span_id is None:
                if number % 1000 == 500:
                    a[Keys.TRACE_INPUT] = rare_input
                if number % 50 == 7:
                    a[Keys.LEVEL] = "ERROR"
                    a[Keys.STATUS_MESSAGE] = "TimeoutError: the model did not answer"
            batch.append(
                replace(
                    span,
                    trace_id=trace_id,
                    span_id=f"{number + 1:08x}{span.span_id[8:]}",
                    parent_span_id=span.parent_span_id
                    and f"{number + 1:08x}{span.parent_span_id[8:]}",
                    start_ns=span.start_ns + shift,
                    end_ns=span.end_ns + shift,
                    attributes=a,
                )
            )
            if len(batch) == BATCH:
                yield batch
                batch = []
    if batch:
        yield batch


def _saying(template: list[ReceivedSpan], word: str) -> str:
    root = next(s for s in template if s.parent_span_id is None)
    body = json.loads(root.attributes[Keys.TRACE_INPUT])
    body["messages"][-1] = {"role": "user", "content": f"Is my parcel in {word} yet?"}
    return json.dumps(body)


def _old_views(folder: Path) -> ModuleType | None:
    """The web view of :data:`BEFORE`, from git (``None`` without the history)."""
    import importlib

    package = folder / "inbox_before"
    if package.exists():
        return importlib.import_module("inbox_before.web")
    package.mkdir()
    (package / "__init__.py").write_text("")
    for name in ("views", "web"):
        shown = subprocess.run(
            ["git", "show", f"{BEFORE}:lemma_middleware/inbox/{name}.py"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        if shown.returncode != 0:
            return None
        text = shown.stdout.replace("lemma_middleware.inbox.views", "inbox_before.views")
        (package / f"{name}.py").write_text(text)
    sys.path.insert(0, str(folder))
    return importlib.import_module("inbox_before.web")


def _median_ms(fetch: Callable[[], Any], repeat: int, warm: bool = True) -> float:
    if warm:
        fetch()  # the first read warms SQLite's page cache, as a page left open has
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fetch()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


@contextlib.contextmanager
def _serving(db: Path) -> Iterator[str]:
    """``lemma-middleware inbox`` serving ``db`` in its own process; its URL."""
    inbox = Inbox(db)
    inbox.start()
    try:
        yield f"http://127.0.0.1:{inbox.port}"
    finally:
        inbox.stop()


def measure(spans: int, folder: Path, before: bool, repeat: int) -> InboxFigures:
    """Store ``spans`` spans in a new file under ``folder``, then time every page."""
    db = folder / f"inbox-{spans}.sqlite3"
    store = SpanStore(db, max_spans=None)
    template = real_turn()
    batches = list(copies(template, spans))
    started = time.perf_counter()
    for batch in batches:
        store.add(batch, index=False)  # what the receiver does per export
    ingest = store.span_count() / (time.perf_counter() - started)
    started = time.perf_counter()
    indexed = store.index_pending()  # what the indexer thread does meanwhile
    index_rate = indexed / (time.perf_counter() - started)
    middle = store.span_count() // len(template) // 2
    thread, trace = f"conv-{middle // 3}", f"{middle + 1:032x}"
    pages: dict[str, float] = {}
    with _serving(db) as url, httpx.Client(base_url=url, timeout=600) as http:
        for name, path in PAGES.items():
            target = path.format(thread=thread, trace=trace)

            def fetch(target: str = target) -> None:
                http.get(target).raise_for_status()

            pages[name] = _median_ms(fetch, repeat)
    command = [sys.executable, "-m", "lemma_middleware", "threads", "--db", str(db)]
    threads_s = (
        _median_ms(
            lambda: subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL), 3
        )
        / 1000
    )
    size_mb = db.stat().st_size / 2**20
    figures = InboxFigures(store.span_count(), pages, threads_s, ingest, index_rate, size_mb)
    if before and (old := _old_views(folder)) is not None:
        figures.before_ms = {
            "threads (first page)": _median_ms(
                lambda: old.threads_html(store.spans(), {}), 1, warm=False
            ),
            "a thread": _median_ms(lambda: old.thread_html(store.spans(), thread), 1, warm=False),
            "a trace": _median_ms(lambda: old.trace_html(store.spans(), trace), 1, warm=False),
            "live-update poll": _median_ms(lambda: len(store.spans()), 1, warm=False),
        }
    return figures


def inbox_section(sizes: tuple[int, ...], before_up_to: int, repeat: int) -> list[InboxFigures]:
    """Measure each size in turn (the inbox before the indexed store up to ``before_up_to``)
    and print the table."""
    results: list[InboxFigures] = []
    with tempfile.TemporaryDirectory(prefix="inbox-bench-") as folder:
        for size in sizes:
            results.append(measure(size, Path(folder), size <= before_up_to, repeat))
    print("\nInbox at scale: ms per page over HTTP (median; before: the same page's work in")
    print(f"the inbox of {BEFORE}, which read every span, without HTTP)")
    header = "".join(f"{f'{r.spans:,} spans':>18}" for r in results)
    befores = "".join(f"{'before':>12}" for r in results if r.before_ms is not None)
    print(f"  {'':28}{header}{befores}")
    for name in PAGES:
        now = "".join(f"{r.pages_ms[name]:>18.1f}" for r in results)
        old = "".join(
            f"{r.before_ms[name]:>12.0f}" if name in r.before_ms else f"{'':>12}"
            for r in results
            if r.before_ms is not None
        )
        print(f"  {name:28}{now}{old}")
    threads = "".join(f"{r.threads_command_s * 1000:>18.0f}" for r in results)
    print(f"  {'threads command (ms, wall)':28}{threads}")
    ingest = "".join(f"{r.ingest_spans_per_s:>18,.0f}" for r in results)
    print(f"  {'receiving (spans/s)':28}{ingest}")
    indexing = "".join(f"{r.index_traces_per_s:>18,.0f}" for r in results)
    print(f"  {'indexing (traces/s)':28}{indexing}")
    size = "".join(f"{r.file_mb:>18,.0f}" for r in results)
    print(f"  {'file (MB)':28}{size}")
    return results
