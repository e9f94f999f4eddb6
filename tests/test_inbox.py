"""The local inbox: real SDK exports stored in SQLite, bad input refused, views and checker."""

from __future__ import annotations

import base64
import gzip
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from google.protobuf.json_format import MessageToDict
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import TracerProvider

from lemma_middleware import build_client
from lemma_middleware.inbox.cli import main
from lemma_middleware.inbox.server import Inbox
from lemma_middleware.inbox.store import SpanStore
from lemma_middleware.testing.records import ReceivedSpan

from .apps.asgi_apps import make_app
from .helpers import Captured, post

KEYS = {"pk-inbox": "sk-inbox"}
AUTH = {"authorization": "Basic " + base64.b64encode(b"pk-inbox:sk-inbox").decode()}
TURNS = [("alice", "thread-a", "hello"), ("alice", "thread-a", "more"), ("bob", "thread-b", "hi")]


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "inbox.sqlite3"


@pytest.fixture
def inbox(db: Path) -> Iterator[Inbox]:
    lines: list[str] = []
    with Inbox(db, port=0, keys=KEYS, announce=lines.append) as running:
        running.lines = lines  # type: ignore[attr-defined]
        yield running


async def play(client: object) -> None:
    app = make_app(client)  # type: ignore[arg-type]
    for user, thread, message in TURNS:
        headers = {"x-user-id": user, "x-conversation-id": thread, "x-tenant-id": "acme"}
        assert (
            await post(app, f"/chat/{thread}", json={"message": message}, headers=headers)
        ).status_code == 200


async def test_real_sdk_export_round_trip_and_one_line_per_trace(inbox: Inbox, db: Path) -> None:
    client = build_client(
        langfuse_public_key="pk-inbox",
        langfuse_secret_key="sk-inbox",
        langfuse_host=inbox.base_url,
        tracer_provider=TracerProvider(),
    )
    assert client is not None
    await play(client)
    client.flush()
    spans = SpanStore(db).spans()
    assert len(spans) == 6
    assert inbox.receiver.requests[0].gzip  # the SDK sends gzip protobuf
    lines = inbox.lines  # type: ignore[attr-defined]
    assert len(lines) == 3 and all("agent=support-agent" in line for line in lines)
    assert "thread=thread-a user=alice tenant=acme" in lines[0]


def otlp_json(captured: Captured) -> bytes:
    document = MessageToDict(encode_spans(captured.spans()))
    for resource_spans in document["resourceSpans"]:  # OTLP/JSON: ids in hex
        for scope_spans in resource_spans["scopeSpans"]:
            for span in scope_spans["spans"]:
                for key in ("traceId", "spanId", "parentSpanId"):
                    if key in span:
                        span[key] = base64.b64decode(span[key]).hex()
    return json.dumps(document).encode()


@pytest.mark.parametrize("compressed", [False, True])
async def test_otlp_json_export_is_accepted_gzip_or_not(
    inbox: Inbox, db: Path, captured: Captured, compressed: bool
) -> None:
    await play(captured.client)
    body = otlp_json(captured)
    headers = {**AUTH, "content-type": "application/json"}
    if compressed:
        body, headers["content-encoding"] = gzip.compress(body), "gzip"
    response = httpx.post(
        f"{inbox.base_url}/api/public/otel/v1/traces", content=body, headers=headers
    )
    assert response.status_code == 200
    stored = SpanStore(db).spans()
    expected = {
        (format(s.context.trace_id, "032x"), format(s.context.span_id, "016x"))
        for s in captured.spans()
    }
    assert {(s.trace_id, s.span_id) for s in stored} == expected


@pytest.mark.parametrize(
    ("headers", "body", "status"),
    [
        ({"content-type": "application/x-protobuf"}, b"\n\x05", 401),  # no credentials
        (
            {
                "authorization": "Basic " + base64.b64encode(b"pk-inbox:wrong").decode(),
                "content-type": "application/x-protobuf",
            },
            b"",
            401,
        ),
        ({**AUTH, "content-type": "text/plain"}, b"hello", 415),
        ({**AUTH, "content-type": "application/x-protobuf"}, b"\x0a\xff\xff\xff", 400),  # truncated
        ({**AUTH, "content-type": "application/json"}, b'{"resourceSpans": [', 400),
        (
            {**AUTH, "content-type": "application/x-protobuf", "content-encoding": "gzip"},
            b"not gzip",
            400,
        ),
        ({**AUTH, "content-type": "application/x-protobuf"}, b"\0" * (20 * 1024 * 1024), 413),
    ],
    ids=[
        "no-auth",
        "bad-secret",
        "content-type",
        "truncated-protobuf",
        "broken-json",
        "bad-gzip",
        "20MB",
    ],
)
def test_bad_requests_get_a_clear_4xx_and_store_nothing(
    inbox: Inbox, db: Path, headers: dict[str, str], body: bytes, status: int
) -> None:
    response = httpx.post(
        f"{inbox.base_url}/api/public/otel/v1/traces", content=body, headers=headers, timeout=30
    )
    assert response.status_code == status
    assert response.json()["error"]
    assert SpanStore(db).spans() == []


