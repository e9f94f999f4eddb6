"""The same small support agent on Flask, traced by lemma-middleware.

Bearer tokens map to users (stored on ``flask.g`` by a ``before_request`` hook),
``POST /chat`` answers in JSON, ``POST /chat/stream`` streams server-sent events, and every
answer comes from a fake, deterministic LLM step recorded as a child generation.
Run: ``gunicorn -w 2 -k gthread examples.flask_app.app:app``.
"""

from __future__ import annotations

from collections.abc import Iterator

from flask import Flask, Response, abort, g, request, stream_with_context

from examples.agent import TOKENS, fake_llm
from lemma_middleware import LemmaWSGIMiddleware

app = Flask(__name__)


@app.before_request
def authenticate() -> None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    g.user = TOKENS.get(token) if scheme.lower() == "bearer" else None


@app.post("/chat")
def chat() -> dict[str, str]:
    if g.user is None:
        abort(401)
    message = request.get_json()["message"]
    if message == "crash":
        raise RuntimeError("the knowledge base is unreachable")
    return {"answer": fake_llm(message)}


@app.post("/chat/stream")
def chat_stream() -> Response:
    message = request.get_json()["message"]

    @stream_with_context
    def events() -> Iterator[str]:
        answer = fake_llm(message)  # produced while streaming: still a child of the root
        for word in answer.split(" "):
            yield f"data: {word} \n\n"
        yield "data: [DONE]\n\n"

    return Response(events(), mimetype="text/event-stream")


@app.get("/health")
def health() -> dict[str, str]:
    return {"status": "ok"}


app.wsgi_app = LemmaWSGIMiddleware(app.wsgi_app, agent_name="support-agent")  # type: ignore[method-assign]
