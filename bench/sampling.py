"""The benchmark's sampling section (issue 22): what a sampled-out turn costs beside a kept one.

In-process, FastAPI and Flask serve an agent's turn (``POST /agent``,
:func:`bench.apps.agent_turn`: a tool call and a generation whose input is the request's
messages, each an observation through the middleware's Langfuse client, children of the
request's root), with the short message and with the 28 KB history. Variants, interleaved
round by round:

* the bare app: the same handler doing the same steps with no observation at all (no
  client, no middleware): the baseline every overhead is counted from. Children on a
  disabled or no-op client would add the SDK's calls to the baseline and so lower every
  overhead by the same amount, which flatters the ratio; with nothing, the overhead is all
  that tracing the turn costs;
* the middleware, kept (``sample_rate`` 1, the default; every other option as well);
* the middleware, sampled out (``sample_rate=0.0``, ``keep_errors`` on as by default): every
  turn is held by the sampling gate until its root ends, then dropped. It DROPS every turn by
  design, which is what is measured;
* the same with ``keep_errors=False``: every turn is dropped as it starts (nothing held);
* the floor: the ``keep_errors`` variant with its held spans given to no processor at all
  (the gate neither runs Langfuse's ``on_start`` nor holds them). What is left is what
  recording a turn that may still be kept costs in the SDKs themselves, inside the
  handler's own calls (OpenTelemetry's span, Langfuse's serialising of each observation's
  input and output, which it skips only for a span that does not record), and the root as
  the middleware starts it: no design that keeps a failed turn whole can cost less than the
  children's share of it. It DROPS every turn too.

Each middleware variant has its own client and provider, exporting through this
middleware's encoder (``EncodeOnly(encode_batch)``: the OTLP bytes and ISA-L gzip, no
network). The figure is the process CPU per request (``time.process_time`` over a round,
flushed at the end of it: the request path and the export thread), as :mod:`bench.shapes`
measures. The spans each variant exported and those sampling dropped are counted: the kept
variant must export every span of every turn (the root and its two children), the sampled-out
ones none; the table flags any other count.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

from bench.apps import make_asgi, make_wsgi
from bench.inprocess import EncodeOnly, asgi_caller, wsgi_caller
from bench.traffic import HISTORY, SHORT, Shape
from bench.variants import SAMPLING_LABELS, Variant
from lemma_middleware import build_client
from lemma_middleware.delivery.encoding import encode_batch
from lemma_middleware.export.provider import OwnedTracerProvider
from lemma_middleware.request import sampling as gating
from lemma_middleware.request.sampling import SamplingGate, sampling_stats

SAMPLING_VARIANTS = (
    Variant.BARE,
    Variant.LEMMA,
    Variant.LEMMA_SAMPLED_OUT,
    Variant.LEMMA_SAMPLED_OUT_NO_KEEP,
    Variant.LEMMA_HELD_FLOOR,
)
"""The sampling table's variants, in the order each round runs them."""
SAMPLED_OUT_VARIANTS = (
    Variant.LEMMA_SAMPLED_OUT,
    Variant.LEMMA_SAMPLED_OUT_NO_KEEP,
    Variant.LEMMA_HELD_FLOOR,
)
SAMPLING_BODIES = (SHORT, HISTORY)
SPANS_PER_TURN = 3
"""What one agent turn records: the middleware's root, the tool, the generation."""

Key = tuple[str, Shape, Variant]
"""(kind of app, body, variant)."""


