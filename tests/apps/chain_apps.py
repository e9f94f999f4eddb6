"""Two agents, one calling the other over HTTP, for test_across_services.py, served by real
uvicorn and gunicorn. The front agent (``front``) forwards each message to ``DOWNSTREAM_URL``
with ``outgoing_headers()``; the billing agent (``billing``, or ``billing_flask()`` for
gunicorn) trusts ``TRUSTED`` (comma-separated) and continues the upstream trace when
``CONTINUE=1``."""

from __future__ import annotations

import os
from typing import Any

import httpx
from fastapi import FastAPI
from flask import Flask, request
from langfuse import observe

from lemma_middleware import LemmaMiddleware, LemmaWSGIMiddleware, outgoing_headers

front = FastAPI()


@front.post("/chat")
async def front_chat(body: dict[str, Any]) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.post(
            os.environ["DOWNSTREAM_URL"], json=body, headers=outgoing_headers()
        )
    return {"answer": response.json()["answer"], "via": "front-agent"}


front.add_middleware(LemmaMiddleware, agent_name="front-agent", propagate_downstream=True)


@observe(as_type="tool")
def look_up_invoice(message: str) -> str:
    return f"invoice for {message!r}: paid"


def _downstream_options() -> dict[str, Any]:
    trusted = [entry for entry in os.environ.get("TRUSTED", "").split(",") if entry]
    return {
        "agent_name": "billing-agent",
        "trusted_upstreams": trusted,
        "continue_upstream_trace": os.environ.get("CONTINUE") == "1",
    }


billing = FastAPI()


@billing.post("/chat")
def billing_chat(body: dict[str, Any]) -> dict[str, Any]:
    return {"answer": look_up_invoice(str(body["message"]))}


billing.add_middleware(LemmaMiddleware, **_downstream_options())


def billing_flask() -> Flask:
    """A gunicorn app factory (``tests.apps.chain_apps:billing_flask()``)."""
    app = Flask(__name__)

    @app.post("/chat")
    def chat() -> dict[str, Any]:
        return {"answer": look_up_invoice(str((request.get_json() or {})["message"]))}

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"ok": True}

    app.wsgi_app = LemmaWSGIMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, **_downstream_options()
    )
    return app
