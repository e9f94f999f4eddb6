"""Flask convenience: configure the WSGI middleware from ``app.config``.

``LemmaFlask(app)`` or ``lemma = LemmaFlask(); lemma.init_app(app)`` (application factories).
Every option of the middleware can be set as ``LEMMA_<OPTION NAME>`` in ``app.config``
(``LEMMA_AGENT_NAME``, ``LEMMA_THREAD_HEADER``, ``LEMMA_EXCLUDE_PATHS``, ...); keyword
arguments given to ``LemmaFlask`` win over the config.
"""

from __future__ import annotations

import inspect
from typing import Any

from .tracing import Tracing
from .wsgi import LemmaWSGIMiddleware

OPTION_NAMES: tuple[str, ...] = tuple(
    name for name in inspect.signature(Tracing.__init__).parameters if name != "self"
)


class LemmaFlask:
    """Wraps a Flask app's ``wsgi_app`` in :class:`LemmaWSGIMiddleware`."""

    def __init__(self, app: Any = None, **options: Any) -> None:
        unknown = set(options) - set(OPTION_NAMES)
        if unknown:
            raise TypeError(f"unknown lemma_middleware options: {sorted(unknown)}")
        self.options = options
        self.middleware: LemmaWSGIMiddleware | None = None
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Any) -> None:
        """Install the middleware on ``app`` with options from ``app.config``."""
        options = {
            name: app.config[f"LEMMA_{name.upper()}"]
            for name in OPTION_NAMES
            if f"LEMMA_{name.upper()}" in app.config
        }
        options.update(self.options)
        self.middleware = LemmaWSGIMiddleware(app.wsgi_app, **options)
        app.wsgi_app = self.middleware
        app.extensions["lemma_middleware"] = self.middleware
