"""An agent app written the way Langfuse's guides start one, run in a process of its own by
test_start_up_patterns.py: ``EARLY=1`` creates a client with ``get_client()`` at import time,
before the middleware builds its own; ``PLACEMENT`` is ``add_middleware`` or ``wrap``;
``USER_EXPORTER=1`` installs a global provider whose own exporter takes FastAPI's spans. The
destinations come from the environment. One request, then the process flushes and exits."""

from __future__ import annotations

import os
from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient
from langfuse import get_client, observe

from lemma_middleware import LemmaMiddleware

if os.environ.get("USER_EXPORTER") == "1":  # the app exports FastAPI's spans elsewhere too
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
    trace.set_tracer_provider(provider)

early = get_client() if os.environ.get("EARLY") == "1" else None


@observe(as_type="generation")
def llm(prompt: str) -> str:
    return prompt.upper()


app: Any = FastAPI()  # native telemetry on, as everyone writes it


@app.post("/chat")
def chat(body: dict[str, Any]) -> dict[str, Any]:
    client = early or get_client()
    with client.start_as_current_observation(name="lookup", as_type="tool"):
        pass
    return {"answer": llm(str(body["message"]))}


if os.environ["PLACEMENT"] == "wrap":
    app = LemmaMiddleware(app, agent_name="support-agent")
else:
    app.add_middleware(LemmaMiddleware, agent_name="support-agent")

if __name__ == "__main__":
    with TestClient(app) as http:
        response = http.post(
            "/chat",
            json={"message": "where is my parcel?"},
            headers={"x-conversation-id": "conv-1", "x-user-id": "alice", "x-tenant-id": "acme"},
        )
        assert response.status_code == 200, response.text
    (early or get_client()).flush()
