"""OTLP/protobuf encoding of finished spans, written straight to bytes.

OpenTelemetry's encoder (``encode_spans(...).SerializeToString()``) builds a protobuf
message object for every span, attribute and value before serialising them; on the
export thread that is most of the cost of a trace (about 46 µs for a request's root on
the project's machine, and the thread holds the interpreter lock throughout, so the
request threads wait). :func:`encode_request` writes the same wire format directly from
the spans' public properties: the same bytes, a fraction of the time.

The bytes are OpenTelemetry's, field for field: the same grouping (resource, then
instrumentation scope, in first-seen order), the same fields and the same omissions (an
empty string, a zero, a link's trace state), and an attribute OpenTelemetry cannot encode
(an unsupported type, an integer outside int64, text that is not valid UTF-8) is skipped
as it skips it. :func:`matches_opentelemetry` checks this at start-up on spans that use
every field; if the installed OpenTelemetry encodes anything differently, one ERROR is
logged and :func:`encode_request` uses OpenTelemetry's encoder instead. A check that could
not run (the interpreter refusing work at exit) is no mismatch: OpenTelemetry's encoder is
used until it can, with a DEBUG line.
"""

from __future__ import annotations

import contextlib
import logging
import struct
import sys
from collections.abc import Mapping, Sequence
from functools import cache
from typing import Any

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind

from lemma_middleware.core.logs import log_once
from lemma_middleware.delivery.otlp_samples import sample_spans

_DOUBLE = struct.Struct("<d")


_FIXED32 = struct.Struct("<I")


_FIXED64 = struct.Struct("<Q")


_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1


# protobuf kinds (the OTLP enum values), and the flags OpenTelemetry sets on every span
_KIND = {
    SpanKind.INTERNAL: 1,
    SpanKind.SERVER: 2,
    SpanKind.CLIENT: 3,
    SpanKind.PRODUCER: 4,
    SpanKind.CONSUMER: 5,
}


_HAS_IS_REMOTE = 0x100


_IS_REMOTE = 0x200


def _varint_slow(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_SMALL_VARINTS = [_varint_slow(n) for n in range(1 << 11)]  # every length below 2 KB


def _varint(value: int) -> bytes:
    return _SMALL_VARINTS[value] if 0 <= value < 0x800 else _varint_slow(value)


def _field(tag: int, payload: bytes) -> bytes:
    """A length-delimited field (``tag`` is the whole tag byte)."""
    return bytes((tag,)) + _varint(len(payload)) + payload


class _Unencodable(Exception):
    """A value OpenTelemetry's encoder would fail on (the attribute is skipped)."""


def _any_value(value: Any) -> bytes:
    """An ``AnyValue`` message's bytes."""
    if value is None:
        return b""
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, str):
        return _field(0x0A, _utf8(value))
    if isinstance(value, int):
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise _Unencodable("integer out of int64 range")
        return b"\x18" + _varint(value & 0xFFFFFFFFFFFFFFFF)
    if isinstance(value, float):
        return b"\x21" + _DOUBLE.pack(value)
    if isinstance(value, bytes):
        return _field(0x3A, value)
    if isinstance(value, Sequence):
        return _field(0x2A, b"".join([_field(0x0A, _any_value(item)) for item in value]))
    if isinstance(value, Mapping):
        entries = [_field(0x0A, _key_value(str(k), v)) for k, v in value.items()]
        return _field(0x32, b"".join(entries))
    raise _Unencodable(f"unsupported type {type(value).__name__}")


