"""A local OTLP/HTTP trace receiver speaking the Langfuse SDK's export endpoint.

It listens on 127.0.0.1 (Starlette under uvicorn), accepts ``POST /api/public/otel/v1/traces``
(and ``/v1/traces``, ``/otel/v1/traces``) with OTLP protobuf or JSON bodies, gzip or not,
checks Basic or Bearer auth when keys are configured (a refusal is logged as one WARNING
naming what was refused and the fix, rate-limited), and keeps the decoded spans in memory.
The demo and the end-to-end tests send real exports to it; nothing leaves the machine.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import socket
import threading
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from lemma_middleware.testing.records import ReceivedSpan

TRACE_PATHS = ("/api/public/otel/v1/traces", "/v1/traces", "/otel/v1/traces")


MAX_BODY_BYTES = 16 * 1024 * 1024


logger = logging.getLogger("lemma_middleware.inbox")


REFUSAL_LOG_INTERVAL = 60.0
"""Seconds between two WARNING lines about the same refused credentials."""


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


class Rejected(Exception):
    """An export request the receiver answers with ``status`` (and stores nothing of)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class _Throttle:
    """At most one line per key every ``interval`` seconds, counting the ones held back."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.clock = clock
        self._last: dict[str, tuple[float, int]] = {}  # key -> (logged at, held back since)

    def allow(self, key: str) -> int | None:
        """None to hold this line back, else how many were held back since the last one."""
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last[0] < self.interval:
            self._last[key] = (last[0], last[1] + 1)
            return None
        if len(self._last) >= 1024:  # a client cycling through keys: start over
            self._last.clear()
        self._last[key] = (now, 0)
        return 0 if last is None else last[1]


def _shown(public_key: str) -> str:
    """A public key as a log line names it (at most 64 characters, quoted if unprintable)."""
    text = public_key[:64]
    return text if text.isprintable() and text and " " not in text else repr(text)


class OTLPReceiver:
    """An OTLP/HTTP receiver on 127.0.0.1 collecting trace exports in memory: a Starlette
    app served by uvicorn in a background thread.

    ``keys`` maps accepted public keys to secret keys (Basic auth, as the Langfuse SDK
    sends); ``bearer`` is an accepted Bearer token (as Lemma's endpoint takes). With
    neither, any request is accepted. A refused request logs one WARNING on the
    ``lemma_middleware.inbox`` logger naming what was refused (the public key, a bearer
    token, no credentials; never a secret) and the fix (``--key PK:SK``, ``--bearer``), at
    most once per minute for the same credentials (:data:`REFUSAL_LOG_INTERVAL`; the next
    line counts those held back). ``on_spans`` is called with each accepted batch (an
    exception there answers 500 and keeps nothing); ``routes`` are served beside the OTLP
    endpoints (the inbox's web view)."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        keys: dict[str, str] | None = None,
        bearer: str | None = None,
        on_spans: Callable[[list[ReceivedSpan]], None] | None = None,
        routes: Sequence[BaseRoute] = (),
    ) -> None:
        self.keys = keys or {}
        self.bearer = bearer
        self.on_spans = on_spans
        self.requests: list[ReceivedRequest] = []
        self.rejected: list[tuple[int, str]] = []
        self._refusals = _Throttle(REFUSAL_LOG_INTERVAL)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self.app = Starlette(
            routes=[
                *(Route(path, self._export, methods=["POST"]) for path in TRACE_PATHS),
                *routes,
            ]
        )
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted connections inherit it: without it, uvicorn's separate writes of a
        # response's head and body wait on the client's delayed ACK, 40 ms per keep-alive
        # request (every page and export after a connection's first).
        self._socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._socket.bind((host, port))
        config = uvicorn.Config(self.app, log_level="warning", access_log=False, lifespan="off")
        self.server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>`` (what LANGFUSE_HOST points at)."""
        host, port = self._socket.getsockname()[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> OTLPReceiver:
        """Serve in a background thread (returns once it accepts requests)."""
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started and self._thread.is_alive():
            if time.monotonic() > deadline:
                raise RuntimeError("the receiver did not start")
            time.sleep(0.01)
        return self

    def serve_forever(self) -> None:
        """Serve in this thread until :meth:`stop` (or, in the main thread, SIGINT/SIGTERM)."""
        self.server.run(sockets=[self._socket])

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._socket.close()

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

    def authorised(self, headers: Mapping[str, str]) -> bool:
        """Whether ``headers`` carry accepted credentials (any, when none are configured)."""
        return self.refusal(headers) is None

    def refusal(self, headers: Mapping[str, str]) -> tuple[str, str] | None:
        """None when ``headers`` carry accepted credentials; else a key naming the refused
        credentials and a line saying what was refused and the fix (never a secret)."""
        if not self.keys and self.bearer is None:
            return None
        scheme, _, credentials = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer":
            if credentials == self.bearer:
                return None
            if self.bearer is None:
                return "bearer", f"a bearer token, but the inbox takes no --bearer: {self._fix}"
            return "bearer", f"a bearer token that does not match --bearer: {self._fix}"
        if scheme.lower() != "basic":
            return "none", f"no Basic or Bearer credentials: {self._fix}"
        try:
            public, _, secret = base64.b64decode(credentials).decode().partition(":")
        except Exception:
            return "malformed", f"a Basic header that is not base64 of PK:SK: {self._fix}"
        if public in self.keys and self.keys[public] == secret:
            return None
        shown = _shown(public)
        if public in self.keys:
            return f"basic:{shown}", (
                f"public key {shown} with a secret key that does not match its --key pair: "
                f"set LANGFUSE_SECRET_KEY to the SK of --key {shown}:SK"
            )
        if public.startswith("sk-") or public in self.keys.values() or public == self.bearer:
            return "basic:sk", (  # never logged: it is a secret (a key's SK, the token)
                "a secret key as the public key: are LANGFUSE_PUBLIC_KEY and "
                f"LANGFUSE_SECRET_KEY swapped? {self._fix}"
            )
        if not self.keys:
            return f"basic:{shown}", (
                f"public key {shown}, but the inbox checks a --bearer token only: start it "
                f"with --key {shown}:SK, or set LEMMA_API_KEY to its --bearer token"
            )
        return f"basic:{shown}", (
            f"public key {shown}, which no --key PK:SK names (accepted: "
            f"{', '.join(sorted(self.keys)[:5])}): start the inbox with --key {shown}:SK, "
            f"or {self._fix}"
        )

    @property
    def _fix(self) -> str:
        """How a client sends credentials this receiver accepts."""
        keys = "set LANGFUSE_PUBLIC_KEY/LANGFUSE_SECRET_KEY to a pair of the inbox's --key PK:SK"
        bearer = "set LEMMA_API_KEY to the inbox's --bearer token"
        if self.bearer is None:
            return keys
        return f"{keys}, or {bearer}" if self.keys else bearer

    def _log_refusal(self, key: str, what: str) -> None:
        held_back = self._refusals.allow(key)
        if held_back is not None:
            more = f" ({held_back} more like it since the last line)" if held_back else ""
            logger.warning("lemma-middleware inbox: refused an export (401): %s%s", what, more)

    def decode(self, headers: Mapping[str, str], body: bytes) -> list[ReceivedSpan]:
        """The spans of one export request, or :class:`Rejected`."""
        refusal = self.refusal(headers)
        if refusal is not None:
            self._log_refusal(*refusal)
            raise Rejected(401, "bad or missing credentials")
        content_type = headers.get("content-type", "").lower()
        if not content_type.startswith(("application/x-protobuf", "application/json")):
            raise Rejected(415, f"unsupported content type {content_type!r}")
        try:
            if headers.get("content-encoding", "").lower() == "gzip":
                body = _gunzip(body, MAX_BODY_BYTES)
            return decode_export(body, content_type)
        except Exception as error:
            raise Rejected(400, str(error)[:200]) from None

    async def _export(self, request: Request) -> Response:
        headers = {k.lower(): v for k, v in request.headers.items()}
        try:
            body = await _read_bounded(request, headers)
            spans = self.decode(headers, body)
            if self.on_spans is not None:
                try:
                    await run_in_threadpool(self.on_spans, spans)
                except Exception as error:
                    raise Rejected(500, f"could not store spans: {error}"[:200]) from None
        except Rejected as rejected:
            with self._lock:
                self.rejected.append((rejected.status, rejected.reason))
            return JSONResponse({"error": rejected.reason}, status_code=rejected.status)
        content_type = headers.get("content-type", "").lower()
        compressed = headers.get("content-encoding", "").lower() == "gzip"
        with self._changed:
            self.requests.append(
                ReceivedRequest(request.url.path, headers, content_type, compressed, spans)
            )
            self._changed.notify_all()
        answer = ExportTraceServiceResponse().SerializeToString()
        return Response(answer, media_type="application/x-protobuf")


async def _read_bounded(request: Request, headers: Mapping[str, str]) -> bytes:
    """The body, if it declares its length and is at most MAX_BODY_BYTES; an oversized one
    is read and dropped in bounded chunks, so the client gets the answer."""
    if "content-length" not in headers:
        raise Rejected(411, "Content-Length required")
    try:
        length = int(headers["content-length"] or 0)
    except ValueError:
        raise Rejected(400, "bad Content-Length") from None
    if length > MAX_BODY_BYTES:
        drained = 0
        async for chunk in request.stream():
            drained += len(chunk)
            if drained > 8 * MAX_BODY_BYTES:
                break
        raise Rejected(413, f"payload over {MAX_BODY_BYTES} bytes")
    return await request.body()
