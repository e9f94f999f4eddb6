"""Framework spans (FastAPI's native telemetry, OpenTelemetry HTTP instrumentations) on the
provider the middleware creates cost nothing while nobody exports them, and are left alone
everywhere else."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import textwrap
from typing import Any

import httpx
from fastapi import FastAPI
from opentelemetry import trace as otel_trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from lemma_middleware import LemmaMiddleware, build_client
from lemma_middleware.export.provider import OwnedTracerProvider

from .helpers import assert_tree_whole

_keys = itertools.count()
LLM_SCOPE = "opentelemetry.instrumentation.openai"  # a scope Langfuse exports by default


def _client(provider: TracerProvider, exporter: InMemorySpanExporter) -> Any:
    client = build_client(
        span_exporter=exporter,
        tracer_provider=provider,
        public_key=f"pk-framework-{next(_keys)}",
        flush_interval=0.05,
    )
    assert client is not None
    return client


def _app(client: Any, provider: TracerProvider, seen: dict[str, Any]) -> FastAPI:
    """``FastAPI()`` with its native telemetry on ``provider`` (what the global provider
    gives it in a real process), an LLM span inside the handler."""
    app = FastAPI(telemetry={"tracer_provider": provider})
    llm_tracer = provider.get_tracer(LLM_SCOPE)

    @app.post("/chat")
    async def chat(body: dict[str, Any]) -> dict[str, Any]:
        current = otel_trace.get_current_span()
        seen["current_recording"] = current.is_recording()
        seen["current_span_id"] = current.get_span_context().span_id
        with llm_tracer.start_as_current_span("chat gpt-test", attributes={"gen_ai.system": "x"}):
            pass
        return {"answer": body["message"].upper()}

    app.add_middleware(LemmaMiddleware, agent_name="agent", langfuse=client)
    return app


async def _post(app: FastAPI) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        return await http.post("/chat", json={"message": "hi"}, headers={"x-user-id": "u1"})


def _lemma_trace(client: Any, exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    client.flush()
    spans = list(exporter.get_finished_spans())
    assert_tree_whole(spans)
    return spans


async def test_on_the_owned_provider_framework_spans_are_not_recorded() -> None:
    provider, exporter, seen = OwnedTracerProvider(), InMemorySpanExporter(), {}
    client = _client(provider, exporter)
    response = await _post(_app(client, provider, seen))
    assert response.status_code == 200

    spans = _lemma_trace(client, exporter)
    (root,) = [s for s in spans if s.parent is None]
    (llm,) = [s for s in spans if s.name == "chat gpt-test"]
    assert len(spans) == 2
    # FastAPI's operation spans are not spans of their own: the handler's current span is
    # the root, as with FastAPI's telemetry off, and the LLM span hangs straight under it.
    assert seen == {"current_recording": True, "current_span_id": root.context.span_id}
    assert llm.parent is not None and llm.parent.span_id == root.context.span_id
    assert llm.attributes["user.id"] == "u1"
    assert not provider.records_framework_spans


async def test_a_processor_added_later_gets_the_framework_spans_again() -> None:
    provider, exporter, seen = OwnedTracerProvider(), InMemorySpanExporter(), {}
    client = _client(provider, exporter)
    users_exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(users_exporter))  # e.g. their own Jaeger
    assert provider.records_framework_spans

    await _post(_app(client, provider, seen))

    theirs = users_exporter.get_finished_spans()
    fastapi_spans = [s for s in theirs if s.instrumentation_scope.name == "fastapi"]
    assert {s.kind for s in fastapi_spans} >= {otel_trace.SpanKind.SERVER}
    spans = _lemma_trace(client, exporter)
    assert sorted(s.name for s in spans) == ["agent", "chat gpt-test"]
    (root,) = [s for s in spans if s.parent is None]
    assert seen["current_span_id"] != root.context.span_id  # FastAPI's operation span


async def test_a_users_own_provider_keeps_every_framework_span() -> None:
    provider, exporter, seen = TracerProvider(), InMemorySpanExporter(), {}
    users_exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(users_exporter))
    client = _client(provider, exporter)

    await _post(_app(client, provider, seen))

    fastapi_spans = [
        s for s in users_exporter.get_finished_spans() if s.instrumentation_scope.name == "fastapi"
    ]
    assert len(fastapi_spans) >= 2  # the server span and the operation span(s)
    spans = _lemma_trace(client, exporter)
    (root,) = [s for s in spans if s.parent is None]
    assert seen["current_span_id"] in {s.context.span_id for s in fastapi_spans}
    (llm,) = [s for s in spans if s.name == "chat gpt-test"]
    assert llm.parent is not None and llm.parent.span_id == root.context.span_id  # re-parented


def test_default_fastapi_app_in_a_fresh_process_exports_only_the_lemma_trace() -> None:
    """As users run it: ``FastAPI()`` and ``build_client`` with no provider of their own;
    the middleware's provider becomes global and FastAPI's telemetry finds it."""
    script = textwrap.dedent(
        """
        import asyncio, json
        import httpx
        from fastapi import FastAPI
        from opentelemetry import trace
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        from lemma_middleware import LemmaMiddleware, build_client
        from lemma_middleware.export.provider import OwnedTracerProvider

        exporter = InMemorySpanExporter()
        client = build_client(span_exporter=exporter, public_key="pk-fresh")
        app = FastAPI()
        current = []

        @app.post("/chat")
        async def chat(body: dict) -> dict:
            current.append(trace.get_current_span().get_span_context().span_id)
            with trace.get_tracer("opentelemetry.instrumentation.openai").start_as_current_span(
                "llm", attributes={"gen_ai.system": "x"}
            ):
                return {"answer": body["message"]}

        app.add_middleware(LemmaMiddleware, agent_name="agent", langfuse=client)

        async def main():
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
                for _ in range(3):
                    assert (await http.post("/chat", json={"message": "hi"})).status_code == 200

        asyncio.run(main())
        client.flush()
        spans = exporter.get_finished_spans()
        print(json.dumps({
            "owned": isinstance(trace.get_tracer_provider(), OwnedTracerProvider),
            "handler_span_is_root": current == [
                s.context.span_id for s in spans if s.name == "agent"
            ],
            "names": sorted(s.name for s in spans),
            "scopes": sorted({s.instrumentation_scope.name for s in spans}),
        }))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["owned"] is True
    assert result["handler_span_is_root"] is True  # no FastAPI operation span in between
    assert result["names"] == ["agent"] * 3 + ["llm"] * 3
    assert "fastapi" not in result["scopes"]


