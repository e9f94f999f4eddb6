"""Django's private request state the Django adapter reads (checked once, at start-up).

* ``HttpRequest._stream``: what ``request.body``, ``request.read()``, ``request.POST`` and
  Django REST framework's parsers read. The adapter puts a tee in its place so that the body
  is recorded as the app reads it. Without it the request body is not recorded.
* ``LazyObject._wrapped`` and the request's ``_cached_user`` / ``_acached_user``: whether
  the lazy ``request.user`` was already evaluated, so that a user loaded by the app's own
  code is read without loading it again. Without them only the user the middleware loads
  itself (before the view, or after it) is recorded: the public ``request.user`` /
  ``request.auser()``.
* ``SimpleLazyObject._setupfunc``: whether ``request.user`` is the lazy user Django's
  ``AuthenticationMiddleware`` sets, so that on a request without a session (no session
  cookie) it is known to be anonymous without loading it: Django's ``get_user`` finds no
  user id in an empty session. Without it that user is loaded (a few microseconds).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from functools import cache
from typing import Any

from django.core.handlers.wsgi import WSGIRequest
from django.http import HttpRequest, HttpResponse
from django.utils.functional import LazyObject, SimpleLazyObject, empty

from lemma_middleware.sdk.probe import report_missing


@cache
def check_django_internals() -> tuple[bool, bool]:
    """Whether a request's stream can be teed and a lazy user's state read (checked once,
    against a real ``WSGIRequest`` and ``SimpleLazyObject``)."""
    can_tee = False
    try:
        environ = {
            "REQUEST_METHOD": "POST",
            "PATH_INFO": "/",
            "CONTENT_LENGTH": "4",
            "wsgi.input": io.BytesIO(b"real"),
        }
        request = WSGIRequest(environ)
        if "_stream" in vars(request):
            request._stream = io.BytesIO(b"teed")
            can_tee = request.body == b"teed"
    except Exception:
        can_tee = False
    if not can_tee:
        report_missing("HttpRequest._stream (Django)", "Django request bodies are not recorded")
    marker = object()
    lazy = SimpleLazyObject(lambda: marker)
    can_read_user = getattr(lazy, "_wrapped", None) is empty
    if can_read_user:
        lazy._setup()
        can_read_user = getattr(lazy, "_wrapped", None) is marker
    if not can_read_user:
        report_missing(
            "LazyObject._wrapped (Django)",
            "only the user the middleware loads itself is recorded",
        )
    return can_tee, can_read_user


def tee_request_stream(request: HttpRequest, tee: Callable[[Any], object]) -> bool:
    """Put ``tee(stream)`` in the place of what the request's body is read from."""
    if not check_django_internals()[0]:
        return False
    stream = vars(request).get("_stream")
    if stream is None:
        return False
    request._stream = tee(stream)  # type: ignore[assignment]
    return True


def request_stream(request: HttpRequest) -> object:
    """What the request's body is read from (None if unknown)."""
    return vars(request).get("_stream") if check_django_internals()[0] else None


def loaded_user(request: HttpRequest) -> object:
    """``request.user`` if it is loaded: set by DRF or a custom middleware, or the lazy
    user of ``AuthenticationMiddleware`` once evaluated (``request.user`` or ``auser()``).
    Never loads it: None when it is not loaded (or that cannot be told)."""
    state = vars(request)
    user = state.get("user")
    if not isinstance(user, LazyObject):
        return user
    if not check_django_internals()[1]:
        return None
    wrapped = _lazy_state(user).get("_wrapped", empty)  # the object, once evaluated
    if wrapped is empty:
        return state.get("_cached_user") or state.get("_acached_user")
    return wrapped


def _lazy_state(lazy: object) -> dict[str, Any]:
    """A lazy object's own attributes, read past its ``__getattribute__`` (which costs a
    proxy check per read)."""
    state: dict[str, Any] = object.__getattribute__(lazy, "__dict__")
    return state


_SESSION_USER = (
    "django.contrib.auth.middleware",
    "AuthenticationMiddleware.process_request.<locals>.<lambda>",
)
"""The module and qualified name of the function behind ``AuthenticationMiddleware``'s
lazy user."""


def _made_by_authentication_middleware(setup: object) -> bool:
    return (getattr(setup, "__module__", None), getattr(setup, "__qualname__", None)) == (
        _SESSION_USER
    )


@cache
def check_session_user() -> bool:
    """Whether :func:`anonymous_without_session` can tell (checked once, against a real
    ``AuthenticationMiddleware`` on a request with an empty session: its lazy user is
    recognised, and anonymous when loaded)."""
    try:
        from django.contrib.auth.middleware import AuthenticationMiddleware
        from django.contrib.sessions.backends.base import SessionBase

        probe = HttpRequest()
        probe.session = SessionBase()
        AuthenticationMiddleware(HttpResponse).process_request(probe)
        user = vars(probe)["user"]
        recognised = _made_by_authentication_middleware(_lazy_state(user).get("_setupfunc"))
        return recognised and user.is_authenticated is False
    except Exception:  # no auth app, another Django: the user is loaded instead
        return False


def anonymous_without_session(request: HttpRequest) -> bool:
    """Whether ``request.user`` is ``AuthenticationMiddleware``'s lazy user, not loaded yet,
    on a request without a session: anonymous, told without loading it. False when it cannot
    be told (another middleware's user, a session, a Django this was not checked on)."""
    state = vars(request)
    user = state.get("user")
    if not isinstance(user, SimpleLazyObject) or not check_session_user():
        return False
    lazy = _lazy_state(user)
    if lazy.get("_wrapped", empty) is not empty:
        return False
    if not _made_by_authentication_middleware(lazy.get("_setupfunc")):
        return False
    session = state.get("session")
    return session is not None and getattr(session, "session_key", "") is None
