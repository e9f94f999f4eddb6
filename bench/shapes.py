"""The benchmark's request-shape sections (issue 19): what a request costs by what it carries.

* ``shapes``: in-process, FastAPI and Flask, every shape of :mod:`bench.traffic` through the
  bare app, OpenTelemetry, the hand-written middleware and this one. The figure is the CPU
  of the whole process per request (``time.process_time``: the request path and the export
  threads), each variant exporting through its own encoding (OpenTelemetry's OTLP encoder,
  gzip for Langfuse's exporter, this middleware's encoder and gzip level 1) with no network.
* ``redaction``: the redaction alone, ns per byte, on each shape's text and on the slowest
  input a hypothesis search finds; beside it the redaction it replaced (the oracle of
  ``tests/test_redaction_cost.py``) and the ratio to a plain text of the same size.
* ``e2e-history``: end to end under real servers with the 28 KB history as every body.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench.apps import OTEL_PROVIDERS, make_asgi, make_wsgi
from bench.inprocess import (
    EncodeOnly,
    asgi_caller,
    otlp_exporter_encoding,
    users_langfuse,
    wsgi_caller,
)
from bench.served import EndToEnd, e2e_section
from bench.traffic import HISTORY, HISTORY_CLEAN, HOSTILE, SHAPES, Shape
from bench.variants import LABELS, Variant
from lemma_middleware import build_client
from lemma_middleware.core.redaction import Redactor
from lemma_middleware.delivery.encoding import encode_batch
from lemma_middleware.export.provider import OwnedTracerProvider

SHAPE_VARIANTS: dict[str, tuple[Variant, ...]] = {
    "asgi": (Variant.BARE, Variant.FASTAPI_OTEL, Variant.HANDWRITTEN, Variant.LEMMA),
    "wsgi": (Variant.BARE, Variant.OTEL, Variant.HANDWRITTEN, Variant.LEMMA),
}
"""The shapes and e2e-history tables' variants by kind of app; in the shapes tables, the
second is the OpenTelemetry the last column compares the middleware with."""

ShapeCosts = dict[tuple[str, Shape, Variant], float]
"""Median process CPU per request (µs) by (kind of app, shape, variant)."""


def _flusher(variant: Variant, client: Any) -> Callable[[], None]:
    if client is not None:
        return client.flush  # type: ignore[no-any-return]
    if variant in ("otel", "fastapi-otel"):
        provider = OTEL_PROVIDERS[-1]
        return lambda: provider.force_flush()
    return lambda: None


def _variant(kind: str, variant: Variant, shape: Shape, number: int) -> Callable[[int], float]:
    """A function running ``n`` requests of ``shape`` through ``variant`` and returning the
    process CPU per request in µs, the export of those requests included."""
    key = f"pk-shape-{kind}-{variant}-{number}"
    client: Any = None
    provider: Any = None
    otel_exporter = None
    if variant.startswith("lemma"):
        provider = OwnedTracerProvider()
        exporter = EncodeOnly(encode_batch)
        client = build_client(span_exporter=exporter, tracer_provider=provider, public_key=key)
    elif variant == "handwritten":  # Langfuse's exporter: OTLP, gzip at its default level
        exporter = EncodeOnly(otlp_exporter_encoding(compress=True))
        client, provider = users_langfuse(key, exporter)
    elif variant in ("otel", "fastapi-otel"):  # OTLP/HTTP's default: no compression
        exporter = otel_exporter = EncodeOnly(otlp_exporter_encoding(compress=False))
    else:
        exporter = None
    if exporter is not None:
        exporter.keeping = False
    path = "/chat/stream" if shape.stream else "/chat"
    if kind == "asgi":
        telemetry = provider if variant.startswith(("lemma", "handwritten")) else None
        app = make_asgi(variant, client, otel_exporter, telemetry_provider=telemetry)
        call = asgi_caller(app, path, shape.body)
    else:
        call = wsgi_caller(make_wsgi(variant, client, otel_exporter), path, shape.body)
    flush = _flusher(variant, client)

    def run(requests: int) -> float:
        start = time.process_time()
        for _ in range(requests):
            call()
        flush()
        return (time.process_time() - start) / requests * 1e6

    return run


def requests_for(shape: Shape) -> int:
    """Requests per measured round: about 2 MB of bodies, 20 to 200 requests."""
    return max(20, min(200, 2_000_000 // len(shape.body)))


def shapes_section(rounds: int, smoke: bool = False) -> ShapeCosts:
    """Median process CPU per request (µs) by (kind, shape, variant), rounds interleaved."""
    results: ShapeCosts = {}
    number = 0
    for kind, variants in SHAPE_VARIANTS.items():
        labels = LABELS[kind]
        runs: dict[tuple[Shape, Variant], Callable[[int], float]] = {}
        for shape in SHAPES:
            for variant in variants:
                number += 1
                runs[(shape, variant)] = _variant(kind, variant, shape, number)
        samples: dict[tuple[Shape, Variant], list[float]] = {key: [] for key in runs}
        for run in runs.values():  # warm up
            run(3)
        for _ in range(rounds):
            for shape in SHAPES:
                count = 3 if smoke else requests_for(shape)
                for variant in variants:
                    samples[(shape, variant)].append(runs[(shape, variant)](count))
        print(
            f"\n{kind.upper()}, in-process, by request shape: process CPU per request in µs "
            f"(request path + export encoding, no network), medians of {rounds} rounds"
        )
        header = f"{'shape':32} {'bytes':>7}"
        for variant in variants:
            header += f" {labels[variant][:26]:>26}"
        print(header + f" {'this: overhead / OTel':>22}")
        for shape in SHAPES:
            line = f"{shape.name:32} {len(shape.body):7}"
            for variant in variants:
                value = statistics.median(samples[(shape, variant)])
                results[(kind, shape, variant)] = value
                line += f" {value:26.0f}"
            bare = results[(kind, shape, Variant.BARE)]
            otel = results[(kind, shape, variants[1])] - bare
            ours = results[(kind, shape, Variant.LEMMA)] - bare
            print(line + f" {ours / otel if otel > 0 else float('nan'):22.2f}")
    return results


# redaction alone ---------------------------------------------------------------------


def _ns_per_byte(redact: Callable[[], Any], size: int, repeat: int = 5) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        redact()
        best = min(best, time.perf_counter() - start)
    return best / size * 1e9


def _plain_text(size: int) -> str:
    return HISTORY_CLEAN.body.decode().replace('"', " ").replace(":", " ") * (
        size // len(HISTORY_CLEAN.body) + 1
    )


def slowest_text(examples: int, size: int = 65_536) -> tuple[str, float]:
    """The slowest text (ns per byte of :meth:`Redactor.redact_text`) a hypothesis search
    finds: a unit made of what secrets and names are made of, repeated to ``size``
    characters (repetition is how one body multiplies a slow spot)."""
    from hypothesis import HealthCheck, Phase, given, settings, target
    from hypothesis import strategies as st

    from bench.traffic import REDACTION_PIECES

    redactor = Redactor()
    worst: list[tuple[float, str]] = [(0.0, "")]

    @settings(
        max_examples=examples,
        phases=[Phase.generate, Phase.target],
        suppress_health_check=list(HealthCheck),
        deadline=None,
        database=None,
    )
    @given(st.lists(st.sampled_from(REDACTION_PIECES), min_size=1, max_size=12).map("".join))
    def search(unit: str) -> None:
        text = (unit * (size // len(unit) + 1))[:size]
        cost = _ns_per_byte(lambda: redactor.redact_text(text), len(text), repeat=2)
        target(cost)
        if cost > worst[0][0]:
            worst[0] = (cost, text)

    search()
    text = worst[0][1]
    return text, _ns_per_byte(lambda: redactor.redact_text(text), len(text))


@dataclass
class RedactionCost:
    """ns per byte of the redaction alone, by input."""

    as_text: dict[Shape, float]
    """On each shape's body as text (the shapes that are not streamed)."""
    parsed: dict[Shape, float]
    """On each shape's body as the parsed document."""
    worst: float
    """On the slowest text the search found."""
    plain: float
    """On a plain text of the same size."""
    most: float
    """The highest of these on any input of 1 KB or more (below: the call, not the bytes)."""


