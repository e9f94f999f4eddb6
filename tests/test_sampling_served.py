"""Conversation sampling served for real (issue 22): two uvicorn processes of one FastAPI agent
(tests/apps/sampling_app.py) export over OTLP/HTTP protobuf to a receiver on 127.0.0.1, each
turn making a tool observation and an LLM call through the real ``openai`` client against
the fake OpenAI server. 300 conversations of 3 turns are sent, each conversation's turns
alternating between the two processes, about 5% of the turns failing (a 500).

At ``sample_rate=0.3`` the conversations kept are exactly those
:func:`~lemma_middleware.core.sampling.conversation_kept` keeps (so both processes keep the
same ones), their number lies within binomial bounds, every kept conversation arrives whole
(3 roots, each with its children), every failed turn arrives with its children, nothing of a
dropped turn arrives, no span's parent is missing, and each process's
``export_stats().sampling`` counts what it kept and dropped. At ``sample_rate=0`` only the
failed turns arrive."""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from examples.demo import ROOT, free_port, start_uvicorn, wait_until_up
from lemma_middleware.core.sampling import conversation_kept
from lemma_middleware.testing.records import ReceivedSpan

from .apps.flaky_destination import FlakyDestination
from .helpers import environ_without_destinations

pytest.importorskip("openai", reason="the llm extra is not installed")

CONVERSATIONS = 300
TURNS = 3
RATE = 0.3
FAIL_EVERY = 19
"""Every 19th turn (counting all turns) fails: 47 of 900, about 5%; 19 being odd, on both
processes alike."""
SERVERS = ("a", "b")
CONCURRENCY = 8
"""Conversations in flight at once (each one's turns are sent one after the other)."""
AGENT = "support-agent"
CHILDREN = {"lookup": "tool", "OpenAI-generation": "generation"}
"""Every turn's children: name -> Langfuse observation type."""
METADATA = "langfuse.trace.metadata."
KEPT_BECAUSE = METADATA + "sampling.kept_because"


@dataclass(frozen=True)
class Turn:
    thread: str
    number: int
    server: str
    fails: bool

    @property
    def message(self) -> str:
        return f"{self.thread} turn {self.number}"


@functools.cache
def conversations() -> tuple[tuple[Turn, ...], ...]:
    """300 conversations of 3 turns: turn 1 to server a, 2 to b, 3 to a, the pattern
    alternating (b, a, b) from one conversation to the next; about 5% of the turns fail."""
    result = []
    for c in range(CONVERSATIONS):
        thread = f"served-conv-{c:03d}"
        turns = [
            Turn(thread, n + 1, SERVERS[(c + n) % 2], (c * TURNS + n) % FAIL_EVERY == 7)
            for n in range(TURNS)
        ]
        result.append(tuple(turns))
    return tuple(result)


@dataclass(repr=False)
class Served:
    """One run: what was sent and answered, what each process counted, what arrived."""

    turns: tuple[Turn, ...]
    statuses: dict[Turn, int] = field(default_factory=dict)
    trace_ids: dict[Turn, str | None] = field(default_factory=dict)
    """The ``x-trace-id`` answered (none on a 500: uvicorn's error page is made outside the
    middleware)."""
    stats: dict[str, dict[str, Any]] = field(default_factory=dict)
    spans: list[ReceivedSpan] = field(default_factory=list)
    stderr: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def __repr__(self) -> str:  # what a failed assertion shows of the fixture
        return f"Served({len(self.turns)} turns, {len(self.spans)} spans, {self.seconds:.1f} s)"

    def where(self) -> str:
        """The servers' stderr tails, for assertion messages."""
        return "\n".join(f"--- {k}:\n{v[-2500:]}" for k, v in self.stderr.items())


@pytest.fixture(scope="module")
def fake_openai() -> Iterator[str]:
    process, url = start_uvicorn("tests.apps.fake_openai:app", dict(os.environ))
    try:
        yield f"{url}/v1"
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=20)


def send_conversation(
    clients: dict[str, httpx.Client], urls: dict[str, str], turns: tuple[Turn, ...]
) -> list[tuple[Turn, int, str | None]]:
    """Send one conversation's turns in order; each one's status and ``x-trace-id``."""
    answered = []
    for turn in turns:
        headers = {"x-conversation-id": turn.thread, "x-user-id": "alice"}
        body = {"message": turn.message}
        if turn.fails:  # uvicorn closes the connection after an unhandled exception
            headers["x-fail"] = "1"
            with httpx.Client(base_url=urls[turn.server], timeout=30) as once:
                response = once.post("/chat", json=body, headers=headers)
        else:
            response = clients[turn.server].post("/chat", json=body, headers=headers)
        answered.append((turn, response.status_code, response.headers.get("x-trace-id")))
    return answered