@dataclass
class SamplingCosts:
    """The sampling section's figures, by (kind of app, body, variant)."""

    medians: dict[Key, float] = field(default_factory=dict)
    """Median process CPU per request (µs)."""
    rounds: dict[Key, list[float]] = field(default_factory=dict)
    """The same, round by round."""
    exported: dict[Key, float] = field(default_factory=dict)
    """Spans the variant's exporter received, per request (every request, warm-up included)."""
    dropped: dict[Key, float] = field(default_factory=dict)
    """Spans sampling dropped, per request."""

    def overhead(self, kind: str, shape: Shape, variant: Variant) -> float:
        """``variant``'s CPU per request beyond the bare app's (µs)."""
        return self.medians[(kind, shape, variant)] - self.medians[(kind, shape, Variant.BARE)]

    def ratio(self, kind: str, shape: Shape, variant: Variant = Variant.LEMMA_SAMPLED_OUT) -> float:
        """The sampled-out overhead over the kept one (issue 22's target: at most 0.35)."""
        kept = self.overhead(kind, shape, Variant.LEMMA)
        return self.overhead(kind, shape, variant) / kept if kept > 0 else float("nan")

    def round_ratios(
        self, kind: str, shape: Shape, variant: Variant = Variant.LEMMA_SAMPLED_OUT
    ) -> list[float]:
        """:meth:`ratio` within each round (the same round's bare, kept and sampled out)."""
        bare, kept, out = (
            self.rounds[(kind, shape, v)] for v in (Variant.BARE, Variant.LEMMA, variant)
        )
        return [(o - b) / (k - b) for b, k, o in zip(bare, kept, out, strict=True) if k > b]

    def exports_as_expected(self, kind: str, shape: Shape) -> bool:
        """Whether the kept variant exported every span of every turn and the sampled-out
        ones none (else a ratio compares variants doing other work than they say)."""
        kept = self.exported[(kind, shape, Variant.LEMMA)]
        return kept == SPANS_PER_TURN and all(
            self.exported[(kind, shape, v)] == 0 for v in SAMPLED_OUT_VARIANTS
        )


@contextmanager
def held_spans_unprocessed() -> Iterator[None]:
    """While open, the spans of a turn sampling holds reach no processor (the floor's
    variant); every other span as before. They are not counted as dropped (the root is: it
    ends after its turn was decided, and the gate drops it)."""
    on_start, on_end = SamplingGate.on_start, SamplingGate.on_end

    def start(gate: SamplingGate, span: Any, parent_context: Any = None) -> None:
        if span.context.trace_id not in gating._turns:  # the benchmark's look at the holds
            on_start(gate, span, parent_context)

    def end(gate: SamplingGate, span: Any) -> None:
        if span.context.trace_id not in gating._turns:
            on_end(gate, span)

    SamplingGate.on_start, SamplingGate.on_end = start, end  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        SamplingGate.on_start, SamplingGate.on_end = on_start, on_end  # type: ignore[method-assign]


@dataclass
class _Run:
    """One variant's request, its flush, and what it exported and sampling dropped."""

    call: Callable[[], None]
    flush: Callable[[], None]
    exporter: EncodeOnly | None
    around: Callable[[], AbstractContextManager[None]] = nullcontext
    """What the requests run within (the floor's unprocessed holds)."""
    requests: int = 0
    dropped: int = 0

    def __call__(self, requests: int) -> float:
        """``requests`` requests and a flush: the process CPU per request in µs."""
        before = sampling_stats().spans_dropped
        with self.around():
            start = time.process_time()
            for _ in range(requests):
                self.call()
            self.flush()
            elapsed = time.process_time() - start
        self.dropped += sampling_stats().spans_dropped - before
        self.requests += requests
        return elapsed / requests * 1e6


def _variant(kind: str, variant: Variant, shape: Shape, number: int) -> _Run:
    if variant is Variant.BARE:
        if kind == "asgi":
            bare = asgi_caller(make_asgi("bare", None, agent=True), "/agent", shape.body)
        else:
            bare = wsgi_caller(make_wsgi("bare", None, agent=True), "/agent", shape.body)
        return _Run(bare, lambda: None, None)
    provider = OwnedTracerProvider()
    exporter = EncodeOnly(encode_batch)
    exporter.keeping = False  # counted, not kept
    key = f"pk-sampling-{kind}-{variant}-{number}"
    client = build_client(span_exporter=exporter, tracer_provider=provider, public_key=key)
    assert client is not None
    floor = variant is Variant.LEMMA_HELD_FLOOR
    served = Variant.LEMMA_SAMPLED_OUT if floor else variant
    if kind == "asgi":
        app = make_asgi(served, client, telemetry_provider=provider, agent=True)
        call = asgi_caller(app, "/agent", shape.body)
    else:
        call = wsgi_caller(make_wsgi(served, client, agent=True), "/agent", shape.body)
    return _Run(call, client.flush, exporter, held_spans_unprocessed if floor else nullcontext)


