"""Conversation sampling (issue 22): whole conversations kept or dropped by their thread id,
every failed (or slow) turn kept with what its handler did, children following their root,
bounded holding, the caller's decision followed across services, Langfuse's own sampler
defined beside it. In-process, on the real Langfuse SDK with an in-memory exporter; the
served test (two uvicorn processes) is tests/test_sampling_served.py."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import re
import time
import tracemalloc
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import BackgroundTasks, FastAPI, Request
from fastapi.responses import JSONResponse
from hypothesis import given, settings
from hypothesis import strategies as st
from langfuse import Langfuse
from opentelemetry import trace as otel_trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import Decision, TraceIdRatioBased

from lemma_middleware import (
    LemmaFlask,
    LemmaMiddleware,
    OptionError,
    bind,
    export_stats,
    outgoing_headers,
)
from lemma_middleware.core.options import compile_options
from lemma_middleware.core.sampling import conversation_kept, trace_kept
from lemma_middleware.request import sampling as turn_sampling
from lemma_middleware.request.sampling import SamplingGate, sampling_stats
from lemma_middleware.sdk.client import inspect_client

from .helpers import Captured, post

KEPT_BECAUSE = "langfuse.trace.metadata.sampling.kept_because"
RATE = 0.3


def threads(kept: bool, count: int, rate: float = RATE, prefix: str = "conv") -> list[str]:
    """``count`` thread ids the rate keeps (or drops)."""
    found: list[str] = []
    number = 0
    while len(found) < count:
        thread = f"{prefix}-{number}"
        if conversation_kept(thread, rate) is kept:
            found.append(thread)
        number += 1
    return found


def agent_app(client: Langfuse, **options: Any) -> FastAPI:
    """An agent: each turn makes a tool child and a generation through ``client``; the
    body says whether it fails (raises: a 500), answers 503, is slow, binds a thread id,
    makes many children, or leaves a background task that makes a child later."""
    app = FastAPI()

    @app.post("/chat")
    async def chat(body: dict[str, Any], background: BackgroundTasks) -> Any:
        if "bind" in body:
            bind(thread_id=body["bind"])
        with client.start_as_current_observation(name="lookup", as_type="tool", input=body):
            pass
        for number in range(int(body.get("children", 0))):
            with client.start_as_current_observation(name=f"step-{number}", input="x" * 100):
                pass
        with client.start_as_current_observation(
            name="llm", as_type="generation", input=body.get("message")
        ) as generation:
            generation.update(output="an answer")
        if body.get("slow"):
            await asyncio.sleep(float(body["slow"]))
        if body.get("later"):

            def later() -> None:
                with client.start_as_current_observation(name="later", as_type="tool"):
                    pass

            background.add_task(later)
        if body.get("fail") == "raise":
            raise RuntimeError("the model timed out")
        if body.get("fail") == "503":
            return JSONResponse({"error": "overloaded"}, status_code=503)
        return {"answer": "ok", "headers": outgoing_headers()}

    app.add_middleware(LemmaMiddleware, agent_name="support-agent", langfuse=client, **options)
    return app


async def turn(app: FastAPI, thread: str | None, **body: Any) -> httpx.Response:
    """One turn of ``thread``; a handler's exception is the 500 a server would answer."""
    headers = {"x-conversation-id": thread} if thread is not None else {}
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        return await http.post("/chat", json={"message": "hello", **body}, headers=headers)


def roots_by_thread(spans: list[ReadableSpan]) -> Counter[str | None]:
    return Counter(s.attributes.get("session.id") for s in spans if s.parent is None)


def assert_no_orphans(spans: list[ReadableSpan]) -> None:
    ids = {s.context.span_id for s in spans}
    orphans = [s.name for s in spans if s.parent is not None and s.parent.span_id not in ids]
    assert not orphans, orphans


def trace_of(spans: list[ReadableSpan], root: ReadableSpan) -> list[str]:
    return sorted(s.name for s in spans if s.context.trace_id == root.context.trace_id)


@pytest.fixture(autouse=True)
def no_turn_left() -> Iterator[None]:
    """Every test ends with no turn held or undecided."""
    yield
    assert turn_sampling._turns == {}
    stats = sampling_stats()
    assert (stats.held_spans, stats.held_bytes) == (0, 0)