def wait_counted(url: str, turns: int, timeout: float = 30.0) -> dict[str, Any]:
    """The process's sampling counters once it has decided ``turns`` turns (a root may end
    just after its response went out)."""
    deadline = time.monotonic() + timeout
    while True:
        stats: dict[str, Any] = httpx.get(f"{url}/metrics", timeout=10).json()
        if stats["turns_kept"] + stats["turns_dropped"] >= turns or time.monotonic() > deadline:
            return stats
        time.sleep(0.1)


def send_all(served: Served, urls: dict[str, str]) -> None:
    """Send every conversation, ``CONCURRENCY`` at a time; record the answers."""
    with contextlib.ExitStack() as stack:
        clients = {
            name: stack.enter_context(httpx.Client(base_url=url, timeout=30))
            for name, url in urls.items()
        }
        with ThreadPoolExecutor(max_workers=CONCURRENCY) as pool:
            work = [pool.submit(send_conversation, clients, urls, c) for c in conversations()]
            for future in work:
                for turn, status, trace_id in future.result():
                    served.statuses[turn] = status
                    served.trace_ids[turn] = trace_id


def serve(rate: str, fake_openai: str) -> Served:
    """Serve the conversations at ``rate`` with two fresh processes, stop them (SIGTERM:
    uvicorn's lifespan shutdown delivers what is left) and collect what arrived."""
    served = Served(all_turns())
    destination = FlakyDestination().start()
    base = environ_without_destinations() | {
        "LEMMA_OTLP_ENDPOINT": destination.url,
        "LEMMA_SAMPLE_RATE": rate,
        "OPENAI_BASE_URL": fake_openai,
        "OPENAI_API_KEY": "sk-fake",
    }
    processes: dict[str, subprocess.Popen[str]] = {}
    urls: dict[str, str] = {}
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        logs = {name: stack.enter_context(tempfile.TemporaryFile("w+")) for name in SERVERS}
        try:
            for name in SERVERS:
                port = free_port()
                urls[name] = f"http://127.0.0.1:{port}"
                command = [sys.executable, "-m", "uvicorn", "tests.apps.sampling_app:app",
                           "--port", str(port), "--log-level", "warning"]  # fmt: skip
                env = base | {"SERVER_NAME": name}
                processes[name] = subprocess.Popen(
                    command, env=env, cwd=ROOT, stderr=logs[name], text=True
                )
            for name in SERVERS:
                wait_until_up(f"{urls[name]}/health", timeout=60)
            send_all(served, urls)
            for name in SERVERS:
                sent = sum(1 for turn in served.turns if turn.server == name)
                served.stats[name] = wait_counted(urls[name], sent)
            for process in processes.values():
                process.send_signal(signal.SIGTERM)
            for process in processes.values():
                process.wait(timeout=40)
        finally:
            for process in processes.values():
                if process.poll() is None:
                    process.kill()
                    process.wait()
            destination.stop()
            for name, log in logs.items():
                log.seek(0)
                served.stderr[name] = log.read()
    served.seconds = time.monotonic() - started
    with destination._lock:
        served.spans = [span for _, span in destination.received]
    return served


@pytest.fixture(scope="module")
def sampled(fake_openai: str) -> Served:
    return serve(str(RATE), fake_openai)


@pytest.fixture(scope="module")
def only_failures(fake_openai: str) -> Served:
    return serve("0", fake_openai)


# what arrived, turn by turn ---------------------------------------------------------------


@dataclass
class Arrived:
    root: ReceivedSpan
    children: list[ReceivedSpan]

    @property
    def kept_because(self) -> str | None:
        value = self.root.attributes.get(KEPT_BECAUSE)
        return json.loads(value) if isinstance(value, str) else None

    @property
    def server(self) -> str | None:
        value = self.root.attributes.get(METADATA + "server")
        return json.loads(value) if isinstance(value, str) else None


