"""WSGI middleware: the same trace as the ASGI one, for Flask, Django or any WSGI app."""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterable, Iterator, Mapping
from functools import partial
from types import TracebackType
from typing import Any, ClassVar, Protocol, Unpack

from lemma_middleware.adapters.chunks import next_chunk
from lemma_middleware.adapters.tracing import Tracing
from lemma_middleware.core.capture import BodyCapture
from lemma_middleware.core.identity import user_id_from_plain_user
from lemma_middleware.core.logs import UNTRACED, contained, logger
from lemma_middleware.core.options import Options
from lemma_middleware.core.recording import Exchange, RequestInfo
from lemma_middleware.request.trace import RequestTrace

Environ = dict[str, Any]


ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]


StartResponse = Callable[..., Callable[[bytes], object]]


WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]


class WSGIFramework(Protocol):
    """What the middleware asks of the web framework behind a WSGI app (Flask's is in
    :mod:`lemma_middleware.flask_integration`)."""

    def auth_user(self, environ: Environ) -> str | None:
        """The authenticated user's id, while the framework's request context is active."""

    def route(self) -> str | None:
        """The matched route template, while the framework's request context is active."""


class PlainWSGI:
    """Any WSGI app: the user is ``REMOTE_USER``; no route templates."""

    def auth_user(self, environ: Environ) -> str | None:
        return user_id_from_plain_user(environ.get("REMOTE_USER"))

    def route(self) -> str | None:
        return None


FrameworkDetector = Callable[[WSGIApp, Tracing], "WSGIFramework | None"]


_framework_detectors: list[FrameworkDetector] = []


def register_framework(detector: FrameworkDetector) -> FrameworkDetector:
    """Register ``detector``: given the wrapped app, it returns that framework's support
    (installing any hooks it needs), or None when the app is not of its framework."""
    _framework_detectors.append(detector)
    return detector


def framework_of(app: WSGIApp, tracing: Tracing) -> WSGIFramework:
    """The support for the framework of ``app``; :class:`PlainWSGI` when none is known."""
    for detect in _framework_detectors:
        framework = detect(app, tracing)
        if framework is not None:
            return framework
    return PlainWSGI()


class LemmaWSGIMiddleware:
    """Traces every request to a WSGI app as one Lemma/Langfuse trace.

    ``app.wsgi_app = LemmaWSGIMiddleware(app.wsgi_app, agent_name="support-agent")``; options
    are those of :meth:`lemma_middleware.options.TracingOptions.compile` (see the README).
    The root ends when the response iterable is exhausted or closed, whichever comes first;
    the propagated attributes are active while the app runs and while each chunk is
    produced. The framework behind the app (Flask: :mod:`lemma_middleware.flask_integration`)
    supplies the user, the route and the exceptions it turns into 500 responses.
    """

    def __init__(self, app: WSGIApp, **options: Unpack[Options]) -> None:
        self.app = app
        self.tracing = Tracing(**options)
        self.framework = framework_of(app, self.tracing) if self.tracing.enabled else PlainWSGI()

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        tracing = self.tracing
        method = environ.get("REQUEST_METHOD", "GET")
        path = environ.get("PATH_INFO", "") or "/"
        if not tracing.enabled or tracing.is_excluded(method, path):
            return self.app(environ, start_response)
        exchange = None
        with contained("starting the trace", UNTRACED):
            exchange = TracedWSGIExchange(tracing, self.framework, environ, method, path)
        if exchange is None or exchange.trace is None:
            return self.app(environ, start_response)
        return exchange.run(self.app, start_response)


