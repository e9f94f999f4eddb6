"""Identity resolvers and agent-name callables may be sync or async; sync ones never block
the event loop; ASGI 2 apps are accepted."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from starlette.requests import Request

from lemma_middleware import LemmaMiddleware

from .apps.asgi_apps import make_app
from .apps.wsgi_apps import call, make_flask_app
from .helpers import Captured, post


async def test_async_resolver_and_async_agent_name_are_awaited(captured: Captured) -> None:
    async def resolver(request: Request) -> dict[str, Any]:
        await asyncio.sleep(0)
        return {"user_id": f"async-{request.headers['x-account']}", "tenant_id": "t-async"}

    async def agent_name(request: Request) -> str:
        return "async-agent"

    app = make_app(captured.client, identity_resolver=resolver, agent_name=agent_name)
    await post(app, "/chat/c", json={"message": "hi"}, headers={"x-account": "42"})
    root = captured.root()
    assert root.name == "async-agent"
    assert root.attributes["user.id"] == "async-42"
    assert root.attributes["app.tenant.id"] == "t-async"


async def test_a_blocking_sync_resolver_does_not_block_the_event_loop(
    captured: Captured,
) -> None:
    def resolver(request: Request) -> dict[str, Any]:
        time.sleep(0.3)  # e.g. a session lookup in a synchronous database client
        return {"user_id": "blocking-user"}

    app = make_app(captured.client, identity_resolver=resolver)
    ticks = 0
    done = asyncio.Event()

    async def heartbeat() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            await asyncio.sleep(0.01)

    beating = asyncio.create_task(heartbeat())
    responses = await asyncio.gather(
        *(post(app, "/chat/c", json={"message": "hi"}) for _ in range(3))
    )
    done.set()
    await beating
    assert [r.status_code for r in responses] == [200, 200, 200]
    assert ticks >= 10, ticks  # the loop kept running while the resolvers slept
    assert {r.attributes["user.id"] for r in captured.roots()} == {"blocking-user"}


def test_wsgi_runs_an_async_resolver_to_completion(captured: Captured) -> None:
    async def resolver(environ: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(0)
        return {"thread_id": environ.get("HTTP_X_CONVERSATION", "none")}

    app = make_flask_app(captured.client, identity_resolver=resolver)
    response = call(
        app, "POST", "/chat/t", json_body={"message": "hi"}, headers={"x-conversation": "c9"}
    )
    assert response.status == 200
    assert captured.root().attributes["session.id"] == "c9"


async def test_an_asgi2_app_is_accepted(captured: Captured) -> None:
    class Asgi2App:
        def __init__(self, scope: dict[str, Any]) -> None:
            self.scope = scope

        async def __call__(self, receive: Any, send: Any) -> None:
            await receive()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})

    app = LemmaMiddleware(Asgi2App, agent_name="legacy-agent", langfuse=captured.client)
    response = await post(app, "/legacy", content=b"ping")
    assert response.text == "ok"
    root = captured.root()
    assert root.name == "legacy-agent"
    assert root.attributes["langfuse.observation.output"] == "ok"