async def test_a_truncated_real_payload_is_refused_whole(
    inbox: Inbox, db: Path, captured: Captured
) -> None:
    await play(captured.client)
    payload = encode_spans(captured.spans()).SerializeToString()
    response = httpx.post(
        f"{inbox.base_url}/api/public/otel/v1/traces",
        content=payload[: len(payload) // 2],
        headers={**AUTH, "content-type": "application/x-protobuf"},
    )
    assert response.status_code == 400
    assert SpanStore(db).spans() == []


async def test_data_survives_a_restart_and_concurrent_writers_are_safe(
    db: Path, captured: Captured
) -> None:
    await play(captured.client)
    payload = encode_spans(captured.spans()).SerializeToString()
    with Inbox(db, port=0, keys=KEYS, announce=None) as first:
        url = f"{first.base_url}/api/public/otel/v1/traces"
        results: list[int] = []

        def send() -> None:
            for _ in range(10):
                results.append(
                    httpx.post(
                        url,
                        content=payload,
                        headers={**AUTH, "content-type": "application/x-protobuf"},
                    ).status_code
                )

        threads = [threading.Thread(target=send) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert results == [200] * 80
    with Inbox(db, port=0, keys=KEYS, announce=None):
        assert len(SpanStore(db).spans()) == 6  # re-sent spans replace, nothing duplicated


async def test_threads_show_and_check_commands(
    db: Path, captured: Captured, capsys: pytest.CaptureFixture[str]
) -> None:
    await play(captured.client)
    from lemma_middleware.testing.contract import as_records

    SpanStore(db).add(as_records(captured.spans()))
    assert main(["--db", str(db), "threads"]) == 0
    out = capsys.readouterr().out
    assert "thread-a" in out and "alice" in out and "acme" in out
    assert main(["--db", str(db), "threads", "--json"]) == 0
    threads = {t["thread_id"]: t for t in json.loads(capsys.readouterr().out)}
    assert threads["thread-a"]["turns"] == 2 and threads["thread-a"]["users"] == ["alice"]
    assert threads["thread-b"]["turns"] == 1
    assert main(["--db", str(db), "show", "thread-a"]) == 0
    out = capsys.readouterr().out
    assert (
        out.count("turn ") == 2
        and "- support-agent [agent]" in out
        and "  - llm-call [generation]" in out
    )
    assert 'in : {"message":"hello"}' in out  # recorded as the client sent it
    assert main(["--db", str(db), "show", "nope"]) == 1
    capsys.readouterr()
    assert main(["--db", str(db), "check"]) == 0
    assert "checked 3 traces: conformant" in capsys.readouterr().out


def test_check_exits_non_zero_on_violations(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from .helpers import span

    SpanStore(db).add([span("r", None, {})])
    assert main(["--db", str(db), "check"]) == 1
    out = capsys.readouterr().out
    assert "input: root has no input" in out and "checked 1 traces: 1 with violations" in out
    assert main(["--db", str(db), "check", "--json"]) == 1
    assert {v["rule"] for v in json.loads(capsys.readouterr().out)} >= {"input", "user", "thread"}


@pytest.mark.parametrize("stop_signal", ["SIGINT", "SIGTERM"])
async def test_inbox_command_serves_stores_and_stops_even_when_started_in_the_background(
    db: Path, captured: Captured, stop_signal: str
) -> None:
    """Started from a script with ``&``, a process inherits SIGINT as ignored; the inbox
    must still stop on Ctrl-C (SIGINT) and on SIGTERM."""
    import signal
    import subprocess
    import sys
    import time

    from examples.demo import free_port

    await play(captured.client)
    payload = encode_spans(captured.spans()).SerializeToString()
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "lemma_middleware",
        "--db",
        str(db),
        "inbox",
        "--port",
        str(port),
        "--key",
        "pk-inbox:sk-inbox",
    ]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),  # as `cmd &` does
    )
    try:
        url = f"http://127.0.0.1:{port}/api/public/otel/v1/traces"
        deadline = time.monotonic() + 20
        while True:
            try:
                response = httpx.post(
                    url, content=payload, headers={**AUTH, "content-type": "application/x-protobuf"}
                )
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert response.status_code == 200
    finally:
        process.send_signal(getattr(signal, stop_signal))
        try:
            out, _ = process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    assert process.returncode == 0
    assert f"LANGFUSE_HOST=http://127.0.0.1:{port}" in out
    assert out.count("trace ") == 3  # one line per arriving trace
    assert len(SpanStore(db).spans()) == 6


