"""Pure ASGI middleware: one Lemma-conformant trace per HTTP request."""

from __future__ import annotations

import asyncio
import time
from typing import Unpack

from asgiref.compatibility import guarantee_single_callable
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lemma_middleware.adapters.asgi_frameworks import install_framework_hooks, scope_route
from lemma_middleware.adapters.tracing import Tracing
from lemma_middleware.core.logs import UNTRACED, contained, logger
from lemma_middleware.core.options import OptionError, Options
from lemma_middleware.core.recording import UNREAD_BODY_WAIT, Exchange, RequestInfo
from lemma_middleware.request.trace import RequestTrace
from lemma_middleware.sdk.telemetry import FASTAPI_TELEMETRY_KEY


class LemmaMiddleware:
    """Traces every HTTP request to an ASGI app as one Lemma/Langfuse trace.

    ``app.add_middleware(LemmaMiddleware, agent_name="support-agent")`` or
    ``app = LemmaMiddleware(app, agent_name="support-agent")``; options are those of
    :meth:`lemma_middleware.options.TracingOptions.compile` (see the README). ASGI 2 apps are
    accepted. WebSocket traffic passes through; on lifespan shutdown pending traces are
    flushed. Around a Quart or Falcon app it hooks into the framework for the route
    (:mod:`~lemma_middleware.adapters.asgi_frameworks`).
    """

    def __init__(self, app: ASGIApp, **options: Unpack[Options]) -> None:
        self.app: ASGIApp = guarantee_single_callable(app)  # type: ignore[no-untyped-call]
        self.framework = install_framework_hooks(app)
        self.tracing: Tracing | None = None
        self.configuration_error: OptionError | None = None
        try:
            self.tracing = Tracing(**options)
        except OptionError as error:
            # Starlette builds middleware on the first request: raising here would turn
            # every request into a 500. Fail the server's start-up instead (lifespan), and
            # serve untraced where there is none.
            self.configuration_error = error
            logger.error(
                "lemma_middleware: invalid configuration, tracing is off: %s. With lifespan "
                "the app fails to start; without it, requests are served untraced",
                error,
            )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope_type = scope["type"]
        tracing = self.tracing
        if tracing is None:
            if scope_type == "lifespan" and self.configuration_error is not None:
                send = self._failing_startup_send(send, self.configuration_error)
        elif scope_type == "http":
            if tracing.enabled and not tracing.is_excluded(scope["method"], scope["path"]):
                await TracedExchange(self.app, tracing, scope, receive, send).run(tracing)
                return
        elif scope_type == "lifespan" and tracing.enabled:
            send = self._flushing_lifespan_send(send)
        await self.app(scope, receive, send)

    @staticmethod
    def _failing_startup_send(send: Send, error: OptionError) -> Send:
        async def lifespan_send(message: Message) -> None:
            if message["type"] == "lifespan.startup.complete":
                message = {
                    "type": "lifespan.startup.failed",
                    "message": f"lemma_middleware: invalid configuration: {error}",
                }
            await send(message)

        return lifespan_send

    def _flushing_lifespan_send(self, send: Send) -> Send:
        async def lifespan_send(message: Message) -> None:
            if message["type"] == "lifespan.shutdown.complete":
                await self.flush()
            await send(message)

        return lifespan_send

    async def flush(self) -> None:
        """Export pending traces, waiting at most ``flush_timeout`` seconds (in a thread)."""
        if self.tracing is None:
            return
        loop = asyncio.get_running_loop()
        with contained("the flush at shutdown", "what is not delivered stays in the backlog"):
            await asyncio.wait_for(
                loop.run_in_executor(None, self.tracing.flush),
                self.tracing.options.flush_timeout + 1.0,
            )


