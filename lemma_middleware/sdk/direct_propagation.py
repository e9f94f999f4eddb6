"""A speed-up (deletable with its test, pointing :mod:`lemma_middleware.request.trace` at
:func:`.propagation.public_propagation`): the request's propagated attributes put in the
context directly, as Langfuse's ``propagate_attributes`` would put them, when a start-up
check finds both give the same context."""

from __future__ import annotations

from functools import cache
from typing import Any

from langfuse._client import propagation as langfuse_propagation
from opentelemetry import context as otel_context
from opentelemetry.context import Context

from lemma_middleware.core.attributes import json_text
from lemma_middleware.sdk.probe import report_missing
from lemma_middleware.sdk.propagation import public_propagation

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
        outer = public_propagation(otel_context.Context(), {"metadata": {"team": "a"}})
        works = _direct_propagation(outer, sample) == public_propagation(outer, sample)
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
    return public_propagation(base, arguments)
