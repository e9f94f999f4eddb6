"""A streamed response's chunks as the adapters record them (WSGI's iterable, Django's sync
and async streaming content): each chunk fed to the response body's capture, the root ended
at the last chunk (the response complete) or when producing one fails."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from lemma_middleware.core.capture import BodyCapture
from lemma_middleware.request.trace import RequestTrace


class StreamedExchange(Protocol):
    """What the chunks need of the request's exchange."""

    trace: RequestTrace | None
    completed_at: int | None
    response_body: BodyCapture | None

    def finish(self, error: BaseException | None = None) -> None: ...


def chunk_sent(exchange: StreamedExchange, chunk: bytes) -> bytes:
    """Record ``chunk`` (returned) as part of the response body."""
    if exchange.response_body is not None:
        exchange.response_body.feed(chunk)
    return chunk


def stream_stopped(exchange: StreamedExchange, error: BaseException | None = None) -> None:
    """The stream ended: complete when ``error`` is None (its last chunk was sent), failed
    otherwise; the trace ends either way."""
    if error is None:
        exchange.completed_at = time.time_ns()
    exchange.finish(error)


def next_chunk(exchange: StreamedExchange, produce: Callable[[], bytes]) -> bytes:
    """The chunk ``produce()`` gives, recorded; at its ``StopIteration`` or error the trace
    ends (:func:`stream_stopped`) and the exception goes on."""
    try:
        chunk = produce()
    except StopIteration:
        stream_stopped(exchange)
        raise
    except BaseException as error:
        stream_stopped(exchange, error)
        raise
    return chunk_sent(exchange, chunk)
