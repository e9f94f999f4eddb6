"""Every row of the trace contract, on real spans from a real Langfuse client."""

from __future__ import annotations

import json
import os

import httpx
import pytest
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.sdk.trace import TracerProvider

from lemma_middleware import LemmaMiddleware

from .apps.asgi_apps import make_app
from .helpers import HEADERS, Captured, assert_tree_whole, post


async def test_root_carries_every_contract_field(captured: Captured) -> None:
    app = make_app(
        captured.client,
        environment="production",
        release="1.4.2",
        version="v7",
        metadata={"team": "support"},
    )
    response = await post(app, "/chat/conv-42", json={"message": "hi"}, headers=HEADERS)
    assert response.status_code == 200
    root = captured.root()
    a = root.attributes
    assert root.name == "support-agent"
    assert a["langfuse.observation.type"] == "agent"
    assert a["langfuse.trace.name"] == "support-agent"
    assert a["gen_ai.agent.name"] == "support-agent"
    assert json.loads(a["langfuse.trace.metadata.gen_ai.agent.name"]) == "support-agent"
    assert a["session.id"] == "conv-42"
    assert a["lemma.thread_id"] == "conv-42"
    assert json.loads(a["langfuse.trace.metadata.lemma.thread_id"]) == "conv-42"
    assert a["user.id"] == "user-7"
    assert json.loads(a["langfuse.trace.metadata.tenant_id"]) == "acme"
    assert a["app.tenant.id"] == "acme"
    assert a["langfuse.environment"] == "production"
    assert a["deployment.environment.name"] == "production"
    assert json.loads(a["langfuse.trace.metadata.deployment.environment.name"]) == "production"
    assert a["langfuse.release"] == "1.4.2"
    assert a["langfuse.version"] == "v7"
    assert a["service.version"] == "1.4.2"
    assert json.loads(a["langfuse.trace.metadata.team"]) == "support"
    assert json.loads(a["langfuse.observation.input"]) == {"message": "hi"}
    assert a["langfuse.trace.input"] == a["langfuse.observation.input"]
    assert json.loads(a["langfuse.observation.output"]) == {"answer": "HI"}
    assert a["langfuse.trace.output"] == a["langfuse.observation.output"]
    assert json.loads(a["langfuse.trace.metadata.http.method"]) == "POST"
    assert json.loads(a["langfuse.trace.metadata.http.route"]) == "/chat/{thread_id}"
    assert json.loads(a["langfuse.trace.metadata.http.status_code"]) == 200
    assert "langfuse.observation.level" not in a
    assert response.headers["x-trace-id"] == format(root.context.trace_id, "032x")


async def test_children_carry_the_propagated_attributes(captured: Captured) -> None:
    app = make_app(captured.client, environment="staging")
    await post(app, "/chat/c", json={"message": "hi"}, headers=HEADERS)
    root = captured.root()
    (child,) = captured.children(root)
    assert child.name == "llm-call"
    assert child.parent is not None and child.parent.span_id == root.context.span_id
    a = child.attributes
    assert a["session.id"] == "conv-42"
    assert a["user.id"] == "user-7"
    assert a["langfuse.trace.name"] == "support-agent"
    assert a["langfuse.environment"] == "staging"
    assert a["lemma.thread_id"] == "conv-42"
    assert a["app.tenant.id"] == "acme"
    assert json.loads(a["langfuse.trace.metadata.tenant_id"]) == "acme"
    assert json.loads(a["langfuse.trace.metadata.gen_ai.agent.name"]) == "support-agent"


def test_service_name_resource_defaults_to_the_agent_name() -> None:
    """In a fresh process (the global provider is created once per process)."""
    import subprocess
    import sys

    script = (
        "from lemma_middleware.export.provider import provider_for\n"
        "from opentelemetry import trace\n"
        "provider = provider_for(None, 'support-agent', '2.0')\n"
        "assert trace.get_tracer_provider() is provider\n"
        "print(provider.resource.attributes['service.name'], "
        "provider.resource.attributes['service.version'])\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "OTEL_SERVICE_NAME"}
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True
    )
    assert run.stdout.split() == ["support-agent", "2.0"]


async def test_upstream_traceparent_is_kept_as_metadata_not_as_parent(captured: Captured) -> None:
    app = make_app(captured.client)
    upstream = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    await post(app, "/chat/c", json={"message": "x"}, headers={"traceparent": upstream})
    root = captured.root()
    assert root.parent is None
    assert format(root.context.trace_id, "032x") != "0af7651916cd43dd8448eb211c80319c"
    a = root.attributes
    assert (
        json.loads(a["langfuse.trace.metadata.upstream.trace_id"])
        == "0af7651916cd43dd8448eb211c80319c"
    )
    assert json.loads(a["langfuse.trace.metadata.upstream.span_id"]) == "b7ad6b7169203331"


async def test_continuing_the_upstream_trace_is_an_explicit_option(captured: Captured) -> None:
    app = make_app(captured.client, continue_upstream_trace=True)
    upstream = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    await post(app, "/chat/c", json={"message": "x"}, headers={"traceparent": upstream})
    (root,) = [s for s in captured.spans() if s.name == "support-agent"]
    assert format(root.context.trace_id, "032x") == "0af7651916cd43dd8448eb211c80319c"
    assert root.parent is not None and format(root.parent.span_id, "016x") == "b7ad6b7169203331"
    assert root.attributes["langfuse.internal.as_root"] is True


@pytest.mark.parametrize("telemetry", ["off", "same-provider", "other-provider"])
@pytest.mark.parametrize("otel_asgi", [False, True])
async def test_exported_tree_is_whole_with_fastapi_and_otel_instrumentation(
    captured: Captured, telemetry: str, otel_asgi: bool
) -> None:
    other = TracerProvider()
    config = {
        "off": {"tracing": False},
        "same-provider": {"tracer_provider": captured.provider},
        "other-provider": {"tracer_provider": other},
    }[telemetry]
    app: object = make_app(captured.client, telemetry=config)
    if otel_asgi:
        app = OpenTelemetryMiddleware(app, tracer_provider=captured.provider)
    await post(app, "/children", headers=HEADERS)
    spans = captured.spans()
    assert_tree_whole(spans)
    names = sorted(s.name for s in spans)
    assert names == ["llm-call", "support-agent", "task-tool", "thread-tool"]
    root = captured.root()
    for child in captured.children(root):
        assert child.parent is not None and child.parent.span_id == root.context.span_id
        assert child.attributes["session.id"] == "conv-42"


async def test_wrapping_the_whole_app_sees_the_500_and_the_exception(captured: Captured) -> None:
    app = LemmaMiddleware(
        make_app(captured.client, exclude_paths=["/chat/"]),
        langfuse=captured.client,
        agent_name="outer-agent",
    )
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.post("/boom", json={}, headers=HEADERS)
    assert response.status_code == 500
    roots = {s.name: s for s in captured.roots()}
    outer, inner = roots["outer-agent"], roots["support-agent"]
    for root in (outer, inner):
        assert root.attributes["langfuse.observation.level"] == "ERROR"
        assert (
            root.attributes["langfuse.observation.status_message"] == "ValueError: model exploded"
        )
    assert json.loads(outer.attributes["langfuse.trace.metadata.http.status_code"]) == 500
    assert response.headers["x-trace-id"] == format(outer.context.trace_id, "032x")
