"""The in-process sections: the apps driven with no sockets, the variants interleaved round
by round (``asgi``, ``wsgi``), and the CPU each variant's export chain spends per request on
the background export thread (``asgi``'s export table). Also the callers and clients the
request-shape sections (:mod:`bench.shapes`) drive the apps with.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from langfuse import Langfuse
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from bench.apps import OTEL_PROVIDERS, NoOpExporter, make_asgi, make_wsgi, sdk_floor
from bench.harness import BODY, HEADERS, Row, interleave, print_table
from bench.variants import ASGI_LABELS, Variant
from lemma_middleware import build_client
from lemma_middleware.delivery.encoding import encode_batch
from lemma_middleware.export.provider import OwnedTracerProvider
from lemma_middleware.sdk.media_screen import langfuse_exporter

IN_PROCESS_ROWS = {
    Variant.BARE_TELEMETRY: "bare app, FastAPI telemetry on",
    Variant.SDK_FLOOR: "Langfuse SDK floor (no HTTP)",
    Variant.LEMMA_NOCAPTURE: "lemma middleware, capture off",
    Variant.LEMMA_EXCLUDED: "lemma middleware, excluded path",
}
"""How both in-process tables name their rows beyond the shared variants."""
ASGI_ROWS = {**ASGI_LABELS, **IN_PROCESS_ROWS}
WSGI_ROWS = {
    Variant.BARE: "bare app",
    Variant.HANDWRITTEN: "hand-written before/teardown_request",
    Variant.OTEL: "OpenTelemetry WSGI instrumentation",
    Variant.LEMMA: "lemma middleware, traced",
    **IN_PROCESS_ROWS,
}


@dataclass
class InProcess:
    """An in-process table's figures: the median time per request (µs) of each variant; the
    SDK floor's is its own, without the bare app's."""

    medians: dict[Variant, float]

    def overhead(self, variant: Variant, over: Variant = Variant.BARE) -> float:
        """``variant``'s time per request beyond ``over``'s (the bare app's)."""
        return self.medians[variant] - self.medians[over]


def _print_in_process(
    title: str, medians: dict[Variant, float], labels: dict[Variant, str]
) -> None:
    bare, floor = medians[Variant.BARE], medians[Variant.SDK_FLOOR]
    rows = [
        Row(
            labels[variant],
            value + (bare if variant is Variant.SDK_FLOOR else 0),  # shown as bare + floor
            beside_floor=variant not in (Variant.BARE, Variant.SDK_FLOOR),
        )
        for variant, value in medians.items()
    ]
    print_table(title, rows, bare, floor)


def no_op_client(key: str) -> tuple[Any, TracerProvider]:
    """The middleware's client and the provider it would create (and make global) in a
    process of its own, exporting to nowhere."""
    provider = OwnedTracerProvider()
    client = build_client(span_exporter=NoOpExporter(), tracer_provider=provider, public_key=key)
    assert client is not None
    return client, provider


def users_langfuse(key: str, exporter: SpanExporter | None = None) -> tuple[Any, TracerProvider]:
    """A plain ``Langfuse()`` client as the docs set one up, on a provider like the one it
    would make global, exporting to nowhere (or ``exporter``)."""
    provider = TracerProvider()
    client = Langfuse(
        public_key=key,
        secret_key="unused",
        span_exporter=exporter or NoOpExporter(),
        tracer_provider=provider,
    )
    return client, provider


# in-process ASGI --------------------------------------------------------------------------


def asgi_caller(app: Any, path: str, body: bytes = BODY) -> Callable[[], None]:
    """One ``POST path`` with ``body`` and the identity headers through ``app``, as a raw
    ASGI call on an event loop of its own."""
    loop = asyncio.new_event_loop()
    raw_headers = [(k.encode(), v.encode()) for k, v in HEADERS.items()]
    scope_template = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": raw_headers,
        "client": ("127.0.0.1", 1),
        "server": ("t", 80),
    }

    async def one() -> None:
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.sleep(3600)
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            return None

        await app(dict(scope_template), receive, send)

    return lambda: loop.run_until_complete(one())