def redaction_section(examples: int) -> RedactionCost:
    """ns per byte of the redaction on each shape's text (as text and, for JSON, as the
    parsed document), and on the slowest input found."""
    from tests.reference_redaction import ReferenceRedactor

    redactor, reference = Redactor(), ReferenceRedactor()
    bodies = [shape for shape in SHAPES if not shape.stream]
    sizes: dict[Shape, int] = {}
    as_text: dict[Shape, float] = {}
    parsed: dict[Shape, float] = {}
    before: dict[tuple[Shape, str], float] = {}  # the previous redaction's, by (shape, form)
    for shape in bodies:
        text = shape.body.decode()
        document = json.loads(text)
        sizes[shape] = len(text)
        as_text[shape] = _ns_per_byte(lambda t=text: redactor.redact_text(t), len(text))
        before[(shape, "text")] = _ns_per_byte(
            lambda t=text: reference.redact_text(t), len(text), repeat=1
        )
        parsed[shape] = _ns_per_byte(lambda d=document: redactor.redact(d), len(text))
        before[(shape, "parsed")] = _ns_per_byte(
            lambda d=document: reference.redact(d), len(text), repeat=1
        )
    worst, _ = slowest_text(examples)
    plain = _plain_text(len(worst))[: len(worst)]
    worst_cost = _ns_per_byte(lambda: redactor.redact_text(worst), len(worst))
    plain_cost = _ns_per_byte(lambda: redactor.redact_text(plain), len(plain))
    worst_before = _ns_per_byte(lambda: reference.redact_text(worst), len(worst), repeat=1)
    measured = [
        (sizes[shape], cost) for costs in (as_text, parsed) for shape, cost in costs.items()
    ]
    measured += [(len(worst), worst_cost), (len(plain), plain_cost)]
    rows: list[tuple[str, int, float, float]] = []
    for shape in bodies:
        rows.append(
            (f"{shape.name}, as text", sizes[shape], as_text[shape], before[(shape, "text")])
        )
        rows.append(
            (f"{shape.name}, parsed", sizes[shape], parsed[shape], before[(shape, "parsed")])
        )
    rows.append(
        (f"slowest found: {worst[:24]!r}... repeated", len(worst), worst_cost, worst_before)
    )
    rows.append(("plain text of the same size", len(plain), plain_cost, float("nan")))
    print("\nRedaction alone, ns per byte (best of 5; the previous redaction: one run)")
    print(f"{'text':56} {'bytes':>7} {'this':>8} {'previous':>9} {'this, µs':>9}")
    for name, size, ours, previous in rows:
        print(f"{name:56} {size:7} {ours:8.1f} {previous:9.1f} {ours * size / 1000:9.1f}")
    print(f"slowest found / plain text of the same size: {worst_cost / plain_cost:.1f}x")
    return RedactionCost(
        as_text, parsed, worst_cost, plain_cost, max(c for size, c in measured if size >= 1024)
    )


