"""WSGI middleware: the same trace as the ASGI one, for Flask, Django or any WSGI app."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import TracebackType
from typing import Any, ClassVar

from .capture import BodyCapture
from .identity import log_once, user_id_from_auth_user
from .tracing import Exchange, RequestInfo, Tracing

logger = logging.getLogger("lemma_middleware")

Environ = dict[str, Any]
ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]
StartResponse = Callable[..., Callable[[bytes], object]]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]


class LemmaWSGIMiddleware:
    """Traces every request to a WSGI app as one Lemma/Langfuse trace.

    ``app.wsgi_app = LemmaWSGIMiddleware(app.wsgi_app, agent_name="support-agent")``; options
    are those of :class:`lemma_middleware.tracing.Tracing` (see the README). The root ends
    when the response iterable is exhausted or closed, whichever comes first; the propagated
    attributes are active while the app runs and while each chunk is produced. Wrapping a
    Flask app's ``wsgi_app`` also records exceptions that Flask turns into 500 responses.
    """

    def __init__(self, app: WSGIApp, **options: Any) -> None:
        self.app = app
        self.tracing = Tracing(**options)
        flask_app = getattr(app, "__self__", None)
        if self.tracing.enabled and _is_flask(flask_app):
            _record_flask_exceptions(flask_app)

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        tracing = self.tracing
        method = environ.get("REQUEST_METHOD", "GET")
        path = environ.get("PATH_INFO", "") or "/"
        if not tracing.enabled or tracing.is_excluded(method, path):
            return self.app(environ, start_response)
        try:
            exchange = TracedWSGIExchange(tracing, environ, method, path)
        except Exception as problem:
            log_once(
                f"wsgi-start:{type(problem).__name__}",
                logging.ERROR,
                "lemma_middleware: %r; request served untraced (logged once)",
                problem,
            )
            return self.app(environ, start_response)
        if exchange.trace is None:
            return self.app(environ, start_response)
        return exchange.run(self.app, start_response)


def _is_flask(candidate: object) -> bool:
    flask = sys.modules.get("flask")
    return flask is not None and isinstance(candidate, flask.Flask)


def _record_flask_exceptions(flask_app: Any) -> None:
    from flask import got_request_exception

    def on_exception(sender: object, exception: BaseException, **extra: object) -> None:
        from .tracing import current

        active = current()
        if active is not None:
            active.record_exception(exception)

    got_request_exception.connect(on_exception, flask_app, weak=False)


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


def auth_user_of(environ: Environ) -> str | None:
    """The authenticated user id: Flask-Login's ``current_user``, else ``flask.g.user`` (a
    string, a mapping or an object with ``id``/``user_id``/``username``), else ``REMOTE_USER``.
    The Flask ones are read only inside a request context."""
    flask = sys.modules.get("flask")
    if flask is not None and flask.has_request_context():
        flask_login = sys.modules.get("flask_login")
        if flask_login is not None:
            user_id = user_id_from_auth_user(flask_login.current_user)
            if user_id is not None:
                return user_id
        user_id = _plain_user_id(flask.g.get("user"))
        if user_id is not None:
            return user_id
    remote_user = environ.get("REMOTE_USER")
    return remote_user if isinstance(remote_user, str) and remote_user else None


def _plain_user_id(user: Any) -> str | None:
    if user is None or isinstance(user, str):
        return user or None
    for key in ("id", "user_id", "username"):
        value = user.get(key) if isinstance(user, Mapping) else getattr(user, key, None)
        if value is not None:
            return str(value)
    return None


def flask_route() -> str | None:
    """The matched Flask URL rule (``/chat/<thread_id>``), inside a request context."""
    flask = sys.modules.get("flask")
    if flask is None or not flask.has_request_context():
        return None
    rule = flask.request.url_rule
    return rule.rule if rule is not None else None


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

    __slots__ = ("environ",)

    def __init__(self, tracing: Tracing, environ: Environ, method: str, path: str) -> None:
        super().__init__(tracing, EnvironHeaders(environ))
        self.environ = environ
        if self.request_body is not None and "wsgi.input" in environ:
            environ["wsgi.input"] = TeeInput(environ["wsgi.input"], self.request_body)
        self.trace = tracing.start(
            RequestInfo(
                method=method,
                path=path,
                query_string=environ.get("QUERY_STRING", ""),
                headers=self.request_headers,
                request=environ,
                auth_user=lambda: auth_user_of(environ),
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
            raise
        trace.deactivate(token)
        return TracedBody(self, result)

    def _start_response(self, start_response: StartResponse) -> StartResponse:
        def traced_start_response(
            status: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = None
        ) -> Callable[[bytes], object]:
            try:
                self._on_start_response(status, headers)
                if self.trace is not None and self.tracing.trace_id_header is not None:
                    name = self.tracing.trace_id_header.decode("latin-1")
                    headers = [*headers, (name, self.trace.trace_id)]
            except Exception as problem:
                log_once(
                    f"wsgi-start-response:{type(problem).__name__}",
                    logging.ERROR,
                    "lemma_middleware: %r (logged once)",
                    problem,
                )
            if exc_info is not None:
                return start_response(status, headers, exc_info)
            return start_response(status, headers)

        return traced_start_response

    def _on_start_response(self, status: str, headers: list[tuple[str, str]]) -> None:
        self.status = int(status.split(" ", 1)[0])
        for name, value in headers:
            lowered = name.lower()
            if lowered == "content-type":
                self.response_content_type = value
            elif lowered == "content-encoding":
                self.response_content_encoding = value
        if self.trace is not None:
            # Flask's request context is still active here, and ends right after.
            self.trace.sync_auth_user(last_chance=True)
        self.route = flask_route()


class TracedBody:
    """The app's response iterable, iterated inside the request's context.

    The root ends when the iterable is exhausted, or in ``close()`` (idempotent) when the
    server stops early, e.g. because the client went away.
    """

    def __init__(self, exchange: TracedWSGIExchange, result: Iterable[bytes]) -> None:
        self._exchange = exchange
        self._result = result
        self._iterator: Iterator[bytes] | None = None
        self._done = False

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        exchange = self._exchange
        trace = exchange.trace
        assert trace is not None
        if self._iterator is None:
            self._iterator = iter(self._result)
        token = trace.activate()
        try:
            chunk = next(self._iterator)
        except StopIteration:
            exchange.completed_at = time.time_ns()
            self._done = True
            exchange.finish()
            raise
        except BaseException as error:
            self._done = True
            exchange.finish(error)
            raise
        finally:
            trace.deactivate(token)
        if exchange.response_body is not None:
            exchange.response_body.feed(chunk)
        return chunk

    def close(self) -> None:
        exchange = self._exchange
        trace = exchange.trace
        assert trace is not None
        close = getattr(self._result, "close", None)
        try:
            if close is not None:
                token = trace.activate()
                try:
                    close()
                finally:
                    trace.deactivate(token)
        finally:
            exchange.disconnected = not self._done
            exchange.finish()
