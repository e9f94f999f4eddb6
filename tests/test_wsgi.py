"""The WSGI middleware produces the same trace as the ASGI one, from a wrapped Flask app."""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

import pytest
from flask import Flask

from lemma_middleware import REDACTED, LemmaFlask, LemmaWSGIMiddleware, normalise_id

from .apps.wsgi_apps import call, make_flask_app
from .helpers import Captured, assert_tree_whole

HEADERS = {"x-conversation-id": "conv-42", "x-user-id": "user-7", "x-tenant-id": "acme"}


def test_root_carries_every_contract_field(captured: Captured) -> None:
    app = make_flask_app(captured.client, environment="production", release="1.4.2", version="v7")
    response = call(app, "POST", "/chat/conv-42", json_body={"message": "hi"}, headers=HEADERS)
    assert response.json() == {"answer": "HI"}
    root = captured.root()
    a = root.attributes
    assert root.name == "support-agent"
    assert a["langfuse.observation.type"] == "agent"
    assert a["langfuse.trace.name"] == "support-agent"
    assert a["gen_ai.agent.name"] == "support-agent"
    assert a["session.id"] == "conv-42" and a["lemma.thread_id"] == "conv-42"
    assert json.loads(a["langfuse.trace.metadata.lemma.thread_id"]) == "conv-42"
    assert a["user.id"] == "user-7"
    assert a["app.tenant.id"] == "acme"
    assert json.loads(a["langfuse.trace.metadata.tenant_id"]) == "acme"
    assert a["langfuse.environment"] == "production"
    assert a["deployment.environment.name"] == "production"
    assert a["langfuse.release"] == "1.4.2" and a["langfuse.version"] == "v7"
    assert json.loads(a["langfuse.trace.input"]) == {"message": "hi"}
    assert a["langfuse.observation.input"] == a["langfuse.trace.input"]
    assert json.loads(a["langfuse.trace.output"]) == {"answer": "HI"}
    assert json.loads(a["langfuse.trace.metadata.http.route"]) == "/chat/<thread_id>"
    assert json.loads(a["langfuse.trace.metadata.http.status_code"]) == 200
    assert response.headers["x-trace-id"] == format(root.context.trace_id, "032x")
    (child,) = captured.children(root)
    assert child.parent is not None and child.parent.span_id == root.context.span_id
    assert child.attributes["session.id"] == "conv-42"
    assert child.attributes["user.id"] == "user-7"
    assert child.attributes["app.tenant.id"] == "acme"


def test_streaming_chunks_run_inside_the_root_which_ends_after_the_last(captured: Captured) -> None:
    response = call(make_flask_app(captured.client), "POST", "/stream", headers=HEADERS)
    assert response.body.count(b"data:") == 4
    root = captured.root()
    chunk_spans = [s for s in captured.children(root) if s.name == "chunk-tool"]
    assert len(chunk_spans) == 3
    for span in chunk_spans:
        assert span.parent is not None and span.parent.span_id == root.context.span_id
        assert span.attributes["session.id"] == "conv-42"
        assert span.end_time is not None and root.end_time is not None
        assert span.end_time <= root.end_time
    assert root.attributes["langfuse.observation.output"] == "Hello there!"
    assert_tree_whole(captured.spans())


def test_client_going_away_mid_stream_ends_the_root_in_close(captured: Captured) -> None:
    response = call(
        make_flask_app(captured.client), "POST", "/stream", headers=HEADERS, stop_after_chunks=1
    )
    assert len(response.chunks) == 1
    a = captured.root().attributes
    assert a["langfuse.observation.level"] == "WARNING"
    assert (
        a["langfuse.observation.status_message"]
        == "client disconnected before the response was complete"
    )
    # the next request on the same thread is not polluted by the abandoned generator
    call(
        make_flask_app(captured.client),
        "POST",
        "/chat/x",
        json_body={"message": "a"},
        headers={"x-conversation-id": "next"},
    )
    roots = {r.attributes["session.id"] for r in captured.roots()}
    assert roots == {"conv-42", "next"}


def test_flask_500_from_an_exception_is_an_error_naming_it(captured: Captured) -> None:
    response = call(
        make_flask_app(captured.client),
        "POST",
        "/boom",
        json_body={"message": "go"},
        headers=HEADERS,
    )
    assert response.status == 500
    a = captured.root().attributes
    assert a["langfuse.observation.level"] == "ERROR"
    assert a["langfuse.observation.status_message"] == "ValueError: model exploded"
    assert json.loads(a["langfuse.trace.input"]) == {"message": "go"}
    assert "langfuse.observation.output" not in a


