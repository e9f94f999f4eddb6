"""A Flask agent app exercising what a view does, and a WSGI driver that calls close()."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, Response, abort, g, request, stream_with_context
from langfuse import Langfuse
from werkzeug.test import EnvironBuilder

from lemma_middleware import LemmaWSGIMiddleware, bind, set_input, set_output

from .agent_steps import agent_steps


def make_flask_app(client: Langfuse, **options: Any) -> Flask:
    app = Flask(__name__)

    llm, tool = agent_steps(client)

    @app.before_request
    def authenticate() -> None:
        token = request.headers.get("authorization", "")
        g.user = {"id": "alice"} if token == "Bearer t-alice" else None

    @app.post("/chat/<thread_id>")
    def chat(thread_id: str) -> dict[str, Any]:
        body = request.get_json()
        return {"answer": llm(str(body.get("message", "")))}

    @app.get("/echo")
    def echo() -> dict[str, Any]:
        return {"query": dict(request.args)}

    @app.post("/raw")
    def raw() -> str:
        return str(len(request.get_data()))

    @app.post("/form")
    def form() -> dict[str, Any]:
        return dict(request.form)

    @app.post("/stream")
    def stream() -> Response:
        @stream_with_context
        def events() -> Iterator[str]:
            for word in ("Hello", " there", "!"):
                tool("chunk-tool")
                yield f"data: {word}\n\n"
            yield "data: [DONE]\n\n"

        return Response(events(), mimetype="text/event-stream")

    @app.post("/boom")
    def boom() -> None:
        request.get_json()
        raise ValueError("model exploded")

    @app.get("/missing")
    def missing() -> None:
        abort(404)

    @app.post("/late")
    def late() -> dict[str, Any]:
        bind(user_id="user-from-view", tenant_id="tenant-from-view", metadata={"plan": "pro"})
        set_input({"question": request.get_json()["message"]})
        answer = llm(request.get_json()["message"])
        set_output({"answer": answer})
        return {"answer": answer, "debug": "not recorded"}

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    options.setdefault("agent_name", "support-agent")
    app.wsgi_app = LemmaWSGIMiddleware(app.wsgi_app, langfuse=client, **options)  # type: ignore[method-assign]
    return app


@dataclass
class WSGIResponse:
    status: int
    headers: dict[str, str]
    body: bytes
    closed: bool = False
    chunks: list[bytes] = field(default_factory=list)

    def json(self) -> Any:
        return json.loads(self.body)


def call(
    app: Any,
    method: str,
    path: str,
    *,
    json_body: Any = None,
    data: bytes | None = None,
    headers: dict[str, str] | None = None,
    content_type: str | None = None,
    stop_after_chunks: int | None = None,
    chunked: bool = False,
) -> WSGIResponse:
    """Call a WSGI app as a server does: iterate the body, then close() it (also when the
    client 'goes away' after ``stop_after_chunks``)."""
    builder = EnvironBuilder(
        path=path,
        method=method,
        json=json_body,
        data=data,
        headers=headers,
        content_type=content_type,
    )
    environ = builder.get_environ()
    if chunked:  # a chunked upload: no Content-Length, the server marks the input terminated
        body = environ["wsgi.input"].read()
        environ.pop("CONTENT_LENGTH", None)
        environ["HTTP_TRANSFER_ENCODING"] = "chunked"
        environ["wsgi.input"] = io.BytesIO(body)
        environ["wsgi.input_terminated"] = True
    captured: dict[str, Any] = {}

    def start_response(
        status: str, response_headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Any:
        captured["status"] = int(status.split(" ", 1)[0])
        captured["headers"] = {k.lower(): v for k, v in response_headers}
        return lambda data: None

    result = app(environ, start_response)
    chunks: list[bytes] = []
    try:
        for chunk in result:
            chunks.append(chunk)
            if stop_after_chunks is not None and len(chunks) >= stop_after_chunks:
                break
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    return WSGIResponse(captured["status"], captured["headers"], b"".join(chunks), True, chunks)
