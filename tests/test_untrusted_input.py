"""Property-based tests over what the middleware parses from untrusted requests and
responses: bodies of any bytes and content type, nested JSON of any depth, header values."""

from __future__ import annotations

import json
import string
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lemma_middleware import normalise_id
from lemma_middleware.core.capture import BodyCapture, parsed, render_body
from lemma_middleware.core.identity import MAX_ID_LENGTH
from lemma_middleware.core.redaction import MAX_DEPTH, REDACTED, TOO_DEEP, Redactor

from .apps.asgi_apps import make_app
from .apps.wsgi_apps import call, make_flask_app
from .helpers import Captured, post

SECRET = "s3cr3t-VALUE-xyz"
REDACTOR = Redactor()

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=30,
)
sensitive_keys = st.sampled_from(
    ["password", "token", "api_key", "openai_api_key", "Authorization", "db-password"]
)
content_types = st.sampled_from(
    [
        None,
        "application/json",
        "application/json; charset=utf-8",
        "application/vnd.api+json",
        "text/plain",
        "text/event-stream",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/octet-stream",
        "image/png",
        "",
        ";;;",
    ]
)


def _with_secret(value: Any, key: str) -> Any:
    """``value`` with a sensitive field holding SECRET added at its top or in a list."""
    if isinstance(value, dict):
        return {**value, key: SECRET}
    if isinstance(value, list):
        return [*value, {key: SECRET}]
    return {"v": value, key: SECRET}


def _nested(depth: int, key: str) -> Any:
    value: Any = {key: SECRET}
    for level in range(depth):
        value = {"a": value} if level % 2 else [value]
    return value


@given(json_values, sensitive_keys)
def test_redaction_never_leaves_a_sensitive_value(value: Any, key: str) -> None:
    redacted = REDACTOR.redact(_with_secret(value, key))
    assert SECRET not in json.dumps(redacted, default=str)


@given(st.integers(min_value=0, max_value=3000), sensitive_keys)
def test_any_depth_is_bounded_and_never_leaks(depth: int, key: str) -> None:
    redacted = REDACTOR.redact(_nested(depth, key))
    text = json.dumps(redacted)  # no recursion error either
    assert SECRET not in text
    if depth >= MAX_DEPTH:
        assert TOO_DEEP in text


@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=300)
@given(
    st.binary(max_size=3000) | json_values.map(lambda v: json.dumps(v).encode()),
    content_types,
    st.sampled_from([None, "", "gzip", "identity"]),
    st.integers(min_value=1, max_value=4096),
)
def test_rendering_any_body_never_raises_and_stays_bounded(
    data: bytes, content_type: str | None, encoding: str | None, limit: int
) -> None:
    capture = BodyCapture(limit)
    for start in range(0, len(data), 700):
        capture.feed(data[start : start + 700])
    rendered = render_body(capture, content_type, encoding, REDACTOR, "request")
    text = rendered if isinstance(rendered, str) else json.dumps(rendered, default=str)
    assert len(text) <= 8 * limit + 200  # the kept bytes (escaped at worst) plus a marker
    parsed(rendered)  # a recorded JSON document always parses back, or is text


@settings(max_examples=200)
@given(json_values, sensitive_keys, content_types)
def test_a_secret_in_any_json_body_is_never_rendered(
    value: Any, key: str, content_type: str | None
) -> None:
    data = json.dumps(_with_secret(value, key)).encode()
    capture = BodyCapture(1 << 20)
    capture.feed(data)
    rendered = render_body(capture, "application/json", None, REDACTOR, "request")
    assert SECRET not in json.dumps(rendered, default=str)


@given(st.text() | st.binary().map(lambda b: b.decode("latin-1")))
def test_any_header_value_becomes_an_id_langfuse_keeps_or_nothing(raw: str) -> None:
    value = normalise_id(raw, "user id")
    if value is not None:
        assert 0 < len(value) <= MAX_ID_LENGTH
        assert len(json.dumps(value)) <= 200  # what Langfuse checks in metadata
        assert all(c in string.printable and c not in "\t\n\r\x0b\x0c" for c in value)
        assert normalise_id(raw, "user id") == value  # stable


HOSTILE = '{"a":' * 500 + '{"password": "' + SECRET + '"}' + "}" * 500


async def test_a_hostile_nested_body_still_records_the_outcome_asgi(captured: Captured) -> None:
    """Issue 9, finding 1: ~500 levels of nesting around a sensitive key used to abort the
    recording and leave an empty root."""
    app = make_app(captured.client)
    response = await post(
        app, "/raw", content=HOSTILE, headers={"content-type": "application/json"}
    )
    assert response.status_code == 200
    a = captured.root().attributes
    assert a["langfuse.trace.metadata.http.status_code"] == "200"
    assert "langfuse.observation.input" in a
    assert SECRET not in json.dumps(dict(a))


def test_a_hostile_nested_body_still_records_the_outcome_wsgi(captured: Captured) -> None:
    app = make_flask_app(captured.client)
    response = call(app, "POST", "/chat/c", data=HOSTILE.encode(), content_type="application/json")
    assert response.status == 200
    a = captured.root().attributes
    assert a["langfuse.trace.metadata.http.status_code"] == "200"
    assert "langfuse.observation.input" in a
    assert SECRET not in json.dumps(dict(a))