def test_exceptions_propagate_unchanged_after_being_recorded(captured: Captured) -> None:
    def broken_app(environ: Any, start_response: Any) -> Any:
        raise KeyError("deep failure")

    app = LemmaWSGIMiddleware(broken_app, langfuse=captured.client, agent_name="bare")
    with pytest.raises(KeyError, match="deep failure"):
        call(app, "POST", "/x", json_body={})
    a = captured.root().attributes
    assert a["langfuse.observation.level"] == "ERROR"
    assert a["langfuse.observation.status_message"] == "KeyError: 'deep failure'"


def test_4xx_is_a_warning(captured: Captured) -> None:
    assert call(make_flask_app(captured.client), "GET", "/missing").status == 404
    a = captured.root().attributes
    assert (a["langfuse.observation.level"], a["langfuse.observation.status_message"]) == (
        "WARNING",
        "HTTP 404",
    )


def test_body_is_teed_without_consuming_it_also_when_chunked(captured: Captured) -> None:
    app = make_flask_app(captured.client)
    payload = b'{"message": "' + b"z" * 100_000 + b'"}'
    for chunked in (False, True):
        captured.exporter.clear()
        response = call(
            app, "POST", "/raw", data=payload, content_type="application/json", chunked=chunked
        )
        assert response.body == str(len(payload)).encode()
        recorded = captured.root().attributes["langfuse.trace.input"]
        assert recorded.endswith(
            f"… [truncated: {len(payload)} bytes in total, first 65536 recorded]"
        )
    captured.exporter.clear()
    response = call(
        app,
        "POST",
        "/form",
        data=b"a=1&password=pw",
        content_type="application/x-www-form-urlencoded",
    )
    assert response.json() == {"a": "1", "password": "pw"}  # the view saw the real values
    assert json.loads(captured.root().attributes["langfuse.trace.input"]) == {
        "a": "1",
        "password": REDACTED,
    }


def test_redaction_binary_broken_json_and_query(captured: Captured) -> None:
    app = make_flask_app(captured.client)
    call(app, "POST", "/raw", json_body={"nested": [{"api_key": "sk", "ok": 1}]})
    assert json.loads(captured.root().attributes["langfuse.trace.input"]) == {
        "nested": [{"api_key": REDACTED, "ok": 1}]
    }
    captured.exporter.clear()
    call(app, "POST", "/raw", data=b"\x00\x01\x02", content_type="application/octet-stream")
    assert (
        captured.root().attributes["langfuse.trace.input"]
        == "<binary application/octet-stream, 3 bytes>"
    )
    captured.exporter.clear()
    call(app, "POST", "/raw", data=b'{"token": "t", "x"', content_type="application/json")
    assert '"t"' not in captured.root().attributes["langfuse.trace.input"]
    captured.exporter.clear()
    call(app, "GET", "/echo?q=1&secret=s")
    assert json.loads(captured.root().attributes["langfuse.trace.input"]) == {
        "q": "1",
        "secret": REDACTED,
    }


def test_identity_from_flask_g_remote_user_and_bind(captured: Captured) -> None:
    app = make_flask_app(captured.client)
    call(
        app,
        "POST",
        "/chat/c",
        json_body={"message": "x"},
        headers={"authorization": "Bearer t-alice", "x-user-id": "mallory"},
    )
    root = captured.root()
    assert root.attributes["user.id"] == "alice"
    (child,) = captured.children(root)
    assert child.attributes["user.id"] == "alice"
    assert "Bearer" not in str([dict(s.attributes) for s in captured.spans()])
    captured.exporter.clear()

    def plain(environ: Any, start_response: Any) -> list[bytes]:
        start_response("200 OK", [("content-type", "text/plain")])
        return [b"ok"]

    bare = LemmaWSGIMiddleware(plain, langfuse=captured.client, agent_name="bare")
    environ_user = {"REMOTE_USER": "kerberos-user"}
    from werkzeug.test import EnvironBuilder

    environ = (
        EnvironBuilder(path="/x", headers={"x-user-id": "mallory"}).get_environ() | environ_user
    )
    body = bare(environ, lambda *a: None)
    list(body)
    body.close()  # type: ignore[attr-defined]
    assert captured.root().attributes["user.id"] == "kerberos-user"
    captured.exporter.clear()

    call(app, "POST", "/late", json_body={"message": "hello"}, headers={"x-conversation-id": "c1"})
    root = captured.root()
    assert root.attributes["user.id"] == "user-from-view"
    assert root.attributes["app.tenant.id"] == "tenant-from-view"
    assert json.loads(root.attributes["langfuse.trace.input"]) == {"question": "hello"}
    assert json.loads(root.attributes["langfuse.trace.output"]) == {"answer": "HELLO"}
    (llm,) = captured.children(root)
    assert llm.attributes["user.id"] == "user-from-view"


