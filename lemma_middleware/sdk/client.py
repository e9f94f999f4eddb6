"""What the middleware reads from a Langfuse client (its tracer, mask, environment, release,
provider, key and export filter), found once at start-up, with the public API as fallback.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from langfuse import Langfuse
from opentelemetry import context as otel_context
from opentelemetry import trace as otel_trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, TracerProvider

from lemma_middleware.sdk.probe import MISSING, report_missing

ShouldExport = Callable[[ReadableSpan], bool]


StartRoot = Callable[[str, Context, dict[str, Any]], Span]


# The private client attributes read here, by name (a test renames them to see the fallbacks).
CLIENT_INTERNALS = {
    "tracer": "_otel_tracer",
    "mask": "_mask",
    "environment": "_environment",
    "release": "_release",
    "resources": "_resources",
    "enabled": "_tracing_enabled",
}


def client_internal(client: Langfuse, name: str) -> Any:
    return getattr(client, CLIENT_INTERNALS[name], MISSING)


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
    tracer = client_internal(client, "tracer")
    enabled_flag = client_internal(client, "enabled")
    if isinstance(tracer, otel_trace.NoOpTracer) or enabled_flag is False:
        return ClientAccess.disabled()  # no keys, or tracing switched off
    if enabled_flag is MISSING:
        report_missing("Langfuse._tracing_enabled", "the client is taken as enabled")

    start_root: StartRoot
    if callable(getattr(tracer, "start_span", None)):
        start_root = tracer_start_root(tracer)
    else:
        report_missing("Langfuse._otel_tracer", "roots are started through the public API (slower)")
        start_root = _public_start_root(client)

    mask = client_internal(client, "mask")
    mask_known = mask is not MISSING
    if not mask_known:
        report_missing(
            "Langfuse._mask",
            "the client's mask cannot be applied, so request and response bodies are not recorded",
        )

    resources = client_internal(client, "resources")
    if resources is MISSING:
        report_missing(
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
        environment=_text(client_internal(client, "environment")),
        release=_text(client_internal(client, "release")),
        provider=provider if isinstance(provider, TracerProvider) else None,
        public_key=_text(getattr(resources, "public_key", None)),
        should_export=getattr(resources, "should_export_span", None),
    )


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def tracer_start_root(tracer: Any) -> StartRoot:
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
