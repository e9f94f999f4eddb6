"""``lemma_production_traces`` sees what production exports: FastAPI's native telemetry on the
global provider, an instrumentor's spans, ``get_client()`` inside handlers; the default
``lemma_traces`` (a provider of its own) sees only its client's spans."""

from __future__ import annotations

from typing import Any

import httpx
from fastapi import FastAPI
from langfuse import get_client, observe
from opentelemetry import trace

from lemma_middleware import LemmaMiddleware
from lemma_middleware.testing.plugin import TraceCapture

HEADERS = {"x-conversation-id": "conv-9", "x-user-id": "alice", "x-tenant-id": "acme"}


def agent_app(**options: Any) -> FastAPI:
    """An app as users write it: ``FastAPI()`` (native telemetry on), ``@observe`` and an
    instrumentor's LLM span (an OpenInference scope on the global provider)."""

    @observe(as_type="tool")
    def lookup(order: str) -> str:
        return f"order {order} ships tomorrow"

    app = FastAPI()

    @app.post("/chat")
    async def chat(body: dict[str, Any]) -> dict[str, Any]:
        tracer = trace.get_tracer("openinference.instrumentation.openai")
        with tracer.start_as_current_span("ChatCompletion") as span:
            span.set_attribute("openinference.span.kind", "LLM")
            span.set_attribute("llm.model_name", "gpt-fake")
        with get_client().start_as_current_observation(name="plan", as_type="span"):
            answer = lookup(str(body["message"]))
        return {"answer": answer}

    app.add_middleware(LemmaMiddleware, agent_name="support-agent", **options)
    return app


async def ask(app: FastAPI) -> None:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        response = await http.post("/chat", json={"message": "42"}, headers=HEADERS)
        assert response.status_code == 200


async def test_production_capture_sees_instrumentors_and_get_client(
    lemma_production_traces: TraceCapture,
) -> None:
    await ask(agent_app())  # no langfuse=: the middleware's build_client() gives the capture
    lemma_production_traces.assert_conformant()
    root = lemma_production_traces.root()
    children = {s.name: s for s in lemma_production_traces.children(root)}
    assert set(children) == {"ChatCompletion", "plan", "lookup"}
    for child in children.values():
        assert child.attributes["session.id"] == "conv-9"
        assert not child.attributes.get("langfuse.internal.is_app_root")
    assert children["lookup"].parent.span_id == children["plan"].context.span_id


async def test_the_default_capture_sees_only_its_clients_spans(
    lemma_traces: TraceCapture,
) -> None:
    await ask(agent_app(langfuse=lemma_traces.client))
    names = {s.name for s in lemma_traces.children(lemma_traces.root())}
    assert "ChatCompletion" not in names  # the instrumentor's span went to the global provider


def processors() -> tuple[object, ...]:
    provider = trace.get_tracer_provider()
    return tuple(provider._active_span_processor._span_processors)  # type: ignore[attr-defined]


def test_a_production_capture_leaves_the_global_provider_as_it_found_it() -> None:
    TraceCapture(production=True).close()  # the global provider exists from here on
    before = processors()
    capture = TraceCapture(production=True)
    assert len(processors()) == len(before) + 3  # Langfuse's, ancestry, request scope
    capture.close()
    assert processors() == before
