"""A Django streamed response's content, recorded chunk by chunk by the Django adapter:
each chunk produced in the request's context, the root ended at the last chunk (or when
the stream fails), as :mod:`lemma_middleware.adapters.chunks` records any stream."""

from __future__ import annotations

import contextvars
from collections.abc import AsyncIterator, Iterable, Iterator
from functools import partial

from lemma_middleware.adapters.chunks import (
    StreamedExchange,
    chunk_sent,
    next_chunk,
    stream_stopped,
)


class SyncChunks:
    """A streamed response's sync iterator, each chunk produced in the request's context."""

    def __init__(self, exchange: StreamedExchange, chunks: Iterable[bytes]) -> None:
        self._exchange = exchange
        self._iterator = iter(chunks)
        trace = exchange.trace
        assert trace is not None
        self._context = contextvars.copy_context()
        self._context.run(trace.activate)  # for the context's life: never undone
        self._produce = partial(self._context.run, next, self._iterator)

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        return next_chunk(self._exchange, self._produce)

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
            stream_stopped(exchange)
            raise
        except BaseException as error:
            stream_stopped(exchange, error)
            raise
        finally:
            trace.deactivate(token)
        return chunk_sent(exchange, chunk)

    async def aclose(self) -> None:
        aclose = getattr(self._iterator, "aclose", None)
        if aclose is not None:
            await aclose()