def _utf8(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise _Unencodable("text that is not valid UTF-8") from error


_keys: dict[str, bytes] = {}  # attribute key -> its encoded KeyValue.key field


_texts: dict[tuple[int, str, str], bytes] = {}  # short text attributes, encoded whole


_CACHED = 4096  # entries in each cache at most


_CACHED_TEXT = 64  # characters of a text value cached with its key at most


def _encoded_key(key: str) -> bytes:
    encoded_key = _keys.get(key)
    if encoded_key is None:
        encoded_key = _field(0x0A, _utf8(key)) if key else b""  # proto3 omits ""
        if len(_keys) < _CACHED:
            _keys[key] = encoded_key
    return encoded_key


def _key_value(key: str, value: Any) -> bytes:
    return _encoded_key(key) + _field(0x12, _any_value(value))


def _attributes(tag: int, attributes: Mapping[str, Any] | None) -> list[bytes]:
    """Each attribute as a ``KeyValue`` field numbered by ``tag``; the ones OpenTelemetry
    cannot encode are skipped (logged once per reason). Text attributes are the common
    case and repeat from span to span (names, ids, metadata): short ones are encoded once."""
    if not attributes:
        return []
    fields = []
    prefix = bytes((tag,))
    texts = _texts
    for key, value in attributes.items():
        if type(value) is str:
            field = texts.get((tag, key, value))
            if field is not None:
                fields.append(field)
                continue
        if isinstance(value, str) and len(value) >= _LONG_TEXT:  # str or a subclass (RawJSON)
            with contextlib.suppress(_Unencodable):  # (then skipped and logged below)
                fields += _long_text_field(prefix, key, _utf8(value))
                continue
        try:
            kv = _key_value(key, value)
        except (_Unencodable, TypeError, ValueError) as error:
            log_once(
                f"otlp-skip:{error}",
                logging.WARNING,
                "lemma_middleware: attribute %r not exported: %s (logged once)",
                key,
                error,
            )
            continue
        field = prefix + _varint(len(kv)) + kv
        if type(value) is str and len(value) <= _CACHED_TEXT:
            if len(texts) >= _CACHED:
                texts.clear()  # keeps what repeats now, whatever came before
            texts[(tag, key, value)] = field
        fields.append(field)
    return fields


_LONG_TEXT = 4096
"""Characters from which a text attribute is kept apart from its headers until the request
is joined: its bytes are copied once, not once per level of nesting (a request's input and
output are its largest attributes, each written twice)."""


def _long_text_field(prefix: bytes, key: str, text: bytes) -> list[bytes]:
    """A ``KeyValue`` field holding a text value, as its headers and the text's bytes."""
    value_header = b"\x0a" + _varint(len(text))
    any_length = len(value_header) + len(text)
    key_value = _encoded_key(key) + b"\x12" + _varint(any_length) + value_header
    return [prefix + _varint(len(key_value) + len(text)) + key_value, text]


def _wrapped(tag: int, parts: list[bytes]) -> list[bytes]:
    """``parts`` as the payload of a length-delimited field, without joining them."""
    return [bytes((tag,)) + _varint(sum(map(len, parts))), *parts]


def _flags(parent: SpanContext | None) -> bytes:
    flags = _HAS_IS_REMOTE | (_IS_REMOTE if parent is not None and parent.is_remote else 0)
    return b"\x85\x01" + _FIXED32.pack(flags)  # field 16, fixed32


def _span(span: ReadableSpan) -> list[bytes]:
    context = span.get_span_context()
    assert context is not None
    parts = [
        b"\x0a\x10" + context.trace_id.to_bytes(16, "big"),
        b"\x12\x08" + context.span_id.to_bytes(8, "big"),
    ]
    trace_state = context.trace_state
    if trace_state:
        parts.append(_field(0x1A, _utf8(",".join(f"{k}={v}" for k, v in trace_state.items()))))
    parent = span.parent
    if parent:
        parts.append(b"\x22\x08" + parent.span_id.to_bytes(8, "big"))
    if span.name:
        parts.append(_field(0x2A, _utf8(span.name)))
    parts.append(b"\x30" + _varint(_KIND[span.kind]))
    if span.start_time:
        parts.append(b"\x39" + _FIXED64.pack(span.start_time))
    if span.end_time:
        parts.append(b"\x41" + _FIXED64.pack(span.end_time))
    parts += _attributes(0x4A, span.attributes)
    if span.dropped_attributes:
        parts.append(b"\x50" + _varint(span.dropped_attributes))
    for event in span.events:
        parts.append(_field(0x5A, _event(event)))
    if span.dropped_events:
        parts.append(b"\x60" + _varint(span.dropped_events))
    for link in span.links:
        parts.append(_field(0x6A, _link(link)))
    if span.dropped_links:
        parts.append(b"\x70" + _varint(span.dropped_links))
    status = span.status
    if status is not None:
        status_parts = []
        if status.description:
            status_parts.append(_field(0x12, _utf8(status.description)))
        if status.status_code.value:
            status_parts.append(b"\x18" + _varint(status.status_code.value))
        parts.append(_field(0x7A, b"".join(status_parts)))
    parts.append(_flags(parent))
    return parts


def _event(event: Any) -> bytes:
    parts = []
    if event.timestamp:
        parts.append(b"\x09" + _FIXED64.pack(event.timestamp))
    if event.name:
        parts.append(_field(0x12, _utf8(event.name)))
    parts += _attributes(0x1A, event.attributes)
    if event.dropped_attributes:
        parts.append(b"\x20" + _varint(event.dropped_attributes))
    return b"".join(parts)


def _link(link: Any) -> bytes:
    context = link.context
    parts = [
        b"\x0a\x10" + context.trace_id.to_bytes(16, "big"),
        b"\x12\x08" + context.span_id.to_bytes(8, "big"),
    ]
    parts += _attributes(0x22, link.attributes)
    if link.dropped_attributes:
        parts.append(b"\x28" + _varint(link.dropped_attributes))
    parts.append(b"\x35" + _FIXED32.pack(_HAS_IS_REMOTE | (_IS_REMOTE if context.is_remote else 0)))
    return b"".join(parts)


def _scope(scope: InstrumentationScope | None) -> bytes:
    if scope is None:
        return b""
    parts = []
    if scope.name:
        parts.append(_field(0x0A, _utf8(scope.name)))
    if scope.version:
        parts.append(_field(0x12, _utf8(scope.version)))
    parts += _attributes(0x1A, scope.attributes)
    return b"".join(parts)


def _same(one: Resource, other: Resource) -> bool:
    """Whether a dict keyed by resource takes ``one`` and ``other`` as the same key."""
    return hash(one) == hash(other) and one == other


def _encode(spans: Sequence[ReadableSpan]) -> list[bytes]:
    # Grouped as OpenTelemetry groups them (a dict keyed by resource, then scope), but
    # without hashing the resource for every span (its hash serialises it to JSON). The
    # pieces are joined once, at the end.
    groups: list[tuple[Resource, dict[InstrumentationScope | None, list[bytes]]]] = []
    last: tuple[Resource, dict[InstrumentationScope | None, list[bytes]]] | None = None
    for span in spans:
        resource = span.resource
        if last is None or last[0] is not resource:
            last = next((g for g in groups if g[0] is resource or _same(g[0], resource)), None)
            if last is None:
                last = (resource, {})
                groups.append(last)
        last[1].setdefault(span.instrumentation_scope or None, []).extend(
            _wrapped(0x12, _span(span))
        )
    out: list[bytes] = []
    for resource, scopes in groups:
        parts = [_field(0x0A, b"".join(_attributes(0x0A, resource.attributes)))]
        for scope, encoded in scopes.items():
            scope_parts = [_field(0x0A, _scope(scope)), *encoded]
            if scope is not None and scope.schema_url:
                scope_parts.append(_field(0x1A, _utf8(scope.schema_url)))
            parts += _wrapped(0x12, scope_parts)
        if resource.schema_url:
            parts.append(_field(0x1A, _utf8(resource.schema_url)))
        out += _wrapped(0x0A, parts)
    return out


def encode_request_parts(spans: Sequence[ReadableSpan]) -> list[bytes]:
    """The serialised OTLP ``ExportTraceServiceRequest`` for ``spans``, in pieces that
    joined are the bytes OpenTelemetry's encoder gives (its encoder itself if the start-up
    check failed): a batch can be compressed without ever being one buffer."""
    if matches_opentelemetry():
        try:
            return _encode(spans)
        except Exception:
            pass  # e.g. a span name that is not valid UTF-8: OpenTelemetry's own outcome
    return [bytes(encode_spans(spans).SerializeToString())]


def encode_request(spans: Sequence[ReadableSpan]) -> bytes:
    """The serialised OTLP ``ExportTraceServiceRequest`` for ``spans``: the bytes
    OpenTelemetry's encoder gives."""
    return b"".join(encode_request_parts(spans))


class _CheckNotRun(Exception):
    """The start-up check could not be run here (the environment, not the encoder)."""


def _refused_at_exit(error: BaseException) -> bool:
    """Whether ``error`` is the interpreter refusing work as it shuts down (no new futures,
    no new threads), not a fault of either encoder."""
    return isinstance(error, RuntimeError) and (
        sys.is_finalizing() or "interpreter shutdown" in str(error)
    )


@cache
def _check() -> bool:
    """Whether :func:`_encode` gives OpenTelemetry's bytes for the sample spans; raises
    :class:`_CheckNotRun` (which :func:`functools.cache` does not keep) when the interpreter
    refused the work (at exit it schedules no new futures and starts no threads). Any other
    failure, building the samples or encoding them, is a mismatch."""
    try:
        spans = sample_spans()
        same: bool = b"".join(_encode(spans)) == encode_spans(spans).SerializeToString()
        return same and all(
            b"".join(_encode([span])) == encode_spans([span]).SerializeToString() for span in spans
        )
    except Exception as error:
        if _refused_at_exit(error):
            raise _CheckNotRun(error) from error
        return False  # our encoder or OpenTelemetry's failed on valid spans: a mismatch


def matches_opentelemetry() -> bool:
    """Whether :func:`encode_request` gives OpenTelemetry's bytes for spans that use every
    field (checked once; on a mismatch, one ERROR and OpenTelemetry's encoder from then on).
    When the check cannot be run (e.g. a first export at interpreter exit), OpenTelemetry's
    encoder, which is always right, is used for this batch, a DEBUG line is logged, and the
    check is tried again on the next batch."""
    try:
        same = _check()
    except _CheckNotRun as error:
        log_once(
            f"otlp-encoder-unchecked:{error}",
            logging.DEBUG,
            "lemma_middleware: the OTLP encoder's start-up check could not run (%s); "
            "exporting through OpenTelemetry's encoder until it can",
            error,
        )
        return False
    if not same:
        log_once(
            "otlp-encoder",
            logging.ERROR,
            "lemma_middleware: the installed OpenTelemetry encodes spans differently from "
            "this version's OTLP encoder; exporting through OpenTelemetry's (slower)",
        )
    return same
