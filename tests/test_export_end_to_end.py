"""Real uvicorn, real HTTP export by the Langfuse SDK, real OTLP protobuf on 127.0.0.1."""

from __future__ import annotations

import base64
import signal
import time
from collections.abc import Iterator
from functools import partial
from typing import Any

import httpx
import pytest

from examples.demo import free_port, start_gunicorn, start_uvicorn
from lemma_middleware import resolve_destinations
from lemma_middleware.inbox.receiver import OTLPReceiver

from .helpers import environ_without_destinations, langfuse_environ

PROJECT_ID = "5b0c7b3e-8f6d-4a43-9d0e-3f1f6f2b9a11"


def serve(
    env: dict[str, str], start: Any = start_uvicorn, app: str = "examples.fastapi_app.app:app"
) -> Iterator[str]:
    clean = environ_without_destinations()
    process, url = start(app, {**clean, **env})
    try:
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) in (0, -signal.SIGTERM)  # uvicorn re-raises SIGTERM


@pytest.fixture
def receiver() -> Iterator[OTLPReceiver]:
    with OTLPReceiver(keys={"pk-e2e": "sk-e2e"}, bearer="lemma-key") as r:
        yield r


def chat(url: str, message: str, thread: str, stream: bool = False) -> httpx.Response:
    return httpx.post(
        f"{url}/chat/stream" if stream else f"{url}/chat",
        json={"message": message},
        headers={
            "authorization": "Bearer token-alice",
            "x-conversation-id": thread,
            "x-tenant-id": "acme",
        },
        timeout=10,
    )


def test_example_under_uvicorn_exports_real_protobuf_to_langfuse_endpoint(
    receiver: OTLPReceiver,
) -> None:
    env = langfuse_environ(receiver.base_url, "pk-e2e", "sk-e2e")
    for url in serve(env):
        assert chat(url, "hello", "thread-1").status_code == 200
        assert chat(url, "refund please", "thread-1", stream=True).status_code == 200
    assert receiver.wait_for(lambda spans: len(spans) >= 4, 10)
    (request, *_) = receiver.requests
    assert request.path == "/api/public/otel/v1/traces"
    assert request.content_type == "application/x-protobuf"
    assert (
        request.headers["authorization"] == "Basic " + base64.b64encode(b"pk-e2e:sk-e2e").decode()
    )
    roots = [s for s in receiver.spans if s.parent_span_id is None]
    assert len(roots) == 2
    ids = {s.span_id for s in receiver.spans}
    for span in receiver.spans:
        assert span.parent_span_id is None or span.parent_span_id in ids
        assert span.resource["service.name"] == "support-agent"
    for root in roots:
        a = root.attributes
        assert (
            a["session.id"] == "thread-1"
            and a["user.id"] == "alice"
            and a["app.tenant.id"] == "acme"
        )
        assert a["langfuse.trace.name"] == "support-agent"
        assert a["langfuse.trace.input"] and a["langfuse.trace.output"]
        assert "token-alice" not in str(a)
    streamed = next(r for r in roots if "refund" in r.attributes["langfuse.trace.input"])
    assert streamed.attributes["langfuse.trace.output"].startswith("I have opened a refund")


def test_lemma_and_langfuse_at_once_each_with_their_own_auth(receiver: OTLPReceiver) -> None:
    env = langfuse_environ(receiver.base_url, "pk-e2e", "sk-e2e") | {
        "LEMMA_API_KEY": "lemma-key",
        "LEMMA_PROJECT_ID": PROJECT_ID,
        "LEMMA_BASE_URL": f"{receiver.base_url}/otel/v1/traces",
    }
    for url in serve(env):
        assert chat(url, "hello", "thread-2").status_code == 200
    assert receiver.wait_for(lambda spans: len(spans) >= 4, 10)
    by_path = {r.path: r for r in receiver.requests}
    assert set(by_path) == {"/api/public/otel/v1/traces", "/otel/v1/traces"}
    lemma = by_path["/otel/v1/traces"]
    assert lemma.headers["authorization"] == "Bearer lemma-key"
    assert lemma.headers["x-lemma-project-id"] == PROJECT_ID
    assert lemma.content_type == "application/x-protobuf" and lemma.gzip
    for request in receiver.requests:
        names = sorted(s.name for s in request.spans)
        assert names == ["fake-llm", "support-agent"]


def test_lemma_only_needs_no_langfuse_account(receiver: OTLPReceiver) -> None:
    env = {
        "LEMMA_API_KEY": "lemma-key",
        "LEMMA_PROJECT_ID": PROJECT_ID,
        "LEMMA_BASE_URL": f"{receiver.base_url}/otel/v1/traces",
    }
    for url in serve(env):
        assert chat(url, "hello", "thread-3").status_code == 200
    assert receiver.wait_for(lambda spans: len(spans) >= 2, 10)
    assert {r.path for r in receiver.requests} == {"/otel/v1/traces"}


