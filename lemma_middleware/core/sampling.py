"""Conversation sampling: which turns are kept (framework-neutral rules).

A conversation is kept or dropped whole: the decision is a pure function of its (normalised)
thread id and the rate, the same in every process, service and restart::

    h = int.from_bytes(sha256(thread_id.encode("utf-8")).digest()[:8], "big")
    kept = h < round(sample_rate * 2**64)

A request without a thread id is decided by its trace id the way OpenTelemetry's
``TraceIdRatioBased`` sampler decides it (the trace id's low 64 bits below the same bound),
so a trace continued from a service sampled that way gets the same answer. A trusted
upstream's ``traceparent`` sampled flag comes first: a called service follows its caller.
A turn sampled out is still kept when it fails (``keep_errors``) or is slow (``keep_slow``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import StrEnum

_SCALE = 1 << 64


def rate_bound(rate: float) -> int:
    """The 64-bit bound below which a hash is kept at ``rate`` (OpenTelemetry's)."""
    return round(rate * _SCALE)


def conversation_kept(thread_id: str, rate: float) -> bool:
    """Whether the conversation ``thread_id`` is kept at ``rate`` (see the module)."""
    digest = hashlib.sha256(thread_id.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") < rate_bound(rate)


def trace_kept(trace_id: int, rate: float) -> bool:
    """Whether a request with no thread id, trace ``trace_id``, is kept at ``rate``: as
    OpenTelemetry's ``TraceIdRatioBased(rate)`` decides."""
    return trace_id & (_SCALE - 1) < rate_bound(rate)


class KeptBecause(StrEnum):
    """Why a turn was kept: recorded on its root as ``sampling.kept_because`` metadata."""

    CONVERSATION = "conversation"
    """Its thread id's hash is under the rate."""
    TRACE_ID = "trace_id"
    """No thread id: its trace id is under the rate."""
    UPSTREAM = "upstream"
    """A trusted caller's ``traceparent`` said sampled."""
    ERROR = "error"
    """Sampled out, kept because it failed (exception, 5xx, no response)."""
    SLOW = "slow"
    """Sampled out, kept because it took at least ``keep_slow`` seconds."""


@dataclass(frozen=True)
class SamplingRules:
    """The sampling options, compiled: ``rate`` of conversations kept, and the turns kept
    whatever their conversation."""

    rate: float = 1.0
    keep_errors: bool = True
    keep_slow: float | None = None

    @property
    def active(self) -> bool:
        """Whether anything is ever dropped (``rate`` below 1)."""
        return self.rate < 1.0

    @property
    def promotes(self) -> bool:
        """Whether a turn sampled out may still be kept when it ends (then its spans are
        held until it does)."""
        return self.keep_errors or self.keep_slow is not None

    def head(
        self, thread_id: str | None, trace_id: int, upstream_sampled: bool | None
    ) -> KeptBecause | None:
        """Why the turn is kept as it starts, or None when it is sampled out (by the
        upstream's flag, else the thread id, else the trace id)."""
        if upstream_sampled is not None:
            return KeptBecause.UPSTREAM if upstream_sampled else None
        if thread_id is not None:
            return KeptBecause.CONVERSATION if conversation_kept(thread_id, self.rate) else None
        return KeptBecause.TRACE_ID if trace_kept(trace_id, self.rate) else None

    def dropped_at_start(self, thread_id: str | None, upstream_sampled: bool | None) -> bool:
        """Whether a turn is dropped whatever happens while it runs: sampled out by its
        upstream's flag or its thread id, and no turn is kept for failing or being slow.
        (With neither, a thread id bound later may still decide it.)"""
        if not self.active or self.promotes:
            return False
        if upstream_sampled is None and thread_id is None:
            return False
        return self.head(thread_id, 0, upstream_sampled) is None

    def promoted(self, failed: bool, seconds: float) -> KeptBecause | None:
        """Why a turn sampled out is kept after all when it ends, or None."""
        if failed and self.keep_errors:
            return KeptBecause.ERROR
        if self.keep_slow is not None and seconds >= self.keep_slow:
            return KeptBecause.SLOW
        return None
