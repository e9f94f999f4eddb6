"""The bounded process exit.

:func:`set_exit_timeout` (the middleware's ``flush_timeout``) bounds the whole exit: an
``atexit`` handler, registered after the Langfuse client's and the tracer provider's own so
it runs before them, flushes the providers and waits for the backlogs until the deadline
(every send in flight is cut at it), then closes every destination (what is left is counted
and logged). Langfuse's and OpenTelemetry's exit handlers then find nothing left to wait
for. A flush bounded by :func:`~lemma_middleware.delivery.deadline.deadline` (lifespan
shutdown) waits the same way through :func:`wait_for_backlogs`.
"""

from __future__ import annotations

import atexit
import time
import weakref

from opentelemetry.sdk.trace import TracerProvider

from lemma_middleware.core.logs import contained, logger
from lemma_middleware.delivery.deadline import DEADLINE
from lemma_middleware.delivery.exporter import exporters

DEFAULT_EXIT_TIMEOUT = 5.0
"""Seconds the process exit may spend delivering what is left (``flush_timeout``)."""


_providers: weakref.WeakSet[TracerProvider] = weakref.WeakSet()
_exit_timeout: float | None = None


def set_exit_timeout(seconds: float) -> None:
    """Let the process exit spend at most ``seconds`` delivering traces (the largest value
    any middleware of the process asked for)."""
    global _exit_timeout
    _exit_timeout = max(seconds, _exit_timeout or 0.0)


def wait_for_backlogs() -> bool:
    """Wait until every destination's backlog is delivered, or the current deadline; log
    what is still waiting then (kept for retry while the process runs)."""
    delivered = True
    for exporter in list(exporters):
        if not exporter.force_flush(int(DEADLINE.remaining(30.0) * 1000)):
            delivered = False
            logger.warning(
                "lemma_middleware: %s: %d spans not delivered within flush_timeout (%s); "
                "kept for retry while the process runs",
                exporter.name,
                exporter.stats.backlog_spans,
                exporter.state(),
            )
    return delivered


def watch_provider(provider: TracerProvider) -> None:
    """Flush ``provider`` at exit within the budget, before Langfuse's and OpenTelemetry's
    own exit handlers (registered earlier, so run later) get to it."""
    _providers.add(provider)
    atexit.unregister(_deliver_at_exit)
    atexit.register(_deliver_at_exit)


def _deliver_at_exit() -> None:
    """Deliver what is pending within the exit timeout, then close every destination, so
    the exit handlers that run after this one have nothing left to wait for (the seconds
    it took are logged at DEBUG)."""
    timeout = _exit_timeout or DEFAULT_EXIT_TIMEOUT
    started = time.monotonic()
    DEADLINE.start_exit(timeout)
    try:
        with contained("the flush at exit", "what is left is dropped"):
            for provider in list(_providers):
                provider.force_flush(int(DEADLINE.remaining(0.0) * 1000))
            wait_for_backlogs()
    finally:
        for exporter in list(exporters):
            exporter.close()
        logger.debug(
            "lemma_middleware: exit: delivery took %.2f s (flush_timeout %.1f s)",
            time.monotonic() - started,
            timeout,
        )
