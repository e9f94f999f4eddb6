"""Apps served by real servers in the bounded-exit tests: the destination comes from
``LEMMA_OTLP_ENDPOINT``, ``flush_timeout`` from ``FLUSH_TIMEOUT``."""

from __future__ import annotations

import os
from typing import Any

from fastapi import FastAPI
from flask import Flask, request

from lemma_middleware import LemmaMiddleware, LemmaWSGIMiddleware

FLUSH_TIMEOUT = float(os.environ.get("FLUSH_TIMEOUT", "5"))

asgi_app = FastAPI()


@asgi_app.post("/chat")
async def chat(body: dict[str, Any]) -> dict[str, Any]:
    return {"answer": str(body.get("message", "")).upper()}


asgi_app.add_middleware(LemmaMiddleware, agent_name="agent", flush_timeout=FLUSH_TIMEOUT)


def wsgi_app() -> Flask:
    """A gunicorn app factory (``tests.apps.exit_apps:wsgi_app()``)."""
    app = Flask(__name__)

    @app.post("/chat")
    def flask_chat() -> dict[str, Any]:
        return {"answer": str((request.get_json() or {}).get("message", "")).upper()}

    app.wsgi_app = LemmaWSGIMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, agent_name="agent", flush_timeout=FLUSH_TIMEOUT
    )
    return app