# end to end with the history -------------------------------------------------------------


def e2e_history_section(seconds: float, connections: int, rounds: int) -> EndToEnd:
    """The end-to-end variants with the 28 KB history as every request's body."""
    bodies = f", every body the {len(HISTORY.body):,}-byte history"
    return e2e_section(seconds, connections, rounds, SHAPE_VARIANTS, HISTORY.body, bodies)


# the per-byte path, layer by layer -----------------------------------------------------


def _root_span_for(shape: Shape) -> Any:
    """The root the middleware records for one request of ``shape`` (real SDK, Flask)."""
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    client = build_client(
        span_exporter=exporter,
        tracer_provider=OwnedTracerProvider(),
        public_key=f"pk-layers-{abs(hash(shape.name))}",
    )
    wsgi_caller(make_wsgi("lemma", client), "/chat", shape.body)()
    client.flush()
    return next(span for span in exporter.get_finished_spans() if span.parent is None)


def _layers_of(shape: Shape, redactor: Redactor) -> dict[str, float]:
    import zlib

    from opentelemetry.sdk.trace import TracerProvider

    from lemma_middleware.core.capture import BodyCapture, render_body
    from lemma_middleware.core.recording import serialise
    from lemma_middleware.delivery.otlp import encode_request_parts
    from lemma_middleware.sdk.media_screen import _may_hold_media

    body = shape.body
    size = len(body)
    text = body.decode()
    capture = BodyCapture(64 * 1024)
    capture.feed(body)
    rendered = render_body(capture, "application/json", None, redactor, "request")
    root = _root_span_for(shape)
    encoded = b"".join(encode_request_parts([root]))

    def feed() -> None:
        fresh = BodyCapture(64 * 1024)
        for start in range(0, size, 16 * 1024):  # as a server delivers it
            fresh.feed(body[start : start + 16 * 1024])
        fresh.data()

    tracer = TracerProvider().get_tracer("layers")
    attributes = dict(root.attributes or {})

    def set_attributes() -> None:
        span = tracer.start_span("root")
        span.set_attributes(attributes)
        span.end()

    def isal(level: int) -> Callable[[], Any]:
        try:
            from isal import isal_zlib
        except ImportError:
            return lambda: None
        return lambda: isal_zlib.compress(encoded, level, 31)

    layers: dict[str, Callable[[], Any]] = {
        "capture (copy as it streams)": feed,
        "decode (UTF-8)": lambda: body.decode("utf-8", errors="replace"),
        "redaction: text screen": lambda: redactor.finds_nothing_in_json(text),
        "parse (json.loads; when the screen finds something)": lambda: json.loads(text),
        "redaction: structure walk (idem)": lambda: redactor.redact(json.loads(text)),
        "rendering, all of it (what the request pays)": lambda: render_body(
            capture, "application/json", None, redactor, "request"
        ),
        "serialise (the recorded text)": lambda: serialise(rendered, 64 * 1024 + 200),
        "attributes (a span started, the root's set, ended)": set_attributes,
        "media screen (export thread)": lambda: _may_hold_media([root]),
        "OTLP encoding of the root (export thread)": lambda: encode_request_parts([root]),
        "gzip, zlib level 1": lambda: zlib.compress(encoded, 1),
        "gzip, ISA-L level 0": isal(0),
        "gzip, ISA-L level 1 (used)": isal(1),
    }
    return {name: _ns_per_byte(run, size, repeat=50) for name, run in layers.items()}


def layers_section() -> dict[str, dict[str, float]]:
    """ns per byte of each layer a body goes through, on the history and the hostile body
    (best of 50; per byte of the request body)."""
    redactor = Redactor()
    results = {shape.name: _layers_of(shape, redactor) for shape in (HISTORY, HOSTILE)}
    print("\nThe per-byte path, layer by layer: ns per byte of request body (best of 50)")
    print(f"{'layer':54}" + "".join(f" {name[:30]:>30}" for name in results))
    for layer in next(iter(results.values())):
        print(f"{layer:54}" + "".join(f" {values[layer]:30.2f}" for values in results.values()))
    return results
