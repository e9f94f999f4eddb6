"""A FastAPI agent app exercising everything a handler does, for the ASGI tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from fastapi import BackgroundTasks, Depends, FastAPI, HTTPException, Request
from fastapi.responses import PlainTextResponse, Response, StreamingResponse
from langfuse import Langfuse
from starlette.concurrency import run_in_threadpool

from lemma_middleware import LemmaMiddleware, bind, set_input, set_output

from .agent_steps import agent_steps


def make_app(
    client: Langfuse, *, telemetry: dict[str, Any] | None = None, **options: Any
) -> FastAPI:
    app = FastAPI(telemetry=telemetry or {"tracing": False})

    llm, tool = agent_steps(client)

    @app.post("/chat/{thread_id}")
    async def chat(thread_id: str, body: dict[str, Any]) -> dict[str, Any]:
        return {"answer": llm(str(body.get("message", "")))}

    @app.get("/echo")
    async def echo(request: Request) -> dict[str, Any]:
        return {"query": dict(request.query_params)}

    @app.post("/raw")
    async def raw(request: Request) -> Response:
        data = await request.body()
        return Response(content=str(len(data)), media_type="text/plain")

    @app.post("/children")
    async def children() -> dict[str, Any]:
        async def in_task() -> str:
            return tool("task-tool")

        task_result = await asyncio.create_task(in_task())
        thread_result = await run_in_threadpool(tool, "thread-tool")
        return {"task": task_result, "thread": thread_result, "llm": llm("x")}

    @app.post("/background")
    async def background(tasks: BackgroundTasks) -> dict[str, str]:
        tasks.add_task(tool, "background-tool")
        return {"status": "queued"}

    @app.post("/stream")
    async def stream() -> StreamingResponse:
        async def events() -> AsyncIterator[str]:
            for word in ("Hello", " there", "!"):
                tool("chunk-tool")
                await asyncio.sleep(0)
                yield f"data: {word}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.post("/boom")
    async def boom(body: dict[str, Any]) -> None:
        raise ValueError("model exploded")

    @app.get("/missing")
    async def missing() -> None:
        raise HTTPException(404, "no such thing")

    @app.get("/unavailable")
    async def unavailable() -> PlainTextResponse:
        return PlainTextResponse("down", status_code=503)

    def late_identity() -> None:  # a sync dependency, run in the threadpool
        bind(user_id="user-from-dependency", metadata={"plan": "pro"})

    @app.post("/late", dependencies=[Depends(late_identity)])
    async def late(body: dict[str, Any]) -> dict[str, Any]:
        bind(tenant_id="tenant-from-handler")
        set_input({"question": body["message"]})
        answer = llm(body["message"])
        set_output({"answer": answer})
        return {"answer": answer, "debug": "not recorded"}

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    options.setdefault("agent_name", "support-agent")
    app.add_middleware(LemmaMiddleware, langfuse=client, **options)
    return app
