"""Private SDK state is read in one module, checked at start-up, with a public fallback;
privacy fails closed."""

from __future__ import annotations

import itertools
import logging
from typing import Any

import pytest
from langfuse import Langfuse
from opentelemetry.context import Context
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from lemma_middleware.sdk.client import CLIENT_INTERNALS
from lemma_middleware.sdk.spans import check_span_internals, langfuse_processor
from lemma_middleware.testing.contract import check_traces

from .apps.asgi_apps import make_app
from .helpers import HEADERS, Captured, assert_tree_whole, post

_keys = itertools.count()


def test_the_installed_sdks_have_every_internal_the_fast_paths_use(captured: Captured) -> None:
    assert check_span_internals() == (True, True)
    from lemma_middleware.sdk.client import inspect_client

    access = inspect_client(captured.client)
    assert access.enabled and access.mask_known
    assert access.provider is captured.provider
    assert access.public_key is not None and access.public_key.startswith("pk-lemma-test-")


@pytest.mark.expect_internal_errors
async def test_without_the_private_tracer_roots_start_through_the_public_api(
    captured: Captured, no_internal_errors: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(CLIENT_INTERNALS, "tracer", "_renamed_otel_tracer")
    await post(make_app(captured.client), "/children", json={"message": "hi"}, headers=HEADERS)
    spans = captured.spans()
    assert_tree_whole(spans)
    assert check_traces(spans) == []
    root = captured.root()
    assert root.attributes["langfuse.observation.type"] == "agent"
    assert root.attributes["session.id"] == "conv-42"
    assert root.attributes["lemma.thread_id"] == "conv-42"
    assert len(captured.children(root)) == 3
    messages = [r.getMessage() for r in no_internal_errors.records]
    assert any("Langfuse._otel_tracer" in m for m in messages), messages


@pytest.mark.expect_internal_errors
async def test_an_unreadable_mask_means_no_bodies_are_recorded(
    captured: Captured, no_internal_errors: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(CLIENT_INTERNALS, "mask", "_renamed_mask")
    app = make_app(captured.client)
    await post(app, "/chat/c", json={"message": "my password is hunter2"}, headers=HEADERS)
    root = captured.root()
    assert "langfuse.observation.input" not in root.attributes
    assert "langfuse.observation.output" not in root.attributes
    assert "langfuse.trace.input" not in root.attributes
    assert root.attributes["session.id"] == "conv-42"  # the rest of the trace is intact
    assert root.attributes["langfuse.trace.metadata.http.status_code"] == "200"
    messages = [r.getMessage() for r in no_internal_errors.records]
    assert any("Langfuse._mask" in m and "not recorded" in m for m in messages), messages


async def test_a_client_the_user_built_first_still_gets_ancestry_before_langfuse() -> None:
    """Langfuse's processor is on the provider before the middleware sees the client; the
    ancestry processor must still run first, or children of FastAPI's never-exported spans
    are marked as app roots."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    client = Langfuse(
        public_key=f"pk-user-first-{next(_keys)}",
        secret_key="sk",
        tracer_provider=provider,
        span_exporter=exporter,
        flush_interval=0.05,
    )
    try:
        app = make_app(client, telemetry={"tracer_provider": provider})
        await post(app, "/children", headers=HEADERS)
        client.flush()
        spans = list(exporter.get_finished_spans())
        assert sorted(s.name for s in spans) == [
            "llm-call",
            "support-agent",
            "task-tool",
            "thread-tool",
        ]
        assert_tree_whole(spans)
    finally:
        provider.shutdown()


@pytest.mark.expect_internal_errors
async def test_without_the_client_resources_requests_are_still_traced(
    captured: Captured, no_internal_errors: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(CLIENT_INTERNALS, "resources", "_renamed_resources")
    await post(make_app(captured.client), "/chat/c", json={"message": "hi"}, headers=HEADERS)
    root = captured.root()
    assert root.attributes["session.id"] == "conv-42"
    assert root.attributes["langfuse.observation.output"] == '{"answer":"HI"}'
    messages = [r.getMessage() for r in no_internal_errors.records]
    assert any("Langfuse._resources" in m for m in messages), messages


async def test_a_disabled_client_serves_untraced_without_blaming_the_sdk(
    captured: Captured, no_internal_errors: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LANGFUSE_TRACING_ENABLED", "false")
    client = Langfuse(public_key=f"pk-disabled-{next(_keys)}", secret_key="sk")
    app = make_app(client)
    response = await post(app, "/chat/c", json={"message": "hi"}, headers=HEADERS)
    assert response.json() == {"answer": "HI"}
    assert "x-trace-id" not in response.headers
    assert not no_internal_errors.records


def _children_identity(captured: Captured) -> list[dict[str, Any]]:
    root = captured.root()
    keys = ("session.id", "user.id", "langfuse.trace.name", "langfuse.trace.metadata.tenant_id")
    return [{k: child.attributes.get(k) for k in keys} for child in captured.children(root)]


async def test_propagated_attributes_in_the_context_match_propagate_attributes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The direct path (context values set by the middleware) and Langfuse's public
    ``propagate_attributes`` give every child the same attributes."""
    from lemma_middleware.sdk import direct_propagation
    from lemma_middleware.testing.plugin import TraceCapture

    assert direct_propagation.direct_propagation_works()
    results = []
    for direct in (True, False):
        monkeypatch.setattr(
            direct_propagation, "direct_propagation_works", lambda direct=direct: direct
        )
        capture = TraceCapture()
        await post(make_app(capture.client), "/children", json={"message": "hi"}, headers=HEADERS)
        results.append((_children_identity(capture), capture.root().attributes))
        capture.close()
    (direct_children, direct_root), (public_children, public_root) = results
    assert direct_children == public_children
    assert direct_children[0]["session.id"] == "conv-42"
    assert direct_children[0]["langfuse.trace.metadata.tenant_id"] == '"acme"'
    volatile = {"langfuse.observation.output", "langfuse.trace.output"}  # none: same answer
    assert {k: v for k, v in direct_root.items() if k not in volatile} == {
        k: v for k, v in public_root.items() if k not in volatile
    }


@pytest.mark.expect_internal_errors
async def test_a_renamed_propagation_key_function_falls_back_to_the_public_api(
    captured: Captured, no_internal_errors: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lemma_middleware.sdk import direct_propagation

    direct_propagation.direct_propagation_works.cache_clear()
    monkeypatch.setattr(direct_propagation, "PROPAGATION_KEY_FUNCTION", "_renamed_context_key")
    try:
        assert not direct_propagation.direct_propagation_works()
        await post(make_app(captured.client), "/children", json={"message": "hi"}, headers=HEADERS)
    finally:
        direct_propagation.direct_propagation_works.cache_clear()
    spans = captured.spans()
    assert check_traces(spans) == []
    assert {c["session.id"] for c in _children_identity(captured)} == {"conv-42"}
    messages = [r.getMessage() for r in no_internal_errors.records]
    assert any("_get_propagated_context_key" in m for m in messages), messages


class _Recording(InMemorySpanExporter):
    """Keeps what reaches it, and the OTLP bytes it would send."""

    def __init__(self) -> None:
        super().__init__()
        self.payloads: list[bytes] = []

    def export(self, spans: Any) -> Any:
        from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

        self.payloads.append(encode_spans(spans).SerializeToString())
        return super().export(spans)


def _client_with(exporter: Any, **kwargs: Any) -> tuple[Any, TracerProvider, str]:
    from lemma_middleware import build_client

    provider, key = TracerProvider(), f"pk-media-{next(_keys)}"
    if kwargs:
        client = Langfuse(
            public_key=key,
            secret_key="sk",
            tracer_provider=provider,
            span_exporter=exporter,
            **kwargs,
        )
        from lemma_middleware.export.processors import wire_client

        wire_client(client)
    else:
        client = build_client(span_exporter=exporter, tracer_provider=provider, public_key=key)
    return client, provider, key


def test_batches_without_media_skip_the_media_pass_and_send_the_same_bytes() -> None:
    from lemma_middleware.sdk.media_screen import MediaScreenedExporter, langfuse_exporter

    exporter = _Recording()
    client, provider, key = _client_with(exporter)
    screened = langfuse_exporter(provider, key)
    assert isinstance(screened, MediaScreenedExporter)

    with client.start_as_current_observation(name="agent", as_type="agent") as root:
        root.update(input={"message": "hi"}, output="plain", metadata={"k": "v"})
    client.flush()
    (span,) = exporter.get_finished_spans()
    exporter.payloads.clear()
    screened.transforming.export([span])  # Langfuse's media pass, as without the screen
    screened.export([span])
    assert exporter.payloads[0] == exporter.payloads[1]

    calls: list[int] = []  # Langfuse's media pass, replaced: it would upload the media
    screened.transforming.export = lambda spans: calls.append(len(spans))  # type: ignore[assignment,method-assign,return-value]
    screened.export([span])
    assert calls == []  # no media: straight to the exporter
    llm = provider.get_tracer("opentelemetry.instrumentation.openai")
    with llm.start_as_current_span("llm", attributes={"gen_ai.prompt.0.content": "data:a;base64,"}):
        pass
    client.flush()
    assert calls == [1]  # may hold media: through Langfuse's media pass
    provider.shutdown()


def test_a_client_masking_spans_at_export_keeps_the_whole_media_pass() -> None:
    from langfuse._client.span_exporter import LangfuseTransformingSpanExporter

    from lemma_middleware.sdk.media_screen import langfuse_exporter

    exporter = _Recording()
    _, provider, key = _client_with(exporter, mask_otel_spans=lambda **kwargs: None)
    assert isinstance(langfuse_exporter(provider, key), LangfuseTransformingSpanExporter)
    provider.shutdown()


# the root's span processors ----------------------------------------------------------------


async def _trace_through(shortcut: bool, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """One request's spans (root and children, as exported) with roots started through
    the shortcut or through Langfuse's processor."""
    from lemma_middleware.sdk import root_shortcut
    from lemma_middleware.testing.plugin import TraceCapture

    monkeypatch.setattr(root_shortcut, "root_shortcut_works", lambda: shortcut)
    capture = TraceCapture()
    try:
        await post(make_app(capture.client), "/children", json={"message": "hi"}, headers=HEADERS)
        spans = capture.spans()
        assert check_traces(spans) == []
        volatile = {"langfuse.observation.output", "langfuse.trace.output"}
        return sorted(
            (
                s.name,
                s.parent is None,
                [(k, v) for k, v in s.attributes.items() if k not in volatile],
            )
            for s in spans
        )
    finally:
        capture.close()


async def test_roots_started_directly_come_out_as_langfuses_processor_makes_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Same attributes in the same order on the root and on every child (only the root is
    the app root), whichever way the root was started."""
    from lemma_middleware.sdk import root_shortcut

    assert root_shortcut.root_shortcut_works()
    direct = await _trace_through(True, monkeypatch)
    through_langfuse = await _trace_through(False, monkeypatch)
    assert direct == through_langfuse
    app_roots = [
        (name, parentless)
        for name, parentless, attributes in direct
        if ("langfuse.internal.is_app_root", True) in attributes
    ]
    assert len(direct) > 2 and len(app_roots) == 1 and app_roots[0][1]


def test_the_middlewares_clients_start_roots_directly(captured: Captured) -> None:
    from lemma_middleware.export.processors import wire_client
    from lemma_middleware.sdk.root_shortcut import _RootProcessors

    access = wire_client(captured.client)
    span = access.start_root("agent", Context(), {"langfuse.observation.type": "agent"})
    assert isinstance(span._span_processor, _RootProcessors)
    span.end()


def test_a_root_in_a_context_with_propagated_attributes_goes_through_langfuses_processor(
    captured: Captured,
) -> None:
    """Langfuse's processor writes what an enclosing ``propagate_attributes`` carries onto
    the root: that case takes the full path."""
    from langfuse import propagate_attributes
    from opentelemetry import context as otel_context

    from lemma_middleware.export.processors import wire_client
    from lemma_middleware.sdk.root_shortcut import _RootProcessors

    access = wire_client(captured.client)
    with propagate_attributes(user_id="outer-user"):
        span = access.start_root("agent", otel_context.get_current(), {"n": 1})
    assert not isinstance(span._span_processor, _RootProcessors)
    span.end()
    captured.client.flush()
    (root,) = [s for s in captured.spans() if s.name == "agent"]
    assert root.attributes["user.id"] == "outer-user"
    assert root.attributes["langfuse.internal.is_app_root"] is True


@pytest.mark.expect_internal_errors
def test_a_langfuse_whose_app_root_bookkeeping_changed_keeps_the_full_path(
    monkeypatch: pytest.MonkeyPatch, no_internal_errors: Any
) -> None:
    """If the shortcut stops matching Langfuse (here: it forgets to remember the root as
    exported, so the child would be marked an app root too), the start-up check says so
    and roots go through Langfuse's processor."""
    from lemma_middleware.sdk import root_shortcut

    forgetful = lambda self, span, parent_context=None: None  # noqa: E731
    monkeypatch.setattr(root_shortcut._RootProcessors, "on_start", forgetful)
    root_shortcut.root_shortcut_works.cache_clear()
    try:
        assert not root_shortcut.root_shortcut_works()
        client, provider, _ = _client_with(InMemorySpanExporter())
        from lemma_middleware.export.processors import wire_client

        span = wire_client(client).start_root("agent", Context(), {"n": 1})
        assert not isinstance(span._span_processor, root_shortcut._RootProcessors)
        span.end()
        provider.shutdown()
    finally:
        root_shortcut.root_shortcut_works.cache_clear()
    messages = [r.getMessage() for r in no_internal_errors.records]
    assert any("app-root bookkeeping" in m for m in messages), messages


def test_a_client_with_its_own_export_filter_keeps_the_full_path() -> None:
    from lemma_middleware.export.processors import wire_client
    from lemma_middleware.sdk.root_shortcut import _RootProcessors

    client, provider, _ = _client_with(InMemorySpanExporter(), should_export_span=lambda s: True)
    span = wire_client(client).start_root("agent", Context(), {"n": 1})
    assert not isinstance(span._span_processor, _RootProcessors)
    span.end()
    provider.shutdown()


@pytest.mark.expect_internal_errors
def test_a_langfuse_without_the_app_root_bookkeeping_says_so_and_keeps_the_full_path(
    no_internal_errors: Any,
) -> None:
    from lemma_middleware.export.processors import wire_client
    from lemma_middleware.sdk.root_shortcut import _RootProcessors
    from lemma_middleware.sdk.spans import langfuse_processor

    provider, key = TracerProvider(), f"pk-old-{next(_keys)}"
    client = Langfuse(
        public_key=key,
        secret_key="sk",
        tracer_provider=provider,
        span_exporter=InMemorySpanExporter(),
    )
    processor = langfuse_processor(provider, key)
    assert processor is not None
    del processor._span_export_expectation_by_id  # as a Langfuse without it would be
    span = wire_client(client).start_root("agent", Context(), {"n": 1})
    assert not isinstance(span._span_processor, _RootProcessors)
    messages = [r.getMessage() for r in no_internal_errors.records]
    assert any("app-root bookkeeping" in m for m in messages), messages
    processor._span_export_expectation_by_id = {}
    span.end()
    provider.shutdown()


# adopting clients created before the middleware's --------------------------------------------


def test_a_client_created_before_is_adopted_through_the_internals_this_version_has(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """What adoption reads and changes in Langfuse's client (its settings, its processor's
    export target and batching, the mask of every client object of the key) is where
    this version keeps it: Langfuse's own OTLP export becomes the middleware's delivery to
    the same endpoint, with the middleware's batching and mask."""
    from lemma_middleware.delivery.exporter import DeliveryExporter
    from lemma_middleware.export.adoption import adopt_clients
    from lemma_middleware.export.settings import ExportSettings
    from lemma_middleware.sdk.clients import export_target

    key = f"pk-adopt-{next(_keys)}"
    provider = TracerProvider()
    early = Langfuse(
        public_key=key, secret_key="sk", base_url="http://127.0.0.1:9", tracer_provider=provider
    )
    later = Langfuse(public_key=key, secret_key="sk", base_url="http://127.0.0.1:9")
    assert early._mask is None and later._mask is None
    settings = ExportSettings.read(flush_at=7, flush_interval=0.25)
    try:
        with caplog.at_level(logging.INFO, logger="lemma_middleware"):
            adopt_clients(settings, early)
        target = export_target(provider, key)
        assert isinstance(target, DeliveryExporter)
        assert target.sender.endpoint == "http://127.0.0.1:9/api/public/otel/v1/traces"
        batch = langfuse_processor(provider, key)._batch_processor  # type: ignore[union-attr]
        assert (batch._max_export_batch_size, batch._schedule_delay) == (7, 0.25)
        assert early._mask is not None and later._mask is not None
        assert early._mask(data={"password": "x"}) == {"password": "[REDACTED]"}
        assert f"public key {key}, which was created before the middleware's" in caplog.text
    finally:
        provider.shutdown()


def test_a_client_created_without_keys_becomes_a_twin_of_the_middlewares() -> None:
    from lemma_middleware.export.adoption import adopt_clients
    from lemma_middleware.export.settings import ExportSettings
    from lemma_middleware.testing.plugin import TraceCapture

    keyless = Langfuse(public_key=None, secret_key=None)  # disabled for good by Langfuse
    capture = TraceCapture()
    try:
        adopt_clients(ExportSettings.read(), capture.client)
        keyless.start_observation(name="through-the-twin").end()
        assert "through-the-twin" in {s.name for s in capture.spans()}
    finally:
        capture.close()