def sampling_section(rounds: int, per_round: int) -> SamplingCosts:
    """Process CPU per request of each variant, by kind and body, rounds interleaved; the
    table printed."""
    costs = SamplingCosts()
    number = 0
    for kind in ("asgi", "wsgi"):
        runs: dict[tuple[Shape, Variant], _Run] = {}
        for shape in SAMPLING_BODIES:
            for variant in SAMPLING_VARIANTS:
                number += 1
                runs[(shape, variant)] = _variant(kind, variant, shape, number)
        for run in runs.values():  # warm up
            run(max(5, per_round // 10))
        for _ in range(rounds):
            for shape in SAMPLING_BODIES:
                for variant in SAMPLING_VARIANTS:
                    key = (kind, shape, variant)
                    costs.rounds.setdefault(key, []).append(runs[(shape, variant)](per_round))
        for (shape, variant), run in runs.items():
            key = (kind, shape, variant)
            costs.medians[key] = statistics.median(costs.rounds[key])
            exported = run.exporter.exported if run.exporter is not None else 0
            costs.exported[key] = exported / run.requests
            costs.dropped[key] = run.dropped / run.requests
    _print_sampling(costs, rounds, per_round)
    return costs


def _print_sampling(costs: SamplingCosts, rounds: int, per_round: int) -> None:
    print(
        "\nSampling (issue 22), in-process: an agent turn (POST /agent: the root, a tool and a "
        "generation through the middleware's client); process CPU per request in µs (request "
        f"path + export encoding, no network), medians of {rounds} rounds of {per_round}"
    )
    print(
        "ratio: (sampled out - bare) / (kept - bare), the target at most 0.35; 'rounds': that "
        "ratio within each round, min-max; 'no keep' and 'floor': the same ratio for those "
        "variants. The DROPS variants drop every turn by design."
    )
    header = f"{'kind':4} {'body':30}"
    for variant in SAMPLING_VARIANTS:
        header += f" {SAMPLING_LABELS[variant]:>27}"
    header += f" {'ratio':>6} {'rounds':>11} {'no keep':>7} {'floor':>6}"
    print(header + "  spans exported/req (kept, DROPS x3), dropped/req (DROPS x3)")
    wrong: list[str] = []
    for kind in ("asgi", "wsgi"):
        for shape in SAMPLING_BODIES:
            line = f"{kind.upper():4} {shape.name:30}"
            for variant in SAMPLING_VARIANTS:
                line += f" {costs.medians[(kind, shape, variant)]:27.0f}"
            each = costs.round_ratios(kind, shape)
            spread = f"{min(each):.2f}-{max(each):.2f}" if each else "n/a"
            line += f" {costs.ratio(kind, shape):6.2f} {spread:>11}"
            line += f" {costs.ratio(kind, shape, Variant.LEMMA_SAMPLED_OUT_NO_KEEP):7.2f}"
            line += f" {costs.ratio(kind, shape, Variant.LEMMA_HELD_FLOOR):6.2f}"
            exported = [costs.exported[(kind, shape, v)] for v in SAMPLING_VARIANTS[1:]]
            dropped = [costs.dropped[(kind, shape, v)] for v in SAMPLED_OUT_VARIANTS]
            line += "  " + " ".join(f"{n:.2f}" for n in exported)
            line += ", " + " ".join(f"{n:.2f}" for n in dropped)
            if not costs.exports_as_expected(kind, shape):
                line += "  EXPORTS WRONG"
                wrong.append(f"{kind} {shape.name}")
            print(line)
    if wrong:
        print(
            f"!! expected {SPANS_PER_TURN} spans exported per kept request and none per "
            f"sampled-out one; not so for: {'; '.join(wrong)}"
        )