def test_header_normalisation_and_exclusions(
    captured: Captured, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_flask_app(captured.client)
    with caplog.at_level(logging.INFO, logger="lemma_middleware"):
        call(
            app,
            "POST",
            "/chat/c",
            json_body={},
            headers={"x-conversation-id": "t" * 300, "x-user-id": "a\tb"},
        )
    a = captured.root().attributes
    assert a["session.id"] == normalise_id("t" * 300, "thread_id")
    assert "user.id" not in a  # control character: rejected
    captured.exporter.clear()
    call(app, "GET", "/health")
    call(app, "OPTIONS", "/chat/c")
    assert captured.spans() == []


def test_100_concurrent_requests_from_threads_never_mix(captured: Captured) -> None:
    app = make_flask_app(captured.client)
    trace_ids: list[str] = []
    barrier = threading.Barrier(20)

    def worker(start: int) -> None:
        barrier.wait()
        for i in range(start, start + 5):
            headers = {
                "x-conversation-id": f"conv-{i}",
                "x-user-id": f"user-{i}",
                "x-tenant-id": f"t-{i}",
            }
            path = "/stream" if i % 2 else f"/chat/{i}"
            response = call(app, "POST", path, json_body={"message": f"m{i}"}, headers=headers)
            trace_ids.append(response.headers["x-trace-id"])

    threads = [threading.Thread(target=worker, args=(n * 5,)) for n in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(trace_ids)) == 100
    spans = captured.spans()
    assert_tree_whole(spans)
    roots = {s.context.trace_id: s for s in spans if s.parent is None}
    assert len(roots) == 100
    for span in spans:
        i = roots[span.context.trace_id].attributes["session.id"].removeprefix("conv-")
        assert span.attributes["user.id"] == f"user-{i}"
        assert span.attributes["app.tenant.id"] == f"t-{i}"


def test_flask_config_convenience(captured: Captured) -> None:
    app = Flask(__name__)

    @app.post("/chat")
    def chat() -> dict[str, str]:
        return {"answer": "ok"}

    app.config.update(LEMMA_AGENT_NAME="config-agent", LEMMA_THREAD_HEADER="x-thread-id")
    LemmaFlask(app, langfuse=captured.client)
    call(app.wsgi_app, "POST", "/chat", json_body={}, headers={"x-thread-id": "th-1"})
    root = captured.root()
    assert root.name == "config-agent"
    assert root.attributes["session.id"] == "th-1"
    with pytest.raises(TypeError, match="unknown"):
        LemmaFlask(app, agent="typo")


def test_no_keys_serves_untraced(no_destinations: None) -> None:
    def plain(environ: Any, start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        return [b"ok"]

    app = LemmaWSGIMiddleware(plain, agent_name="x")
    response = call(app, "GET", "/")
    assert response.body == b"ok" and "x-trace-id" not in response.headers


def test_flask_login_current_user_reaches_root_and_children(captured: Captured) -> None:
    from flask_login import LoginManager, UserMixin

    class User(UserMixin):
        def __init__(self, user_id: str) -> None:
            self.id = user_id

    app = Flask(__name__)
    login = LoginManager(app)
    login.request_loader(
        lambda request: User("carol") if request.headers.get("x-api-token") == "c" else None
    )

    @app.post("/chat")
    def chat() -> dict[str, str]:
        from flask_login import current_user

        assert current_user.is_authenticated  # resolved inside the view
        with captured.client.start_as_current_observation(name="tool", as_type="tool"):
            return {"answer": "ok"}

    LemmaFlask(app, langfuse=captured.client, agent_name="a")
    call(app, "POST", "/chat", json_body={}, headers={"x-api-token": "c", "x-user-id": "mallory"})
    root = captured.root()
    assert root.attributes["user.id"] == "carol"
    (child,) = captured.children(root)
    assert child.attributes["user.id"] == "carol"


def test_work_done_in_the_response_close_belongs_to_the_request(captured: Captured) -> None:
    """Servers call ``close()`` after the last chunk (Flask runs its teardown there): it
    still runs in the request's context, after the root ended."""
    client = captured.client

    class Body:
        def __iter__(self) -> Any:
            return iter([b"ok"])

        def close(self) -> None:
            with client.start_as_current_observation(name="teardown", as_type="tool"):
                pass

    def plain(environ: Any, start_response: Any) -> Any:
        start_response("200 OK", [("content-type", "text/plain")])
        return Body()

    from werkzeug.test import EnvironBuilder

    app = LemmaWSGIMiddleware(plain, langfuse=client, agent_name="bare")
    body = app(EnvironBuilder(path="/x", headers=HEADERS).get_environ(), lambda *a: None)
    assert list(body) == [b"ok"]
    body.close()  # type: ignore[attr-defined]
    root = captured.root()
    (teardown,) = captured.children(root)
    assert teardown.name == "teardown"
    assert teardown.attributes["session.id"] == "conv-42"
