"""Sampling's set-up: the gate on the tracer provider, and what a trace-id sampler already
on that provider (Langfuse's ``sample_rate``) does beside it.

Langfuse applies its ``sample_rate`` (``LANGFUSE_SAMPLE_RATE``) only to a tracer provider it
creates, as ``TraceIdRatioBased``: there it decides first, trace by trace, before the
middleware's root is recorded, so a turn it drops is gone whatever its conversation or
outcome, and the turns kept are about its rate times ``sample_rate``. The middleware says so
at start-up. On a provider the middleware created (or yours without such a sampler),
``LANGFUSE_SAMPLE_RATE`` does nothing, and the middleware says that too.
"""

from __future__ import annotations

import re

from opentelemetry.sdk.trace import TracerProvider

from lemma_middleware.core.environment import variable
from lemma_middleware.core.logs import announce, logger
from lemma_middleware.core.sampling import SamplingRules
from lemma_middleware.export.processors import gate_sampling

_RATIO = re.compile(r"TraceIdRatioBased\{([0-9.eE+-]+)\}")


def trace_id_ratio(provider: TracerProvider | None) -> float | None:
    """The rate of the trace-id ratio sampler ``provider`` samples with (at its root), or
    None (read from the sampler's public description)."""
    sampler = getattr(provider, "sampler", None)
    if sampler is None:
        return None
    found = _RATIO.search(sampler.get_description())
    return float(found.group(1)) if found else None


def start_sampling(provider: TracerProvider | None, rules: SamplingRules) -> SamplingRules:
    """Gate ``provider``'s export processors when ``rules`` drop anything, and say what
    sampling does (with any trace-id sampler already there); the rules in force (all turns
    kept when the provider cannot be gated)."""
    ratio = trace_id_ratio(provider)
    langfuse_rate = variable("LANGFUSE_SAMPLE_RATE")
    if ratio is not None and ratio < 1.0:
        logger.warning(
            "lemma_middleware: the tracer provider samples traces by trace id at %s "
            "(Langfuse's sample_rate / LANGFUSE_SAMPLE_RATE, or OTEL_TRACES_SAMPLER). It "
            "decides first, turn by turn: conversations arrive with holes and failed turns "
            "are dropped too; about %.3g of turns are kept. Sample with the middleware's "
            "sample_rate= (LEMMA_SAMPLE_RATE) alone: Langfuse(sample_rate=1.0), "
            "LANGFUSE_SAMPLE_RATE unset",
            ratio,
            ratio * rules.rate,
        )
    elif langfuse_rate is not None and langfuse_rate.strip() not in ("1", "1.0"):
        logger.warning(
            "lemma_middleware: LANGFUSE_SAMPLE_RATE=%s is not applied (Langfuse applies it "
            "only to a tracer provider it creates); sample whole conversations with the "
            "middleware's sample_rate= or LEMMA_SAMPLE_RATE",
            langfuse_rate,
        )
    if not rules.active:
        return rules
    if provider is None or not gate_sampling(provider):
        logger.error(
            "lemma_middleware: sampling is off, every turn is kept: the tracer provider's "
            "export processors cannot be gated (an OpenTelemetry or Langfuse version this "
            "middleware does not know)"
        )
        return SamplingRules()
    kept = [
        "failed turns" if rules.keep_errors else "",
        f"turns of {rules.keep_slow:g} s or more" if rules.keep_slow is not None else "",
    ]
    also = " and ".join(k for k in kept if k)
    announce(
        f"lemma_middleware: sampling keeps {rules.rate:.4g} of conversations (by thread id, "
        f"else trace id)" + (f", and every one's {also}" if also else "")
    )
    return rules
