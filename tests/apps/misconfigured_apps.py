"""Apps configured with an invalid option, served by real servers in the misconfiguration
tests (the option comes from the environment variable ``BAD_OPTION``: ``name=value``)."""

from __future__ import annotations

import os
from typing import Any

from fastapi import FastAPI
from flask import Flask

from lemma_middleware import LemmaMiddleware, LemmaWSGIMiddleware


def _bad_option() -> dict[str, Any]:
    name, _, value = os.environ.get("BAD_OPTION", "thread_header=authorization").partition("=")
    return {name: value}


asgi_app = FastAPI()


@asgi_app.post("/chat")
async def chat(body: dict[str, Any]) -> dict[str, Any]:
    return {"answer": body["message"].upper()}


asgi_app.add_middleware(LemmaMiddleware, agent_name="agent", **_bad_option())


def wsgi_app() -> Flask:
    """A gunicorn app factory (``tests.apps.misconfigured_apps:wsgi_app()``)."""
    app = Flask(__name__)
    app.wsgi_app = LemmaWSGIMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, agent_name="agent", **_bad_option()
    )
    return app
