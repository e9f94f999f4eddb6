"""How the middleware exports, whichever client the spans go through: batching, the timeout
of one send, the retry backlog's bound and the mask, from arguments, else the environment
(read once, when a client is built or adopted)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from lemma_middleware.core.environment import positive_number
from lemma_middleware.core.redaction import Redactor
from lemma_middleware.delivery.exporter import DEFAULT_MAX_BACKLOG_BYTES

DEFAULT_FLUSH_AT = 128
"""Spans per export batch (Langfuse's own default is 512)."""
DEFAULT_FLUSH_INTERVAL = 1.0
"""Seconds between exports at most (Langfuse's own default is 5)."""


@dataclass(frozen=True)
class ExportSettings:
    """What every client the middleware builds or adopts exports with."""

    timeout: float
    """Seconds one send may take."""
    flush_at: int
    flush_interval: float
    backlog_bytes: int
    redact_fields: frozenset[str] | None
    """Fields redacted besides the default ones; None: no mask at all."""

    @classmethod
    def read(
        cls,
        *,
        timeout: float = 5.0,
        flush_at: int | None = None,
        flush_interval: float | None = None,
        max_backlog_bytes: int | None = None,
        redact_fields: Iterable[str] | None = (),
    ) -> ExportSettings:
        """The arguments given, the environment for the others (``LANGFUSE_FLUSH_AT``,
        ``LANGFUSE_FLUSH_INTERVAL``, ``LEMMA_EXPORT_BACKLOG_MB``), else the defaults."""
        backlog_mb = positive_number(
            "LEMMA_EXPORT_BACKLOG_MB", float, DEFAULT_MAX_BACKLOG_BYTES / 2**20
        )
        return cls(
            timeout=timeout,
            flush_at=flush_at or positive_number("LANGFUSE_FLUSH_AT", int, DEFAULT_FLUSH_AT),
            flush_interval=flush_interval
            or positive_number("LANGFUSE_FLUSH_INTERVAL", float, DEFAULT_FLUSH_INTERVAL),
            backlog_bytes=max_backlog_bytes or int(backlog_mb * 2**20),
            redact_fields=None if redact_fields is None else frozenset(redact_fields),
        )

    def mask(self) -> Callable[..., Any] | None:
        """The Langfuse ``mask`` for clients: the middleware's redaction (None: no mask)."""
        return None if self.redact_fields is None else Redactor(self.redact_fields).mask

    def describe(self) -> str:
        """The batching, for start-up lines."""
        return f"in batches of up to {self.flush_at} spans at least every {self.flush_interval:g} s"

    def describe_delivery(self) -> str:
        """The mask and the backlog, for start-up lines."""
        mask = "unmasked (redact_fields=None)" if self.redact_fields is None else "masked"
        return f"{mask}, retry backlog up to {self.backlog_bytes / 2**20:g} MB per destination"
