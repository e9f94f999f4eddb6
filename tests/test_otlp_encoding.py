"""The OTLP encoder writes exactly the bytes OpenTelemetry's encoder writes, for any span,
and falls back to OpenTelemetry's encoder when the start-up check finds a difference (or,
without an error, while the check cannot run)."""

from __future__ import annotations

import gzip
import logging
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceState

from lemma_middleware.delivery import otlp
from lemma_middleware.delivery.encoding import encode_batch

from .apps.asgi_apps import make_app
from .helpers import Captured, post

# Everything an attribute value can be in a span handed to an exporter, including what the
# SDK would have refused (a ReadableSpan can be built directly, e.g. by Langfuse's media
# pass): text with lone surrogates, integers beyond int64, mappings, unsupported types.
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(1 << 70), max_value=1 << 70)
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary(max_size=20)
    | st.sampled_from([float("inf"), 1e-310, -0.0, object(), 1j])
)
values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=3)
        | st.tuples(children, children)
        | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=8,
)
attribute_maps = st.dictionaries(st.text(max_size=12), values, max_size=6)
plain_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=20)
ids = st.integers(min_value=1, max_value=(1 << 64) - 1)
trace_ids = st.integers(min_value=1, max_value=(1 << 128) - 1)
times = st.none() | st.integers(min_value=0, max_value=(1 << 64) - 1)


@st.composite
def contexts(draw: Any) -> SpanContext:
    state = draw(st.lists(st.sampled_from(["a", "b", "vendor"]), unique=True, max_size=2))
    return SpanContext(
        draw(trace_ids),
        draw(ids),
        draw(st.booleans()),
        trace_state=TraceState([(key, draw(st.sampled_from(["1", "x-y"]))) for key in state]),
    )


resources = st.sampled_from(
    [
        Resource({"service.name": "agent"}),
        Resource({"service.name": "agent"}),  # equal, another object: grouped together
        Resource({"service.name": "other", "n": 1}, "https://schema"),
        Resource({"flag": True}),
        Resource({"flag": 1}),  # equal to the one above, but hashed apart: not grouped
        Resource({}),
    ]
)
scopes = st.none() | st.builds(
    InstrumentationScope,
    st.sampled_from(["langfuse-sdk", "openai", ""]),
    st.none() | st.sampled_from(["1.0", ""]),
    st.none() | st.sampled_from(["https://scope"]),
    st.none() | st.fixed_dictionaries({"public_key": st.sampled_from(["pk-1", "pk-2"])}),
)


@st.composite
def spans(draw: Any) -> ReadableSpan:
    events = [
        Event(draw(plain_text), draw(attribute_maps), timestamp=draw(times))
        for _ in range(draw(st.integers(0, 2)))
    ]
    links = [Link(draw(contexts()), draw(attribute_maps)) for _ in range(draw(st.integers(0, 2)))]
    code = draw(st.sampled_from(list(StatusCode)))
    description = draw(st.none() | plain_text) if code is StatusCode.ERROR else None
    return ReadableSpan(
        name=draw(plain_text),
        context=draw(contexts()),
        parent=draw(st.none() | contexts()),
        resource=draw(resources),
        attributes=draw(attribute_maps),
        events=events,
        links=links,
        kind=draw(st.sampled_from(list(SpanKind))),
        status=Status(code, description),
        start_time=draw(times),
        end_time=draw(times),
        instrumentation_scope=draw(scopes),
    )


def opentelemetry_bytes(batch: list[ReadableSpan]) -> bytes:
    return bytes(encode_spans(batch).SerializeToString())


@given(st.lists(spans(), min_size=1, max_size=5))
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_any_batch_encodes_to_opentelemetrys_bytes(batch: list[ReadableSpan]) -> None:
    logging.getLogger("opentelemetry").setLevel(logging.CRITICAL)  # its skip messages
    assert otlp.encode_request(batch) == opentelemetry_bytes(batch)


def test_the_start_up_check_passes_on_the_installed_opentelemetry() -> None:
    assert otlp.matches_opentelemetry()


def test_attributes_opentelemetry_cannot_encode_are_skipped_as_it_skips_them(
    caplog: pytest.LogCaptureFixture,
) -> None:
    span = ReadableSpan(
        name="root",
        context=SpanContext(1, 2, False),
        resource=Resource({}),
        attributes={
            "kept": "yes",
            "too big": 1 << 64,
            "lone surrogate": "\ud800",
            "nested bad": ("ok", object()),
            "also kept": 3,
        },
    )
    encoded = b"".join(otlp._encode([span]))
    assert encoded == opentelemetry_bytes([span])
    assert b"also kept" in encoded and b"too big" not in encoded
    assert "not exported" in caplog.text


def test_repeated_text_values_encode_the_same_as_new_ones() -> None:
    """The cache of short text attributes changes nothing, full or not."""

    def span(value: str) -> ReadableSpan:
        return ReadableSpan(
            name="root",
            context=SpanContext(1, 2, False),
            resource=Resource({}),
            attributes={"user.id": value, "langfuse.trace.input": "x" * 100},
        )

    for round_ in range(3):
        batch = [span(f"user-{n}") for n in range(otlp._CACHED + 10)]  # fills, clears
        assert otlp.encode_request(batch) == opentelemetry_bytes(batch), round_


