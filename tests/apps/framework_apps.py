"""The same agent in Litestar, Quart and Falcon, each traced by the pure ASGI middleware the
way the README shows (served by uvicorn in tests/test_frameworks.py).

``uvicorn --factory tests.apps.framework_apps:litestar_app`` (or ``quart_app``,
``falcon_app``) serves one. Each answers ``POST /chat/{thread_id}`` with the fake LLM as a
child and ``POST /fail`` with an exception; the bearer token ``token-alice`` authenticates
alice: Litestar through its own authentication middleware (the user in ``scope["user"]``),
Quart and Falcon with the one line the README gives (``bind(user_id=...)`` where the app
authenticates).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import falcon
import falcon.asgi
from litestar import Litestar, get, post
from litestar.connection import ASGIConnection
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult
from quart import Quart, request

from examples.agent import TOKENS, fake_llm
from lemma_middleware import LemmaMiddleware, bind

AGENT = "support-agent"


def token_user(authorization: str | None) -> str | None:
    token = (authorization or "").removeprefix("Bearer ")
    return TOKENS.get(token)


# Litestar ---------------------------------------------------------------------------------


@dataclass
class LitestarUser:
    id: str


class TokenAuth(AbstractAuthenticationMiddleware):
    async def authenticate_request(self, connection: ASGIConnection[Any, Any, Any, Any]) -> Any:
        name = token_user(connection.headers.get("authorization"))
        return AuthenticationResult(user=LitestarUser(name) if name else None, auth=None)


@post("/chat/{thread_id:str}")
async def litestar_chat(thread_id: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"thread": thread_id, "answer": fake_llm(str(data.get("message", "")))}


@post("/fail")
async def litestar_fail() -> None:
    raise RuntimeError("the model is down")


@get("/health")
async def litestar_health() -> str:
    return "ok"


def litestar_app() -> Any:
    app = Litestar(
        route_handlers=[litestar_chat, litestar_fail, litestar_health], middleware=[TokenAuth]
    )
    return LemmaMiddleware(app, agent_name=AGENT)  # the README's line


# Quart ------------------------------------------------------------------------------------

quart = Quart(__name__)


@quart.before_request
async def quart_identify() -> None:
    bind(user_id=token_user(request.headers.get("authorization")))  # the README's one line


@quart.post("/chat/<thread_id>")
async def quart_chat(thread_id: str) -> dict[str, Any]:
    data = await request.get_json()
    return {"thread": thread_id, "answer": fake_llm(str(data.get("message", "")))}


@quart.post("/fail")
async def quart_fail() -> None:
    raise RuntimeError("the model is down")


@quart.get("/health")
async def quart_health() -> str:
    return "ok"


def quart_app() -> Any:
    quart.asgi_app = LemmaMiddleware(quart.asgi_app, agent_name=AGENT)  # type: ignore[method-assign]
    return quart


# Falcon -----------------------------------------------------------------------------------


class FalconAuth:
    async def process_request(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        req.context.user = token_user(req.get_header("authorization"))
        bind(user_id=req.context.user)  # the README's one line


class FalconChat:
    async def on_post(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, thread_id: str
    ) -> None:
        data = await req.get_media()
        resp.media = {"thread": thread_id, "answer": fake_llm(str(data.get("message", "")))}


class FalconFail:
    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        raise RuntimeError("the model is down")


class FalconHealth:
    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        resp.text = "ok"


def falcon_app() -> Any:
    app = falcon.asgi.App(middleware=[FalconAuth()])
    app.add_route("/chat/{thread_id}", FalconChat())
    app.add_route("/fail", FalconFail())
    app.add_route("/health", FalconHealth())
    return LemmaMiddleware(app, agent_name=AGENT)  # the README's line