def test_export_decision_per_scope_matches_langfuses_default_filter() -> None:
    from langfuse.span_filter import is_default_export_span

    from lemma_middleware.export.processors import ExportFilter

    provider, memory = TracerProvider(), InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    scopes = ["fastapi", LLM_SCOPE, "openinference.instrumentation.x", "ai", "aiohttp", "mine"]
    attribute_sets: list[dict[str, Any]] = [{}, {"gen_ai.system": "x"}, {"http.route": "/"}]
    for scope in scopes:
        for attributes in attribute_sets:
            with provider.get_tracer(scope).start_as_current_span("s", attributes=attributes):
                pass
    exported = ExportFilter("pk-any")
    for _ in range(2):  # the second pass answers from the per-scope memo
        for span in memory.get_finished_spans():
            assert exported(span) == is_default_export_span(span), span.instrumentation_scope


async def test_fastapi_telemetry_already_running_outside_is_left_alone(captured: Any) -> None:
    """The middleware switches FastAPI's telemetry off only for an app it wraps; with
    add_middleware FastAPI's telemetry has started outside it, and its per-request object
    stays in the scope."""
    from lemma_middleware import LemmaMiddleware

    seen: list[object] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope.get("fastapi.telemetry", "absent"))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        return None

    middleware = LemmaMiddleware(inner, agent_name="agent", langfuse=captured.client)
    assert middleware.tracing is not None
    middleware.tracing.framework_telemetry_idle = lambda: True  # type: ignore[assignment]
    running = object()
    for extra in ({}, {"fastapi.telemetry": running}):
        scope = {"type": "http", "method": "POST", "path": "/chat", "query_string": b""}
        scope |= {"headers": [], "client": ("127.0.0.1", 1), **extra}
        await middleware(scope, receive, send)
    assert seen == [None, running]  # wrapped: switched off; already running: untouched
