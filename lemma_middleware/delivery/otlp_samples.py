"""The spans the OTLP encoder's start-up check (:func:`.otlp.matches_opentelemetry`)
compares on: every field the encoder writes."""

from __future__ import annotations

from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanContext, SpanKind


def sample_spans() -> list[ReadableSpan]:
    """Spans that use every field the encoder writes, built without a thread (each provider
    gets its resource: ``Resource.create`` runs its detectors on a thread pool, which the
    interpreter refuses at exit, where a process's first export may happen)."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import (
        Link,
        NonRecordingSpan,
        Status,
        StatusCode,
        TraceFlags,
        TraceState,
        set_span_in_context,
    )

    provider = TracerProvider(
        resource=Resource({"service.name": "check", "n": 1}, "https://s"), shutdown_on_exit=False
    )
    tracer = provider.get_tracer("check", "1.0", "https://scope", {"public_key": "pk"})
    remote = SpanContext(
        1 << 100, 7, True, TraceFlags(TraceFlags.SAMPLED), TraceState([("a", "1"), ("b", "2")])
    )
    parent = set_span_in_context(NonRecordingSpan(remote))
    values: dict[str, Any] = {
        "text": "héllo \U0001f600",
        "empty": "",
        "yes": True,
        "no": False,
        "zero": 0,
        "int": 300,
        "negative": -5,
        "big": (1 << 63) - 1,
        "float": 1.5,
        "floats": (0.0, -2.25),
        "texts": ("a", ""),
        "ints": (1, -1),
        "bools": (True, False),
        "nothing": (),
    }
    spans = []
    with_links = tracer.start_span(
        "remote child",
        context=parent,
        kind=SpanKind.SERVER,
        attributes=values,
        links=[Link(remote, {"l": 1}), Link(SpanContext(2, 3, False))],
        start_time=1_700_000_000_000_000_000,
    )
    with_links.add_event("event", {"e": "v"}, timestamp=1_700_000_000_000_000_001)
    with_links.add_event("bare", timestamp=1)
    with_links.set_status(Status(StatusCode.ERROR, "it failed: ünïcode"))
    with_links.end(end_time=1_700_000_000_000_000_002)
    spans.append(with_links)
    for kind in SpanKind:
        span = provider.get_tracer("other").start_span("", kind=kind)
        span.set_status(Status(StatusCode.OK))
        span.end()
        spans.append(span)
    elsewhere = Resource({"service.name": "unknown_service", "telemetry.sdk.language": "python"})
    other_provider = TracerProvider(resource=elsewhere, shutdown_on_exit=False)
    other = other_provider.get_tracer("check").start_span("elsewhere")
    other.end()
    spans.append(other)
    provider.shutdown()
    other_provider.shutdown()
    return spans  # type: ignore[return-value]
