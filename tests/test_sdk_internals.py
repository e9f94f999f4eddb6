"""Private SDK state is read in one module, checked at start-up, with a public fallback;
privacy fails closed."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from langfuse import Langfuse
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from lemma_middleware.contract import check_traces
from lemma_middleware.sdk import CLIENT_INTERNALS, check_span_internals

from .apps import make_app
from .conftest import Captured, assert_tree_whole
from .test_trace_contract import HEADERS, post

_keys = itertools.count()


def test_the_installed_sdks_have_every_internal_the_fast_paths_use(captured: Captured) -> None:
    assert check_span_internals() == (True, True)
    from lemma_middleware.sdk import inspect_client

    access = inspect_client(captured.client)
    assert access.enabled and access.mask_known
    assert access.provider is captured.provider
    assert access.public_key is not None and access.public_key.startswith("pk-lemma-test-")


@pytest.mark.expect_internal_errors
async def test_without_the_private_tracer_roots_start_through_the_public_api(
    captured: Captured, no_internal_errors: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(CLIENT_INTERNALS, "tracer", "_renamed_otel_tracer")
    await post(make_app(captured.client), "/children", json={"message": "hi"}, headers=HEADERS)
    spans = captured.spans()
    assert_tree_whole(spans)
    assert check_traces(spans) == []
    root = captured.root()
    assert root.attributes["langfuse.observation.type"] == "agent"
    assert root.attributes["session.id"] == "conv-42"
    assert root.attributes["lemma.thread_id"] == "conv-42"
    assert len(captured.children(root)) == 3
    messages = [r.getMessage() for r in no_internal_errors.records]
    assert any("Langfuse._otel_tracer" in m for m in messages), messages


@pytest.mark.expect_internal_errors
async def test_an_unreadable_mask_means_no_bodies_are_recorded(
    captured: Captured, no_internal_errors: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(CLIENT_INTERNALS, "mask", "_renamed_mask")
    app = make_app(captured.client)
    await post(app, "/chat/c", json={"message": "my password is hunter2"}, headers=HEADERS)
    root = captured.root()
    assert "langfuse.observation.input" not in root.attributes
    assert "langfuse.observation.output" not in root.attributes
    assert "langfuse.trace.input" not in root.attributes
    assert root.attributes["session.id"] == "conv-42"  # the rest of the trace is intact
    assert root.attributes["langfuse.trace.metadata.http.status_code"] == "200"
    messages = [r.getMessage() for r in no_internal_errors.records]
    assert any("Langfuse._mask" in m and "not recorded" in m for m in messages), messages


async def test_a_client_the_user_built_first_still_gets_ancestry_before_langfuse() -> None:
    """Langfuse's processor is on the provider before the middleware sees the client; the
    ancestry processor must still run first, or children of FastAPI's never-exported spans
    are marked as app roots."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    client = Langfuse(
        public_key=f"pk-user-first-{next(_keys)}",
        secret_key="sk",
        tracer_provider=provider,
        span_exporter=exporter,
        flush_interval=0.05,
    )
    try:
        app = make_app(client, telemetry={"tracer_provider": provider})
        await post(app, "/children", headers=HEADERS)
        client.flush()
        spans = list(exporter.get_finished_spans())
        assert sorted(s.name for s in spans) == [
            "llm-call",
            "support-agent",
            "task-tool",
            "thread-tool",
        ]
        assert_tree_whole(spans)
    finally:
        provider.shutdown()


@pytest.mark.expect_internal_errors
async def test_without_the_client_resources_requests_are_still_traced(
    captured: Captured, no_internal_errors: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(CLIENT_INTERNALS, "resources", "_renamed_resources")
    await post(make_app(captured.client), "/chat/c", json={"message": "hi"}, headers=HEADERS)
    root = captured.root()
    assert root.attributes["session.id"] == "conv-42"
    assert root.attributes["langfuse.observation.output"] == '{"answer":"HI"}'
    messages = [r.getMessage() for r in no_internal_errors.records]
    assert any("Langfuse._resources" in m for m in messages), messages


async def test_a_disabled_client_serves_untraced_without_blaming_the_sdk(
    captured: Captured, no_internal_errors: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LANGFUSE_TRACING_ENABLED", "false")
    client = Langfuse(public_key=f"pk-disabled-{next(_keys)}", secret_key="sk")
    app = make_app(client)
    response = await post(app, "/chat/c", json={"message": "hi"}, headers=HEADERS)
    assert response.json() == {"answer": "HI"}
    assert "x-trace-id" not in response.headers
    assert not no_internal_errors.records