def arrived_by_turn(served: Served) -> dict[Turn, list[Arrived]]:
    """Every root that arrived, with the spans of its trace, by the turn it records (its
    input names the conversation and the turn); a list, so that a duplicate shows."""
    by_message = {turn.message: turn for turn in served.turns}
    by_trace: dict[str, list[ReceivedSpan]] = {}
    for span in served.spans:
        by_trace.setdefault(span.trace_id, []).append(span)
    result: dict[Turn, list[Arrived]] = {}
    for span in served.spans:
        if span.parent_span_id is not None:
            continue
        assert span.name == AGENT, span
        message = json.loads(span.attributes["langfuse.trace.input"])["message"]
        turn = by_message[message]
        children = [s for s in by_trace[span.trace_id] if s is not span]
        result.setdefault(turn, []).append(Arrived(span, children))
    return result


def check_whole(turn: Turn, arrived: list[Arrived], served: Served) -> Arrived:
    """The turn arrived once, from the process that served it, with its thread, its
    outcome and every child under its root."""
    assert len(arrived) == 1, (turn, [a.root.span_id for a in arrived])
    (trace,) = arrived
    root = trace.root
    assert root.attributes.get("session.id") == turn.thread, (turn, root.attributes)
    assert trace.server == turn.server, (turn, trace.server)
    if turn.fails:
        assert root.attributes.get("langfuse.observation.level") == "ERROR", (turn, root)
    else:
        assert root.attributes.get(METADATA + "http.status_code") == "200", (turn, root)
        assert served.trace_ids[turn] == root.trace_id, turn
    names = sorted(child.name for child in trace.children)
    assert names == sorted(CHILDREN), (turn, names, served.where())
    for child in trace.children:
        assert child.parent_span_id == root.span_id, (turn, child.name)
        assert child.attributes.get("langfuse.observation.type") == CHILDREN[child.name]
        assert child.attributes.get("session.id", turn.thread) == turn.thread, child
    assert "sampling.children_dropped" not in json.dumps(root.attributes), root.attributes
    return trace


@functools.cache
def all_turns() -> tuple[Turn, ...]:
    return tuple(turn for turns in conversations() for turn in turns)


@functools.cache
def kept_threads(rate: float) -> frozenset[str]:
    """The conversations :func:`conversation_kept` keeps at ``rate``."""
    return frozenset(t.thread for t in all_turns() if conversation_kept(t.thread, rate))


def kept_turns(rate: float) -> list[Turn]:
    """The turns that must arrive at ``rate``: every turn of a kept conversation, and every
    failed turn."""
    threads = kept_threads(rate)
    return [turn for turn in all_turns() if turn.thread in threads or turn.fails]


# the run at 0.3 ---------------------------------------------------------------------------


def test_every_turn_was_answered(sampled: Served) -> None:
    statuses = Counter(sampled.statuses[turn] for turn in sampled.turns)
    failing = sum(turn.fails for turn in sampled.turns)
    assert failing == 47, failing
    kept = kept_threads(RATE)
    for name in SERVERS:  # failures in kept and in dropped conversations, on both processes
        assert any(t.fails and t.server == name and t.thread in kept for t in sampled.turns)
        assert any(t.fails and t.server == name and t.thread not in kept for t in sampled.turns)
    assert statuses == {200: len(sampled.turns) - failing, 500: failing}, sampled.where()
    assert all(sampled.trace_ids[t] for t in sampled.turns if not t.fails)
    for name in SERVERS:  # the rate came from LEMMA_SAMPLE_RATE; no hold bound was reached
        assert "sampling keeps 0.3 of conversations" in sampled.stderr[name], sampled.where()
        assert "hold bound" not in sampled.stderr[name], sampled.where()


def test_the_conversations_kept_are_the_hash_decision_within_binomial_bounds(
    sampled: Served,
) -> None:
    expected = kept_threads(RATE)
    mean = CONVERSATIONS * RATE
    deviation = math.sqrt(CONVERSATIONS * RATE * (1 - RATE))
    assert mean - 4 * deviation <= len(expected) <= mean + 4 * deviation, len(expected)
    arrived = arrived_by_turn(sampled)
    kept_by_conversation = {
        turn.thread
        for turn, traces in arrived.items()
        for trace in traces
        if trace.kept_because != "error"
    }
    assert kept_by_conversation == expected, (
        sorted(kept_by_conversation - expected),
        sorted(expected - kept_by_conversation),
    )
    for turn, traces in arrived.items():
        for trace in traces:
            assert trace.kept_because == ("conversation" if turn.thread in expected else "error")
            assert trace.root.attributes.get(METADATA + "sampling.rate") == repr(RATE)


