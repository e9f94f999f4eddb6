"""The request's propagated attributes, through Langfuse's public ``propagate_attributes``
(the speed-up that writes them directly is :mod:`.direct_propagation`)."""

from __future__ import annotations

from typing import Any

from langfuse import propagate_attributes
from opentelemetry import context as otel_context
from opentelemetry.context import Context


def public_propagation(
    base: Context, arguments: dict[str, Any], *, as_baggage: bool = False
) -> Context:
    """``base`` carrying ``arguments`` (those of ``propagate_attributes``, already valid) as
    that function writes them into the context for every span started in it; with
    ``as_baggage``, also as the W3C baggage entries it writes."""
    token = otel_context.attach(base)
    try:
        with propagate_attributes(**arguments, as_baggage=as_baggage):
            return otel_context.get_current()
    finally:
        otel_context.detach(token)


def downstream_context(base: Context, arguments: dict[str, Any]) -> Context:
    """``base`` with ``arguments`` also as W3C baggage entries, exactly as Langfuse's
    ``propagate_attributes(as_baggage=True)`` writes them (public API)."""
    return public_propagation(base, arguments, as_baggage=True)
