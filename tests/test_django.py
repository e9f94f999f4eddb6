"""Django (issue 23), in-process: ``lemma_middleware.django.LemmaMiddleware`` first in
``MIDDLEWARE`` of the example project (examples/django_app: sessions, auth, Django REST
framework, a real SQLite database), driven by Django's test ``Client`` (the sync, WSGI
chain) and ``AsyncClient`` (the async, ASGI chain). The served tests (gunicorn, uvicorn)
are in tests/test_django_served.py."""

from __future__ import annotations

import asyncio
import io
import json
import os
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

django = pytest.importorskip("django", reason="Django is not installed")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "examples.django_app.settings")
os.environ.setdefault("DJANGO_DB", os.path.join(tempfile.mkdtemp(), "db.sqlite3"))
django.setup()

from django.contrib.auth.models import User  # noqa: E402
from django.core.exceptions import ImproperlyConfigured  # noqa: E402
from django.core.handlers.asgi import ASGIRequest  # noqa: E402
from django.core.handlers.wsgi import WSGIRequest  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.http import HttpRequest, HttpResponse  # noqa: E402
from django.test import AsyncClient, Client, override_settings  # noqa: E402
from django.utils.functional import SimpleLazyObject, empty  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from opentelemetry.sdk.trace import ReadableSpan  # noqa: E402
from rest_framework.authtoken.models import Token  # noqa: E402

from lemma_middleware.django import LemmaMiddleware, lemma_checks  # noqa: E402
from lemma_middleware.sdk import django_request  # noqa: E402
from lemma_middleware.sdk.django_request import (  # noqa: E402
    check_django_internals,
    check_session_user,
)
from lemma_middleware.testing.plugin import TraceCapture  # noqa: E402

from .helpers import Captured  # noqa: E402
from .test_adapter_fuzz import (  # noqa: E402
    CASES,
    answer,
    asgi_scope,
    check_exported,
    fuzz,
    reads_body,
    requests,
    wsgi_environ,
)

