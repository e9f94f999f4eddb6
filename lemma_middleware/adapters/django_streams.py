"""A Django streamed response's content, recorded chunk by chunk by the Django adapter:
each chunk produced in the request's context, the root ended at the last chunk (or when
the stream fails)."""

from __future__ import annotations

import contextvars
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Protocol

from lemma_middleware.core.capture import BodyCapture
from lemma_middleware.request.trace import RequestTrace


class StreamedExchange(Protocol):
    """What the chunks need of the request's exchange (the Django adapter's)."""

    trace: RequestTrace | None
    completed_at: int | None
    response_body: BodyCapture | None

    def finish(self, error: BaseException | None = None) -> None: ...


class SyncChunks:
    """A streamed response's sync iterator, each chunk produced in the request's context."""

    def __init__(self, exchange: StreamedExchange, chunks: Iterable[bytes]) -> None:
        self._exchange = exchange
        self._iterator = iter(chunks)
        trace = exchange.trace
        assert trace is not None
        self._context = contextvars.copy_context()
        self._context.run(trace.activate)  # for the context's life: never undone

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        exchange = self._exchange
        try:
            chunk = self._context.run(next, self._iterator)
        except StopIteration:
            exchange.completed_at = time.time_ns()
            exchange.finish()
            raise
        except BaseException as error:
            exchange.finish(error)
            raise
        if exchange.response_body is not None:
            exchange.response_body.feed(chunk)
        return chunk

    def close(self) -> None:
        close = getattr(self._iterator, "close", None)
        if close is not None:
            self._context.run(close)


class AsyncChunks:
    """A streamed response's async iterator, each chunk awaited in the request's context."""

    def __init__(self, exchange: StreamedExchange, chunks: AsyncIterator[bytes]) -> None:
        self._exchange = exchange
        self._iterator = aiter(chunks)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        exchange = self._exchange
        trace = exchange.trace
        assert trace is not None
        token = trace.activate()
        try:
            chunk = await anext(self._iterator)
        except StopAsyncIteration:
            exchange.completed_at = time.time_ns()
            exchange.finish()
            raise
        except BaseException as error:
            exchange.finish(error)
            raise
        finally:
            trace.deactivate(token)
        if exchange.response_body is not None:
            exchange.response_body.feed(chunk)
        return chunk

    async def aclose(self) -> None:
        aclose = getattr(self._iterator, "aclose", None)
        if aclose is not None:
            await aclose()
