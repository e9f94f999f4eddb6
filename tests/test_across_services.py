"""One conversation across two agents: the front agent calls the billing agent over HTTP
with ``outgoing_headers()``; real uvicorn (and gunicorn for a Flask agent in the chain), real
export to one receiver. The billing agent takes thread, user and tenant from the W3C
baggage only when the caller is a trusted upstream, and continues the caller's trace only
when asked."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from examples.demo import start_gunicorn, start_uvicorn
from lemma_middleware.inbox.receiver import OTLPReceiver
from lemma_middleware.testing.contract import check_traces
from lemma_middleware.testing.records import ReceivedSpan

from .helpers import environ_without_destinations, langfuse_environ

HEADERS = {"x-conversation-id": "conv-42", "x-user-id": "alice", "x-tenant-id": "acme"}


@contextmanager
def served(start: Any, app: str, env: dict[str, str]) -> Iterator[str]:
    process, url = start(app, env)
    try:
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


def converse(billing_app: str, start_billing: Any = start_uvicorn, **billing_env: str) -> list:
    """Serve both agents, send one turn to the front one; every span both exported."""
    with OTLPReceiver(keys={"pk-chain": "sk-chain"}) as receiver:
        base = environ_without_destinations()
        base |= langfuse_environ(receiver.base_url, "pk-chain", "sk-chain")
        base["LANGFUSE_FLUSH_INTERVAL"] = "0.2"
        with served(start_billing, billing_app, base | billing_env) as billing:
            front_env = base | {"DOWNSTREAM_URL": f"{billing}/chat"}
            with served(start_uvicorn, "tests.apps.chain_apps:front", front_env) as front:
                response = httpx.post(
                    f"{front}/chat", json={"message": "my invoice"}, headers=HEADERS, timeout=20
                )
                assert response.status_code == 200, response.text
                assert response.json()["answer"].endswith("paid")
        assert receiver.wait_for(lambda spans: len(spans) >= 3, 10)
        return receiver.spans


def roots_by_agent(spans: list[ReceivedSpan]) -> dict[str, ReceivedSpan]:
    return {
        s.attributes["gen_ai.agent.name"]: s
        for s in spans
        if s.attributes.get("langfuse.observation.type") == "agent"
    }


def test_a_trusted_upstream_gives_its_thread_and_continues_its_trace() -> None:
    spans = converse("tests.apps.chain_apps:billing", TRUSTED="127.0.0.1", CONTINUE="1")
    roots = roots_by_agent(spans)
    front, billing = roots["front-agent"], roots["billing-agent"]
    for key, value in (("session.id", "conv-42"), ("user.id", "alice"), ("app.tenant.id", "acme")):
        assert billing.attributes[key] == value, key
    assert billing.trace_id == front.trace_id and billing.parent_span_id == front.span_id
    tool = next(s for s in spans if s.name == "look_up_invoice")
    assert tool.parent_span_id == billing.span_id and tool.attributes["session.id"] == "conv-42"
    assert not check_traces(spans), [str(v) for v in check_traces(spans)]  # one trace, one root


def test_an_untrusted_caller_cannot_pick_the_thread_or_the_trace() -> None:
    spans = converse("tests.apps.chain_apps:billing", TRUSTED="10.9.9.9/32", CONTINUE="1")
    roots = roots_by_agent(spans)
    front, billing = roots["front-agent"], roots["billing-agent"]
    assert "session.id" not in billing.attributes and "user.id" not in billing.attributes
    assert billing.parent_span_id is None and billing.trace_id != front.trace_id
    assert billing.attributes["langfuse.trace.metadata.upstream.trace_id"] == f'"{front.trace_id}"'


def test_a_flask_agent_in_the_chain_joins_the_thread_as_a_linked_trace() -> None:
    spans = converse("tests.apps.chain_apps:billing_flask()", start_gunicorn, TRUSTED="127.0.0.0/8")
    roots = roots_by_agent(spans)
    front, billing = roots["front-agent"], roots["billing-agent"]
    assert billing.attributes["session.id"] == "conv-42" == front.attributes["session.id"]
    assert billing.attributes["user.id"] == "alice"
    assert billing.parent_span_id is None and billing.trace_id != front.trace_id
    assert billing.attributes["langfuse.trace.metadata.upstream.trace_id"] == f'"{front.trace_id}"'
    assert not check_traces(spans), [str(v) for v in check_traces(spans)]


# In process: the headers, and who may set the identity ---------------------------------


def small_app(client: Any, seen: dict[str, Any], **options: Any) -> Any:
    from fastapi import FastAPI

    from lemma_middleware import LemmaMiddleware, outgoing_headers

    app = FastAPI(telemetry={"tracing": False})

    @app.post("/chat")
    async def chat() -> dict[str, Any]:
        seen.update(outgoing_headers())
        return {"ok": True}

    app.add_middleware(LemmaMiddleware, agent_name="agent", langfuse=client, **options)
    return app


async def call(app: Any, headers: dict[str, str]) -> None:
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 5555))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        assert (await http.post("/chat", headers=headers)).status_code == 200


async def test_outgoing_headers_carry_the_trace_and_the_identity(captured: Any) -> None:
    from lemma_middleware import outgoing_headers

    assert outgoing_headers() == {}  # outside a request
    seen: dict[str, Any] = {}
    await call(small_app(captured.client, seen), HEADERS)
    root = captured.root()
    assert seen["traceparent"].split("-")[1] == format(root.context.trace_id, "032x")
    assert "langfuse_session_id=conv-42" in seen["baggage"]
    assert "langfuse_user_id=alice" in seen["baggage"]


async def test_baggage_counts_only_from_a_trusted_upstream(captured: Any) -> None:
    upstream = {"baggage": "langfuse_session_id=stolen-thread,langfuse_user_id=mallory"}
    await call(small_app(captured.client, {}), upstream)  # nobody trusted (the default)
    assert "session.id" not in captured.root().attributes
    captured.clear()
    await call(small_app(captured.client, {}, trusted_upstreams=["127.0.0.1"]), upstream)
    attributes = captured.root().attributes
    assert (attributes["session.id"], attributes["user.id"]) == ("stolen-thread", "mallory")
    captured.clear()
    await call(small_app(captured.client, {}, trusted_upstreams=["10.0.0.0/8"]), upstream)
    assert "session.id" not in captured.root().attributes


def test_trusted_upstreams_must_be_addresses_or_networks() -> None:
    import pytest

    from lemma_middleware import LemmaWSGIMiddleware, OptionError

    with pytest.raises(OptionError, match="trusted_upstreams"):
        LemmaWSGIMiddleware(lambda e, s: [], trusted_upstreams=["example.com"])
