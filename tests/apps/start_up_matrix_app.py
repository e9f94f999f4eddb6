"""An agent app started the ways Langfuse's guides start one, served by a real server for
test_start_up_matrix.py. ``PATTERN`` says what exists before the middleware's client:

* ``default``: nothing; the handler's child goes through ``get_client()``;
* ``get_client``: ``langfuse = get_client()`` at import, the child through it;
* ``callback``: ``CallbackHandler()`` at import, the child a LangChain runnable run with it;
* ``passed``: ``Langfuse()`` at import, passed as ``langfuse=``, the child through it;
* ``observe``: the child an ``@observe``-decorated function defined at import.

``ADAPTER`` is ``asgi`` (FastAPI, ``PLACEMENT`` ``add_middleware`` or ``wrap``) or ``wsgi``
(Flask: ``LemmaFlask(app)`` or ``app.wsgi_app = LemmaWSGIMiddleware(...)``). Every child's
input holds a password and an API key; every request also makes a generation. The
destinations come from the environment. ``ADOPT=0`` passes ``adopt_clients=False``.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from langfuse import Langfuse, get_client, observe

from lemma_middleware import LemmaFlask, LemmaMiddleware, LemmaWSGIMiddleware

# the shutdown's and the exit's delivery times are logged at DEBUG: the test reads them
_stderr = logging.StreamHandler(sys.stderr)
_stderr.setFormatter(logging.Formatter("%(message)s"))
logging.getLogger("lemma_middleware").addHandler(_stderr)
logging.getLogger("lemma_middleware").setLevel(logging.DEBUG)

PATTERN = os.environ["PATTERN"]
PLACEMENT = os.environ.get("PLACEMENT", "add_middleware")
SECRETS = {"password": "hunter2-horse-staple", "apiKey": "sk-live-abcdefghijklmnop1234567890"}

early: Any = None
handler: Any = None
if PATTERN == "get_client":
    early = get_client()
elif PATTERN == "passed":
    early = Langfuse()
elif PATTERN == "callback":
    from langfuse.langchain import CallbackHandler

    handler = CallbackHandler()


@observe(name="lookup", as_type="tool")
def observed_lookup(query: dict[str, Any]) -> str:
    return "found"


@observe(name="llm", as_type="generation")
def llm(prompt: str) -> str:
    return prompt.upper()


def answer(message: str) -> str:
    """The handler's work: one child holding secrets (made the pattern's way), one LLM call."""
    query = {"query": message, **SECRETS}
    if PATTERN == "callback":
        from langchain_core.runnables import RunnableLambda

        lookup = RunnableLambda(lambda q: "found").with_config(run_name="lookup")
        lookup.invoke(query, config={"callbacks": [handler]})
    elif PATTERN == "observe":
        observed_lookup(query)
    else:
        client = early if early is not None else get_client()
        with client.start_as_current_observation(name="lookup", as_type="tool", input=query):
            pass
    return llm(message)


options: dict[str, Any] = {"agent_name": "support-agent", "flush_timeout": 4.0}
if os.environ.get("ADOPT") == "0":  # the user asks for Langfuse's own behaviour
    options["adopt_clients"] = False
if PATTERN == "passed":
    options["langfuse"] = early

app: Any
if os.environ.get("ADAPTER", "asgi") == "asgi":
    from fastapi import FastAPI

    app = FastAPI()  # native telemetry on, as everyone writes it

    @app.post("/chat")
    def chat(body: dict[str, Any]) -> dict[str, Any]:
        return {"answer": answer(str(body["message"]))}

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    if PLACEMENT == "wrap":
        app = LemmaMiddleware(app, **options)
    else:
        app.add_middleware(LemmaMiddleware, **options)
else:
    from flask import Flask, request

    app = Flask(__name__)

    @app.post("/chat")
    def flask_chat() -> dict[str, Any]:
        return {"answer": answer(str((request.get_json() or {})["message"]))}

    @app.get("/health")
    def flask_health() -> dict[str, str]:
        return {"status": "ok"}

    if PLACEMENT == "wrap":
        app.wsgi_app = LemmaWSGIMiddleware(app.wsgi_app, **options)  # type: ignore[method-assign]
    else:
        LemmaFlask(app, **options)