django_fuzz = settings(fuzz, max_examples=max(CASES // 3, 1))
"""A third of the fuzz suite's cases per Django adapter (each case goes through Django's
request parsing twice)."""

META = "langfuse.trace.metadata."
HEADERS = {"x-conversation-id": "conv-42", "x-tenant-id": "acme"}


@pytest.fixture(scope="module")
def database() -> None:
    call_command("migrate", verbosity=0)
    for name in ("alice", "bob"):
        if not User.objects.filter(username=name).exists():
            user = User.objects.create_user(name, password=f"{name}-password")
            Token.objects.create(user=user, key=f"token-{name}")


@pytest.fixture
def traced(captured: Captured, database: None) -> Iterator[Captured]:
    """The example project exporting to ``captured``."""
    with override_settings(LEMMA_LANGFUSE=captured.client):
        yield captured


def post(client: Client | AsyncClient, path: str, body: Any = None, **headers: str) -> Any:
    return client.post(
        path, json.dumps(body or {"message": "hello"}), content_type="application/json",
        headers=HEADERS | headers,
    )  # fmt: skip


def root_of(captured: TraceCapture) -> ReadableSpan:
    return captured.root()


def children_named(captured: TraceCapture, root: ReadableSpan) -> dict[str, ReadableSpan]:
    return {child.name: child for child in captured.children(root)}


# the trace ----------------------------------------------------------------------------


def test_a_sync_view_is_one_trace_with_thread_route_input_output_and_session_user(
    traced: Captured,
) -> None:
    client = Client()
    client.force_login(User.objects.get(username="alice"))
    response = post(client, "/chat/t-18851")
    assert response.status_code == 200
    root = root_of(traced)
    a = root.attributes
    assert root.name == "support-agent"
    assert a["session.id"] == "conv-42" and a["app.tenant.id"] == "acme"
    assert a["user.id"] == "alice"  # the view never read request.user: loaded after it
    assert json.loads(a[META + "http.route"]) == "chat/<str:thread_id>"
    assert json.loads(a["langfuse.trace.input"]) == {"message": "hello"}
    assert json.loads(a["langfuse.trace.output"])["thread"] == "t-18851"
    assert response.headers["x-trace-id"] == format(root.context.trace_id, "032x")
    llm = children_named(traced, root)["fake-llm"]
    assert llm.parent is not None and llm.parent.span_id == root.context.span_id
    assert llm.attributes["session.id"] == "conv-42"
    traced.assert_conformant()


async def test_an_async_view_reads_the_user_without_blocking_and_children_carry_it(
    traced: Captured,
) -> None:
    client = AsyncClient()
    await client.aforce_login(await User.objects.aget(username="bob"))
    response = await post(client, "/achat/t-1")
    assert response.status_code == 200 and response.json()["user"] == "bob"
    root = root_of(traced)
    assert root.attributes["user.id"] == "bob"
    assert json.loads(root.attributes[META + "http.route"]) == "achat/<str:thread_id>"
    llm = children_named(traced, root)["fake-llm"]
    assert llm.attributes["user.id"] == "bob"  # made after the view loaded the user


async def test_an_async_request_is_served_in_the_requests_task_without_a_thread_hop(
    traced: Captured,
) -> None:
    """Under the async chain the middleware is a coroutine function (Django calls it
    without sync_to_async)."""
    from asgiref.sync import iscoroutinefunction

    async def get_response(request: Any) -> Any:
        raise AssertionError("not called")

    assert iscoroutinefunction(LemmaMiddleware(get_response))
    assert not iscoroutinefunction(LemmaMiddleware(lambda request: None))


def assert_drf_user_everywhere(captured: Captured, response: Any) -> None:
    assert response.status_code == 200, response.content
    root = root_of(captured)
    assert root.attributes["user.id"] == "alice"
    assert json.loads(root.attributes[META + "http.route"]) == "api/chat"
    llm = children_named(captured, root)["fake-llm"]
    assert llm.attributes["user.id"] == "alice"  # made after DRF authenticated


def test_the_user_django_rest_framework_authenticates_is_on_the_root_and_children(
    traced: Captured,
) -> None:
    assert_drf_user_everywhere(
        traced, post(Client(), "/api/chat", authorization="Token token-alice")
    )


async def test_the_user_django_rest_framework_authenticates_under_asgi(traced: Captured) -> None:
    response = await post(AsyncClient(), "/api/chat", authorization="Token token-alice")
    assert_drf_user_everywhere(traced, response)


def test_an_anonymous_request_has_no_user(traced: Captured) -> None:
    post(Client(), "/chat/t-2")
    assert "user.id" not in root_of(traced).attributes


def lazy_user_loaded(response: Any) -> bool:
    """Whether the request's lazy ``request.user`` was evaluated (by anyone)."""
    request = response.wsgi_request
    user = vars(request).get("user")
    evaluated = object.__getattribute__(user, "_wrapped") is not empty
    return evaluated or "_cached_user" in vars(request)


def test_an_anonymous_request_without_a_session_has_no_user_and_nothing_is_loaded(
    traced: Captured,
) -> None:
    """No session cookie: AuthenticationMiddleware's user is anonymous, which the middleware
    tells without loading it (Django's get_user finds no user id in an empty session)."""
    response = post(Client(), "/chat/t-2")
    assert "user.id" not in root_of(traced).attributes
    assert not lazy_user_loaded(response)


def test_without_the_session_user_check_the_anonymous_user_is_loaded(
    traced: Captured, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(django_request, "check_session_user", lambda: False)
    response = post(Client(), "/chat/t-2")
    assert "user.id" not in root_of(traced).attributes
    assert lazy_user_loaded(response)  # the public way: request.user evaluated


class LazyBob:
    """A project's own middleware setting a lazy user of its own (a token lookup, say)."""

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> Any:
        request.user = SimpleLazyObject(lambda: User.objects.get(username="bob"))
        return self.get_response(request)


def test_another_middlewares_lazy_user_is_loaded_without_a_session(traced: Captured) -> None:
    """Only AuthenticationMiddleware's own lazy user is known anonymous without a session."""
    from django.conf import settings as django_settings

    chain = [*django_settings.MIDDLEWARE, f"{__name__}.LazyBob"]
    with override_settings(MIDDLEWARE=chain):
        response = post(Client(), "/chat/t-3")
    assert root_of(traced).attributes["user.id"] == "bob"
    assert lazy_user_loaded(response)


def test_with_use_auth_user_off_the_user_is_neither_loaded_nor_recorded(
    traced: Captured,
) -> None:
    client = Client()
    client.force_login(User.objects.get(username="alice"))
    with override_settings(LEMMA_USE_AUTH_USER=False):
        response = post(client, "/chat/t-5")
    assert "user.id" not in root_of(traced).attributes
    assert not lazy_user_loaded(response)


def test_the_user_id_field_setting_picks_what_is_recorded(traced: Captured) -> None:
    client = Client()
    alice = User.objects.get(username="alice")
    client.force_login(alice)
    with override_settings(LEMMA_USER_ID_FIELD="pk"):
        post(client, "/chat/t-3")
    assert root_of(traced).attributes["user.id"] == str(alice.pk)


@pytest.mark.parametrize(
    ("asynchronous", "path", "message"),
    [
        (False, "/fail", "RuntimeError: the knowledge base is unreachable"),
        (True, "/afail", "RuntimeError: the async knowledge base is unreachable"),
    ],
    ids=["sync", "async"],
)
async def test_a_view_exception_is_an_error_naming_it_although_django_answers_500(
    traced: Captured, asynchronous: bool, path: str, message: str
) -> None:
    client = AsyncClient(raise_request_exception=False) if asynchronous else None
    if client is None:
        response = post(Client(raise_request_exception=False), path)
    else:
        response = await post(client, path)
    assert response.status_code == 500
    a = root_of(traced).attributes
    assert a["langfuse.observation.level"] == "ERROR"
    assert a["langfuse.observation.status_message"] == message
    assert json.loads(a["langfuse.trace.input"]) == {"message": "hello"}


# streaming and files -------------------------------------------------------------------


def test_a_sync_stream_is_recorded_and_its_root_ends_after_the_last_chunk(
    traced: Captured,
) -> None:
    response = post(Client(), "/stream")
    assert traced.spans() == []  # not sent yet: the root is open
    body = b"".join(response.streaming_content)
    response.close()
    root = root_of(traced)
    assert body.startswith(b"data: You") and body.endswith(b"\n\n")
    assert root.attributes["langfuse.trace.output"]
    llm = children_named(traced, root)["fake-llm"]  # the model ran while streaming
    assert llm.end_time is not None and root.end_time is not None
    assert llm.end_time <= root.end_time


async def test_an_async_stream_is_recorded_and_ends_after_the_last_chunk(
    traced: Captured,
) -> None:
    response = await post(AsyncClient(), "/astream")
    chunks = [chunk async for chunk in response.streaming_content]
    root = root_of(traced)
    assert len(chunks) > 3
    assert "You said" in root.attributes["langfuse.trace.output"]
    assert "fake-llm" in children_named(traced, root)


def test_a_stream_closed_early_ends_the_root_in_close(traced: Captured) -> None:
    response = post(Client(), "/stream")
    next(iter(response.streaming_content))
    response.close()
    root = root_of(traced)
    assert root.end_time is not None
    assert json.loads(root.attributes[META + "http.status_code"]) == 200


def test_a_file_response_is_sent_whole_and_not_recorded(traced: Captured) -> None:
    response = Client().get("/file")
    assert b"".join(response.streaming_content) == b"%PDF-1.4 a report\n" * 100
    response.close()
    root = root_of(traced)
    assert "PDF-1.4" not in root.attributes.get("langfuse.trace.output", "")


def test_the_body_is_teed_as_django_reads_it(traced: Captured) -> None:
    """DRF parses the body through the request's stream: the view gets all of it, the
    root records it."""
    big = {"message": "x" * 50_000}
    response = post(Client(), "/api/chat", big, authorization="Token token-bob")
    assert response.status_code == 200
    assert json.loads(root_of(traced).attributes["langfuse.trace.input"]) == big


def test_django_private_request_state_is_where_the_adapter_expects_it() -> None:
    """The start-up check passes on the installed Django (a failing one is logged, and the
    public API takes over: the next test)."""
    assert check_django_internals() == (True, True)
    assert check_session_user()


@pytest.mark.parametrize("chain", ["sync", "async"])
def test_without_djangos_private_state_the_user_is_recorded_and_the_body_is_not(
    traced: Captured, monkeypatch: pytest.MonkeyPatch, chain: str
) -> None:
    """Privacy and correctness fail closed: no tee, so no body; the user the middleware
    loads itself (``request.user`` / ``auser()``) is still on the root and the children."""
    monkeypatch.setattr(django_request, "check_django_internals", lambda: (False, False))
    if chain == "sync":
        client: Any = Client()
        client.force_login(User.objects.get(username="alice"))
        response = post(client, "/chat/t-2", {"message": "a secret body"})
    else:
        client = AsyncClient()
        asyncio.run(client.aforce_login(User.objects.get(username="alice")))
        response = asyncio.run(post(client, "/achat/t-2", {"message": "a secret body"}))
    assert response.status_code == 200
    root = root_of(traced)
    assert root.attributes["user.id"] == "alice"
    assert "a secret body" not in root.attributes.get("langfuse.trace.input", "")
    assert all(c.attributes.get("user.id") == "alice" for c in traced.children(root))


# generated requests (the fuzz suite's, through the Django adapter) ------------------------


def django_view(request: HttpRequest) -> HttpResponse:
    """The fuzz suite's bare app as a Django view."""
    body = request.body if reads_body(request.path_info) else None
    query = request.META.get("QUERY_STRING", "").encode("latin-1")
    status, payload = answer(request.method or "GET", request.path_info, query, body)
    return HttpResponse(payload, status=status, content_type="application/json")


async def async_django_view(request: HttpRequest) -> HttpResponse:
    return django_view(request)


def outcome(call: Any) -> Any:
    """What a Django response says (no x-trace-id), or the exception that escaped."""
    try:
        response = call()
    except Exception as error:
        return type(error), str(error)
    headers = [(k, v) for k, v in response.items() if k.lower() != "x-trace-id"]
    return response.status_code, headers, response.content


@pytest.fixture(scope="module")
def fuzz_capture() -> Iterator[TraceCapture]:
    traces = TraceCapture()
    yield traces
    traces.close()


def test_any_request_through_the_sync_django_adapter(fuzz_capture: TraceCapture) -> None:
    with override_settings(LEMMA_LANGFUSE=fuzz_capture.client, LEMMA_AGENT_NAME="fuzz"):
        wrapped = LemmaMiddleware(django_view)

    @django_fuzz
    @given(requests())
    def one_request(request: dict[str, Any]) -> None:
        fuzz_capture.clear()
        expected = outcome(lambda: django_view(WSGIRequest(wsgi_environ(request))))
        assert outcome(lambda: wrapped(WSGIRequest(wsgi_environ(request)))) == expected
        traced = not wrapped.tracing.is_excluded(request["method"], request["path"])
        check_exported(fuzz_capture.spans(), traced)

    one_request()


def test_any_request_through_the_async_django_adapter(fuzz_capture: TraceCapture) -> None:
    with override_settings(LEMMA_LANGFUSE=fuzz_capture.client, LEMMA_AGENT_NAME="fuzz"):
        wrapped = LemmaMiddleware(async_django_view)
    loop = asyncio.new_event_loop()

    def asgi_request(request: dict[str, Any]) -> ASGIRequest:
        return ASGIRequest(asgi_scope(request), io.BytesIO(request["body"]))

    @django_fuzz
    @given(requests())
    def one_request(request: dict[str, Any]) -> None:
        fuzz_capture.clear()
        try:
            asgi_request(request)
        except UnicodeDecodeError:  # Django's ASGIRequest refuses it: no request to trace
            return
        expected = outcome(
            lambda: loop.run_until_complete(async_django_view(asgi_request(request)))
        )
        sent = outcome(lambda: loop.run_until_complete(wrapped(asgi_request(request))))
        assert sent == expected
        traced = not wrapped.tracing.is_excluded(request["method"], request["path"])
        check_exported(fuzz_capture.spans(), traced)

    try:
        one_request()
    finally:
        loop.close()


# configuration and checks ---------------------------------------------------------------


def test_options_come_from_lemma_settings(traced: Captured) -> None:
    with override_settings(LEMMA_AGENT_NAME="billing-agent", LEMMA_THREAD_HEADER="x-chat"):
        post(Client(), "/chat/t-4", **{"x-chat": "chat-9"})
    root = root_of(traced)
    assert root.name == "billing-agent"
    assert root.attributes["session.id"] == "chat-9"


def test_checks_report_bad_options_position_and_unknown_settings(database: None) -> None:
    middleware = [
        "django.contrib.sessions.middleware.SessionMiddleware",
        "lemma_middleware.django.LemmaMiddleware",
    ]
    with override_settings(MIDDLEWARE=middleware, LEMMA_SAMPLE_RATE=7, LEMMA_THREAD_HEADR="x"):
        found = {message.id: message for message in lemma_checks()}
        assert set(found) == {
            "lemma_middleware.E001", "lemma_middleware.E002", "lemma_middleware.W001"
        }  # fmt: skip
        assert "sample_rate" in found["lemma_middleware.E001"].msg
        assert "position 2" in found["lemma_middleware.E002"].msg
        assert "LEMMA_THREAD_HEADR" in found["lemma_middleware.W001"].msg
        with pytest.raises(ImproperlyConfigured, match="sample_rate"):
            LemmaMiddleware(lambda request: None)


def test_a_wrong_position_fails_start_up_unless_silenced(captured: Captured) -> None:
    middleware = [
        "django.middleware.common.CommonMiddleware",
        "lemma_middleware.django.LemmaMiddleware",
    ]
    with override_settings(MIDDLEWARE=middleware, LEMMA_LANGFUSE=captured.client):
        with pytest.raises(ImproperlyConfigured, match="not first in MIDDLEWARE"):
            LemmaMiddleware(lambda request: None)
        with override_settings(SILENCED_SYSTEM_CHECKS=["lemma_middleware.E002"]):
            LemmaMiddleware(lambda request: None)


def test_manage_py_check_runs_the_checks(database: None) -> None:
    from django.core.management.base import SystemCheckError

    with (
        override_settings(LEMMA_SAMPLE_RATE="often"),
        pytest.raises(SystemCheckError, match=r"lemma_middleware\.E001"),
    ):
        call_command("check")
    call_command("check")