def _header_map(raw_headers: list[tuple[bytes, bytes]]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name, value in raw_headers:
        key = name.decode("latin-1").lower()
        if key not in headers:
            headers[key] = value.decode("latin-1")
    return headers


class TracedExchange(Exchange):
    """One traced request: wraps ``receive`` and ``send`` to copy bodies as they pass."""

    __slots__ = ("app", "receive", "scope", "send", "trace", "trace_id_header")

    def __init__(
        self, app: ASGIApp, tracing: Tracing, scope: Scope, receive: Receive, send: Send
    ) -> None:
        super().__init__(tracing.options)
        self.app = app
        self.scope = scope
        self.receive = receive
        self.send = send
        self.trace: RequestTrace | None = None
        self.trace_id_header = tracing.options.trace_id_header

    async def _start(self, tracing: Tracing) -> RequestTrace | None:
        scope = self.scope
        request = None
        with contained("reading the request", UNTRACED):
            query = scope.get("query_string", b"")
            request = RequestInfo(
                method=scope["method"],
                path=scope["path"],
                query_string=query.decode("latin-1") if query else "",
                headers=_header_map(scope["headers"]),
                request=Request(scope) if tracing.options.wants_request else None,
                auth_user=lambda: scope.get("user"),
                client=(scope.get("client") or (None,))[0],
            )
        if request is None:
            return None
        if tracing.awaits_callables:
            return await tracing.start_async(request)
        return tracing.start(request)

    async def run(self, tracing: Tracing) -> None:
        scope = self.scope
        trace = self.trace = await self._start(tracing)
        if trace is None:
            await self.app(scope, self.receive, self.send)
            return
        error: BaseException | None = None
        if FASTAPI_TELEMETRY_KEY not in scope and tracing.framework_telemetry_idle():
            # FastAPI's telemetry, inside the middleware, would restart the context from the
            # request headers; it would record nothing anyone receives anyway. (Outside the
            # middleware, with add_middleware, it has started already: left alone.)
            scope[FASTAPI_TELEMETRY_KEY] = None
        token = trace.activate()
        try:
            await self.app(scope, self.receive_wrapper, self.send_wrapper)
        except asyncio.CancelledError:
            self.disconnected = True
            raise
        except BaseException as exc:
            error = exc
            raise
        finally:
            trace.deactivate(token)
            self.route = scope_route(scope)
            wanted = self.unread_body_wanted(trace.request.headers, error)
            if wanted:
                await self._read_unread_body(wanted)
            trace.finish(self, error)
            trace.release()

    async def _read_unread_body(self, size: int) -> None:
        """Receive up to ``size`` bytes the app left unread, for at most UNREAD_BODY_WAIT
        seconds (the app is done: nothing it sees changes)."""
        body = self.request_body
        loop = asyncio.get_running_loop()
        deadline = loop.time() + UNREAD_BODY_WAIT
        try:
            while body is not None and body.total < size:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                message = await asyncio.wait_for(self.receive(), remaining)
                if message["type"] != "http.request":
                    break
                body.feed(message.get("body", b""))
                if not message.get("more_body", False):
                    break
        except Exception:  # a timeout, a server that will not give it: record without it
            logger.debug("lemma_middleware: unread request body not fetched", exc_info=True)

    async def receive_wrapper(self) -> Message:
        message = await self.receive()
        message_type = message["type"]
        if message_type == "http.request":
            if self.request_body is not None:
                self.request_body.feed(message.get("body", b""))
        elif message_type == "http.disconnect" and self.completed_at is None:
            self.disconnected = True
        return message

    async def send_wrapper(self, message: Message) -> None:
        message_type = message["type"]
        if message_type == "http.response.start":
            message = self._on_response_start(message)
            if self.trace is not None and self.status is not None and self.status >= 400:
                # Servers stop delivering the request body once the response is complete.
                wanted = self.unread_body_wanted(self.trace.request.headers, None)
                if wanted:
                    await self._read_unread_body(wanted)
        elif message_type == "http.response.body":
            if self.response_body is not None:
                self.response_body.feed(message.get("body", b""))
            if not message.get("more_body", False):
                self.completed_at = time.time_ns()
        elif message_type in ("http.response.pathsend", "http.response.zerocopysend"):
            self.completed_at = time.time_ns()
        try:
            await self.send(message)
        except OSError:
            self.disconnected = True
            self.completed_at = None
            raise

    def _on_response_start(self, message: Message) -> Message:
        raw_headers = message.get("headers") or []
        self.response_started(message.get("status"), raw_headers)
        header = self.trace_id_header
        if header is not None and self.trace is not None:
            message = dict(message)
            message["headers"] = [*raw_headers, (header, self.trace.trace_id.encode("ascii"))]
        return message