@pytest.mark.parametrize(
    ("start", "app"),
    [
        (start_uvicorn, "examples.fastapi_app.app:app"),
        (start_gunicorn, "examples.flask_app.app:app"),
    ],
    ids=["asgi-uvicorn", "wsgi-gunicorn"],
)
def test_langfuse_unreachable_costs_the_requests_nothing(start: Any, app: str) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    env = langfuse_environ(dead, "pk-e2e", "sk-e2e") | {"LANGFUSE_FLUSH_INTERVAL": "0.05"}
    started = time.monotonic()
    for url in serve(env, start, app):
        durations = []
        for i in range(20):
            t0 = time.monotonic()
            assert chat(url, f"hello {i}", "thread-4").status_code == 200
            durations.append(time.monotonic() - t0)
        assert max(durations) < 1.0, durations
    assert time.monotonic() - started < 40  # shutdown's flush is bounded too


def test_misconfiguration_is_reported_and_that_destination_left_out() -> None:
    destinations, problems = resolve_destinations(
        environ={
            "LEMMA_API_KEY": "k",
            "LEMMA_PROJECT_ID": "not-a-uuid",
            "LANGFUSE_PUBLIC_KEY": "pk",
        }
    )
    assert destinations == []
    assert any("not a UUID" in p for p in problems)
    assert any("LANGFUSE_SECRET_KEY is not set" in p for p in problems)
    destinations, problems = resolve_destinations(
        environ={
            "LEMMA_OTLP_ENDPOINT": "http://collector:4318/v1/traces",
            "LEMMA_OTLP_HEADERS": "x-team=a,x-env=b",
        }
    )
    assert problems == [] and destinations[0].headers == {"x-team": "a", "x-env": "b"}


@pytest.mark.parametrize("preload", [False, True])
def test_flask_example_under_gunicorn_workers_exports_every_trace(
    receiver: OTLPReceiver, preload: bool
) -> None:
    env = langfuse_environ(receiver.base_url, "pk-e2e", "sk-e2e")
    start = partial(start_gunicorn, preload=preload)
    trace_ids: set[str] = set()
    for url in serve(env, start, "examples.flask_app.app:app"):
        with httpx.Client(timeout=10) as client:
            for i in range(12):
                stream = i % 3 == 0
                response = client.post(
                    f"{url}/chat/stream" if stream else f"{url}/chat",
                    json={"message": f"hello {i}"},
                    headers={
                        "authorization": "Bearer token-bob",
                        "x-conversation-id": f"thread-{i}",
                    },
                )
                assert response.status_code == 200
                trace_ids.add(response.headers["x-trace-id"])
    assert receiver.wait_for(lambda spans: sum(s.parent_span_id is None for s in spans) >= 12, 15)
    spans = receiver.spans
    roots = [s for s in spans if s.parent_span_id is None]
    assert sorted(r.attributes["session.id"] for r in roots) == sorted(
        f"thread-{i}" for i in range(12)
    )
    assert {r.trace_id for r in roots} == trace_ids
    ids = {s.span_id for s in spans}
    for span in spans:
        assert span.parent_span_id is None or span.parent_span_id in ids
        root = next(r for r in roots if r.trace_id == span.trace_id)
        assert span.attributes["session.id"] == root.attributes["session.id"]
        assert span.attributes["user.id"] == "bob"
    streamed = [r for r in roots if r.attributes["session.id"] in {"thread-0", "thread-3"}]
    assert all(
        r.attributes["langfuse.trace.output"].startswith("You said: hello") for r in streamed
    )


def test_batching_defaults_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from lemma_middleware import build_client
    from lemma_middleware.export.settings import DEFAULT_FLUSH_AT, DEFAULT_FLUSH_INTERVAL

    def batching(**kwargs: Any) -> tuple[int, float]:
        client = build_client(
            span_exporter=InMemorySpanExporter(), tracer_provider=TracerProvider(), **kwargs
        )
        resources = client._resources  # type: ignore[union-attr]
        return resources.flush_at, resources.flush_interval

    monkeypatch.delenv("LANGFUSE_FLUSH_AT", raising=False)
    monkeypatch.delenv("LANGFUSE_FLUSH_INTERVAL", raising=False)
    assert batching() == (DEFAULT_FLUSH_AT, DEFAULT_FLUSH_INTERVAL) == (128, 1.0)
    monkeypatch.setenv("LANGFUSE_FLUSH_AT", "512")
    monkeypatch.setenv("LANGFUSE_FLUSH_INTERVAL", "5")
    assert batching() == (512, 5.0)
    assert batching(flush_at=64, flush_interval=0.5) == (64, 0.5)
