"""Every use of private Langfuse and OpenTelemetry state, in one place, checked at start-up.

The middleware needs a few things the SDKs do not expose publicly. Each is read here and
nowhere else; :func:`inspect_client` and :func:`check_span_internals` find out at start-up
whether they are still where this module expects them. A missing one is logged once, as an
error naming what is lost, and the public API (or switching the feature off) takes over:

==============================  ============================  =====================================
private state                   used for                      without it
==============================  ============================  =====================================
``Langfuse._otel_tracer``       starting the root with its    ``start_as_current_observation``
                                attributes in one call        (public, slower)
``Langfuse._mask``              applying the client's         bodies are not recorded (privacy
                                ``mask=`` to the root         fails closed)
``Langfuse._environment``,      the client's environment      ``LANGFUSE_TRACING_ENVIRONMENT``,
``Langfuse._release``           and release                   ``LANGFUSE_RELEASE`` / the options
``Langfuse._resources``         a user-supplied client's      span processors not installed:
                                provider, key, export filter  no re-parenting, no late identity
``Langfuse._tracing_enabled``   a disabled client             taken as enabled
``Span._parent``                re-parenting under the        no re-parenting
                                nearest exported ancestor
``TracerProvider.               running the ancestry          added last: children of unexported
_active_span_processor``        processor before Langfuse's   spans may be marked app roots
==============================  ============================  =====================================
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any, cast

from langfuse import Langfuse
from opentelemetry import context as otel_context
from opentelemetry import trace as otel_trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.trace import SpanContext

from .logs import log_once

ShouldExport = Callable[[ReadableSpan], bool]
StartRoot = Callable[[str, Context, dict[str, Any]], Span]

_MISSING = object()

# The private client attributes read here, by name (a test renames them to see the fallbacks).
CLIENT_INTERNALS = {
    "tracer": "_otel_tracer",
    "mask": "_mask",
    "environment": "_environment",
    "release": "_release",
    "resources": "_resources",
    "enabled": "_tracing_enabled",
}


def _client_internal(client: Langfuse, name: str) -> Any:
    return getattr(client, CLIENT_INTERNALS[name], _MISSING)


def _missing(what: str, consequence: str) -> None:
    log_once(
        f"sdk-internal:{what}",
        logging.ERROR,
        "lemma_middleware: this langfuse/opentelemetry version has no %s; %s",
        what,
        consequence,
    )


@dataclass(frozen=True)
class ClientAccess:
    """What the middleware reads from a Langfuse client, found once at start-up."""

    enabled: bool
    start_root: StartRoot
    """Starts the root span with its attributes, as a child of the given context."""
    mask: Callable[..., Any] | None
    mask_known: bool
    """False when the client's mask could not be read: bodies must not be recorded."""
    environment: str | None
    release: str | None
    provider: TracerProvider | None
    public_key: str | None
    should_export: ShouldExport | None

    @classmethod
    def disabled(cls) -> ClientAccess:
        """No client: nothing is traced."""
        return cls(False, _no_root, None, True, None, None, None, None, None)


def _no_root(name: str, parent: Context, attributes: dict[str, Any]) -> Span:
    raise RuntimeError("tracing is off")


def inspect_client(client: Langfuse) -> ClientAccess:
    """Read what the middleware needs from ``client``, falling back to the public API."""
    tracer = _client_internal(client, "tracer")
    enabled_flag = _client_internal(client, "enabled")
    if isinstance(tracer, otel_trace.NoOpTracer) or enabled_flag is False:
        return ClientAccess.disabled()  # no keys, or tracing switched off
    if enabled_flag is _MISSING:
        _missing("Langfuse._tracing_enabled", "the client is taken as enabled")

    start_root: StartRoot
    if callable(getattr(tracer, "start_span", None)):
        start_root = _tracer_start_root(tracer)
    else:
        _missing("Langfuse._otel_tracer", "roots are started through the public API (slower)")
        start_root = _public_start_root(client)

    mask = _client_internal(client, "mask")
    mask_known = mask is not _MISSING
    if not mask_known:
        _missing(
            "Langfuse._mask",
            "the client's mask cannot be applied, so request and response bodies are not recorded",
        )

    resources = _client_internal(client, "resources")
    if resources is _MISSING:
        _missing(
            "Langfuse._resources",
            "span processors are not installed (no re-parenting, no late identity)",
        )
        resources = None
    provider = getattr(resources, "tracer_provider", None)
    return ClientAccess(
        enabled=True,
        start_root=start_root,
        mask=cast(Callable[..., Any], mask) if mask_known and mask is not None else None,
        mask_known=mask_known,
        environment=_text(_client_internal(client, "environment")),
        release=_text(_client_internal(client, "release")),
        provider=provider if isinstance(provider, TracerProvider) else None,
        public_key=_text(getattr(resources, "public_key", None)),
        should_export=getattr(resources, "should_export_span", None),
    )


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _tracer_start_root(tracer: Any) -> StartRoot:
    def start_root(name: str, parent: Context, attributes: dict[str, Any]) -> Span:
        return cast(Span, tracer.start_span(name, context=parent, attributes=attributes))

    return start_root


def _public_start_root(client: Langfuse) -> StartRoot:
    def start_root(name: str, parent: Context, attributes: dict[str, Any]) -> Span:
        token = otel_context.attach(parent)
        try:
            with client.start_as_current_observation(name=name, as_type="agent", end_on_exit=False):
                span = otel_trace.get_current_span()
        finally:
            otel_context.detach(token)
        span.set_attributes(attributes)
        return cast(Span, span)

    return start_root


@cache
def check_span_internals() -> tuple[bool, bool]:
    """Whether spans can be re-parented and processors put first (checked once)."""
    provider = TracerProvider()
    span = cast(Span, provider.get_tracer("lemma_middleware.check").start_span("check"))
    span.end()
    can_reparent = "_parent" in vars(span)
    if can_reparent:
        substitute = SpanContext(1, 2, is_remote=False)
        span._parent = substitute
        can_reparent = span.parent is substitute
    if not can_reparent:
        _missing("Span._parent", "spans under never-exported parents are not re-parented")
    multi = getattr(provider, "_active_span_processor", None)
    can_prepend = isinstance(getattr(multi, "_span_processors", None), tuple) and hasattr(
        getattr(multi, "_lock", None), "__enter__"
    )
    if not can_prepend:
        _missing(
            "TracerProvider._active_span_processor",
            "the ancestry processor runs after Langfuse's when the client already exists",
        )
    provider.shutdown()
    return can_reparent, can_prepend


def reparent(span: Span, parent: SpanContext) -> None:
    """Make ``parent`` the parent ``span`` is exported with."""
    if check_span_internals()[0]:
        span._parent = parent


def add_processor_first(provider: TracerProvider, processor: SpanProcessor) -> None:
    """Add ``processor`` so that it runs before every processor already added."""
    if not check_span_internals()[1]:
        provider.add_span_processor(processor)
        return
    multi: Any = provider._active_span_processor
    with multi._lock:
        multi._span_processors = (processor, *multi._span_processors)
