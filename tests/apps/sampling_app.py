"""An agent served by real uvicorn for test_sampling_served.py: FastAPI with the middleware,
``sample_rate`` from ``LEMMA_SAMPLE_RATE``, the destination from the environment. Each turn
makes children as an agent does: a tool observation through ``get_client()`` and one LLM
call through the real ``openai`` client (Langfuse's drop-in ``langfuse.openai``) against the
fake OpenAI server at ``OPENAI_BASE_URL``. ``x-fail: 1`` makes the turn raise after its
children (a 500). ``GET /metrics`` (not traced by default) answers the process's
``export_stats().sampling``. ``SERVER_NAME`` is recorded as the ``server`` metadata of every
trace, so the test knows which process served a turn."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from fastapi import FastAPI, Request
from langfuse import get_client
from langfuse.openai import OpenAI

from lemma_middleware import LemmaMiddleware, export_stats

MODEL = "gpt-fake"

llm = OpenAI(max_retries=0, timeout=10)
app = FastAPI()


class TurnFailed(RuntimeError):
    """What a turn asked to fail raises (uvicorn answers 500)."""


@app.post("/chat")
def chat(body: dict[str, Any], request: Request) -> dict[str, Any]:
    message = str(body["message"])
    with get_client().start_as_current_observation(
        name="lookup", as_type="tool", input={"query": message}
    ) as tool:
        tool.update(output="found")
    completion = llm.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": message}]
    )
    if request.headers.get("x-fail") == "1":
        raise TurnFailed(f"turn failed: {message}")
    return {"answer": completion.choices[0].message.content}


@app.get("/metrics")
def metrics() -> dict[str, Any]:
    return dataclasses.asdict(export_stats().sampling)


@app.get("/health")
def health() -> dict[str, str]:
    return {"status": "ok"}


app.add_middleware(
    LemmaMiddleware,
    agent_name="support-agent",
    flush_timeout=10.0,
    metadata={"server": os.environ.get("SERVER_NAME", "")},
)
