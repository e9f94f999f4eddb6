"""What is recorded as input and output: parsing, bounds, binary, redaction."""

from __future__ import annotations

import json
import tracemalloc
from typing import Any

import pytest

from lemma_middleware import REDACTED
from lemma_middleware.core.capture import BodyCapture, render_body
from lemma_middleware.core.redaction import Redactor

from .apps.asgi_apps import make_app
from .helpers import Captured, post


def recorded_input(captured: Captured) -> Any:
    return captured.root().attributes.get("langfuse.observation.input")


async def test_json_body_is_parsed_and_redacted_at_any_depth(captured: Captured) -> None:
    body = {
        "message": "hi",
        "password": "hunter2",
        "profile": {"api_key": "sk-1", "tokens": [{"access_token": "abc", "n": 1}]},
        "openai_api_key": "sk-2",
        "max_tokens": 10,
    }
    await post(
        make_app(captured.client, redact_fields=["ssn_last4"]),
        "/chat/c",
        json={**body, "ssn_last4": "1234"},
    )
    recorded = json.loads(recorded_input(captured))
    assert recorded["message"] == "hi"
    assert recorded["password"] == REDACTED
    assert recorded["profile"]["api_key"] == REDACTED
    assert recorded["profile"]["tokens"][0]["access_token"] == REDACTED
    assert recorded["profile"]["tokens"][0]["n"] == 1
    assert recorded["openai_api_key"] == REDACTED
    assert recorded["ssn_last4"] == REDACTED
    assert recorded["max_tokens"] == 10
    assert "hunter2" not in json.dumps([dict(s.attributes) for s in captured.spans()])


async def test_form_body_is_a_dict_and_query_params_are_input_for_bodyless_requests(
    captured: Captured,
) -> None:
    app = make_app(captured.client)
    await post(
        app,
        "/raw",
        content=b"a=1&a=2&token=t0p",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert json.loads(recorded_input(captured)) == {"a": ["1", "2"], "token": REDACTED}
    captured.exporter.clear()
    import httpx

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        await c.get("/echo?q=weather&api_key=secret")
    assert json.loads(recorded_input(captured)) == {"q": "weather", "api_key": REDACTED}


async def test_text_binary_and_broken_json(captured: Captured) -> None:
    app = make_app(captured.client)
    await post(app, "/raw", content=b"plain words", headers={"content-type": "text/plain"})
    assert recorded_input(captured) == "plain words"
    captured.exporter.clear()
    payload = bytes(range(256)) * 4
    response = await post(app, "/raw", content=payload, headers={"content-type": "image/png"})
    assert response.text == "1024"  # the handler got every byte
    assert recorded_input(captured) == "<binary image/png, 1024 bytes>"
    captured.exporter.clear()
    await post(
        app,
        "/raw",
        content=b'{"message": "hi", "password": "x"',
        headers={"content-type": "application/json"},
    )
    recorded = recorded_input(captured)
    assert recorded.startswith('{"message": "hi"') and "[REDACTED]" in recorded
    assert '"x"' not in recorded


async def test_huge_body_is_truncated_with_a_marker_and_the_handler_gets_it_all(
    captured: Captured,
) -> None:
    app = make_app(captured.client, max_body_bytes=1024)
    body = b'{"message": "' + b"a" * 5_000_000 + b'"}'
    response = await post(app, "/raw", content=body, headers={"content-type": "application/json"})
    assert response.text == str(len(body))
    recorded = recorded_input(captured)
    assert recorded.endswith(f"… [truncated: {len(body)} bytes in total, first 1024 recorded]")
    assert len(recorded) < 1200


def test_capture_memory_is_bounded_for_a_1_gb_stream() -> None:
    capture = BodyCapture(64 * 1024)
    chunk = b"x" * (1024 * 1024)
    tracemalloc.start()
    for _ in range(1024):
        capture.feed(chunk)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert capture.total == 1024 * 1024 * 1024
    assert capture.kept == 64 * 1024
    assert peak < 1024 * 1024


@pytest.mark.parametrize(
    ("content_type", "encoding", "body", "expected"),
    [
        ("text/event-stream", None, b"data: a\n\ndata: b\n\ndata: [DONE]\n\n", "ab"),
        ("application/json", "gzip", b"\x1f\x8b...", "<gzip-encoded application/json, 5 bytes>"),
        (
            "application/octet-stream",
            None,
            b"\x00\x01",
            "<binary application/octet-stream, 2 bytes>",
        ),
        (None, None, b"hello", "hello"),
        (None, None, b"\xff\xfe\x00", "<binary body, 3 bytes>"),
        ("multipart/form-data; boundary=x", None, b"--x--", "<multipart/form-data, 5 bytes>"),
    ],
)
def test_rendering_rules(
    content_type: str | None, encoding: str | None, body: bytes, expected: str
) -> None:
    capture = BodyCapture(1024)
    capture.feed(body)
    assert render_body(capture, content_type, encoding, Redactor(), "response") == expected


def test_redaction_of_unparseable_text() -> None:
    redactor = Redactor()
    text = redactor.redact_text(
        '{"user": "a", "Password": "p\\"w", "db-token": 123} api_key=abc&x=1'
    )
    assert 'p\\"w' not in text and "123" not in text and "abc" not in text
    assert '"user": "a"' in text and "x=1" in text


async def test_a_1_gb_streamed_response_passes_through_in_bounded_memory(
    captured: Captured,
) -> None:
    from lemma_middleware import LemmaMiddleware

    chunk = b"data: " + b"x" * (1024 * 1024 - 8) + b"\n\n"

    async def streaming_app(scope: Any, receive: Any, send: Any) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        for _ in range(1024):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    app = LemmaMiddleware(streaming_app, langfuse=captured.client, agent_name="streamer")
    received = 0

    async def receive() -> Any:
        return {"type": "http.request", "body": b""}

    async def send(message: Any) -> None:
        nonlocal received
        received += len(message.get("body", b""))

    scope = {"type": "http", "method": "GET", "path": "/stream", "query_string": b"", "headers": []}
    tracemalloc.start()
    await app(scope, receive, send)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert received == 1024 * len(chunk)
    assert peak < 4 * 1024 * 1024, peak
    output = captured.root().attributes["langfuse.observation.output"]
    assert f"truncated: {1024 * len(chunk)} bytes in total" in output


async def test_the_langfuse_clients_mask_function_applies_to_recorded_io() -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    def mask(*, data: Any, **kwargs: Any) -> Any:
        return "<masked>" if "secret-project" in json.dumps(data) else data

    exporter = InMemorySpanExporter()
    from langfuse import Langfuse

    client = Langfuse(
        public_key="pk-mask-test",
        secret_key="sk",
        span_exporter=exporter,
        tracer_provider=TracerProvider(),
        mask=mask,
    )
    app = make_app(client)
    await post(app, "/chat/c", json={"message": "about secret-project"})
    client.flush()
    (root,) = [s for s in exporter.get_finished_spans() if s.parent is None]
    assert root.attributes["langfuse.trace.input"] == "<masked>"
    assert root.attributes["langfuse.observation.input"] == "<masked>"
