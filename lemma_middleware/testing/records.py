"""A span as an OTLP export carries it, decoded: what the contract checker and the inbox read."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class ReceivedSpan:
    """One decoded span, with the resource attributes of its batch."""

    trace_id: str
    span_id: str
    parent_span_id: str | None
    name: str
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    resource: dict[str, Any]
    scope: str
    status_code: int
