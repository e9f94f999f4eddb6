"""Attributes reach everything the handler does, for its whole lifetime, and never leak."""

from __future__ import annotations

import asyncio
import json

import httpx

from lemma_middleware import bind, get_trace_id, set_input, set_output

from .apps.asgi_apps import make_app
from .helpers import HEADERS, Captured, assert_tree_whole, post


async def test_tasks_threadpool_and_observe_are_children_of_the_root(captured: Captured) -> None:
    await post(make_app(captured.client), "/children", headers=HEADERS)
    root = captured.root()
    children = {s.name: s for s in captured.children(root)}
    assert set(children) == {"task-tool", "thread-tool", "llm-call"}
    for child in children.values():
        assert child.parent is not None and child.parent.span_id == root.context.span_id
        assert child.attributes["session.id"] == "conv-42"
        assert child.attributes["user.id"] == "user-7"


async def test_streaming_body_runs_inside_the_root_and_output_is_the_assembled_text(
    captured: Captured,
) -> None:
    response = await post(make_app(captured.client), "/stream", headers=HEADERS)
    assert response.text.count("data:") == 4
    root = captured.root()
    chunk_spans = [s for s in captured.children(root) if s.name == "chunk-tool"]
    assert len(chunk_spans) == 3
    for span in chunk_spans:
        assert span.attributes["session.id"] == "conv-42"
        assert span.end_time is not None and root.end_time is not None
        assert span.end_time <= root.end_time
    assert root.attributes["langfuse.observation.output"] == "Hello there!"


async def test_background_task_is_in_the_same_trace(captured: Captured) -> None:
    await post(make_app(captured.client), "/background", headers=HEADERS)
    spans = captured.spans()
    assert_tree_whole(spans)
    root = captured.root()
    (background,) = captured.children(root)
    assert background.name == "background-tool"
    assert background.attributes["user.id"] == "user-7"


async def test_bind_and_set_io_from_sync_dependency_and_async_handler(captured: Captured) -> None:
    headers = {"x-conversation-id": "conv-1", "x-user-id": "header-user"}
    await post(make_app(captured.client), "/late", json={"message": "hello"}, headers=headers)
    root = captured.root()
    a = root.attributes
    assert a["user.id"] == "user-from-dependency"
    assert a["app.tenant.id"] == "tenant-from-handler"
    assert json.loads(a["langfuse.trace.metadata.tenant_id"]) == "tenant-from-handler"
    assert json.loads(a["langfuse.trace.metadata.plan"]) == "pro"
    assert json.loads(a["langfuse.trace.input"]) == {"question": "hello"}
    assert json.loads(a["langfuse.trace.output"]) == {"answer": "HELLO"}
    (llm,) = captured.children(root)
    assert llm.attributes["user.id"] == "user-from-dependency"
    assert llm.attributes["app.tenant.id"] == "tenant-from-handler"
    assert llm.attributes["session.id"] == "conv-1"


def test_helpers_outside_a_request_do_nothing() -> None:
    bind(user_id="u", thread_id="t", tenant_id="x", metadata={"a": 1})
    set_input("in")
    set_output("out")
    assert get_trace_id() is None


async def test_200_concurrent_requests_never_mix_identities(captured: Captured) -> None:
    app = make_app(captured.client)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:

        async def turn(i: int) -> str:
            response = await client.post(
                "/children",
                headers={
                    "x-conversation-id": f"conv-{i}",
                    "x-user-id": f"user-{i}",
                    "x-tenant-id": f"t-{i}",
                },
            )
            return response.headers["x-trace-id"]

        trace_ids = await asyncio.gather(*(turn(i) for i in range(200)))
    assert len(set(trace_ids)) == 200
    spans = captured.spans()
    assert len(spans) == 200 * 4
    assert_tree_whole(spans)
    roots = {s.context.trace_id: s for s in spans if s.parent is None}
    assert len(roots) == 200
    for span in spans:
        root = roots[span.context.trace_id]
        i = root.attributes["session.id"].removeprefix("conv-")
        assert span.attributes["session.id"] == f"conv-{i}"
        assert span.attributes["user.id"] == f"user-{i}"
        assert span.attributes["app.tenant.id"] == f"t-{i}"