class EnvironHeaders(Mapping[str, str]):
    """Request headers read from the WSGI environ on demand, by lower-case name."""

    __slots__ = ("_environ",)

    def __init__(self, environ: Environ) -> None:
        self._environ = environ

    _keys: ClassVar[dict[str, str]] = {}  # header name -> environ key, for every request

    @classmethod
    def _key(cls, name: str) -> str:
        key = cls._keys.get(name)
        if key is None:
            key = name.upper().replace("-", "_")
            if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                key = "HTTP_" + key
            if len(cls._keys) < 1024:
                cls._keys[name] = key
        return key

    def get(self, name: str, default: Any = None) -> Any:
        value = self._environ.get(self._key(name))
        return value if isinstance(value, str) else default

    def __getitem__(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise KeyError(name)
        return str(value)

    def __iter__(self) -> Iterator[str]:
        for key in self._environ:
            if key.startswith("HTTP_"):
                yield key[5:].replace("_", "-").lower()
            elif key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                yield key.replace("_", "-").lower()

    def __len__(self) -> int:
        return sum(1 for _ in self)


class TeeInput:
    """Wraps ``wsgi.input``: the app reads every byte as before, a bounded copy is kept."""

    def __init__(self, stream: Any, capture: BodyCapture) -> None:
        self._stream = stream
        self._capture = capture

    def read(self, *args: Any) -> bytes:
        data: bytes = self._stream.read(*args)
        self._capture.feed(data)
        return data

    def readinto(self, buffer: Any) -> int:
        readinto = getattr(self._stream, "readinto", None)
        if readinto is not None:
            size: int = readinto(buffer) or 0
        else:  # e.g. gunicorn's body: read and copy
            data = self._stream.read(len(buffer))
            size = len(data)
            buffer[:size] = data
        if size:
            self._capture.feed(memoryview(buffer)[:size])
        return size

    def readline(self, *args: Any) -> bytes:
        data: bytes = self._stream.readline(*args)
        self._capture.feed(data)
        return data

    def readlines(self, *args: Any) -> list[bytes]:
        lines: list[bytes] = self._stream.readlines(*args)
        for line in lines:
            self._capture.feed(line)
        return lines

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        data = self.readline()
        if not data:
            raise StopIteration
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class TracedWSGIExchange(Exchange):
    """One traced WSGI request: tees the input, wraps start_response and the iterable."""

    __slots__ = ("environ", "framework", "trace", "trace_id_header")

    def __init__(
        self,
        tracing: Tracing,
        framework: WSGIFramework,
        environ: Environ,
        method: str,
        path: str,
    ) -> None:
        super().__init__(tracing.options)
        self.environ = environ
        self.framework = framework
        self.trace_id_header = tracing.options.trace_id_header
        if self.request_body is not None and "wsgi.input" in environ:
            environ["wsgi.input"] = TeeInput(environ["wsgi.input"], self.request_body)
        self.trace: RequestTrace | None = tracing.start(
            RequestInfo(
                method=method,
                path=path,
                query_string=environ.get("QUERY_STRING", ""),
                headers=EnvironHeaders(environ),
                request=environ,
                auth_user=lambda: framework.auth_user(environ),
                client=environ.get("REMOTE_ADDR"),
            )
        )

    def run(self, app: WSGIApp, start_response: StartResponse) -> Iterable[bytes]:
        trace = self.trace
        assert trace is not None
        token = trace.activate()
        try:
            result = app(self.environ, self._start_response(start_response))
        except BaseException as error:
            trace.deactivate(token)
            self.finish(error)
            trace.release()
            raise
        trace.deactivate(token)
        return TracedBody(self, result)

    def finish(self, error: BaseException | None = None) -> None:
        """End the trace; a failed request's unread body is read first (bounded by the
        capture limit; the app is done with ``wsgi.input``)."""
        trace = self.trace
        assert trace is not None
        if trace.finished:
            return
        wanted = self.unread_body_wanted(trace.request.headers, error)
        stream = self.environ.get("wsgi.input")
        if wanted and isinstance(stream, TeeInput):
            try:
                stream.read(wanted)
            except Exception:  # a client gone, a server's stream: record without it
                logger.debug("lemma_middleware: unread request body not read", exc_info=True)
        trace.finish(self, error)

    def _start_response(self, start_response: StartResponse) -> StartResponse:
        def traced_start_response(
            status: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = None
        ) -> Callable[[bytes], object]:
            with contained("reading the response's status", "the response is sent as it is"):
                self._on_start_response(status, headers)
                if self.trace is not None and self.trace_id_header is not None:
                    name = self.trace_id_header.decode("latin-1")
                    headers = [*headers, (name, self.trace.trace_id)]
            if exc_info is not None:
                return start_response(status, headers, exc_info)
            return start_response(status, headers)

        return traced_start_response

    def _on_start_response(self, status: str, headers: list[tuple[str, str]]) -> None:
        self.response_started(int(status.split(" ", 1)[0]), headers)
        if self.trace is not None:
            # The framework's request context is still active here, and ends right after.
            self.trace.sync_auth_user(last_chance=True)
        self.route = self.framework.route()


class TracedBody:
    """The app's response iterable, iterated inside the request's context.

    Each chunk is produced inside one context of its own (a copy of the server thread's,
    with the request's trace current), entered per chunk with ``Context.run``: the
    generator sees the trace whichever thread asks for the next chunk, nothing leaks into
    the server's context, and a chunk costs no attach and detach. The root ends when the
    iterable is exhausted, or in ``close()`` (idempotent) when the server stops early,
    e.g. because the client went away.
    """

    def __init__(self, exchange: TracedWSGIExchange, result: Iterable[bytes]) -> None:
        self._exchange = exchange
        self._result = result
        self._produce: Callable[[], bytes] | None = None
        """The next chunk, in the request's context (made at the first chunk)."""
        self._context: contextvars.Context | None = None

    def __iter__(self) -> Iterator[bytes]:
        return self

    def _in_context(self) -> contextvars.Context:
        if self._context is None:
            trace = self._exchange.trace
            assert trace is not None
            self._context = contextvars.copy_context()
            self._context.run(trace.activate)  # for the context's life: never undone
        return self._context

    def __next__(self) -> bytes:
        if self._produce is None:
            self._produce = partial(self._in_context().run, next, iter(self._result))
        return next_chunk(self._exchange, self._produce)

    def close(self) -> None:
        exchange = self._exchange
        trace = exchange.trace
        assert trace is not None
        close = getattr(self._result, "close", None)
        try:
            if close is not None:
                self._in_context().run(close)
        finally:
            exchange.disconnected = exchange.completed_at is None  # (a failure ended it)
            exchange.finish()
            trace.release()
            self._context = self._produce = None
