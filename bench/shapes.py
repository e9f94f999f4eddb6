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
from typing import Any

from bench.apps import OTEL_PROVIDERS, make_asgi, make_wsgi
from bench.run import (
    ASGI_NAMES,
    WSGI_NAMES,
    EncodeOnly,
    Served,
    asgi_caller,
    e2e_section,
    otlp_exporter_encoding,
    users_langfuse,
    wsgi_caller,
)
from bench.traffic import HISTORY, HISTORY_CLEAN, HOSTILE, PLAIN, SHAPES, Shape
from lemma_middleware import build_client
from lemma_middleware.core.redaction import Redactor
from lemma_middleware.delivery.encoding import encode_batch
from lemma_middleware.export.provider import OwnedTracerProvider

SHAPE_VARIANTS = {"asgi": ("bare", "fastapi-otel", "handwritten", "lemma")}
SHAPE_VARIANTS["wsgi"] = ("bare", "otel", "handwritten", "lemma")


def _flusher(variant: str, client: Any) -> Callable[[], None]:
    if client is not None:
        return client.flush  # type: ignore[no-any-return]
    if variant in ("otel", "fastapi-otel"):
        provider = OTEL_PROVIDERS[-1]
        return lambda: provider.force_flush()
    return lambda: None


def _variant(kind: str, variant: str, shape: Shape, number: int) -> Callable[[int], float]:
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


def shapes_section(rounds: int, smoke: bool = False) -> dict[tuple[str, str, str], float]:
    """Median process CPU per request (µs) by (kind, shape, variant), rounds interleaved."""
    results: dict[tuple[str, str, str], float] = {}
    number = 0
    for kind, variants in SHAPE_VARIANTS.items():
        names = ASGI_NAMES if kind == "asgi" else WSGI_NAMES
        runs: dict[tuple[str, str], Callable[[int], float]] = {}
        for shape in SHAPES:
            for variant in variants:
                number += 1
                runs[(shape.name, variant)] = _variant(kind, variant, shape, number)
        samples: dict[tuple[str, str], list[float]] = {key: [] for key in runs}
        for run in runs.values():  # warm up
            run(3)
        for _ in range(rounds):
            for shape in SHAPES:
                count = 3 if smoke else requests_for(shape)
                for variant in variants:
                    samples[(shape.name, variant)].append(runs[(shape.name, variant)](count))
        print(
            f"\n{kind.upper()}, in-process, by request shape: process CPU per request in µs "
            f"(request path + export encoding, no network), medians of {rounds} rounds"
        )
        header = f"{'shape':32} {'bytes':>7}"
        for variant in variants:
            header += f" {names[variant][:26]:>26}"
        print(header + f" {'this: overhead / OTel':>22}")
        for shape in SHAPES:
            line = f"{shape.name:32} {len(shape.body):7}"
            for variant in variants:
                value = statistics.median(samples[(shape.name, variant)])
                results[(kind, shape.name, variant)] = value
                line += f" {value:26.0f}"
            bare = results[(kind, shape.name, "bare")]
            otel = results[(kind, shape.name, variants[1])] - bare
            ours = results[(kind, shape.name, "lemma")] - bare
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


def redaction_section(examples: int) -> dict[str, float]:
    """ns per byte of the redaction on each shape's text (as text and, for JSON, as the
    parsed document), and on the slowest input found."""
    from tests.reference_redaction import ReferenceRedactor

    redactor, reference = Redactor(), ReferenceRedactor()
    rows: list[tuple[str, int, float, float]] = []
    for shape in SHAPES:
        if shape.stream:
            continue
        text = shape.body.decode()
        document = json.loads(text)
        rows.append(
            (
                f"{shape.name}, as text",
                len(text),
                _ns_per_byte(lambda t=text: redactor.redact_text(t), len(text)),
                _ns_per_byte(lambda t=text: reference.redact_text(t), len(text), repeat=1),
            )
        )
        rows.append(
            (
                f"{shape.name}, parsed",
                len(text),
                _ns_per_byte(lambda d=document: redactor.redact(d), len(text)),
                _ns_per_byte(lambda d=document: reference.redact(d), len(text), repeat=1),
            )
        )
    worst, _ = slowest_text(examples)
    plain = _plain_text(len(worst))[: len(worst)]
    worst_cost = _ns_per_byte(lambda: redactor.redact_text(worst), len(worst))
    plain_cost = _ns_per_byte(lambda: redactor.redact_text(plain), len(plain))
    rows.append(
        (
            f"slowest found: {worst[:24]!r}... repeated",
            len(worst),
            worst_cost,
            _ns_per_byte(lambda: reference.redact_text(worst), len(worst), repeat=1),
        )
    )
    rows.append(("plain text of the same size", len(plain), plain_cost, float("nan")))
    print("\nRedaction alone, ns per byte (best of 5; the previous redaction: one run)")
    print(f"{'text':56} {'bytes':>7} {'this':>8} {'previous':>9} {'this, µs':>9}")
    for name, size, ours, before in rows:
        print(f"{name:56} {size:7} {ours:8.1f} {before:9.1f} {ours * size / 1000:9.1f}")
    print(f"slowest found / plain text of the same size: {worst_cost / plain_cost:.1f}x")
    return {
        "history": next(r[2] for r in rows if r[0] == f"{HISTORY.name}, as text"),
        "hostile": next(r[2] for r in rows if r[0] == f"{HOSTILE.name}, as text"),
        "worst": worst_cost,
        "plain": plain_cost,
        "max": max(r[2] for r in rows if r[1] >= 1024),  # (below: the call, not the bytes)
    }


