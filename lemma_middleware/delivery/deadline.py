"""The moment every send must be done by, while bounded flushes or the process exit run.

Each bounded flush (:func:`deadline`) adds its own end while it runs and takes it away when
it ends, in whatever order flushes in several threads end; the process exit sets one end
for good (:meth:`Deadline.start_exit`). The deadline is the earliest of those, and there is
none while no bounded flush runs and the process is not exiting.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator


class Deadline:
    """The earliest end of the bounded flushes running now and of the exit, if any."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._flush_ends: list[float] = []
        self._exit_end: float | None = None

    @property
    def at(self) -> float | None:
        """``time.monotonic()`` of the deadline; None when nothing bounds sending."""
        ends = self._flush_ends if self._exit_end is None else [*self._flush_ends, self._exit_end]
        return min(ends, default=None)

    @contextlib.contextmanager
    def within(self, seconds: float) -> Iterator[None]:
        """Bound every send to ``seconds`` from now while the block runs."""
        end = time.monotonic() + seconds
        with self._lock:
            self._flush_ends.append(end)
        try:
            yield
        finally:
            with self._lock:
                self._flush_ends.remove(end)

    def start_exit(self, seconds: float) -> None:
        """The process is exiting: bound every send to ``seconds`` from now, for good."""
        self._exit_end = time.monotonic() + seconds

    def remaining(self, default: float) -> float:
        """Seconds left before the deadline (``default`` when there is none)."""
        at = self.at
        return default if at is None else max(at - time.monotonic(), 0.0)

    def cap(self, seconds: float) -> float:
        """``seconds``, but no later than the deadline (at least 1 ms)."""
        return max(min(seconds, self.remaining(seconds)), 0.001)

    def passed(self) -> bool:
        """Whether the deadline is reached (senders then wait until it is lifted)."""
        at = self.at
        return at is not None and time.monotonic() >= at


DEADLINE = Deadline()
"""The process's deadline, read by every destination's sender."""


def deadline(seconds: float) -> contextlib.AbstractContextManager[None]:
    """Within the block, every send (and :func:`~.exit.wait_for_backlogs`) ends ``seconds``
    from now at the latest."""
    return DEADLINE.within(seconds)