def asgi_section(rounds: int, per_round: int) -> InProcess:
    """Every ASGI variant, in-process, interleaved; the table printed."""
    client, provider = no_op_client("pk-bench-asgi")
    hand, hand_provider = users_langfuse("pk-bench-hand")
    floor_client, _ = no_op_client("pk-bench-floor")
    variants = {
        Variant.BARE: asgi_caller(make_asgi("bare", None), "/chat"),
        Variant.BARE_TELEMETRY: asgi_caller(
            make_asgi("bare", None, telemetry_provider=provider), "/chat"
        ),
        Variant.FASTAPI_OTEL: asgi_caller(make_asgi("fastapi-otel", None, NoOpExporter()), "/chat"),
        Variant.OTEL: asgi_caller(make_asgi("otel", None), "/chat"),
        Variant.HANDWRITTEN: asgi_caller(
            make_asgi("handwritten", hand, telemetry_provider=hand_provider), "/chat"
        ),
        Variant.SDK_FLOOR: lambda: sdk_floor(floor_client, HEADERS, BODY, {"answer": "X"}),
        Variant.LEMMA: asgi_caller(
            make_asgi("lemma", client, telemetry_provider=provider), "/chat"
        ),
        Variant.LEMMA_TELEMETRY_OFF: asgi_caller(make_asgi("lemma-telemetry-off", client), "/chat"),
        Variant.LEMMA_NOCAPTURE: asgi_caller(
            make_asgi("lemma-nocapture", client, telemetry_provider=provider), "/chat"
        ),
        Variant.LEMMA_EXCLUDED: asgi_caller(
            make_asgi("lemma", client, telemetry_provider=provider), "/health"
        ),
    }
    medians = interleave(variants, rounds, per_round)
    _print_in_process(
        "ASGI, in-process (FastAPI() POST /chat, JSON body, 3 identity headers)", medians, ASGI_ROWS
    )
    return InProcess(medians)


# export cost ---------------------------------------------------------------------------


def otlp_exporter_encoding(compress: bool) -> Callable[[Sequence[ReadableSpan]], bytes]:
    """What OpenTelemetry's OTLP/HTTP exporter does before the network: encode, serialise
    and, when configured (Langfuse's exporter: gzip; the OTLP default: none), gzip at its
    default level."""

    def encode(spans: Sequence[ReadableSpan]) -> bytes:
        payload = encode_spans(spans).SerializePartialToString()
        return gzip.compress(payload) if compress else payload

    return encode


class EncodeOnly(SpanExporter):
    """An exporter that encodes as ``encode`` does and sends nothing. Keeps the spans it is
    given while ``keeping``; counts them in ``exported`` always."""

    def __init__(self, encode: Callable[[Sequence[ReadableSpan]], bytes]) -> None:
        self.encode = encode
        self.kept: list[ReadableSpan] = []
        self.keeping = True
        self.exported = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.exported += len(spans)
        if self.keeping:
            self.kept.extend(spans)
        self.encode(spans)
        return SpanExportResult.SUCCESS


@dataclass
class ExportCost:
    """One variant's export: CPU per request on the export thread (µs), spans per request."""

    us_per_request: float
    spans_per_request: float