async def test_a_traced_requests_spans_reach_the_destination_as_opentelemetry_encodes_them(
    captured: Captured,
) -> None:
    headers = {"x-conversation-id": "conv-1", "x-user-id": "u-1"}
    await post(make_app(captured.client), "/children", json={"message": "hi"}, headers=headers)
    batch = captured.spans()
    assert len(batch) > 1
    assert gzip.decompress(encode_batch(batch)) == opentelemetry_bytes(batch)


class _Recorded(str):
    """A text attribute that is a ``str`` subclass, as a body recorded as it came is."""


def test_long_texts_and_batches_past_one_compression_chunk_encode_as_opentelemetry_does() -> None:
    """Long texts are written without copying them per level of nesting; a batch larger
    than the compressor's chunk is compressed piece by piece: the same bytes either way."""
    history = "where is my parcel? " * 2_000  # 40 KB, past the long-text threshold
    batch = [
        ReadableSpan(
            name=f"root-{number}",
            context=SpanContext(number + 1, number + 2, False),
            resource=Resource({"service.name": "agent"}),
            attributes={
                "langfuse.observation.input": _Recorded(history + str(number)),
                "langfuse.trace.input": history + "é" * number,
                "short": "x",
            },
        )
        for number in range(12)  # about 1 MB: several of the compressor's chunks
    ]
    assert b"".join(otlp._encode(batch)) == opentelemetry_bytes(batch)
    assert gzip.decompress(encode_batch(batch)) == opentelemetry_bytes(batch)


def test_without_isal_batches_are_gzipped_by_zlib(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where ISA-L ships no wheels the export falls back to zlib: the same format."""
    import importlib
    import zlib

    from lemma_middleware.delivery import encoding

    def no_isal(name: str) -> Any:
        raise ImportError(name)

    monkeypatch.setattr(importlib, "import_module", no_isal)
    assert encoding._gzip_compressor() is zlib.compressobj
    monkeypatch.setattr(encoding, "_compressor", zlib.compressobj)
    span = ReadableSpan(name="root", context=SpanContext(1, 2, False), resource=Resource({}))
    assert gzip.decompress(encode_batch([span])) == opentelemetry_bytes([span])


@pytest.mark.expect_internal_errors
def test_a_mismatch_at_start_up_switches_to_opentelemetrys_encoder(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    otlp._check.cache_clear()
    monkeypatch.setattr(otlp, "_KIND", {**otlp._KIND, SpanKind.SERVER: 9})  # a wrong encoding
    try:
        assert not otlp.matches_opentelemetry()
        assert "encodes spans differently" in caplog.text
        span = ReadableSpan(
            name="s", context=SpanContext(1, 2, False), resource=Resource({}), kind=SpanKind.SERVER
        )
        assert otlp.encode_request([span]) == opentelemetry_bytes([span])
    finally:
        otlp._check.cache_clear()


_SHUTDOWN = "cannot schedule new futures after interpreter shutdown"


@pytest.mark.parametrize("failing", ["sample_spans", "_encode"])
def test_a_start_up_check_the_environment_cannot_run_is_no_mismatch(
    failing: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Building the samples or comparing them raises what the interpreter raises at exit:
    no ERROR, the batch goes through OpenTelemetry's encoder, the check runs again later."""

    def refused(*args: Any) -> Any:
        raise RuntimeError(_SHUTDOWN)

    otlp._check.cache_clear()
    caplog.set_level(logging.DEBUG, logger="lemma_middleware")
    span = ReadableSpan(name="root", context=SpanContext(1, 2, False), resource=Resource({}))
    try:
        with monkeypatch.context() as patched:
            patched.setattr(otlp, failing, refused)
            assert not otlp.matches_opentelemetry()
            assert gzip.decompress(encode_batch([span])) == opentelemetry_bytes([span])
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
        assert "encodes spans differently" not in caplog.text
        assert "could not run" in caplog.text
        assert otlp.matches_opentelemetry()  # the environment recovered: checked again
    finally:
        otlp._check.cache_clear()


@pytest.mark.expect_internal_errors
def test_any_other_failure_of_the_check_is_a_mismatch_reported_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Not the interpreter refusing work: an encoder that cannot encode the samples is
    reported (ERROR) and OpenTelemetry's encoder is used from then on, without re-checking."""
    calls = []

    def broken(*args: Any) -> Any:
        calls.append(1)
        raise RuntimeError("an encoder bug, not an exit")

    otlp._check.cache_clear()
    try:
        with monkeypatch.context() as patched:
            patched.setattr(otlp, "_encode", broken)
            assert not otlp.matches_opentelemetry()
            assert not otlp.matches_opentelemetry()
        assert len(calls) == 1  # decided once
        assert "encodes spans differently" in caplog.text
    finally:
        otlp._check.cache_clear()


_EXPORT_AT_EXIT = """
import atexit, gzip, sys
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanContext
from lemma_middleware.delivery import otlp
from lemma_middleware.delivery.encoding import encode_batch

def first_export():
    span = ReadableSpan(name="root", context=SpanContext(1, 2, False), resource=Resource({}))
    same = gzip.decompress(encode_batch([span])) == encode_spans([span]).SerializeToString()
    print("same bytes:", same, "fast path:", otlp.matches_opentelemetry())

atexit.register(first_export)
"""


def test_a_first_export_at_interpreter_exit_logs_no_encoder_error() -> None:
    """As a gunicorn worker's first export may be: threads and futures are refused then."""
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-c", _EXPORT_AT_EXIT], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "encodes spans differently" not in result.stderr
    assert "same bytes: True fast path: True" in result.stdout, (result.stdout, result.stderr)
