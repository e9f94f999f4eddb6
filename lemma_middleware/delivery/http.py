"""How a destination is sent a batch: the protocol every sender follows, and the OTLP/HTTP
POST of a gzipped protobuf payload with what its answer means for delivery."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from email.utils import parsedate_to_datetime
from typing import Any, NamedTuple, Protocol

import requests
from opentelemetry.sdk.trace import ReadableSpan

from lemma_middleware.delivery.encoding import encode_batch

_USER_AGENT = "lemma-middleware OTLP/HTTP"


class Answer(NamedTuple):
    """What one POST achieved: ``delivered``, or ``retry`` (with the server's requested
    delay, if any), or neither (rejected); ``detail`` says why."""

    delivered: bool
    retry: bool
    detail: str
    retry_after: float | None = None


class Sender(Protocol):
    """What a :class:`~lemma_middleware.delivery.exporter.DeliveryExporter` sends through."""

    endpoint: str
    """Where it sends (for messages)."""

    def prepare(self, spans: Sequence[ReadableSpan]) -> tuple[Any, int]:
        """What is kept in the backlog for ``spans``, and its size in bytes (the bound)."""
        ...

    def send(self, payload: Any, timeout: float) -> Answer:
        """One delivery attempt of a prepared payload."""
        ...

    def close(self) -> None:
        """No more sends."""
        ...


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        return max(parsedate_to_datetime(value).timestamp() - time.time(), 0.0)
    except (TypeError, ValueError):
        return None


class OTLPHTTPSender:
    """POSTs gzipped OTLP protobuf payloads to one endpoint and classifies the answer."""

    def __init__(self, endpoint: str, headers: Mapping[str, str]) -> None:
        self.endpoint = endpoint
        self.session = requests.Session()
        self.session.headers.update(
            {
                "Content-Type": "application/x-protobuf",
                "Content-Encoding": "gzip",
                "User-Agent": _USER_AGENT,
                **headers,
            }
        )

    def prepare(self, spans: Sequence[ReadableSpan]) -> tuple[bytes, int]:
        """The gzipped OTLP protobuf request for ``spans`` (its compressed size counts)."""
        payload = encode_batch(spans)
        return payload, len(payload)

    def send(self, payload: bytes, timeout: float) -> Answer:
        """One delivery attempt (a stale pooled connection is retried once at once)."""
        deadline = time.monotonic() + timeout
        try:
            try:
                response = self.session.post(self.endpoint, data=payload, timeout=timeout)
            except requests.ConnectionError:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise
                response = self.session.post(self.endpoint, data=payload, timeout=remaining)
        except requests.Timeout:
            return Answer(False, True, f"no answer within {timeout:.1f} s")
        except requests.RequestException as error:
            return Answer(False, True, f"connection failed ({type(error).__name__})")
        status = response.status_code
        response.close()
        if 200 <= status < 300:
            return Answer(True, False, f"HTTP {status}")
        retry = status == 429 or status >= 500
        detail = f"HTTP {status}"
        return Answer(False, retry, detail, _retry_after(response.headers.get("Retry-After")))

    def close(self) -> None:
        self.session.close()
