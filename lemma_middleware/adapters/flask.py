"""Flask: what the WSGI middleware learns from Flask, and configuration from ``app.config``.

When :class:`~lemma_middleware.wsgi.LemmaWSGIMiddleware` wraps a Flask app's ``wsgi_app``,
:class:`FlaskSupport` gives it the user (Flask-Login's ``current_user``, else ``flask.g.user``,
else ``REMOTE_USER``), the matched URL rule, and the exceptions Flask turns into 500 pages.

``LemmaFlask(app)`` or ``lemma = LemmaFlask(); lemma.init_app(app)`` (application factories)
installs the middleware with options from ``app.config``: every option as
``LEMMA_<OPTION NAME>`` (``LEMMA_AGENT_NAME``, ``LEMMA_THREAD_HEADER``, ...); keyword
arguments given to ``LemmaFlask`` win over the config.
"""

from __future__ import annotations

import sys
from typing import Any, Unpack

from lemma_middleware.adapters.tracing import Tracing
from lemma_middleware.adapters.wsgi import (
    Environ,
    LemmaWSGIMiddleware,
    PlainWSGI,
    WSGIApp,
    register_framework,
)
from lemma_middleware.core.identity import user_id_from_auth_user, user_id_from_plain_user
from lemma_middleware.core.options import OPTION_NAMES, Options, options_from_config
from lemma_middleware.request.context import current


class FlaskSupport(PlainWSGI):
    """The user and the route of a Flask request, read inside its request context."""

    def auth_user(self, environ: Environ) -> str | None:
        flask = sys.modules["flask"]
        if flask.has_request_context():
            flask_login = sys.modules.get("flask_login")
            if flask_login is not None:
                user_id = user_id_from_auth_user(flask_login.current_user)
                if user_id is not None:
                    return user_id
            user_id = user_id_from_plain_user(flask.g.get("user"))
            if user_id is not None:
                return user_id
        return super().auth_user(environ)

    def route(self) -> str | None:
        flask = sys.modules["flask"]
        if not flask.has_request_context():
            return None
        rule = flask.request.url_rule
        return rule.rule if rule is not None else None


def _on_flask_exception(sender: object, exception: BaseException, **extra: object) -> None:
    active = current()
    if active is not None:
        active.record_exception(exception)


@register_framework
def flask_support(app: WSGIApp, tracing: Tracing) -> FlaskSupport | None:
    """Flask support when ``app`` is a Flask app's ``wsgi_app``; records the exceptions
    Flask turns into 500 responses (``got_request_exception``)."""
    flask = sys.modules.get("flask")
    flask_app = getattr(app, "__self__", None)
    if flask is None or not isinstance(flask_app, flask.Flask):
        return None
    flask.got_request_exception.connect(_on_flask_exception, flask_app, weak=False)
    return FlaskSupport()


class LemmaFlask:
    """Wraps a Flask app's ``wsgi_app`` in :class:`LemmaWSGIMiddleware` (its options typed
    as the middleware's, so that a type checker flags a misspelt one)."""

    def __init__(self, app: Any = None, **options: Unpack[Options]) -> None:
        unknown = set(options) - set(OPTION_NAMES)
        if unknown:
            raise TypeError(f"unknown lemma_middleware options: {sorted(unknown)}")
        self.options = options
        self.middleware: LemmaWSGIMiddleware | None = None
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Any) -> None:
        """Install the middleware on ``app`` with options from ``app.config``."""
        options = {**options_from_config(app.config), **self.options}
        self.middleware = LemmaWSGIMiddleware(app.wsgi_app, **options)
        app.wsgi_app = self.middleware
        app.extensions["lemma_middleware"] = self.middleware
