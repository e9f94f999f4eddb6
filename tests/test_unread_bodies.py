"""A failed turn records what caused it: the body of a request the app answered with an error
without reading it is read afterwards (bounded, briefly), never changing what the app saw."""

from __future__ import annotations

import json
from typing import Any

import httpx
from fastapi import FastAPI, HTTPException, Request
from flask import Flask

from lemma_middleware import LemmaMiddleware, LemmaWSGIMiddleware

from .apps.wsgi_apps import call
from .helpers import Captured, post


def _fastapi(client: Any) -> FastAPI:
    app = FastAPI(telemetry={"tracing": False})

    @app.post("/reject")
    async def reject(request: Request) -> None:
        raise HTTPException(status_code=400, detail="not now")  # the body is never read

    @app.post("/crash")
    async def crash(request: Request) -> None:
        raise RuntimeError("model exploded")

    @app.post("/ok")
    async def ok(request: Request) -> dict[str, str]:
        return {"status": "fine"}  # success without reading: nothing fetched

    app.add_middleware(LemmaMiddleware, agent_name="agent", langfuse=client)
    return app


async def test_a_rejected_request_records_the_body_it_was_not_read_for(
    captured: Captured,
) -> None:
    response = await post(_fastapi(captured.client), "/reject", json={"message": "refund!"})
    assert response.status_code == 400
    a = captured.root().attributes
    assert json.loads(a["langfuse.observation.input"]) == {"message": "refund!"}
    assert a["langfuse.observation.level"] == "WARNING"


async def test_a_crash_records_the_body_that_caused_it(captured: Captured) -> None:
    transport = httpx.ASGITransport(app=_fastapi(captured.client), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        response = await http.post("/crash", json={"message": "boom", "password": "x"})
    assert response.status_code == 500
    a = captured.root().attributes
    assert json.loads(a["langfuse.observation.input"]) == {
        "message": "boom",
        "password": "[REDACTED]",
    }
    assert a["langfuse.observation.level"] == "ERROR"


async def test_a_successful_request_that_ignores_its_body_is_not_read(captured: Captured) -> None:
    await post(_fastapi(captured.client), "/ok", json={"message": "hi"})
    assert captured.root().attributes["langfuse.observation.input"] == "POST /ok"


def test_a_flask_view_that_raises_before_reading_records_the_message(captured: Captured) -> None:
    """Issue 9, finding 7: recorded as "POST /ask" before."""
    flask_app = Flask(__name__)

    @flask_app.post("/ask")
    def ask() -> Any:
        raise ValueError("model exploded")

    flask_app.wsgi_app = LemmaWSGIMiddleware(  # type: ignore[method-assign]
        flask_app.wsgi_app, agent_name="agent", langfuse=captured.client
    )
    response = call(flask_app, "POST", "/ask", json_body={"message": "why?"})
    assert response.status == 500
    a = captured.root().attributes
    assert json.loads(a["langfuse.observation.input"]) == {"message": "why?"}
    assert a["langfuse.observation.level"] == "ERROR"
    assert "model exploded" in a["langfuse.observation.status_message"]


def test_under_uvicorn_both_a_4xx_and_a_crash_record_their_body() -> None:
    """uvicorn stops delivering the body once the response is complete: for a 4xx the body is
    fetched before the response starts, for a crash before the error page."""
    import os

    from examples.demo import start_uvicorn

    process, url = start_uvicorn("tests.apps.unread_app:app", dict(os.environ))
    try:
        with httpx.Client(base_url=url, timeout=10) as http:
            assert http.post("/reject", json={"message": "refund!"}).status_code == 400
            assert http.post("/crash", json={"message": "boom"}).status_code == 500
        # A fresh connection: uvicorn closes the one a crash was served on, and a reuse
        # racing that close is reset (seen under load).
        recorded = httpx.get(f"{url}/recorded", timeout=10).json()
    finally:
        process.terminate()
        process.wait(timeout=20)
    assert [json.loads(r) for r in recorded] == [{"message": "refund!"}, {"message": "boom"}]
