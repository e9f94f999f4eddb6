"""What the ASGI middleware learns from the framework behind it.

* **Starlette, FastAPI and Litestar** write the matched route into the scope
  (``scope["route"].path``; Litestar's ``scope["path_template"]``) and the authenticated user
  into ``scope["user"]``: :func:`scope_route` and the adapter read them, nothing is installed.
* **Quart** keeps the matched rule on its request (``request.url_rule``) and turns a view's
  exception into a 500 page: when the middleware wraps a Quart app (``LemmaMiddleware(app)``
  or ``app.asgi_app = LemmaMiddleware(app.asgi_app)``), two receivers of Quart's signals, run in
  the request's task, pass the rule on (``request_started``) and note the exception
  (``got_request_exception``), as :mod:`~lemma_middleware.adapters.flask` does for Flask.
* **Falcon** keeps the matched template on its request (``req.uri_template``): when the
  middleware wraps a ``falcon.asgi.App``, a Falcon middleware component added to it
  (``app.add_middleware``; its ``process_resource`` runs once a route matched) passes it on.

Any other framework: call :func:`lemma_middleware.set_route` in the handler. Frameworks are
found by type, through ``sys.modules``: none is imported here.
"""

from __future__ import annotations

import sys
from typing import Any

from starlette.types import Scope

from lemma_middleware.core.logs import contained
from lemma_middleware.request.context import current, set_route


def scope_route(scope: Scope) -> str | None:
    """The route template the framework wrote into the scope, if any."""
    path = getattr(scope.get("route"), "path", None)  # Starlette, FastAPI
    if isinstance(path, str):
        return path
    template = scope.get("path_template")  # Litestar
    return template if isinstance(template, str) else None


def install_framework_hooks(app: object) -> str | None:
    """Hook into ``app`` if it is a Quart or Falcon app (or a Quart app's ``asgi_app``);
    the framework's name, or None when nothing was installed."""
    owner = getattr(app, "__self__", app)  # app.asgi_app is a bound method
    quart = sys.modules.get("quart")
    if quart is not None and isinstance(owner, quart.Quart):
        with contained("hooking into Quart", "routes and view exceptions are not recorded"):
            signals = sys.modules["quart.signals"]
            signals.request_started.connect(_on_quart_request, owner, weak=False)
            signals.got_request_exception.connect(_on_quart_exception, owner, weak=False)
            return "quart"
    falcon_asgi = sys.modules.get("falcon.asgi")
    if falcon_asgi is not None and isinstance(owner, falcon_asgi.App):
        with contained("hooking into Falcon", "route templates are not recorded"):
            owner.add_middleware(FalconRoute())
            return "falcon"
    return None


async def _on_quart_request(sender: object, **extra: object) -> None:
    rule = sys.modules["quart"].request.url_rule
    if rule is not None:
        set_route(rule.rule)


async def _on_quart_exception(sender: object, exception: BaseException, **extra: object) -> None:
    active = current()
    if active is not None:
        active.record_exception(exception)


class FalconRoute:
    """A Falcon (ASGI) middleware component: the matched URI template becomes the route."""

    async def process_resource(self, req: Any, resp: Any, resource: object, params: object) -> None:
        template = getattr(req, "uri_template", None)
        if isinstance(template, str):
            set_route(template)
