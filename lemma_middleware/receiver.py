"""A local OTLP/HTTP trace receiver speaking the Langfuse SDK's export endpoint.

It listens on 127.0.0.1, accepts ``POST /api/public/otel/v1/traces`` (and ``/v1/traces``)
with OTLP protobuf or JSON bodies, gzip or not, checks Basic or Bearer auth when keys are
configured, and keeps the decoded spans in memory. The demo and the end-to-end tests
send real exports to it; nothing leaves the machine.
"""

from __future__ import annotations

import base64
import contextlib
import json
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

TRACE_PATHS = ("/api/public/otel/v1/traces", "/v1/traces", "/otel/v1/traces")
MAX_BODY_BYTES = 16 * 1024 * 1024


@dataclass
class ReceivedSpan:
    """One decoded span, with the resource attributes of its batch."""

    trace_id: str
    span_id: str
    parent_span_id: str | None
    name: str
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    resource: dict[str, Any]
    scope: str
    status_code: int


@dataclass
class ReceivedRequest:
    """One accepted export request."""

    path: str
    headers: dict[str, str]
    content_type: str
    gzip: bool
    spans: list[ReceivedSpan] = field(default_factory=list)


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in value.kvlist_value.values}
    if kind == "bytes_value":
        return value.bytes_value.hex()
    return getattr(value, kind) if kind else None


_ID_FIELDS = ("traceId", "spanId", "parentSpanId")


def _hex_ids_to_base64(document: Any) -> Any:
    """OTLP/JSON writes trace and span ids as hex; protobuf's JSON mapping wants base64."""
    for resource_spans in document.get("resourceSpans", []) if isinstance(document, dict) else []:
        for scope_spans in resource_spans.get("scopeSpans", []):
            for span in scope_spans.get("spans", []):
                for item in (span, *span.get("links", [])):
                    for key in _ID_FIELDS:
                        value = item.get(key)
                        if isinstance(value, str) and value and len(value) in (16, 32):
                            with contextlib.suppress(ValueError):  # else already base64
                                item[key] = base64.b64encode(bytes.fromhex(value)).decode()
    return document


def _gunzip(body: bytes, limit: int) -> bytes:
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    data = inflater.decompress(body, limit)
    if inflater.unconsumed_tail:
        raise ValueError(f"decompressed payload over {limit} bytes")
    return data


def decode_export(body: bytes, content_type: str) -> list[ReceivedSpan]:
    """Decode an OTLP export body (protobuf or JSON); raises ValueError when malformed."""
    message = ExportTraceServiceRequest()
    try:
        if content_type.startswith("application/json"):
            json_format.ParseDict(_hex_ids_to_base64(json.loads(body)), message)
        else:
            message.ParseFromString(body)
    except Exception as error:
        raise ValueError(f"malformed OTLP payload: {error}") from error
    spans: list[ReceivedSpan] = []
    for resource_spans in message.resource_spans:
        resource = {kv.key: _value(kv.value) for kv in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(
                    ReceivedSpan(
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex() or None,
                        name=span.name,
                        start_ns=span.start_time_unix_nano,
                        end_ns=span.end_time_unix_nano,
                        attributes={kv.key: _value(kv.value) for kv in span.attributes},
                        resource=resource,
                        scope=scope_spans.scope.name,
                        status_code=span.status.code,
                    )
                )
    return spans


class OTLPReceiver:
    """A threaded HTTP server on 127.0.0.1 collecting OTLP trace exports in memory.

    ``keys`` maps accepted public keys to secret keys (Basic auth, as the Langfuse SDK
    sends); ``bearer`` is an accepted Bearer token (as Lemma's endpoint takes). With
    neither, any request is accepted. ``on_spans`` is called with each accepted batch.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        keys: dict[str, str] | None = None,
        bearer: str | None = None,
        on_spans: Callable[[list[ReceivedSpan]], None] | None = None,
    ) -> None:
        self.keys = keys or {}
        self.bearer = bearer
        self.on_spans = on_spans
        self.requests: list[ReceivedRequest] = []
        self.rejected: list[tuple[int, str]] = []
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return None

            def do_POST(self) -> None:
                # An exporter that gave up waiting has hung up; it retries or drops, as it decides.
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    receiver._handle(self)

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>`` (what LANGFUSE_HOST points at)."""
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> OTLPReceiver:
        """Serve in a background thread."""
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> OTLPReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def spans(self) -> list[ReceivedSpan]:
        """Every span received so far."""
        with self._lock:
            return [span for request in self.requests for span in request.spans]

    def wait_for(self, predicate: Callable[[list[ReceivedSpan]], bool], timeout: float) -> bool:
        """Wait until ``predicate(spans)`` holds; False on timeout."""
        with self._changed:
            return self._changed.wait_for(
                lambda: predicate([s for r in self.requests for s in r.spans]), timeout
            )

    def _authorised(self, headers: dict[str, str]) -> bool:
        if not self.keys and self.bearer is None:
            return True
        auth = headers.get("authorization", "")
        scheme, _, credentials = auth.partition(" ")
        if scheme.lower() == "bearer":
            return self.bearer is not None and credentials == self.bearer
        if scheme.lower() == "basic":
            try:
                public, _, secret = base64.b64decode(credentials).decode().partition(":")
            except Exception:
                return False
            return self.keys.get(public) == secret
        return False

    def _reject(self, handler: BaseHTTPRequestHandler, status: int, reason: str) -> None:
        with self._lock:
            self.rejected.append((status, reason))
        body = json.dumps({"error": reason}).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        path = handler.path.split("?", 1)[0]
        headers = {k.lower(): v for k, v in handler.headers.items()}
        if path not in TRACE_PATHS:
            return self._reject(handler, 404, f"unknown path {path}")
        if "content-length" not in headers:
            return self._reject(handler, 411, "Content-Length required")
        length = int(headers["content-length"] or 0)
        if length > MAX_BODY_BYTES:
            _discard(handler, length)
            return self._reject(handler, 413, f"payload over {MAX_BODY_BYTES} bytes")
        body = handler.rfile.read(length)
        if not self._authorised(headers):
            return self._reject(handler, 401, "bad or missing credentials")
        content_type = headers.get("content-type", "").lower()
        if not content_type.startswith(("application/x-protobuf", "application/json")):
            return self._reject(handler, 415, f"unsupported content type {content_type!r}")
        compressed = headers.get("content-encoding", "").lower() == "gzip"
        try:
            if compressed:
                body = _gunzip(body, MAX_BODY_BYTES)
            spans = decode_export(body, content_type)
        except Exception as error:
            return self._reject(handler, 400, str(error)[:200])
        if self.on_spans is not None:
            try:
                self.on_spans(spans)
            except Exception as error:
                return self._reject(handler, 500, f"could not store spans: {error}"[:200])
        with self._changed:
            self.requests.append(ReceivedRequest(path, headers, content_type, compressed, spans))
            self._changed.notify_all()
        answer = ExportTraceServiceResponse().SerializeToString()
        handler.send_response(200)
        handler.send_header("Content-Type", "application/x-protobuf")
        handler.send_header("Content-Length", str(len(answer)))
        handler.end_headers()
        handler.wfile.write(answer)


def _discard(handler: BaseHTTPRequestHandler, length: int) -> None:
    """Read and drop an oversized body in bounded chunks, so the client gets the answer."""
    remaining = min(length, 8 * MAX_BODY_BYTES)
    while remaining > 0:
        chunk = handler.rfile.read(min(remaining, 1 << 20))
        if not chunk:
            break
        remaining -= len(chunk)