def test_both_processes_keep_the_same_conversations(sampled: Served) -> None:
    arrived = arrived_by_turn(sampled)
    by_server = {
        name: {
            turn.thread
            for turn, traces in arrived.items()
            for trace in traces
            if trace.server == name and trace.kept_because == "conversation"
        }
        for name in SERVERS
    }
    assert by_server["a"] == by_server["b"] == kept_threads(RATE)


def test_every_kept_conversation_arrives_whole(sampled: Served) -> None:
    arrived = arrived_by_turn(sampled)
    for turn in all_turns():
        if turn.thread in kept_threads(RATE):
            assert turn in arrived, (turn, sampled.where())
            check_whole(turn, arrived[turn], sampled)


def test_every_failed_turn_arrives_with_its_children(sampled: Served) -> None:
    arrived = arrived_by_turn(sampled)
    kept = kept_threads(RATE)
    failed = [turn for turn in all_turns() if turn.fails]
    assert any(turn.thread in kept for turn in failed)
    assert any(turn.thread not in kept for turn in failed)
    for turn in failed:
        assert turn in arrived, (turn, sampled.where())
        trace = check_whole(turn, arrived[turn], sampled)
        assert trace.kept_because == ("conversation" if turn.thread in kept else "error")


def test_nothing_of_a_dropped_turn_arrives_and_no_span_is_an_orphan(sampled: Served) -> None:
    arrived = arrived_by_turn(sampled)
    expected = kept_turns(RATE)
    assert set(arrived) == set(expected), sorted(t.message for t in set(arrived) ^ set(expected))
    assert len(sampled.spans) == len(expected) * (1 + len(CHILDREN))
    span_ids = Counter(span.span_id for span in sampled.spans)
    assert not [s for s, n in span_ids.items() if n > 1], "a span arrived twice"
    orphans = [
        (span.name, span.trace_id)
        for span in sampled.spans
        if span.parent_span_id is not None and span.parent_span_id not in span_ids
    ]
    assert not orphans, orphans
    dropped_trace_ids = {
        sampled.trace_ids[turn] for turn in all_turns() if turn not in set(expected)
    }
    assert not dropped_trace_ids & {span.trace_id for span in sampled.spans}


def test_each_process_counts_what_it_kept_and_dropped(sampled: Served) -> None:
    kept = kept_threads(RATE)
    for name in SERVERS:
        turns = [turn for turn in all_turns() if turn.server == name]
        by_conversation = sum(turn.thread in kept for turn in turns)
        by_error = sum(turn.fails and turn.thread not in kept for turn in turns)
        dropped = len(turns) - by_conversation - by_error
        stats = sampled.stats[name]
        assert stats["turns_kept"] == by_conversation + by_error, (name, stats)
        assert stats["turns_dropped"] == dropped, (name, stats)
        assert stats["kept_because"] == {"conversation": by_conversation, "error": by_error}, (
            name,
            stats,
        )
        assert stats["spans_dropped"] == dropped * (1 + len(CHILDREN)), (name, stats)
        assert stats["spans_dropped_hold_full"] == 0, (name, stats)
        assert (stats["held_spans"], stats["held_bytes"]) == (0, 0), (name, stats)


# the run at 0 -----------------------------------------------------------------------------


def test_sample_rate_zero_keeps_only_the_failed_turns(only_failures: Served) -> None:
    served = only_failures
    failed = [turn for turn in all_turns() if turn.fails]
    assert Counter(served.statuses.values()) == {
        200: len(all_turns()) - len(failed),
        500: len(failed),
    }
    arrived = arrived_by_turn(served)
    assert set(arrived) == set(failed), sorted(t.message for t in set(arrived) ^ set(failed))
    for turn in failed:
        trace = check_whole(turn, arrived[turn], served)
        assert trace.kept_because == "error"
        assert trace.root.attributes.get(METADATA + "sampling.rate") == "0.0"
    assert len(served.spans) == len(failed) * (1 + len(CHILDREN)), served.where()
    for name in SERVERS:
        turns = [turn for turn in all_turns() if turn.server == name]
        errors = sum(turn.fails for turn in turns)
        stats = served.stats[name]
        assert stats["turns_kept"] == errors, (name, stats)
        assert stats["turns_dropped"] == len(turns) - errors, (name, stats)
        assert stats["kept_because"] == {"error": errors}, (name, stats)