# the decision ------------------------------------------------------------------------


@given(st.text(min_size=1, max_size=80), st.floats(0.0, 1.0))
def test_the_decision_is_the_documented_hash_of_the_thread_id(thread: str, rate: float) -> None:
    digest = hashlib.sha256(thread.encode("utf-8", "surrogatepass")).digest()
    expected = int.from_bytes(digest[:8], "big") < round(rate * 2**64)
    assert conversation_kept(thread, rate) is expected
    assert conversation_kept(thread, 1.0) and not conversation_kept(thread, 0.0)


@given(st.text(min_size=1, max_size=40), st.floats(0.0, 1.0), st.floats(0.0, 1.0))
def test_a_conversation_kept_at_a_rate_is_kept_at_every_higher_rate(
    thread: str, low: float, high: float
) -> None:
    low, high = min(low, high), max(low, high)
    assert not conversation_kept(thread, low) or conversation_kept(thread, high)


@given(st.integers(1, 2**128 - 1), st.floats(0.0, 1.0))
def test_a_turn_without_thread_id_is_decided_as_opentelemetry_ratio_sampler_decides(
    trace_id: int, rate: float
) -> None:
    otel = TraceIdRatioBased(rate).should_sample(None, trace_id, "turn").decision
    assert trace_kept(trace_id, rate) is (otel is Decision.RECORD_AND_SAMPLE)


def test_the_fraction_of_conversations_kept_is_within_binomial_bounds() -> None:
    count = 20_000
    kept = sum(conversation_kept(f"thread-{n}", RATE) for n in range(count))
    spread = 4 * math.sqrt(count * RATE * (1 - RATE))
    assert abs(kept - count * RATE) < spread, kept


# whole conversations ---------------------------------------------------------------------


async def test_a_conversation_is_kept_or_dropped_whole_with_its_children(
    captured: Captured,
) -> None:
    app = agent_app(captured.client, sample_rate=RATE)
    kept, dropped = threads(True, 6), threads(False, 10)
    for thread in [*kept, *dropped]:
        for _ in range(3):
            assert (await turn(app, thread)).status_code == 200
    spans = captured.spans()
    assert roots_by_thread(spans) == Counter({thread: 3 for thread in kept})
    for root in (s for s in spans if s.parent is None):
        assert trace_of(spans, root) == ["llm", "lookup", "support-agent"]
        assert json.loads(root.attributes[KEPT_BECAUSE]) == "conversation"
        assert root.attributes["langfuse.trace.metadata.sampling.rate"] == "0.3"
    assert_no_orphans(spans)


async def test_every_failed_turn_is_kept_with_what_its_handler_did(captured: Captured) -> None:
    app = agent_app(captured.client, sample_rate=RATE)
    raising, unavailable, fine = threads(False, 3)
    assert (await turn(app, raising, fail="raise")).status_code == 500
    assert (await turn(app, unavailable, fail="503")).status_code == 503
    assert (await turn(app, fine)).status_code == 200
    spans = captured.spans()
    roots = {s.attributes["session.id"]: s for s in spans if s.parent is None}
    assert set(roots) == {raising, unavailable}
    for root in roots.values():
        assert json.loads(root.attributes[KEPT_BECAUSE]) == "error"
        assert root.attributes["langfuse.observation.level"] == "ERROR"
        assert trace_of(spans, root) == ["llm", "lookup", "support-agent"]
        assert "langfuse.observation.input" in root.attributes  # recorded as a kept turn
    assert_no_orphans(spans)


async def test_sample_rate_zero_keeps_only_the_failures(captured: Captured) -> None:
    app = agent_app(captured.client, sample_rate=0.0)
    for number in range(5):
        await turn(app, f"t-{number}", fail="raise" if number == 2 else None)
    spans = captured.spans()
    assert roots_by_thread(spans) == Counter({"t-2": 1})
    assert_no_orphans(spans)


async def test_keep_errors_false_drops_failed_turns_too(captured: Captured) -> None:
    app = agent_app(captured.client, sample_rate=0.0, keep_errors=False)
    await turn(app, "t-1", fail="raise")
    await turn(app, "t-2")
    assert captured.spans() == []


