"""Django: one middleware for WSGI and ASGI Django, listed first in ``settings.MIDDLEWARE``.

``lemma_middleware.django.LemmaMiddleware`` is sync and async capable: under ASGI a coroutine
in the request's task (no thread hop), under WSGI a plain function. Options come from
settings, ``LEMMA_<OPTION>``, the names :class:`~lemma_middleware.LemmaFlask` reads from
``app.config``. What it learns from Django:

* **The user**: ``request.user`` as any auth backend sets it, and the user Django REST
  framework authenticates in the view. A lazy ``request.user`` is loaded once, before the
  view (``process_view``; ``await request.auser()`` under ASGI) or after it if no view ran;
  AuthenticationMiddleware's user on a request without a session is known anonymous without
  loading it. Recorded: ``pk``, or the attribute ``LEMMA_USER_ID_FIELD`` names.
* **The route**: ``request.resolver_match.route``; **view exceptions** as ``ERROR`` with
  ``Type: message`` (Django answers them with a 500 page); **the request body** as Django
  reads it (its stream teed; a failed request's unread body is read afterwards).
* **Responses**: a plain response ends the root as it leaves the middleware; a
  ``StreamingHttpResponse`` (sync or async) is recorded chunk by chunk, each produced in the
  request's context, and ends at its last chunk or ``close()``; a ``FileResponse`` is sent as
  it is, not recorded.

Checks (``manage.py check``, and at start-up): the options (``lemma_middleware.E001``), the
position in ``MIDDLEWARE`` (``E002``: first), ``LEMMA_`` settings that are no option
(``W001``). An error fails start-up with ``ImproperlyConfigured`` unless silenced.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.http import FileResponse, HttpRequest, HttpResponseBase
from django.utils.module_loading import import_string

from lemma_middleware.adapters.django_streams import AsyncChunks, SyncChunks
from lemma_middleware.adapters.tracing import Tracing
from lemma_middleware.adapters.wsgi import EnvironHeaders, TeeInput
from lemma_middleware.core.logs import UNTRACED, contained, logger
from lemma_middleware.core.options import (
    CONFIG_PREFIX,
    OPTION_NAMES,
    OptionError,
    compile_options,
    config_name,
    options_from_config,
)
from lemma_middleware.core.recording import Exchange, RequestInfo
from lemma_middleware.request.trace import RequestTrace
from lemma_middleware.sdk.django_request import (
    anonymous_without_session,
    check_django_internals,
    check_session_user,
    loaded_user,
    request_stream,
    tee_request_stream,
)

MIDDLEWARE_PATH = "lemma_middleware.django.LemmaMiddleware"
_BODY_HEADERS = ("Content-Type", "Content-Encoding")
"""The response headers that say how to read its body (Django's lookup ignores case)."""
USER_ID_FIELD = "LEMMA_USER_ID_FIELD"
"""The Django setting naming the user attribute recorded as the user id (default ``pk``)."""
_DJANGO_SETTINGS = {USER_ID_FIELD}


def _settings_options() -> dict[str, Any]:
    return options_from_config(
        {name: getattr(settings, name) for name in dir(settings) if name.startswith("LEMMA_")}
    )


# checks --------------------------------------------------------------------------------


def lemma_checks(app_configs: object = None, **kwargs: object) -> list[checks.CheckMessage]:
    """The middleware's system checks (registered when ``lemma_middleware.django`` is
    imported: list it in ``INSTALLED_APPS`` for ``manage.py check`` to run them)."""
    middleware = list(getattr(settings, "MIDDLEWARE", None) or [])
    listed = [entry for entry in middleware if _is_lemma(entry)]
    if not listed:
        return []
    found: list[checks.CheckMessage] = []
    try:
        compile_options(_settings_options())
    except OptionError as error:
        found.append(
            checks.Error(
                f"lemma_middleware: invalid configuration: {error}",
                hint="Settings LEMMA_<OPTION> set the middleware's options (see the README).",
                id="lemma_middleware.E001",
            )
        )
    if not _is_lemma(middleware[0]):
        found.append(
            checks.Error(
                f"{MIDDLEWARE_PATH} is not first in MIDDLEWARE (it is at position "
                f"{middleware.index(listed[0]) + 1}): the middleware before it run outside "
                "the trace, and what they answer is not recorded",
                hint="Move it to the top of settings.MIDDLEWARE.",
                id="lemma_middleware.E002",
            )
        )
    known = {config_name(name) for name in OPTION_NAMES} | _DJANGO_SETTINGS
    for name in sorted(dir(settings)):
        if name.startswith(CONFIG_PREFIX) and name not in known:
            found.append(
                checks.Warning(
                    f"setting {name} is not a lemma_middleware option and is ignored",
                    hint="The options are LEMMA_ + an option name in capitals "
                    "(LEMMA_AGENT_NAME, LEMMA_THREAD_HEADER, ...); LEMMA_API_KEY and "
                    "the other LEMMA_* environment variables are read from the environment.",
                    id="lemma_middleware.W001",
                )
            )
    return found


def _is_lemma(entry: str) -> bool:
    if entry == MIDDLEWARE_PATH:
        return True
    try:
        imported = import_string(entry)
    except ImportError:
        return False
    return isinstance(imported, type) and issubclass(imported, LemmaMiddleware)


def _fail_on_check_errors() -> None:
    silenced = set(getattr(settings, "SILENCED_SYSTEM_CHECKS", ()))
    for message in lemma_checks():
        if message.id in silenced:
            continue
        if message.is_serious():
            raise ImproperlyConfigured(f"{message.msg} ({message.id}). {message.hint}")
        logger.warning("lemma_middleware: %s (%s)", message.msg, message.id)


# the user ------------------------------------------------------------------------------


def user_id(user: object, field: str) -> str | None:
    """The id recorded for an authenticated Django user (``field``: ``pk`` or another
    attribute); None for anonymous users and objects that are no user."""
    if user is None or not getattr(user, "is_authenticated", False):
        return None
    value = getattr(user, field, None)
    return None if value is None or value == "" else str(value)


# one request ---------------------------------------------------------------------------


class DjangoExchange(Exchange):
    """One traced Django request: the teed body, the trace, the response's recording."""

    __slots__ = (
        "django_request",
        "loaded_user",
        "request_info",
        "trace",
        "trace_id_header",
        "wants_user",
    )

    def __init__(self, tracing: Tracing, request: HttpRequest, user_field: str) -> None:
        super().__init__(tracing.options)
        self.django_request = request
        self.trace_id_header = tracing.options.trace_id_header
        self.trace: RequestTrace | None = None
        self.loaded_user: object = None  # the user this middleware loaded
        self.wants_user = tracing.options.use_auth_user
        body = self.request_body
        if body is not None and not tee_request_stream(request, lambda s: TeeInput(s, body)):
            self.request_body = None  # not readable as the app reads it: not recorded

        def auth_user() -> str | None:
            return user_id(loaded_user(request) or self.loaded_user, user_field)

        meta = request.META
        self.request_info = RequestInfo(
            method=request.method or "GET",
            path=request.path_info or "/",
            query_string=meta.get("QUERY_STRING", ""),
            headers=EnvironHeaders(meta),
            request=request,
            auth_user=auth_user,
            client=meta.get("REMOTE_ADDR"),
        )

    def user_wanted(self) -> bool:
        """Whether a user may be there to record: wanted (``use_auth_user``) and not known
        anonymous without loading it (AuthenticationMiddleware's user, no session)."""
        return self.wants_user and not anonymous_without_session(self.django_request)

    def user_unloaded(self) -> bool:
        """Whether ``request.user`` is set but nobody has loaded it yet."""
        request = self.django_request
        return "user" in vars(request) and (loaded_user(request) or self.loaded_user) is None

    def load_user(self) -> bool:
        """Load a lazy ``request.user`` nobody has loaded (sync: a query in this thread), if
        a user may be there (:meth:`user_wanted`, returned)."""
        with contained("loading request.user", "the trace has no user"):
            if not self.user_wanted():
                return False
            if self.user_unloaded():
                user = self.django_request.user
                _ = user.is_authenticated  # evaluates the lazy object
                self.loaded_user = user
            return True
        return False

    async def load_user_async(self) -> bool:
        """Load a lazy ``request.user`` nobody has loaded, without blocking
        (``await request.auser()``), if a user may be there (returned)."""
        auser = getattr(self.django_request, "auser", None)
        with contained("loading request.auser()", "the trace has no user"):
            if not self.user_wanted():
                return False
            if auser is not None and self.user_unloaded():
                self.loaded_user = await auser()
            return True
        return False

    def respond(self, response: HttpResponseBase) -> HttpResponseBase:
        """Record the response: a plain one ends the trace now, a streaming one when its
        last chunk is sent or it is closed."""
        trace = self.trace
        assert trace is not None
        request = self.django_request
        with contained("reading the response", "the response is sent as it is"):
            found = [(name, response.get(name)) for name in _BODY_HEADERS]  # a lookup each
            wanted = [(name, value) for name, value in found if value is not None]
            self.response_started(response.status_code, wanted)  # not every header: these
            if self.trace_id_header is not None:
                response[self.trace_id_header.decode("latin-1")] = trace.trace_id
            match = request.resolver_match
            self.route = match.route if match is not None else None
        if not response.streaming:  # finish() looks for the user a last time
            if self.response_body is not None:
                self.response_body.feed(response.content)  # type: ignore[attr-defined]
            self.completed_at = time.time_ns()
            self.finish()
            return response
        trace.sync_auth_user(last_chance=True)  # the auth context ends before the stream
        with contained("wrapping the streamed response", "its content is not recorded"):
            if isinstance(response, FileResponse):
                self.response_body = None  # a file: sent as it is, not recorded
            if getattr(response, "file_to_stream", None) is None:
                chunks: Any = response.streaming_content  # type: ignore[attr-defined]
                traced = AsyncChunks if response.is_async else SyncChunks  # type: ignore[attr-defined]
                response.streaming_content = traced(self, chunks)  # type: ignore[attr-defined]
        close = response.close

        def traced_close() -> None:
            try:
                close()
            finally:
                self.disconnected = self.completed_at is None
                self.finish()

        response.close = traced_close  # type: ignore[method-assign]
        return response

    def finish(self, error: BaseException | None = None) -> None:
        """End the trace (once); a failed request's unread body is read first."""
        trace = self.trace
        assert trace is not None
        if trace.finished:
            return
        stream = request_stream(self.django_request)
        wanted = self.unread_body_wanted(trace.request.headers, error)
        if wanted and isinstance(stream, TeeInput):
            try:
                stream.read(wanted)
            except Exception:  # a client gone: record without it
                logger.debug("lemma_middleware: unread request body not read", exc_info=True)
        trace.finish(self, error)
        trace.release()


# the middleware ------------------------------------------------------------------------

GetResponse = Callable[[HttpRequest], Any]


class LemmaMiddleware:
    """Traces every request to a Django project as one Lemma/Langfuse trace; list it
    first in ``settings.MIDDLEWARE`` as ``"lemma_middleware.django.LemmaMiddleware"``."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: GetResponse) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)
            self.process_view = self._process_view_async  # type: ignore[method-assign,assignment]
        _fail_on_check_errors()
        check_django_internals()
        check_session_user()
        try:
            self.tracing = Tracing(**_settings_options())
        except OptionError as error:
            message = f"lemma_middleware: invalid configuration: {error}"
            raise ImproperlyConfigured(message) from None
        self.user_field = str(getattr(settings, USER_ID_FIELD, None) or "pk")

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self._call_async(request)
        exchange = self._exchange(request)
        if exchange is None:
            return self.get_response(request)
        trace = exchange.trace = self.tracing.start(exchange.request_info)
        if trace is None:
            return self.get_response(request)
        token = trace.activate()
        try:
            response = self.get_response(request)
        except BaseException as error:
            trace.deactivate(token)
            exchange.finish(error)
            raise
        trace.deactivate(token)
        exchange.load_user()  # if the view did not (sync, WSGI)
        return exchange.respond(response)

    async def _call_async(self, request: HttpRequest) -> Any:
        get_response: Callable[[HttpRequest], Awaitable[Any]] = self.get_response
        exchange = self._exchange(request)
        if exchange is None:
            return await get_response(request)
        tracing = self.tracing
        if tracing.awaits_callables:
            trace = await tracing.start_async(exchange.request_info)
        else:
            trace = tracing.start(exchange.request_info)
        exchange.trace = trace
        if trace is None:
            return await get_response(request)
        token = trace.activate()
        try:
            response = await get_response(request)
        except BaseException as error:
            trace.deactivate(token)
            exchange.finish(error)
            raise
        trace.deactivate(token)
        await exchange.load_user_async()  # if the view did not
        return exchange.respond(response)

    def _exchange(self, request: HttpRequest) -> DjangoExchange | None:
        tracing = self.tracing
        if not tracing.enabled or tracing.is_excluded(request.method or "GET", request.path_info):
            return None
        exchange = None
        with contained("starting the trace", UNTRACED):
            exchange = DjangoExchange(tracing, request, self.user_field)
            request.lemma_exchange = exchange  # type: ignore[attr-defined]
        return exchange

    def process_view(self, request: HttpRequest, *view: object) -> None:
        """Load the user before the view runs (``request.user`` is set by then), so that
        the root, every span the view makes and ``outgoing_headers()`` carry it (one query
        for a session user; none for a request known anonymous)."""
        exchange = getattr(request, "lemma_exchange", None)
        if not isinstance(exchange, DjangoExchange) or exchange.trace is None:
            return
        if exchange.load_user():  # the user joins the trace now (outgoing_headers())
            exchange.trace.sync_auth_user()

    async def _process_view_async(self, request: HttpRequest, *view: object) -> None:
        exchange = getattr(request, "lemma_exchange", None)
        if not isinstance(exchange, DjangoExchange) or exchange.trace is None:
            return
        if await exchange.load_user_async():
            exchange.trace.sync_auth_user()

    def process_exception(self, request: HttpRequest, exception: Exception) -> None:
        """Note a view's exception (Django answers it with a 500 page). Django calls every
        ``process_exception`` synchronously (under ASGI in a thread): on exceptions only."""
        exchange = getattr(request, "lemma_exchange", None)
        if isinstance(exchange, DjangoExchange) and exchange.trace is not None:
            exchange.trace.record_exception(exception)
