"""The variants the benchmark compares, by identifier, and the labels its tables print.

Sections return their figures keyed by :class:`Variant` and the judging
(:mod:`bench.targets`) reads them by it; the labels are only for printing.
"""

from __future__ import annotations

from enum import StrEnum


class Variant(StrEnum):
    """One way of serving the agent (the values are :mod:`bench.apps`' variant names, which
    servers take from ``BENCH_VARIANT``), or one more row of the in-process tables."""

    BARE = "bare"
    FASTAPI_OTEL = "fastapi-otel"
    OTEL = "otel"
    HANDWRITTEN = "handwritten"
    LEMMA = "lemma"
    LEMMA_TELEMETRY_OFF = "lemma-telemetry-off"
    LEMMA_NOCAPTURE = "lemma-nocapture"
    LEMMA_SAMPLED_OUT = "lemma-sampled-out"
    """``sample_rate=0.0``, ``keep_errors`` (the default) on: DROPS every turn by design (each
    one held until its root ends, then dropped, since none fails)."""
    LEMMA_SAMPLED_OUT_NO_KEEP = "lemma-sampled-out-no-keep"
    """``sample_rate=0.0, keep_errors=False``: DROPS every turn by design, decided as it
    starts (nothing held)."""
    LEMMA_HELD_FLOOR = "lemma-held-floor"
    """:attr:`LEMMA_SAMPLED_OUT` with its held spans given to no processor at all (neither
    Langfuse's ``on_start`` nor the hold): the floor of any design that records a turn it
    may still keep, i.e. what the SDKs cost in the handler's own calls. DROPS every turn."""
    # in-process rows that are not variants of their own in bench.apps:
    BARE_TELEMETRY = "bare-telemetry"
    """The bare app once a global provider exists (the middleware's, with nothing exporting
    FastAPI's spans): FastAPI's native telemetry then runs for every request, excluded paths
    included; the ASGI excluded path is judged against this."""
    SDK_FLOOR = "sdk-floor"
    """The same root observation written straight with the Langfuse SDK, no HTTP layer."""
    LEMMA_EXCLUDED = "lemma-excluded"
    """The middleware's app, traced, on a path it excludes (``/health``)."""


ASGI_LABELS = {
    Variant.BARE: "bare app",
    Variant.FASTAPI_OTEL: "FastAPI native OTel, global SDK provider",
    Variant.OTEL: "OpenTelemetry ASGI middleware",
    Variant.HANDWRITTEN: "hand-written middleware (docs)",
    Variant.LEMMA: "lemma middleware, traced",
    Variant.LEMMA_TELEMETRY_OFF: "lemma, FastAPI telemetry off (not dflt)",
}
"""How the ASGI tables (in-process, export, end to end, shapes) name the variants."""

WSGI_LABELS = {
    Variant.BARE: "bare app",
    Variant.OTEL: "OpenTelemetry WSGI middleware",
    Variant.HANDWRITTEN: "hand-written before/teardown_request",
    Variant.LEMMA: "lemma middleware, traced",
}
"""How the WSGI end-to-end and shapes tables name the variants."""

SAMPLING_LABELS = {
    Variant.BARE: "bare app (no observations)",
    Variant.LEMMA: "lemma, kept (rate 1)",
    Variant.LEMMA_SAMPLED_OUT: "DROPS: rate 0, keep_errors",
    Variant.LEMMA_SAMPLED_OUT_NO_KEEP: "DROPS: rate 0, no keep",
    Variant.LEMMA_HELD_FLOOR: "DROPS: floor, held unprocessed",
}
"""How the sampling table names its variants; the sampled-out ones drop every turn by
design, and say so."""

LABELS = {"asgi": ASGI_LABELS, "wsgi": WSGI_LABELS}
"""The labels by kind of app (``asgi``: FastAPI, ``wsgi``: Flask)."""
