"""A sampled turn's spans, from start to decision: children follow their root.

Each traced request, when sampling is on, gets a :class:`TurnSampling` keyed by its trace
id. A :class:`SamplingGate` stands in front of the export processors (every Langfuse
processor and destination processor of the provider) and asks it, span by span:

* kept: the span goes on at once;
* dropped: the span is discarded (no processing, encoding or export);
* not decided yet (sampled out but it may fail or be slow, or no thread id known yet): the
  span is held, until the root ends and the turn is kept (every held span goes on) or
  dropped (they are discarded).

Holding is bounded: :data:`HOLD_SPANS_PER_TURN` spans per turn and
:data:`HOLD_BYTES_PER_PROCESS` (estimated from the spans' attribute text) for all turns. A
turn with no thread id that reaches a bound is decided then, by its trace id; a sampled-out
turn that reaches one stops holding: its held spans are dropped (logged once, counted), and
if it is kept after all its root says how many children it lost. Spans that end after
their turn was dropped (a background task's) are recognised for the last
:data:`RECENTLY_DROPPED` dropped turns.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor

from lemma_middleware.core.logs import contained, log_once
from lemma_middleware.core.sampling import KeptBecause, SamplingRules, trace_kept

HOLD_SPANS_PER_TURN = 1_000
"""Spans one undecided turn may hold."""
HOLD_BYTES_PER_PROCESS = 32 * 1024 * 1024
"""Estimated bytes all undecided turns of the process may hold together."""
RECENTLY_DROPPED = 10_000
"""Dropped turns whose late spans are still recognised (and dropped)."""
_SPAN_OVERHEAD = 600
"""Estimated bytes of a held span beyond its attributes' text."""


@dataclass
class SamplingStats:
    """Turns kept and dropped by sampling since start-up, and the spans it held."""

    turns_kept: int = 0
    turns_dropped: int = 0
    kept_because: dict[str, int] = field(default_factory=dict)
    """Kept turns by :class:`~lemma_middleware.core.sampling.KeptBecause` value."""
    spans_dropped: int = 0
    """Spans of dropped turns (never processed or exported)."""
    spans_dropped_hold_full: int = 0
    """Spans of sampled-out turns dropped because a hold bound was reached (included in
    ``spans_dropped``)."""
    held_spans: int = 0
    """Spans held now, waiting for their turn's decision."""
    held_bytes: int = 0
    """Their estimated size."""


class _State(Enum):
    UNDECIDED = "undecided"
    """No thread id yet: held; the trace id decides at the end unless one is bound."""
    SAMPLED_OUT = "sampled out"
    """Held: kept only if the turn fails or is slow."""
    KEPT = "kept"
    DROPPED = "dropped"


_lock = threading.Lock()
_turns: dict[int, TurnSampling] = {}
_recently_dropped: OrderedDict[int, None] = OrderedDict()
_stats = SamplingStats()


def sampling_stats() -> SamplingStats:
    """A copy of the process's sampling counters."""
    with _lock:
        return replace(_stats, kept_because=dict(_stats.kept_because))


def _estimated_size(span: ReadableSpan) -> int:
    attributes = span.attributes or {}
    return _SPAN_OVERHEAD + sum(len(v) for v in attributes.values() if isinstance(v, str))