def export_cost_section(requests: int) -> dict[Variant, ExportCost]:
    """CPU per request spent on the export thread, through each variant's real export
    chain (for Langfuse clients: the processor's own exporter, media pass included), for
    the spans one request produces."""
    costs: dict[Variant, ExportCost] = {}
    for variant in (Variant.FASTAPI_OTEL, Variant.OTEL, Variant.HANDWRITTEN, Variant.LEMMA):
        encode = EncodeOnly(
            encode_batch
            if variant is Variant.LEMMA
            else otlp_exporter_encoding(variant is Variant.HANDWRITTEN)
        )
        chain: SpanExporter | None = encode
        client, provider = None, None
        if variant is Variant.HANDWRITTEN:
            client, provider = users_langfuse("pk-cost-hand", encode)
            chain = langfuse_exporter(provider, "pk-cost-hand")
        elif variant is Variant.LEMMA:
            provider = OwnedTracerProvider()
            client = build_client(
                span_exporter=encode, tracer_provider=provider, public_key="pk-cost-lemma"
            )
            chain = langfuse_exporter(provider, "pk-cost-lemma")
        assert chain is not None
        app = make_asgi(variant, client, encode, telemetry_provider=provider)
        call = asgi_caller(app, "/chat")
        flush = client.flush if client is not None else OTEL_PROVIDERS[-1].force_flush
        for number in range(1, requests + 1):
            call()
            if number % 128 == 0:
                flush()  # keeps every batch queue far from full: every span is counted
        flush()
        encode.keeping = False
        spans = encode.kept
        timings = []
        for _ in range(5):
            start = time.perf_counter()
            for batch in range(0, len(spans), 512):
                chain.export(spans[batch : batch + 512])
            timings.append((time.perf_counter() - start) / requests * 1e6)
        costs[variant] = ExportCost(statistics.median(timings), len(spans) / requests)
    print("\nExport, per request, on the background export thread (no network)")
    print(f"{'variant':40} {'us/request':>10} {'spans/request':>14}")
    for variant, cost in costs.items():
        label = ASGI_LABELS[variant]
        print(f"{label:40} {cost.us_per_request:10.1f} {cost.spans_per_request:14.2f}")
    return costs


# in-process WSGI --------------------------------------------------------------------------


def wsgi_caller(app: Any, path: str, body: bytes = BODY) -> Callable[[], None]:
    """One ``POST path`` with ``body`` and the identity headers through ``app``, as a WSGI
    call (the response iterated and closed)."""
    environ_template = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "t",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.url_scheme": "http",
        "wsgi.version": (1, 0),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": str(len(body)),
        **{
            f"HTTP_{k.upper().replace('-', '_')}": v
            for k, v in HEADERS.items()
            if k != "content-type"
        },
    }

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        return None

    def one() -> None:
        environ = dict(environ_template)
        environ["wsgi.input"] = io.BytesIO(body)
        result = app(environ, start_response)
        for _ in result:
            pass
        close = getattr(result, "close", None)
        if close is not None:
            close()

    return one


def wsgi_section(rounds: int, per_round: int) -> InProcess:
    """Every WSGI variant, in-process, interleaved; the table printed."""
    client, _ = no_op_client("pk-bench-wsgi")
    hand, _ = users_langfuse("pk-bench-hand-wsgi")
    floor_client, _ = no_op_client("pk-bench-floor-wsgi")
    variants = {
        Variant.BARE: wsgi_caller(make_wsgi("bare", None), "/chat"),
        Variant.HANDWRITTEN: wsgi_caller(make_wsgi("handwritten", hand), "/chat"),
        Variant.OTEL: wsgi_caller(make_wsgi("otel", None), "/chat"),
        Variant.SDK_FLOOR: lambda: sdk_floor(floor_client, HEADERS, BODY, {"answer": "X"}),
        Variant.LEMMA: wsgi_caller(make_wsgi("lemma", client), "/chat"),
        Variant.LEMMA_NOCAPTURE: wsgi_caller(make_wsgi("lemma-nocapture", client), "/chat"),
        Variant.LEMMA_EXCLUDED: wsgi_caller(make_wsgi("lemma", client), "/health"),
    }
    medians = interleave(variants, rounds, per_round)
    _print_in_process("WSGI, in-process (Flask POST /chat, same request)", medians, WSGI_ROWS)
    return InProcess(medians)
