"""Generated requests through both adapters (hypothesis, 6,000 cases each): any method, path,
query string, header and body. For each, the wrapped app must answer exactly as the bare app
does, nothing may escape the middleware, a traced request gives exactly one root that is
never empty, identity values stay within Langfuse's limits, and no value of a secret-shaped
field reaches any exported attribute."""

from __future__ import annotations

import asyncio
import io
import json
import os
import sys
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.trace import ReadableSpan

from lemma_middleware import LemmaMiddleware, LemmaWSGIMiddleware
from lemma_middleware.core.identity import LANGFUSE_VALUE_LIMIT
from lemma_middleware.testing.contract import check_traces
from lemma_middleware.testing.plugin import TraceCapture

CASES = int(os.environ.get("LEMMA_FUZZ_CASES", "6000"))
SECRET = "SECRETVAL"  # + digits: the value of every secret-shaped field generated
IDENTITY_HEADERS = ("x-conversation-id", "x-user-id", "x-tenant-id")
IDENTITY_KEYS = (  # every key an identity value is propagated under
    "session.id",
    "user.id",
    "app.tenant.id",
    "lemma.thread_id",
    "langfuse.trace.metadata.lemma.thread_id",
    "langfuse.trace.metadata.tenant_id",
)
EMPTY_ROOT_RULES = {"single-root", "input", "output-or-error"}


# The bare apps: the same behaviour under ASGI and WSGI -------------------------------------


def answer(method: str, path: str, query: bytes, body: bytes | None) -> tuple[int, bytes]:
    """Status and body the bare app answers (``body`` None: the app did not read it)."""
    if "boom" in path:
        raise RuntimeError("the app failed")
    status = (200, 201, 400, 404, 500)[len(path) % 5]
    document = {"method": method, "path": path, "query": query.decode("latin-1")}
    document["read"] = None if body is None else len(body)
    return status, json.dumps(document).encode()


def reads_body(path: str) -> bool:
    return not path.startswith("/skip")


async def bare_asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
    body: bytes | None = None
    if reads_body(scope["path"]):
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
    status, payload = answer(scope["method"], scope["path"], scope["query_string"], body)
    headers = [(b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    half = len(payload) // 2
    await send({"type": "http.response.body", "body": payload[:half], "more_body": True})
    await send({"type": "http.response.body", "body": payload[half:]})


def bare_wsgi(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
    path = environ["PATH_INFO"].encode("latin-1").decode("utf-8", "replace")
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length) if reads_body(path) else None
    query = environ["QUERY_STRING"].encode("latin-1")
    status, payload = answer(environ["REQUEST_METHOD"], path, query, body)
    start_response(f"{status} X", [("Content-Type", "application/json")])
    half = len(payload) // 2
    return iter([payload[:half], payload[half:]])


# Generated requests -------------------------------------------------------------------------

secret_values = st.integers(0, 10**8).map(lambda n: f"{SECRET}{n:08d}")
secret_keys = st.sampled_from(
    ["password", "token", "api_key", "apiKey", "accessToken", "client-secret", "Authorization"]
)
json_leaves = st.none() | st.booleans() | st.integers() | st.text(max_size=20)
json_documents = st.recursive(
    json_leaves,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=12,
)


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    """Binary noise, or a JSON document, a form or a text with secret-shaped fields."""
    kind = draw(st.sampled_from(["binary", "json", "form", "text", "empty"]))
    if kind == "binary":
        return draw(st.binary(max_size=600))
    if kind == "empty":
        return b""
    key, secret = draw(secret_keys), draw(secret_values)
    if kind == "json":
        document = {"message": draw(json_documents), key: secret}
        return json.dumps(document).encode()
    if kind == "form":
        return f"message={quote(draw(st.text(max_size=30)))}&{key}={secret}".encode()
    return f"hello\n{key}: {secret}\nbye {draw(st.text(max_size=30))}".encode()


header_values = st.binary(max_size=250).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))


@st.composite
def requests(draw: st.DrawFn) -> dict[str, Any]:
    method = draw(
        st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"])
        | st.from_regex(r"[A-Z]{1,12}", fullmatch=True)
    )
    path = (
        "/"
        + draw(st.sampled_from(["", "chat", "skip/", "boom/", "health", "docs", "chat/"]))
        + draw(st.text(max_size=40).filter(lambda t: "\x00" not in t))
    )
    query = draw(st.binary(max_size=80))
    if draw(st.booleans()):
        query = f"password={draw(secret_values)}&".encode() + query
    headers: list[tuple[bytes, bytes]] = []
    for name in IDENTITY_HEADERS:
        if draw(st.booleans()):
            headers.append((name.encode(), draw(header_values)))
    credentials = {
        b"authorization": b"Bearer ",
        b"cookie": b"session=",
        b"x-api-key": b"",
        b"proxy-authorization": b"Basic ",
    }
    for name, prefix in credentials.items():
        if draw(st.booleans()):
            headers.append((name, prefix + draw(secret_values).encode()))
    content_type = draw(
        st.sampled_from(
            ["application/json", "text/plain", "application/x-www-form-urlencoded", "", "a/b;;"]
        )
    )
    if content_type:
        headers.append((b"content-type", content_type.encode()))
    extra = st.tuples(st.from_regex(rb"[a-z][a-z0-9-]{0,20}", fullmatch=True), header_values)
    headers += draw(st.lists(extra, max_size=3))
    return {
        "method": method,
        "path": path,
        "query": query,
        "headers": headers,
        "body": draw(bodies()),
    }