async def test_a_turn_nothing_can_keep_records_nothing_from_its_start(captured: Captured) -> None:
    """keep_errors off and a sampled-out thread id: the root and the handler's observations
    are not recording (no input processed), the turn still has a trace id and tells the
    services it calls it is not sampled."""
    app = agent_app(captured.client, sample_rate=0.0, keep_errors=False)
    recording: list[bool] = []

    @app.post("/probe")
    async def probe() -> Any:
        recording.append(otel_trace.get_current_span().is_recording())
        with captured.client.start_as_current_observation(name="llm", as_type="generation"):
            recording.append(otel_trace.get_current_span().is_recording())
        return {"headers": outgoing_headers()}

    before = sampling_stats()
    response = await post(app, "/probe", headers={"x-conversation-id": "t-1"})
    assert recording == [False, False]
    trace_id = response.headers["x-trace-id"]
    assert re.fullmatch("[0-9a-f]{32}", trace_id) and int(trace_id, 16)
    assert response.json()["headers"]["traceparent"].startswith(f"00-{trace_id}-")
    assert response.json()["headers"]["traceparent"].endswith("-00")
    assert captured.spans() == []
    assert sampling_stats().turns_dropped == before.turns_dropped + 1


async def test_a_continued_caller_trace_dropped_at_start_keeps_the_callers_trace_id(
    captured: Captured,
) -> None:
    app = agent_app(
        captured.client, sample_rate=0.0, keep_errors=False, continue_upstream_trace=True
    )
    headers = {"x-conversation-id": "t-1", "traceparent": traceparent(False)}
    response = await post(app, "/chat", json={"message": "a"}, headers=headers)
    assert response.headers["x-trace-id"] == traceparent(False).split("-")[1]
    assert captured.spans() == []


