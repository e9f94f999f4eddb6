"""A local OpenAI-compatible server for the LLM-stack tests: chat completions (JSON and SSE),
the Responses API (JSON and SSE) and embeddings, deterministic answers, usage counted in
words. Run it with ``uvicorn tests.apps.fake_openai:app``."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

MODEL = "gpt-fake"


def _last_user_text(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        content = message.get("content")
        if isinstance(content, str):
            return content
        if isinstance(content, list):
            return " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


def _answer(prompt: str) -> str:
    return f"Answer to: {prompt}"


def _usage(prompt: str, answer: str) -> dict[str, int]:
    prompt_tokens, completion_tokens = len(prompt.split()), len(answer.split())
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _sse(events: list[dict[str, Any]], done: bool = True) -> StreamingResponse:
    async def body() -> AsyncIterator[bytes]:
        for event in events:
            yield f"data: {json.dumps(event)}\n\n".encode()
        if done:
            yield b"data: [DONE]\n\n"

    return StreamingResponse(body(), media_type="text/event-stream")


async def chat_completions(request: Request) -> Response:
    body = await request.json()
    prompt = _last_user_text(body.get("messages", []))
    answer = _answer(prompt)
    created = int(time.time())
    base = {"id": "chatcmpl-fake", "created": created, "model": body.get("model", MODEL)}
    if not body.get("stream"):
        return JSONResponse(
            {
                **base,
                "object": "chat.completion",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": answer},
                        "finish_reason": "stop",
                    }
                ],
                "usage": _usage(prompt, answer),
            }
        )
    chunk = {**base, "object": "chat.completion.chunk"}
    events = [{**chunk, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}]
    for word in answer.split(" "):
        events.append({**chunk, "choices": [{"index": 0, "delta": {"content": word + " "}}]})
    events.append({**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    if (body.get("stream_options") or {}).get("include_usage"):
        events.append({**chunk, "choices": [], "usage": _usage(prompt, answer)})
    return _sse(events)


async def responses(request: Request) -> Response:
    body = await request.json()
    given = body.get("input", "")
    prompt = given if isinstance(given, str) else _last_user_text(given)
    answer = _answer(prompt)
    usage = _usage(prompt, answer)
    result = {
        "id": "resp-fake",
        "object": "response",
        "created_at": int(time.time()),
        "model": body.get("model", MODEL),
        "status": "completed",
        "output": [
            {
                "type": "message",
                "id": "msg-fake",
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": answer, "annotations": []}],
            }
        ],
        "usage": {
            "input_tokens": usage["prompt_tokens"],
            "output_tokens": usage["completion_tokens"],
            "total_tokens": usage["total_tokens"],
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": 0},
        },
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
    }
    if not body.get("stream"):
        return JSONResponse(result)
    in_progress = {**result, "status": "in_progress", "output": []}
    events = [
        {"type": "response.created", "sequence_number": 0, "response": in_progress},
        {
            "type": "response.output_text.delta",
            "sequence_number": 1,
            "item_id": "msg-fake",
            "output_index": 0,
            "content_index": 0,
            "delta": answer,
        },
        {"type": "response.completed", "sequence_number": 2, "response": result},
    ]
    return _sse(events, done=False)


async def embeddings(request: Request) -> Response:
    body = await request.json()
    given = body.get("input", "")
    texts = given if isinstance(given, list) else [given]
    return JSONResponse(
        {
            "object": "list",
            "model": body.get("model", "embed-fake"),
            "data": [
                {"object": "embedding", "index": i, "embedding": [0.1, 0.2, float(len(str(t)))]}
                for i, t in enumerate(texts)
            ],
            "usage": {"prompt_tokens": len(texts), "total_tokens": len(texts)},
        }
    )


async def models(request: Request) -> Response:
    return JSONResponse({"object": "list", "data": [{"id": MODEL, "object": "model"}]})


async def health(request: Request) -> Response:
    return JSONResponse({"ok": True})


app = Starlette(
    routes=[
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/responses", responses, methods=["POST"]),
        Route("/v1/embeddings", embeddings, methods=["POST"]),
        Route("/v1/models", models),
        Route("/health", health),
    ]
)
