"""Errors, warnings, disconnects, exclusions, and an app that never breaks because of us."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import httpx
import pytest
from fastapi import WebSocket
from starlette.types import Message

from lemma_middleware import LemmaMiddleware

from .apps.asgi_apps import make_app
from .helpers import HEADERS, Captured, post


async def test_exception_is_recorded_as_error_and_reraised_unchanged(captured: Captured) -> None:
    app = make_app(captured.client)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=True)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        with pytest.raises(ValueError, match="model exploded"):
            await client.post("/boom", json={"message": "go"}, headers=HEADERS)
    a = captured.root().attributes
    assert a["langfuse.observation.level"] == "ERROR"
    assert a["langfuse.observation.status_message"] == "ValueError: model exploded"
    assert json.loads(a["langfuse.trace.input"]) == {"message": "go"}
    assert "langfuse.observation.output" not in a


async def test_4xx_is_a_warning_and_5xx_an_error(captured: Captured) -> None:
    app = make_app(captured.client)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as client:
        assert (await client.get("/missing")).status_code == 404
        assert (await client.get("/unavailable")).status_code == 503
    levels = {
        json.loads(s.attributes["langfuse.trace.metadata.http.status_code"]): (
            s.attributes["langfuse.observation.level"],
            s.attributes["langfuse.observation.status_message"],
        )
        for s in captured.roots()
    }
    assert levels == {404: ("WARNING", "HTTP 404"), 503: ("ERROR", "HTTP 503")}


async def drive(
    app: Any, scope_extra: dict[str, Any], messages: list[Message], stop_after_chunks: int
) -> list[Message]:
    """A raw ASGI driver: the client goes away after ``stop_after_chunks`` body chunks."""
    sent: list[Message] = []
    incoming = list(messages)
    gone = asyncio.Event()

    async def receive() -> Message:
        if incoming:
            return incoming.pop(0)
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)
        chunks = sum(m["type"] == "http.response.body" for m in sent)
        if message.get("more_body") and chunks >= stop_after_chunks:
            gone.set()

    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/",
        "raw_path": b"/",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"x-conversation-id", b"conv-d")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
        **scope_extra,
    }
    await asyncio.wait_for(app(scope, receive, send), 5)
    return sent


async def test_client_disconnect_mid_stream_ends_the_root_saying_so(captured: Captured) -> None:
    app = make_app(captured.client)
    sent = await drive(
        app, {"path": "/stream", "raw_path": b"/stream"}, [{"type": "http.request", "body": b""}], 1
    )
    assert sent[0]["type"] == "http.response.start"
    root = captured.root()
    a = root.attributes
    assert a["langfuse.observation.level"] == "WARNING"
    assert (
        a["langfuse.observation.status_message"]
        == "client disconnected before the response was complete"
    )
    assert a["session.id"] == "conv-d"
    assert root.end_time is not None


async def test_excluded_paths_and_methods_are_not_traced(captured: Captured) -> None:
    app = make_app(captured.client)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as client:
        await client.get("/health")
        await client.options("/chat/x")
        await client.get("/healthcare")  # anchored: not excluded (404, but traced)
    roots = captured.roots()
    paths = [json.loads(s.attributes["langfuse.trace.metadata.http.path"]) for s in roots]
    assert paths == ["/healthcare"]


async def test_no_keys_serves_requests_untraced_and_logs_once(
    no_destinations: None, caplog: pytest.LogCaptureFixture
) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    with caplog.at_level(logging.WARNING, logger="lemma_middleware"):
        traced = LemmaMiddleware(app, agent_name="support-agent")
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=traced), base_url="http://t"
        ) as client:
            responses = [await client.post("/chat") for _ in range(3)]
    assert all(r.text == "ok" and "x-trace-id" not in r.headers for r in responses)
    off = [r for r in caplog.records if "tracing is off" in r.getMessage()]
    assert len(off) == 1


@pytest.mark.expect_internal_errors
async def test_a_resolver_that_raises_costs_the_request_nothing(
    captured: Captured, no_internal_errors: Any
) -> None:
    def resolver(request: Any) -> dict[str, str]:
        raise KeyError("no session")

    app = make_app(captured.client, identity_resolver=resolver)
    for _ in range(3):
        response = await post(app, "/chat/c", json={"message": "hi"}, headers=HEADERS)
        assert response.status_code == 200
    assert len(captured.roots()) == 3
    assert captured.roots()[0].attributes["user.id"] == "user-7"
    assert len(no_internal_errors.records) == 1  # logged once, not per request


@pytest.mark.expect_internal_errors
async def test_a_failure_inside_the_middleware_is_logged_and_the_request_goes_on(
    captured: Captured, monkeypatch: pytest.MonkeyPatch, no_internal_errors: Any
) -> None:
    from lemma_middleware.request.trace import RequestTrace

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("bug in lemma_middleware")

    monkeypatch.setattr(RequestTrace, "__init__", broken)
    response = await post(make_app(captured.client), "/chat/c", json={"message": "hi"})
    assert response.json() == {"answer": "HI"}
    assert no_internal_errors.records


async def test_websocket_and_lifespan_pass_through_and_shutdown_flushes(
    captured: Captured, monkeypatch: pytest.MonkeyPatch
) -> None:
    from starlette.testclient import TestClient

    from lemma_middleware.adapters.tracing import Tracing

    flushes: list[Tracing] = []
    monkeypatch.setattr(Tracing, "flush", lambda self: flushes.append(self))
    app = make_app(captured.client)

    @app.websocket("/ws")
    async def ws(socket: WebSocket) -> None:
        await socket.accept()
        await socket.send_text("hello")
        await socket.close()

    with TestClient(app) as client:
        with client.websocket_connect("/ws") as socket:
            assert socket.receive_text() == "hello"
        assert flushes == []
    assert len(flushes) == 1  # lifespan shutdown flushed pending traces
    assert captured.exporter.get_finished_spans() == ()  # nothing traced for a websocket