# end to end with the history -------------------------------------------------------------


def e2e_history_section(seconds: float, connections: int, rounds: int) -> dict[str, Served]:
    """The end-to-end variants with the 28 KB history as every request's body."""
    variants = {"asgi": ("bare", "fastapi-otel", "handwritten", "lemma")}
    variants["wsgi"] = ("bare", "otel", "handwritten", "lemma")
    bodies = f", every body the {len(HISTORY.body):,}-byte history"
    return e2e_section(seconds, connections, rounds, variants, HISTORY.body, bodies)


def judge_shapes(
    shapes: dict[tuple[str, str, str], float] | None,
    redaction: dict[str, float] | None,
    history: dict[str, Served] | None,
) -> list[tuple[str, bool, str]]:
    """Issue 19's targets on this run's figures."""
    checks: list[tuple[str, bool, str]] = []
    if shapes:

        def overhead(kind: str, shape: Shape, variant: str) -> float:
            return shapes[(kind, shape.name, variant)] - shapes[(kind, shape.name, "bare")]

        ours, otel = overhead("wsgi", HISTORY, "lemma"), overhead("wsgi", HISTORY, "otel")
        total = shapes[("wsgi", HISTORY.name, "lemma")]
        hand = shapes[("wsgi", HISTORY.name, "handwritten")]
        hostile = overhead("wsgi", HOSTILE, "lemma")
        clean = overhead("wsgi", HISTORY_CLEAN, "lemma")
        plain = overhead("wsgi", PLAIN, "lemma")
        short = overhead("wsgi", SHAPES[0], "lemma")
        short_otel = overhead("wsgi", SHAPES[0], "otel")
        checks += [
            ("history, WSGI: overhead <= 2x OpenTelemetry's", ours <= 2 * otel,
             f"{ours:.0f} vs {otel:.0f} us"),
            ("history, WSGI: total <= 1/2 hand-written's", total <= hand / 2,
             f"{total:.0f} vs {hand:.0f} us"),
            ("hostile 64 KB: overhead <= 2.5x clean history's", hostile <= 2.5 * clean,
             f"{hostile:.0f} vs {clean:.0f} us"),
            ("hostile 64 KB: overhead <= 1.25x its plain twin's", hostile <= 1.25 * plain,
             f"{hostile:.0f} vs {plain:.0f} us"),
            ("short body, WSGI: overhead <= 1.5x OpenTelemetry's", short <= 1.5 * short_otel,
             f"{short:.0f} vs {short_otel:.0f} us"),
        ]  # fmt: skip
    if redaction:
        checks.append(
            ("redaction <= 10 ns/byte on every input of 1 KB+", redaction["max"] <= 10,
             f"max {redaction['max']:.1f}, slowest found {redaction['worst']:.1f} ns/byte")
        )  # fmt: skip
    if history:
        ours_load, native = history["asgi lemma"].load, history["asgi fastapi-otel"].load
        hand_load = history["asgi handwritten"].load
        checks += [
            ("history e2e ASGI: req/s >= 0.75x FastAPI native",
             ours_load.requests_per_s >= 0.75 * native.requests_per_s,
             f"{ours_load.requests_per_s:.0f} vs {native.requests_per_s:.0f}"),
            ("history e2e ASGI: req/s >= 2x hand-written",
             ours_load.requests_per_s >= 2 * hand_load.requests_per_s,
             f"{ours_load.requests_per_s:.0f} vs {hand_load.requests_per_s:.0f}"),
            ("history e2e ASGI: p99 <= FastAPI native's", ours_load.p99_ms <= native.p99_ms,
             f"{ours_load.p99_ms:.1f} vs {native.p99_ms:.1f} ms"),
        ]  # fmt: skip
    return checks


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
