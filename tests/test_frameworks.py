"""Litestar, Quart and Falcon (issue 23) with the pure ASGI middleware, each served by real
uvicorn and exporting over OTLP/HTTP protobuf to a receiver on 127.0.0.1
(tests/apps/framework_apps.py): one conformant trace per request with the thread, the user,
the framework's route template (``/chat/{thread_id}``, not the raw path), the fake LLM as a
child carrying thread and user; a view's exception is an error. Without the support each
asserts something that fails: no route template from Litestar's scope, Quart's rule or
Falcon's ``uri_template``, no Litestar user (a plain object in ``scope["user"]``), Quart's
exception recorded as "HTTP 500"."""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from starlette.authentication import SimpleUser, UnauthenticatedUser

from examples.demo import free_port, start_server
from lemma_middleware import LemmaMiddleware, set_route
from lemma_middleware.core.identity import user_id_of
from lemma_middleware.testing.contract import assert_conformant

from .apps.flaky_destination import FlakyDestination
from .helpers import Captured, environ_without_destinations, post

for module in ("litestar", "quart", "falcon"):
    pytest.importorskip(module, reason=f"{module} is not installed")

from .apps.framework_apps import LitestarUser  # noqa: E402

META = "langfuse.trace.metadata."
ROUTES = {
    "litestar": "/chat/{thread_id}",  # Litestar's template drops the type
    "quart": "/chat/<thread_id>",
    "falcon": "/chat/{thread_id}",
}
"""Each framework's route template, as its app declares it."""
ERRORS = {
    "litestar": "HTTP 500",
    "quart": "RuntimeError: the model is down",
    "falcon": "HTTP 500",
}


@pytest.fixture(scope="module", params=sorted(ROUTES))
def served(request: pytest.FixtureRequest) -> Iterator[tuple[str, str, FlakyDestination]]:
    destination = FlakyDestination().start()
    env = environ_without_destinations() | {"LEMMA_OTLP_ENDPOINT": destination.url}
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "--factory", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--log-level", "critical"]
    process, url = start_server(
        [*command, f"tests.apps.framework_apps:{request.param}_app"], port, env
    )
    try:
        yield request.param, url, destination
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=40)
        destination.stop()


def test_a_turn_has_thread_user_route_template_and_the_llm_child(served: Any) -> None:
    framework, url, destination = served
    headers = {"authorization": "Bearer token-alice", "x-conversation-id": "t-18851"}
    response = httpx.post(f"{url}/chat/t-18851", json={"message": "hi"}, headers=headers)
    assert response.status_code in (200, 201), response.text
    assert response.json()["thread"] == "t-18851"
    spans = destination.trace(response.headers["x-trace-id"], {"support-agent", "fake-llm"})
    root, children = FlakyDestination.root_and_children(spans)
    attributes = root.attributes
    assert attributes["session.id"] == "t-18851"
    assert attributes["user.id"] == "alice", framework
    assert json.loads(attributes[META + "http.route"]) == ROUTES[framework]
    assert META + "http.path" not in attributes  # one value per route, not per conversation
    assert json.loads(attributes["langfuse.trace.input"]) == {"message": "hi"}
    assert json.loads(attributes["langfuse.trace.output"])["thread"] == "t-18851"
    assert [
        (c.name, c.attributes.get("user.id"), c.attributes.get("session.id")) for c in children
    ] == [("fake-llm", "alice", "t-18851")]
    assert_conformant([root, *children])


def test_a_failing_view_is_an_error(served: Any) -> None:
    framework, url, destination = served
    response = httpx.post(f"{url}/fail", json={}, headers={"x-conversation-id": "t-fail"})
    assert response.status_code == 500
    spans = destination.trace(response.headers["x-trace-id"], {"support-agent"})
    root, _ = FlakyDestination.root_and_children(spans)
    assert root.attributes["langfuse.observation.level"] == "ERROR"
    assert root.attributes["langfuse.observation.status_message"] == ERRORS[framework], framework
    assert json.loads(root.attributes[META + "http.route"]) == "/fail"


# in-process: what the served tests rest on ------------------------------------------------


async def test_set_route_names_the_route_of_a_framework_the_middleware_cannot_see(
    captured: Captured,
) -> None:
    async def bare_app(scope: Any, receive: Any, send: Any) -> None:
        set_route("/chat/{thread_id}")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    app = LemmaMiddleware(bare_app, langfuse=captured.client)
    assert (await post(app, "/chat/t-1", json={})).status_code == 200
    attributes = captured.root().attributes
    assert json.loads(attributes[META + "http.route"]) == "/chat/{thread_id}"
    set_route("/outside")  # outside a traced request: nothing happens


@pytest.mark.parametrize(
    ("user", "expected"),
    [
        (LitestarUser("alice"), "alice"),  # a plain object (Litestar's scope["user"])
        ({"user_id": 7}, "7"),
        ("carol", "carol"),
        (SimpleUser("dave"), "dave"),  # Starlette's auth user
        (UnauthenticatedUser(), None),
        (None, None),
    ],
)
def test_the_user_id_is_read_from_auth_and_plain_users(user: object, expected: str | None) -> None:
    assert user_id_of(user) == expected
