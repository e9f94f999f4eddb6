"""A small support agent on FastAPI, traced by lemma-middleware.

Bearer tokens map to users (Starlette's AuthenticationMiddleware), ``POST /chat`` answers
in JSON, ``POST /chat/stream`` streams the answer as server-sent events, and every answer
comes from a fake, deterministic LLM step recorded as a child generation.
Run: ``uvicorn examples.fastapi_app.app:app``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from starlette.authentication import (
    AuthCredentials,
    AuthenticationBackend,
    BaseUser,
    SimpleUser,
)
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import HTTPConnection

from examples.agent import TOKENS, fake_llm
from lemma_middleware import LemmaMiddleware


class BearerTokens(AuthenticationBackend):
    """Maps ``Authorization: Bearer <token>`` to a user."""

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, BaseUser] | None:
        scheme, _, token = conn.headers.get("authorization", "").partition(" ")
        user = TOKENS.get(token) if scheme.lower() == "bearer" else None
        if user is None:
            return None
        return AuthCredentials(["authenticated"]), SimpleUser(user)


class ChatRequest(BaseModel):
    message: str


app = FastAPI(title="support agent")


@app.post("/chat")
async def chat(body: ChatRequest, request: Request) -> dict[str, str]:
    if not request.user.is_authenticated:
        raise HTTPException(401, "missing bearer token")
    if body.message == "crash":
        raise RuntimeError("the knowledge base is unreachable")
    return {"answer": fake_llm(body.message)}


@app.post("/chat/stream")
async def chat_stream(body: ChatRequest, request: Request) -> StreamingResponse:
    answer = fake_llm(body.message)

    async def events() -> AsyncIterator[str]:
        for word in answer.split(" "):
            await asyncio.sleep(0)
            yield f"data: {word} \n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


app.add_middleware(AuthenticationMiddleware, backend=BearerTokens())
app.add_middleware(LemmaMiddleware, agent_name="support-agent")
