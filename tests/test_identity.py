"""Where thread, user and tenant come from, and how untrusted values are made safe."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from starlette.authentication import AuthCredentials, AuthenticationBackend, SimpleUser
from starlette.middleware.authentication import AuthenticationMiddleware

from lemma_middleware import normalise_id

from .apps.agent_steps import agent_steps
from .apps.asgi_apps import make_app
from .helpers import Captured, post


class TokenAuth(AuthenticationBackend):
    async def authenticate(self, conn: Any) -> Any:
        if conn.headers.get("authorization") == "Bearer t-alice":
            return AuthCredentials(["authenticated"]), SimpleUser("alice")
        return None


def test_normalisation_keeps_short_ascii_and_makes_the_rest_stable_distinct_and_short() -> None:
    assert normalise_id("  conv-1 \t", "thread_id") == "conv-1"
    assert normalise_id("", "thread_id") is None
    assert normalise_id("a\x00b", "thread_id") is None
    assert normalise_id("line\nbreak", "thread_id") is None
    long_a, long_b = "x" * 300, "x" * 299 + "y"
    for value in (long_a, "café-thread", "会话"):
        out = normalise_id(value, "thread_id")
        assert out is not None and len(out) <= 200 and out.isascii()
        assert out == normalise_id(value, "thread_id")
    assert normalise_id(long_a, "t") != normalise_id(long_b, "t")
    assert normalise_id("x" * 198, "t") == "x" * 198  # its JSON form is 200 characters
    assert normalise_id("x" * 199, "t") != "x" * 199


async def test_long_and_non_ascii_header_ids_still_group(
    captured: Captured, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app(captured.client)
    thread = "t" * 500
    with caplog.at_level(logging.INFO, logger="lemma_middleware"):
        for _ in range(2):
            await post(
                app,
                "/chat/c",
                json={"message": "x"},
                headers={"x-conversation-id": thread, "x-user-id": "josé".encode()},
            )
    roots = captured.roots()
    sessions = {r.attributes["session.id"] for r in roots}
    assert sessions == {normalise_id(thread, "thread_id")}
    assert {r.attributes["user.id"] for r in roots} == {normalise_id("josé", "user_id")}
    assert {r.attributes["lemma.thread_id"] for r in roots} == sessions
    normalised_logs = [r for r in caplog.records if "normalised" in r.getMessage()]
    assert len(normalised_logs) == 2  # once per field, not per request


async def test_configurable_header_names_tried_in_order(captured: Captured) -> None:
    app = make_app(captured.client, thread_header=["x-thread-id", "x-session-id"], user_header=None)
    await post(app, "/chat/c", json={}, headers={"x-session-id": "s-2", "x-user-id": "ignored"})
    a = captured.root().attributes
    assert a["session.id"] == "s-2"
    assert "user.id" not in a


@pytest.mark.expect_internal_errors
def test_secret_headers_cannot_be_identity_headers(captured: Captured) -> None:
    """Reported, not raised: Starlette builds middleware on the first event (see
    test_misconfiguration.py for what servers then do)."""
    from lemma_middleware import LemmaMiddleware, OptionError

    stack: Any = make_app(captured.client, user_header="Authorization").build_middleware_stack()
    while not isinstance(stack, LemmaMiddleware):
        stack = stack.app
    assert isinstance(stack.configuration_error, OptionError)
    assert "user_header='authorization'" in str(stack.configuration_error)


async def test_auth_user_wins_over_the_user_header_and_resolver_wins_over_both(
    captured: Captured,
) -> None:
    app = make_app(captured.client)
    app.add_middleware(AuthenticationMiddleware, backend=TokenAuth())  # runs outside ours
    await post(
        app, "/chat/c", json={}, headers={"authorization": "Bearer t-alice", "x-user-id": "mallory"}
    )
    assert captured.root().attributes["user.id"] == "alice"
    captured.exporter.clear()

    inner = make_app(
        captured.client,
        identity_resolver=lambda request: {"user_id": "from-resolver", "metadata": {"org": "o1"}},
    )
    inner.add_middleware(AuthenticationMiddleware, backend=TokenAuth())
    await post(
        inner,
        "/chat/c",
        json={},
        headers={"authorization": "Bearer t-alice", "x-user-id": "mallory"},
    )
    a = captured.root().attributes
    assert a["user.id"] == "from-resolver"
    assert a["langfuse.trace.metadata.org"] == '"o1"'


async def test_auth_user_set_inside_the_middleware_reaches_root_and_children(
    captured: Captured,
) -> None:
    from starlette.middleware import Middleware

    app = make_app(captured.client)
    # AuthenticationMiddleware inside ours: the user is known only after our middleware started.
    app.user_middleware.append(Middleware(AuthenticationMiddleware, backend=TokenAuth()))
    await post(app, "/chat/c", json={"message": "x"}, headers={"authorization": "Bearer t-alice"})
    root = captured.root()
    assert root.attributes["user.id"] == "alice"
    (child,) = captured.children(root)
    assert child.attributes["user.id"] == "alice"
    assert "Bearer" not in str([dict(s.attributes) for s in captured.spans()])


async def test_identity_bound_late_is_written_exactly_as_identity_known_at_start(
    captured: Captured,
) -> None:
    """One attribute table: the keys and encodings a late bind() writes on the root and on
    later children are those propagate_attributes writes when the headers carry them."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from lemma_middleware import LemmaMiddleware, bind

    llm, _ = agent_steps(captured.client)

    async def chat(request: Any) -> JSONResponse:
        if "x-conversation-id" not in request.headers:
            bind(thread_id="conv-9", user_id="user-9", tenant_id="acme-9")
        llm("hi")
        return JSONResponse({"answer": "ok"})

    app = LemmaMiddleware(
        Starlette(routes=[Route("/chat", chat, methods=["POST"])]),
        agent_name="support-agent",
        environment="staging",
        release="2.1",
        metadata={"region": "eu"},
        langfuse=captured.client,
    )
    identity = {"x-conversation-id": "conv-9", "x-user-id": "user-9", "x-tenant-id": "acme-9"}
    await post(app, "/chat", json={"m": 1}, headers=identity)
    await post(app, "/chat", json={"m": 1})
    spans = captured.spans()
    roots = sorted(captured.roots(), key=lambda s: s.start_time or 0)
    assert len(roots) == 2

    def comparable(span: Any) -> dict[str, Any]:
        return {k: v for k, v in span.attributes.items() if k != "langfuse.internal.is_app_root"}

    at_start, bound_late = (comparable(r) for r in roots)
    assert at_start == bound_late
    children = [
        comparable(s)
        for root in roots
        for s in spans
        if s is not root and s.context.trace_id == root.context.trace_id
    ]
    assert len(children) == 2
    assert children[0] == children[1]