# Checks on what was exported --------------------------------------------------------------


def check_exported(spans: list[ReadableSpan], traced: bool) -> None:
    roots = [s for s in spans if s.parent is None]
    assert len(roots) == (1 if traced else 0), [s.name for s in roots]
    broken = [v for v in check_traces(spans) if v.rule in EMPTY_ROOT_RULES]
    assert not broken, [str(v) for v in broken]
    for span in spans:
        for key, value in (span.attributes or {}).items():
            text = value if isinstance(value, str) else str(value)
            assert SECRET not in text, (key, text[:300])
            if key in IDENTITY_KEYS:  # Langfuse checks the JSON form of a propagated value
                assert isinstance(value, str), key
                assert len(json.dumps(value)) <= LANGFUSE_VALUE_LIMIT, (key, value)


@pytest.fixture(scope="module")
def capture() -> Iterator[TraceCapture]:
    traces = TraceCapture()
    yield traces
    traces.close()


fuzz = settings(
    max_examples=CASES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


# ASGI ------------------------------------------------------------------------------------


def asgi_scope(request: dict[str, Any]) -> dict[str, Any]:
    """The HTTP scope of a generated request."""
    body = request["body"]
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": request["method"],
        "scheme": "http",
        "path": request["path"],
        "raw_path": request["path"].encode("utf-8", "surrogatepass"),
        "query_string": request["query"],
        "root_path": "",
        "headers": [*request["headers"], (b"content-length", str(len(body)).encode())],
        "client": ("127.0.0.1", 5000),
        "server": ("testserver", 80),
    }


async def call_asgi(app: Any, request: dict[str, Any]) -> tuple[list[dict[str, Any]], Any]:
    """Every message the app sent and the exception that escaped, if any."""
    body = request["body"]
    chunks = [body[: len(body) // 2], body[len(body) // 2 :]]
    scope = asgi_scope(request)

    async def receive() -> dict[str, Any]:
        if chunks:
            part = chunks.pop(0)
            return {"type": "http.request", "body": part, "more_body": bool(chunks)}
        return {"type": "http.disconnect"}

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    try:
        await app(scope, receive, send)
    except Exception as error:
        return sent, (type(error), str(error))
    return sent, None


def without_trace_header(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    kept = []
    for message in messages:
        if message["type"] == "http.response.start":
            headers = [h for h in message["headers"] if h[0].lower() != b"x-trace-id"]
            message = {**message, "headers": headers}
        kept.append(message)
    return kept


def test_any_request_through_the_asgi_adapter(capture: TraceCapture) -> None:
    wrapped = LemmaMiddleware(bare_asgi, agent_name="fuzz", langfuse=capture.client)
    tracing = wrapped.tracing
    assert tracing is not None
    loop = asyncio.new_event_loop()

    @fuzz
    @given(requests())
    def one_request(request: dict[str, Any]) -> None:
        capture.clear()
        expected = loop.run_until_complete(call_asgi(bare_asgi, request))
        sent, escaped = loop.run_until_complete(call_asgi(wrapped, request))
        assert escaped == expected[1]  # the app's own exception, unchanged, or none
        assert without_trace_header(sent) == expected[0]
        traced = not tracing.is_excluded(request["method"], request["path"])
        check_exported(capture.spans(), traced)

    try:
        one_request()
    finally:
        loop.close()


# WSGI ------------------------------------------------------------------------------------


def wsgi_environ(request: dict[str, Any]) -> dict[str, Any]:
    """The WSGI environ of a generated request."""
    body = request["body"]
    environ: dict[str, Any] = {
        "REQUEST_METHOD": request["method"],
        "SCRIPT_NAME": "",
        "PATH_INFO": request["path"].encode("utf-8", "surrogatepass").decode("latin-1"),
        "QUERY_STRING": request["query"].decode("latin-1"),
        "CONTENT_LENGTH": str(len(body)),
        "SERVER_NAME": "testserver",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    for name, value in request["headers"]:
        key = name.decode("latin-1").upper().replace("-", "_")
        key = key if key == "CONTENT_TYPE" else f"HTTP_{key}"
        text = value.decode("latin-1")
        environ[key] = f"{environ[key]}, {text}" if key in environ else text
    return environ


def call_wsgi(app: Any, request: dict[str, Any]) -> tuple[Any, Any]:
    """(status, headers, body) as a server sees it, and the exception that escaped."""
    environ = wsgi_environ(request)
    started: list[Any] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        started.append((status, [h for h in headers if h[0].lower() != "x-trace-id"]))
        return lambda data: None

    try:
        iterable = app(environ, start_response)
        try:
            payload = b"".join(iterable)
        finally:
            close = getattr(iterable, "close", None)
            if close is not None:
                close()
    except Exception as error:
        return started, (type(error), str(error))
    return (started, payload), None


def test_any_request_through_the_wsgi_adapter(capture: TraceCapture) -> None:
    wrapped = LemmaWSGIMiddleware(bare_wsgi, agent_name="fuzz", langfuse=capture.client)

    @fuzz
    @given(requests())
    def one_request(request: dict[str, Any]) -> None:
        capture.clear()
        expected = call_wsgi(bare_wsgi, request)
        assert call_wsgi(wrapped, request) == expected
        traced = not wrapped.tracing.is_excluded(request["method"], request["path"])
        check_exported(capture.spans(), traced)

    one_request()
