"""The request's propagated attributes, as Langfuse's ``propagate_attributes`` writes them into
the context: directly when that gives the same context (a speed-up checked once at
start-up), else through that function.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from langfuse import propagate_attributes
from langfuse._client import propagation as langfuse_propagation
from opentelemetry import context as otel_context
from opentelemetry.context import Context

from lemma_middleware.core.attributes import json_text
from lemma_middleware.sdk.probe import report_missing


def _public_propagation(base: Context, arguments: dict[str, Any]) -> Context:
    token = otel_context.attach(base)
    try:
        with propagate_attributes(**arguments):
            return otel_context.get_current()
    finally:
        otel_context.detach(token)


# The private Langfuse function naming a propagated value's context key (a test renames it).
PROPAGATION_KEY_FUNCTION = "_get_propagated_context_key"


def _direct_propagation(base: Context, arguments: dict[str, Any]) -> Context:
    context_key = getattr(langfuse_propagation, PROPAGATION_KEY_FUNCTION)
    values = dict(base)  # one new context, rather than one per value
    for name, value in arguments.items():
        if value is None:
            continue
        key = context_key(name)
        if isinstance(value, dict):  # metadata: JSON text, merged with an enclosing one's
            enclosing: dict[str, str] = base.get(key) or {}  # type: ignore[assignment]
            value = enclosing | {k: json_text(v) for k, v in value.items()}
        values[key] = value
    return Context(values)


@cache
def direct_propagation_works() -> bool:
    """Whether putting the propagated values in the context directly gives the context
    ``propagate_attributes`` gives (checked once, on sample values, inside an enclosing
    propagation so that the metadata merge is checked too)."""
    sample = {
        "user_id": "user-1",
        "session_id": "thread-1",
        "trace_name": "agent",
        "environment": "production",
        "version": "v1",
        "metadata": {"tenant_id": "Zürich AG", "lemma.thread_id": "thread-1", "q": 'say "hi"'},
    }
    try:
        outer = _public_propagation(otel_context.Context(), {"metadata": {"team": "a"}})
        works = _direct_propagation(outer, sample) == _public_propagation(outer, sample)
    except Exception:
        works = False
    if not works:
        report_missing(
            "langfuse._client.propagation._get_propagated_context_key",
            "propagated attributes go through propagate_attributes (slower)",
        )
    return works


def propagation_context(base: Context, arguments: dict[str, Any]) -> Context:
    """``base`` carrying ``arguments`` (those of Langfuse's ``propagate_attributes``, already
    valid) as that function would, for every span started in it."""
    if direct_propagation_works():
        return _direct_propagation(base, arguments)
    return _public_propagation(base, arguments)


def downstream_context(base: Context, arguments: dict[str, Any]) -> Context:
    """``base`` with ``arguments`` also as W3C baggage entries, exactly as Langfuse's
    ``propagate_attributes(as_baggage=True)`` writes them (public API)."""
    token = otel_context.attach(base)
    try:
        with propagate_attributes(**arguments, as_baggage=True):
            return otel_context.get_current()
    finally:
        otel_context.detach(token)