async def test_children_a_trace_id_sampler_records_under_a_dropped_root_are_dropped() -> None:
    """A sampler that is not parent-based (Langfuse's sample_rate) records some children of
    a root dropped as it started: they are dropped too, never exported as orphans."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=TraceIdRatioBased(1.0))
    client = client_on(provider, exporter, "pk-not-parent-based")
    app = agent_app(client, sample_rate=0.0, keep_errors=False, adopt_clients=False)
    before = sampling_stats().spans_dropped
    for number in range(5):
        await turn(app, f"t-{number}")
    client.flush()
    assert exporter.get_finished_spans() == ()
    assert sampling_stats().spans_dropped - before == 10  # the tool and the generation
    provider.shutdown()


async def test_keep_slow_keeps_a_slow_turn_of_a_sampled_out_conversation(
    captured: Captured,
) -> None:
    app = agent_app(captured.client, sample_rate=0.0, keep_slow=0.2)
    await turn(app, "quick")
    await turn(app, "slow", slow=0.3)
    spans = captured.spans()
    (root,) = (s for s in spans if s.parent is None)
    assert root.attributes["session.id"] == "slow"
    assert json.loads(root.attributes[KEPT_BECAUSE]) == "slow"
    assert trace_of(spans, root) == ["llm", "lookup", "support-agent"]


async def test_a_thread_id_bound_in_the_handler_decides_a_turn_that_had_none(
    captured: Captured,
) -> None:
    app = agent_app(captured.client, sample_rate=RATE)
    (kept,), (dropped,) = threads(True, 1, prefix="bound"), threads(False, 1, prefix="bound")
    for _ in range(3):
        await turn(app, None, bind=kept)
        await turn(app, None, bind=dropped)
    spans = captured.spans()
    assert roots_by_thread(spans) == Counter({kept: 3})
    assert_no_orphans(spans)


async def test_a_turn_without_thread_id_is_kept_by_its_trace_id(captured: Captured) -> None:
    app = agent_app(captured.client, sample_rate=0.5)
    trace_ids = []
    for _ in range(24):
        response = await turn(app, None)
        trace_ids.append(int(response.headers["x-trace-id"], 16))
    spans = captured.spans()
    kept = {s.context.trace_id for s in spans if s.parent is None}
    assert kept == {t for t in trace_ids if trace_kept(t, 0.5)}
    assert 0 < len(kept) < 24
    assert_no_orphans(spans)


async def test_a_span_ending_after_its_dropped_turn_is_dropped_too(captured: Captured) -> None:
    app = agent_app(captured.client, sample_rate=RATE)
    (dropped,) = threads(False, 1)
    (kept,) = threads(True, 1)
    await turn(app, dropped, later=True)
    await turn(app, kept, later=True)
    spans = captured.spans()
    (root,) = (s for s in spans if s.parent is None)
    assert trace_of(spans, root) == ["later", "llm", "lookup", "support-agent"]
    assert_no_orphans(spans)


# bounds --------------------------------------------------------------------------------


async def test_a_sampled_out_turn_making_ten_thousand_children_holds_at_most_the_bound(
    captured: Captured,
) -> None:
    app = agent_app(captured.client, sample_rate=0.0)
    before = sampling_stats()
    tracemalloc.start()
    try:
        await turn(app, "big", children=10_000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    after = sampling_stats()
    # the bound: 1,000 held spans of a few KB each; 10,000 held would be well over 20 MB
    assert peak < 12 * 1024 * 1024, peak
    assert after.spans_dropped_hold_full - before.spans_dropped_hold_full >= 9_000
    assert captured.spans() == []


async def test_a_failed_turn_past_the_hold_bound_keeps_its_root_and_says_what_it_lost(
    captured: Captured,
) -> None:
    app = agent_app(captured.client, sample_rate=0.0)
    await turn(app, "big", children=1_500, fail="raise")
    spans = captured.spans()
    (root,) = spans
    assert json.loads(root.attributes[KEPT_BECAUSE]) == "error"
    assert int(root.attributes["langfuse.trace.metadata.sampling.children_dropped"]) == 1_502


async def test_the_process_bound_caps_what_all_turns_hold_together(
    captured: Captured, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(turn_sampling, "HOLD_BYTES_PER_PROCESS", 64 * 1024)
    app = agent_app(captured.client, sample_rate=0.0)
    before = sampling_stats()
    await turn(app, "wide", children=200)  # 200 spans of ~700 estimated bytes: over 64 KB
    after = sampling_stats()
    assert after.spans_dropped_hold_full - before.spans_dropped_hold_full > 100


# across services --------------------------------------------------------------------------


def traceparent(sampled: bool) -> str:
    return f"00-{'ab' * 16}-{'cd' * 8}-{'01' if sampled else '00'}"


async def test_a_trusted_callers_sampled_flag_decides(captured: Captured) -> None:
    app = agent_app(captured.client, sample_rate=RATE, trusted_upstreams=["127.0.0.1"])
    (kept,), (dropped,) = threads(True, 1), threads(False, 1)
    headers = {"x-conversation-id": kept, "traceparent": traceparent(False)}
    await post(app, "/chat", json={"message": "a"}, headers=headers)
    headers = {"x-conversation-id": dropped, "traceparent": traceparent(True)}
    await post(app, "/chat", json={"message": "b"}, headers=headers)
    spans = captured.spans()
    (root,) = (s for s in spans if s.parent is None)
    assert root.attributes["session.id"] == dropped
    assert json.loads(root.attributes[KEPT_BECAUSE]) == "upstream"


async def test_a_second_call_in_a_callers_trace_is_decided_afresh(captured: Captured) -> None:
    """Continued traces share the caller's trace id: a call after a dropped one is its own
    turn (here kept because it fails)."""
    app = agent_app(captured.client, sample_rate=RATE, continue_upstream_trace=True)
    (dropped,) = threads(False, 1)
    headers = {"x-conversation-id": dropped, "traceparent": traceparent(False)}
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        await http.post("/chat", json={"message": "a"}, headers=headers)
        await http.post("/chat", json={"message": "b", "fail": "raise"}, headers=headers)
    spans = captured.spans()
    (root,) = (s for s in spans if s.name == "support-agent")
    assert json.loads(root.attributes[KEPT_BECAUSE]) == "error"
    assert trace_of(spans, root) == ["llm", "lookup", "support-agent"]


async def test_an_untrusted_callers_flag_is_ignored(captured: Captured) -> None:
    app = agent_app(captured.client, sample_rate=RATE)
    (dropped,) = threads(False, 1)
    headers = {"x-conversation-id": dropped, "traceparent": traceparent(True)}
    await post(app, "/chat", json={"message": "b"}, headers=headers)
    assert captured.spans() == []


async def test_calls_to_other_services_carry_the_decision(captured: Captured) -> None:
    app = agent_app(captured.client, sample_rate=RATE)
    (kept,), (dropped,) = threads(True, 1), threads(False, 1)
    kept_headers = (await turn(app, kept)).json()["headers"]
    dropped_headers = (await turn(app, dropped)).json()["headers"]
    assert kept_headers["traceparent"].endswith("-01")
    assert dropped_headers["traceparent"].endswith("-00")


# Langfuse's own sample_rate, options, counters ------------------------------------------


def client_on(provider: TracerProvider, exporter: InMemorySpanExporter, key: str) -> Langfuse:
    return Langfuse(
        public_key=key,
        secret_key="sk",
        base_url="http://127.0.0.1:9",
        tracer_provider=provider,
        span_exporter=exporter,
    )


async def test_a_trace_id_sampler_on_the_provider_decides_first_and_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Langfuse's sample_rate (a ``TraceIdRatioBased`` sampler on the provider Langfuse
    makes) drops turns before the middleware sees them, failed ones included: said at
    start-up with the fraction kept."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=TraceIdRatioBased(0.5))
    client = client_on(provider, exporter, "pk-sampler-first")
    with caplog.at_level(logging.WARNING, logger="lemma_middleware"):
        app = agent_app(client, sample_rate=0.0, adopt_clients=False)
        for number in range(24):
            await turn(app, f"f-{number}", fail="raise")
    client.flush()
    assert "samples traces by trace id at 0.5" in caplog.text
    assert "about 0 of turns are kept" in caplog.text
    roots = [s for s in exporter.get_finished_spans() if s.parent is None]
    assert 0 < len(roots) < 24  # what Langfuse's sampler kept: failed turns it dropped are gone
    for root in roots:
        assert trace_kept(root.context.trace_id, 0.5)
        assert json.loads(root.attributes[KEPT_BECAUSE]) == "error"
    provider.shutdown()


async def test_langfuse_sample_rate_on_the_middlewares_provider_does_nothing_and_is_said(
    captured: Captured, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LANGFUSE_SAMPLE_RATE", "0.2")
    with caplog.at_level(logging.WARNING, logger="lemma_middleware"):
        app = agent_app(captured.client)
        for number in range(5):
            await turn(app, f"t-{number}")
    assert "LANGFUSE_SAMPLE_RATE=0.2 is not applied" in caplog.text
    assert len(captured.roots()) == 5


def test_sample_rate_and_keep_slow_are_checked() -> None:
    for bad in (1.5, -0.1, "half", float("nan")):
        with pytest.raises(OptionError, match="sample_rate"):
            compile_options({"agent_name": "a", "sample_rate": bad})
    for bad_slow in (0, -1, "soon"):
        with pytest.raises(OptionError, match="keep_slow"):
            compile_options({"agent_name": "a", "keep_slow": bad_slow})
    rules = compile_options({"agent_name": "a", "sample_rate": 0.25, "keep_slow": 8}).sampling
    assert (rules.rate, rules.keep_errors, rules.keep_slow) == (0.25, True, 8.0)


async def test_lemma_sample_rate_sets_the_rate(
    captured: Captured, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LEMMA_SAMPLE_RATE", "0")
    app = agent_app(captured.client)
    await turn(app, "t-1")
    assert captured.spans() == []
    monkeypatch.setenv("LEMMA_SAMPLE_RATE", "2")
    with pytest.raises(OptionError, match="LEMMA_SAMPLE_RATE"):
        compile_options({"agent_name": "a"})


async def test_export_stats_count_kept_and_dropped_turns(captured: Captured) -> None:
    app = agent_app(captured.client, sample_rate=RATE)
    before = export_stats().sampling
    kept, dropped = threads(True, 2), threads(False, 3)
    for thread in [*kept, *dropped]:
        await turn(app, thread)
    await turn(app, dropped[0], fail="raise")
    after = export_stats().sampling
    assert after.turns_kept - before.turns_kept == 3
    assert after.turns_dropped - before.turns_dropped == 3
    assert after.kept_because["conversation"] - before.kept_because.get("conversation", 0) == 2
    assert after.kept_because["error"] - before.kept_because.get("error", 0) == 1
    assert after.spans_dropped - before.spans_dropped == 9  # 3 turns x (root, lookup, llm)


def test_without_sampling_the_export_processors_are_not_gated(captured: Captured) -> None:
    agent_app(captured.client).build_middleware_stack()
    provider = inspect_client(captured.client).provider
    processors = provider._active_span_processor._span_processors  # type: ignore[union-attr]
    assert not any(isinstance(p, SamplingGate) for p in processors)
    agent_app(captured.client, sample_rate=0.5).build_middleware_stack()
    processors = provider._active_span_processor._span_processors  # type: ignore[union-attr]
    assert sum(isinstance(p, SamplingGate) for p in processors) == 1


def test_flask_turns_are_sampled_the_same_way(captured: Captured) -> None:
    from flask import Flask, request

    client = captured.client
    app = Flask(__name__)

    @app.post("/chat")
    def chat() -> Any:
        with client.start_as_current_observation(name="llm", as_type="generation"):
            pass
        if (request.get_json() or {}).get("fail"):
            raise RuntimeError("boom")
        return {"answer": "ok"}

    LemmaFlask(app, agent_name="support-agent", langfuse=client, sample_rate=RATE)
    http = app.test_client()
    kept, dropped = threads(True, 2), threads(False, 3)
    for thread in [*kept, *dropped]:
        for _ in range(2):
            assert http.post("/chat", json={}, headers={"x-conversation-id": thread}).data
    failed = http.post("/chat", json={"fail": True}, headers={"x-conversation-id": dropped[0]})
    assert failed.status_code == 500 and failed.data
    spans = captured.spans()
    assert roots_by_thread(spans) == Counter({kept[0]: 2, kept[1]: 2, dropped[0]: 1})
    assert_no_orphans(spans)


def test_children_made_in_worker_threads_follow_their_root(captured: Captured) -> None:
    """A sync endpoint (run in a thread pool) making children in threads of its own."""
    from concurrent.futures import ThreadPoolExecutor

    from opentelemetry import context as otel_context
    from starlette.testclient import TestClient

    client = captured.client
    app = FastAPI()

    @app.post("/chat")
    def chat(request: Request) -> dict[str, str]:
        context = otel_context.get_current()

        def child(number: int) -> None:
            token = otel_context.attach(context)
            try:
                with client.start_as_current_observation(name=f"c{number}"):
                    time.sleep(0.001)
            finally:
                otel_context.detach(token)

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(child, range(8)))
        return {"answer": "ok"}

    app.add_middleware(LemmaMiddleware, agent_name="a", langfuse=client, sample_rate=RATE)
    http = TestClient(app)
    kept, dropped = threads(True, 3), threads(False, 3)
    for thread in [*kept, *dropped]:
        http.post("/chat", json={}, headers={"x-conversation-id": thread})
    spans = captured.spans()
    assert roots_by_thread(spans) == Counter({thread: 1 for thread in kept})
    assert len(spans) == 3 * 9
    assert_no_orphans(spans)


_TRUSTING: list[tuple[Captured, FastAPI]] = []


@settings(max_examples=40, deadline=None)
@given(
    st.one_of(
        st.text(st.characters(max_codepoint=255), max_size=70),
        st.from_regex(r"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-fA-F]{2}", fullmatch=True),
    )
)
def test_any_traceparent_from_a_trusted_caller_gives_one_decision(value: str) -> None:
    """The header is untrusted text: whatever it holds, the turn is traced and decided once
    (kept when it is a traceparent with the sampled flag, else dropped at rate 0), and
    nothing is held afterwards."""
    if not _TRUSTING:  # one app for every example
        capture = Captured()
        app = agent_app(capture.client, sample_rate=0.0, trusted_upstreams=["127.0.0.1"])
        _TRUSTING.append((capture, app))
    capture, app = _TRUSTING[0]
    capture.clear()
    headers = {"x-conversation-id": b"t", "traceparent": value.encode("latin-1")}
    response = asyncio.run(post(app, "/chat", json={"message": "m"}, headers=headers))
    assert response.status_code == 200
    parsed = re.fullmatch(r"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-([0-9a-f]{2})", value.strip())
    sampled = parsed is not None and bool(int(parsed.group(1), 16) & 1)
    roots = capture.roots()
    assert len(roots) == (1 if sampled else 0), (value, roots)
    for root in roots:
        assert json.loads(root.attributes[KEPT_BECAUSE]) == "upstream"
    assert turn_sampling._turns == {}
