"""An app served by real uvicorn in test_unread_bodies.py: handlers that fail without reading
the body, and an endpoint reporting the inputs its traces recorded."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, HTTPException, Request
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from lemma_middleware import LemmaMiddleware, build_client

exporter = InMemorySpanExporter()
client = build_client(span_exporter=exporter, public_key="pk-unread-bodies")
app = FastAPI(telemetry={"tracing": False})


@app.post("/reject")
async def reject(request: Request) -> None:
    raise HTTPException(status_code=400, detail="not now")


@app.post("/crash")
async def crash(request: Request) -> None:
    raise RuntimeError("model exploded")


@app.get("/recorded")
async def recorded() -> list[Any]:
    assert client is not None
    client.flush()
    return [s.attributes.get("langfuse.observation.input") for s in exporter.get_finished_spans()]


app.add_middleware(
    LemmaMiddleware, agent_name="agent", langfuse=client, exclude_paths=["/recorded", "/health"]
)