def test_every_command_agrees_on_the_database_wherever_it_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """No ``--db``: the per-user default, not the working directory; ``--db`` before or
    after the command; ``check`` on no trace says so and fails."""
    monkeypatch.delenv("LEMMA_INBOX_DB", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    default = tmp_path / "data" / "lemma-middleware" / "inbox.sqlite3"
    SpanStore(default).add(
        [ReceivedSpan("a" * 32, "b" * 16, None, "agent", 0, 1, {"session.id": "t-1"}, {}, "s", 0)]
    )
    assert main(["threads"]) == 0
    assert "t-1" in capsys.readouterr().out
    assert list(elsewhere.iterdir()) == []  # no stray database in the working directory
    other = tmp_path / "other.sqlite3"
    assert main(["threads", "--db", str(other)]) == 0  # --db after the command
    assert "no threads yet" in capsys.readouterr().out
    assert main(["check", "--db", str(other)]) == 2
    assert "no traces" in capsys.readouterr().err


async def test_received_traces_are_indexed_in_the_background_and_before_the_inbox_stops(
    db: Path, captured: Captured
) -> None:
    """Receiving stores spans only (the indexer thread builds the rows the pages read), so an
    export never waits on indexing; what arrives just before the inbox stops is indexed too."""
    await play(captured.client)
    payload = encode_spans(captured.spans()).SerializeToString()
    headers = {**AUTH, "content-type": "application/x-protobuf"}
    with Inbox(db, port=0, keys=KEYS, announce=None) as inbox:
        url = f"{inbox.base_url}/api/public/otel/v1/traces"
        assert httpx.post(url, content=payload, headers=headers).status_code == 200
        deadline = time.monotonic() + 10
        while not inbox.store.threads() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert {t.thread_id for t in inbox.store.threads()} == {"thread-a", "thread-b"}
    with Inbox(db, port=0, keys=KEYS, announce=None) as inbox:  # posted, then stopped at once
        url = f"{inbox.base_url}/api/public/otel/v1/traces"
        assert httpx.post(url, content=payload, headers=headers).status_code == 200
    assert SpanStore(db).index_pending() == 0  # nothing was left unindexed


def _root_of_turn(number: int) -> ReceivedSpan:
    attributes = {"session.id": f"t-{number % 7}", "langfuse.trace.input": "hi"}
    return ReceivedSpan(f"{number:032x}", "b" * 16, None, "agent", 0, 1, attributes, {}, "s", 0)


def test_while_spans_keep_arriving_the_indexer_rests_and_it_catches_up_after(db: Path) -> None:
    """Indexing yields to receiving (same process, same cores): while spans arrived in the
    last second it works in small transactions and rests three times as long as each took;
    once arrivals stop every trace is indexed."""
    from lemma_middleware.inbox import server

    with Inbox(db, port=0, announce=None) as inbox:
        assert not inbox.receiving_busy()
        started = time.monotonic()
        assert inbox._pace(0.2) == server.QUIET_PER_TRANSACTION  # quiet: no rest
        assert time.monotonic() - started < 0.1
        for number in range(400):  # arrivals for about a second
            inbox._on_spans([_root_of_turn(number)])
            time.sleep(0.002)
        assert inbox.receiving_busy()
        started = time.monotonic()
        assert inbox._pace(0.02) == server.BUSY_PER_TRANSACTION
        rested = time.monotonic() - started
        assert 0.05 <= rested < 0.5  # 0.02 s at a 25% share: 0.06 s of rest
        deadline = time.monotonic() + 10
        while _pending(db):
            assert time.monotonic() < deadline, "the indexer did not catch up"
            time.sleep(0.05)
        assert inbox.store.trace_count() == 400
        assert sum(t.turns for t in inbox.store.threads()) == 400


def _pending(db: Path) -> int:
    """Traces stored and not indexed yet (read beside the inbox, indexing nothing)."""
    import sqlite3

    with sqlite3.connect(db) as connection:
        return int(connection.execute("SELECT COUNT(*) FROM pending").fetchone()[0])


def test_the_inbox_answers_keep_alive_requests_without_a_delayed_ack_stall(db: Path) -> None:
    """Accepted connections inherit TCP_NODELAY from the listening socket: without it every
    request after a connection's first waits ~40 ms for the client's delayed ACK."""
    import socket

    with Inbox(db, port=0, announce=None) as inbox:
        listening = inbox.receiver._socket
        assert listening.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
