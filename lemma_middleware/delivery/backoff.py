"""How long a sender waits before retrying a destination that failed: exponential backoff
from :data:`FIRST_BACKOFF` doubling to :data:`MAX_BACKOFF`, ±20 % jitter, or the server's
``Retry-After`` (never longer than :data:`MAX_BACKOFF`)."""

from __future__ import annotations

import random

FIRST_BACKOFF = 1.0
"""Seconds before the first retry."""
MAX_BACKOFF = 15.0
"""The longest wait between two attempts."""


class Backoff:
    """The waits of one sender: longer after each failure, back to the first after a
    success. The limits are read at each call (a test may shorten them)."""

    def __init__(self) -> None:
        self._next: float | None = None

    def succeeded(self) -> None:
        """The destination took a batch: the next failure waits the first delay again."""
        self._next = None

    def failed(self, retry_after: float | None = None) -> float:
        """Seconds to wait before the next attempt after a failure (``retry_after``: what
        the server asked for)."""
        delay = FIRST_BACKOFF if self._next is None else self._next
        self._next = min(delay * 2, MAX_BACKOFF)
        if retry_after is not None:
            delay = retry_after
        return min(delay, MAX_BACKOFF) * random.uniform(0.8, 1.2)
