"""One start-up pattern in a process of its own (clients and the global provider are
process-wide), measured in process: ``python -m bench.startup_app ADAPTER PATTERN REQUESTS``
prints the process CPU per request (every thread: the request and the export).
``ORDER=late`` (environment) creates the same objects after the middleware's client instead
(on the first request; ``passed``: after ``build_client()``): the default start-up order
for the same code, what each pattern is compared with.

``ADAPTER``: ``asgi`` (``FastAPI()``, native telemetry on, ``add_middleware``) or ``wsgi``
(Flask, ``LemmaFlask``). ``PATTERN``, what exists before the middleware's client:
``default`` (nothing), ``get_client`` (``langfuse = get_client()`` at import),
``callback`` (``CallbackHandler()`` at import), ``passed`` (``Langfuse()`` passed as
``langfuse=``), ``observe`` (an ``@observe`` function). Each request's handler makes one
child the pattern's way and one generation. Export goes to the destination the
environment names (the benchmark's local inbox).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import Any

from langfuse import Langfuse, get_client, observe

ADAPTER, PATTERN, REQUESTS = sys.argv[1], sys.argv[2], int(sys.argv[3])
BODY = b'{"message": "where is my parcel?"}'
HEADERS = {"x-conversation-id": "conv-1", "x-user-id": "user-1", "content-type": "application/json"}

LATE = os.environ.get("ORDER") == "late"
early: Any = None
handler: Any = None
observed_lookup: Any = None


def create() -> None:
    """What the pattern creates (at import, or on the first request with ``ORDER=late``)."""
    global early, handler, observed_lookup
    if PATTERN == "get_client":
        early = get_client()
    elif PATTERN == "passed":
        if LATE:
            from lemma_middleware import build_client

            build_client(service_name="support-agent")
        early = Langfuse()
    elif PATTERN == "callback":
        from langfuse.langchain import CallbackHandler

        handler = CallbackHandler()

    def lookup(query: dict[str, Any]) -> str:
        return "found"

    observed_lookup = observe(name="lookup", as_type="tool")(lookup)


if not LATE or PATTERN == "passed":
    create()


@observe(name="llm", as_type="generation")
def llm(prompt: str) -> str:
    return prompt.upper()


def answer(message: str) -> str:
    if observed_lookup is None:
        create()
    query = {"query": message, "password": "hunter2"}
    if PATTERN == "callback":
        from langchain_core.runnables import RunnableLambda

        RunnableLambda(lambda q: "found").with_config(run_name="lookup").invoke(
            query, config={"callbacks": [handler]}
        )
    elif PATTERN == "observe":
        observed_lookup(query)
    else:
        client = early if early is not None else get_client()
        with client.start_as_current_observation(name="lookup", as_type="tool", input=query):
            pass
    return llm(message)


options: dict[str, Any] = {"agent_name": "support-agent"}
if PATTERN == "passed":
    options["langfuse"] = early


def asgi_requests() -> None:
    from fastapi import FastAPI

    from lemma_middleware import LemmaMiddleware

    app = FastAPI()

    @app.post("/chat")
    def chat(body: dict[str, Any]) -> dict[str, Any]:
        return {"answer": answer(str(body["message"]))}

    app.add_middleware(LemmaMiddleware, **options)
    headers = [(k.encode(), v.encode()) for k, v in HEADERS.items()]
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/chat", "raw_path": b"/chat", "query_string": b"",
        "root_path": "", "headers": headers, "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }  # fmt: skip

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": BODY, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        return None

    async def run(count: int) -> None:
        for _ in range(count):
            await app(dict(scope), receive, send)

    asyncio.run(run(REQUESTS // 5))  # warm-up
    report(lambda: asyncio.run(run(REQUESTS)))


def wsgi_requests() -> None:
    from flask import Flask, request

    from lemma_middleware import LemmaFlask

    app = Flask(__name__)

    @app.post("/chat")
    def chat() -> dict[str, Any]:
        return {"answer": answer(str((request.get_json() or {})["message"]))}

    LemmaFlask(app, **options)
    client = app.test_client()

    def run(count: int) -> None:
        for _ in range(count):
            client.post("/chat", data=BODY, headers=HEADERS).close()

    run(REQUESTS // 5)
    report(lambda: run(REQUESTS))


def report(run: Any) -> None:
    get_client().flush()
    started = time.process_time()
    run()
    get_client().flush()  # the export of these requests counts
    print(f"{(time.process_time() - started) / REQUESTS * 1e6:.1f}")


if __name__ == "__main__":
    asgi_requests() if ADAPTER == "asgi" else wsgi_requests()
    sys.stdout.flush()
    os._exit(0)  # the exit's own flush is not measured