@pytest.mark.parametrize("depth", [10, 100, 5000])
def test_a_deep_document_given_to_set_input_is_bounded(depth: int) -> None:
    redacted = REDACTOR.redact(_nested(depth, "token"))
    assert SECRET not in json.dumps(redacted)
    assert REDACTED in json.dumps(redacted) or depth >= MAX_DEPTH


@given(st.text(max_size=400))
def test_any_metadata_value_fits_langfuses_limit_in_its_json_form(raw: str) -> None:
    from lemma_middleware.core.attributes import json_text, metadata_value

    value = metadata_value("key", raw)
    assert len(json_text(value)) <= 200
    assert value == raw or value.endswith("…")


@pytest.mark.parametrize("direct", [True, False])
@pytest.mark.parametrize(
    "thread_id",
    ["t" * 198, "t" * 199, "t" * 200, 'say "hi" ' + "q" * 185, "back\\slash" + "b" * 188],
)
async def test_ids_near_the_limit_keep_every_key_langfuse_checks(
    thread_id: str, direct: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 9, finding 4: an id of 199-200 characters lost its metadata copies, because
    Langfuse checks their JSON form. Checked through Langfuse's own propagate_attributes
    (``direct=False``) too, which drops what does not fit."""
    from lemma_middleware.sdk import direct_propagation
    from lemma_middleware.testing.plugin import TraceCapture

    monkeypatch.setattr(direct_propagation, "direct_propagation_works", lambda: direct)
    capture = TraceCapture()
    headers = {"x-conversation-id": thread_id, "x-tenant-id": "acme"}
    app = make_app(capture.client, metadata={"note": 'a "quoted" note ' * 15})
    await post(app, "/children", json={"message": "hi"}, headers=headers)
    root = capture.root()
    kept = root.attributes["session.id"]
    assert kept == thread_id or len(thread_id) > 198 or '"' in thread_id or "\\" in thread_id
    for span in [root, *capture.children(root)]:
        a = span.attributes
        assert a["session.id"] == kept
        assert json.loads(a["langfuse.trace.metadata.lemma.thread_id"]) == kept
        assert json.loads(a["langfuse.trace.metadata.tenant_id"]) == "acme"
        assert json.loads(a["langfuse.trace.metadata.note"]).endswith("…")
    capture.close()


SECRET_SHAPED = [
    "sk-proj-abcdefghijklmnopqrstuvwx",
    "Bearer abcdefghijklmnopqrstuvwx",
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.c2lnbmF0dXJl",
    "AKIAIOSFODNN7EXAMPLE",
    "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
]


@pytest.mark.parametrize(
    "key",
    [
        "accessToken",
        "clientSecret",
        "openaiApiKey",
        "bearerToken",
        "sessionCookie",
        "privateKey",
        "X-Api-Key",
        "db.password",
        "APIKEY",
        "refresh-token",
    ],
)
async def test_secret_fields_in_every_spelling_are_redacted(captured: Captured, key: str) -> None:
    """Issue 9, finding 2: camelCase secrets were recorded verbatim."""
    await post(make_app(captured.client), "/chat/c", json={"message": "hi", key: SECRET})
    recorded = json.loads(captured.root().attributes["langfuse.observation.input"])
    assert recorded == {"message": "hi", key: REDACTED}


@pytest.mark.parametrize("value", SECRET_SHAPED)
async def test_secret_shaped_values_are_redacted_in_any_field_and_in_children(
    captured: Captured, value: str
) -> None:
    """Whatever the field's name, and in the observations the handler makes with the
    middleware's client (its mask is the same redaction)."""
    await post(make_app(captured.client), "/chat/c", json={"message": f"use {value} please"})
    root = captured.root()
    exported = json.dumps([dict(s.attributes) for s in [root, *captured.children(root)]])
    assert value not in exported
    assert REDACTED in json.loads(root.attributes["langfuse.observation.input"])["message"]
    (llm,) = captured.children(root)
    assert REDACTED in llm.attributes["langfuse.observation.input"]


@pytest.mark.parametrize(
    "text", ["token: " + SECRET, "password = " + SECRET, "Authorization: Bearer " + SECRET]
)
async def test_secrets_in_plain_text_bodies_are_redacted(captured: Captured, text: str) -> None:
    app = make_app(captured.client)
    await post(app, "/raw", content=text, headers={"content-type": "text/plain"})
    recorded = captured.root().attributes["langfuse.observation.input"]
    assert SECRET not in recorded and REDACTED in recorded


spelled_keys = st.sampled_from(
    ["password", "accessToken", "client-secret", "openai.api_key", "SESSION_COOKIE", "ApiKey"]
)


@settings(max_examples=200)
@given(json_values, spelled_keys, st.sampled_from(SECRET_SHAPED))
def test_no_spelling_or_shape_of_secret_survives_rendering(
    value: Any, key: str, shaped: str
) -> None:
    document = {"wrapper": _with_secret(value, key), "free": f"x {shaped} y"}
    capture = BodyCapture(1 << 20)
    capture.feed(json.dumps(document).encode())
    rendered = render_body(capture, "application/json", None, REDACTOR, "request")
    text = json.dumps(rendered, default=str)
    assert SECRET not in text and shaped not in text
