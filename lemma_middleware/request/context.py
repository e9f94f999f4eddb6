"""The request being traced, as seen from inside the handler.

The request's :class:`~lemma_middleware.request.RequestTrace` travels in the OpenTelemetry
context (so it follows ``asyncio`` tasks, the threadpool and streamed bodies); the public
functions here read it. Outside a traced request they do nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry.context import Context
from opentelemetry.trace import SpanContext

from lemma_middleware.core.logs import contained
from lemma_middleware.request.trace import ACTIVE_REQUEST, RequestTrace


def current(context: Context | None = None) -> RequestTrace | None:
    """The trace of the request being handled, or None outside a traced request."""
    return otel_context.get_value(ACTIVE_REQUEST, context)  # type: ignore[return-value]


def current_root_context() -> SpanContext | None:
    """The root span context of the current request (for the ancestry processor)."""
    active = current()
    return active.span_context if active is not None else None


def bind(
    *,
    user_id: object = None,
    thread_id: object = None,
    tenant_id: object = None,
    metadata: Mapping[str, Any] | None = None,
) -> None:
    """Attach identity found after the middleware ran (e.g. in a FastAPI dependency).

    Bound values win over every other source, land on the root and on every observation
    created after the call in this request. Outside a traced request: does nothing.
    """
    active = current()
    if active is None:
        return
    with contained("bind", "the values are not bound"):
        active.bind(user_id=user_id, thread_id=thread_id, tenant_id=tenant_id, metadata=metadata)


def set_input(value: Any) -> None:
    """Record ``value`` as the request's input instead of the HTTP body (redacted)."""
    active = current()
    if active is not None:
        active.overrides.set_input(value)


def set_output(value: Any) -> None:
    """Record ``value`` as the agent's answer instead of the HTTP response (redacted)."""
    active = current()
    if active is not None:
        active.overrides.set_output(value)


def set_route(template: str) -> None:
    """Record ``template`` (``/chat/{thread_id}``) as the request's route, instead of what
    the adapter found (for frameworks whose route the middleware cannot see)."""
    active = current()
    if active is not None and isinstance(template, str) and template:
        active.overrides.route = template


def get_trace_id() -> str | None:
    """The 32-hex trace id of the current request, or None outside a traced request."""
    active = current()
    return active.trace_id if active is not None else None


def outgoing_headers() -> dict[str, str]:
    """Headers that carry the current request to a service you call: ``traceparent`` (the
    current span) and W3C ``baggage`` with its thread, user, tenant and propagated metadata,
    as Langfuse's ``propagate_attributes(as_baggage=True)`` writes them. ``{}`` outside a
    traced request. The receiving middleware uses them only from ``trusted_upstreams``::

        httpx.post(url, json=payload, headers=outgoing_headers())
    """
    active = current()
    if active is None:
        return {}
    with contained("outgoing_headers", "the call is made without them"):
        return active.outgoing_headers()
    return {}