class TurnSampling:
    """The sampling state of one traced request (its trace id's spans)."""

    __slots__ = ("children_dropped", "finished", "held", "held_bytes", "holding", "reason",
                 "rules", "state", "trace_id")  # fmt: skip

    def __init__(
        self, rules: SamplingRules, trace_id: int, thread_id: str | None, upstream: bool | None
    ) -> None:
        self.rules = rules
        self.trace_id = trace_id
        self.held: list[tuple[SamplingGate, ReadableSpan]] = []
        self.held_bytes = 0
        self.holding = True
        self.finished = False
        """Whether :meth:`finish` decided the turn."""
        self.children_dropped = 0
        """Spans lost to a hold bound (recorded on the root if the turn is kept)."""
        self.reason = rules.head(thread_id, trace_id, upstream)
        if upstream is None and thread_id is None:
            self.state = _State.UNDECIDED
        elif self.reason is not None:
            self.state = _State.KEPT
        else:
            self.state = _State.SAMPLED_OUT if rules.promotes else _State.DROPPED
        if _recently_dropped:  # a new turn of a trace seen before (a continued upstream trace)
            with _lock:
                _recently_dropped.pop(trace_id, None)
        if self.state is _State.DROPPED:
            _forget_dropped(trace_id)
        elif self.state is not _State.KEPT:
            with _lock:
                _turns[trace_id] = self

    @property
    def head_kept(self) -> bool:
        """What a call to another service is told (its ``traceparent`` sampled flag): kept
        so far, or not decided yet and kept by the trace id."""
        if self.state is _State.UNDECIDED:
            return trace_kept(self.trace_id, self.rules.rate)
        return self.state is _State.KEPT

    def thread_known(self, thread_id: str) -> None:
        """A thread id was bound during the request: it decides a turn that had none."""
        if self.state is not _State.UNDECIDED:
            return
        self.reason = self.rules.head(thread_id, self.trace_id, None)
        if self.reason is not None:
            self._keep()
        elif self.rules.promotes:
            self.state = _State.SAMPLED_OUT
        else:
            self._drop()

    def finish(self, failed: bool, seconds: float) -> KeptBecause | None:
        """Decide the turn as its root ends: why it is kept (its held spans go on), or None
        (they are dropped, and so is the root)."""
        self.finished = True
        if self.state is _State.UNDECIDED:
            self.reason = self.rules.head(None, self.trace_id, None)
            self.state = _State.KEPT if self.reason is not None else _State.SAMPLED_OUT
        if self.state is _State.SAMPLED_OUT:
            self.reason = self.rules.promoted(failed, seconds)
        if self.reason is None:
            self._drop()
        else:
            self._keep()
        with _lock:
            if self.reason is None:
                _stats.turns_dropped += 1
            else:
                _stats.turns_kept += 1
                key = str(self.reason)
                _stats.kept_because[key] = _stats.kept_because.get(key, 0) + 1
        return self.reason

    def _keep(self) -> None:
        with _lock:
            self.state = _State.KEPT
            _turns.pop(self.trace_id, None)
            held = self._take_held()
        for gate, span in held:
            gate.forward(span)

    def _drop(self) -> None:
        """Drop the turn and its held spans."""
        with _lock:
            self.state = _State.DROPPED
            _turns.pop(self.trace_id, None)
            held = self._take_held()
            _stats.spans_dropped += len(held)
        _forget_dropped(self.trace_id)
        _forget(held)

    def _take_held(self) -> list[tuple[SamplingGate, ReadableSpan]]:  # under _lock
        held, self.held = self.held, []
        _stats.held_spans -= len(held)
        _stats.held_bytes -= self.held_bytes
        self.held_bytes = 0
        return held

    def admit(self, gate: SamplingGate, span: ReadableSpan) -> bool:
        """Whether ``span`` goes on now; if not, it is held or dropped."""
        size = _estimated_size(span)
        with _lock:
            state = self.state
            if state is _State.KEPT:
                return True
            dropped = state is _State.DROPPED or not self.holding
            if dropped:
                _stats.spans_dropped += 1
                if state is not _State.DROPPED:  # the turn stopped holding: a bound
                    _stats.spans_dropped_hold_full += 1
                    self.children_dropped += 1
            elif (
                len(self.held) < HOLD_SPANS_PER_TURN
                and _stats.held_bytes + size <= HOLD_BYTES_PER_PROCESS
            ):
                self.held.append((gate, span))
                self.held_bytes += size
                _stats.held_spans += 1
                _stats.held_bytes += size
                return False
        if dropped:
            gate.forget(span)
            return False
        return self._hold_full(gate, span)

    def _hold_full(self, gate: SamplingGate, span: ReadableSpan) -> bool:
        """A bound is reached: decide an undecided turn now, by its trace id; a sampled-out
        one stops holding and drops what it held."""
        if self.state is _State.UNDECIDED:
            self.reason = self.rules.head(None, self.trace_id, None)
            if self.reason is not None:
                self._keep()
                return True
        with _lock:
            if self.state is _State.KEPT:  # decided meanwhile, in another thread
                return True
            if self.state is _State.UNDECIDED:
                self.state = _State.SAMPLED_OUT
            self.holding = False
            held = self._take_held()
            lost = len(held) + 1
            _stats.spans_dropped += lost
            _stats.spans_dropped_hold_full += lost
            self.children_dropped += lost
        _forget([*held, (gate, span)])
        log_once(
            "sampling-hold-full",
            logging.WARNING,
            "lemma_middleware: a sampled-out turn reached the hold bound (%d spans per turn, "
            "%d MB for the process); its spans are dropped, and if it fails or is slow its "
            "root is kept without them (counted in export_stats().sampling; logged once)",
            HOLD_SPANS_PER_TURN,
            HOLD_BYTES_PER_PROCESS // (1024 * 1024),
        )
        return False


def _forget(held: list[tuple[SamplingGate, ReadableSpan]]) -> None:
    for gate, span in held:
        gate.forget(span)


def _forget_dropped(trace_id: int) -> None:
    with _lock:
        _recently_dropped[trace_id] = None
        if len(_recently_dropped) > RECENTLY_DROPPED:
            _recently_dropped.popitem(last=False)


class SamplingGate(SpanProcessor):
    """Stands in for the export processors of a provider (``inner``, in their order): spans
    of turns sampling holds or drops do not reach them until (unless) the turn is kept.
    ``exported``: whether any of them would export a span (others are not held). The
    provider surgery in :mod:`lemma_middleware.sdk.spans` knows a gate by ``inner`` and
    ``passes``."""

    def __init__(
        self,
        inner: Sequence[SpanProcessor],
        exported: Callable[[ReadableSpan], bool],
        forget: Callable[[ReadableSpan], None],
    ) -> None:
        self.inner = tuple(inner)
        self.exported = exported
        self.forget = forget
        """Lets the export processors forget a span they saw start and will never see end."""

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        for processor in self.inner:
            processor.on_start(span, parent_context=parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        if self.passes(span):
            self.forward(span)

    def passes(self, span: ReadableSpan) -> bool:
        """Whether ``span`` goes on to the export processors now (if not, it is held or
        dropped)."""
        if not (_turns or _recently_dropped):
            return True
        context = span.context
        trace_id = context.trace_id if context is not None else 0
        turn = _turns.get(trace_id)
        if turn is not None:
            with contained("sampling", "the span is exported", level=logging.DEBUG):
                if self.exported(span):
                    return turn.admit(self, span)
                self.forget(span)
                return False
            return True
        if trace_id in _recently_dropped:
            with _lock:
                _stats.spans_dropped += 1
            self.forget(span)
            return False
        return True

    def forward(self, span: ReadableSpan) -> None:
        """Pass ``span`` on to the export processors."""
        for processor in self.inner:
            processor.on_end(span)

    def shutdown(self) -> None:
        for processor in self.inner:
            processor.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        results = [processor.force_flush(timeout_millis) for processor in self.inner]
        return all(results)
