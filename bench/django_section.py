"""The benchmark's Django section (issue 23): what tracing a Django request costs, beside
OpenTelemetry's Django instrumentation, in-process.

One Django project configured here as ``django-admin startproject`` writes it: the default
``MIDDLEWARE`` (security, sessions, common, CSRF, auth, messages, clickjacking) and apps, no
database query on the path (an anonymous request's session is empty). ``POST /chat`` is a
sync view (what WSGI Django serves), ``POST /achat`` the same view as ``async def`` (what
ASGI Django serves without a thread hop); both parse the JSON body and answer as the other
sections' apps do (:func:`bench.apps.answer`). Variants, each a handler of its own built
with its own ``MIDDLEWARE``, interleaved round by round:

* the bare project;
* OpenTelemetry's Django instrumentation (``DjangoInstrumentor().instrument()``, which puts
  its middleware first), on a provider with a ``BatchSpanProcessor`` exporting to nowhere;
* this middleware first in ``MIDDLEWARE``, its client exporting to nowhere.

Under ``WSGIHandler`` (called as a WSGI app) and ``ASGIHandler`` (raw ASGI calls on an event
loop), with the short message and the 28 KB history. The figure is the median wall time per
request, as in the ``asgi``/``wsgi`` sections.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from bench.apps import NoOpExporter, answer, otel_provider
from bench.harness import Row, interleave, print_table
from bench.inprocess import asgi_caller, no_op_client, wsgi_caller
from bench.traffic import HISTORY, SHORT, Shape
from bench.variants import Variant

DJANGO_VARIANTS = (Variant.BARE, Variant.OTEL, Variant.LEMMA)
DJANGO_BODIES = (SHORT, HISTORY)
DJANGO_LABELS = {
    Variant.BARE: "bare Django project",
    Variant.OTEL: "OpenTelemetry Django instrumentation",
    Variant.LEMMA: "lemma middleware, traced",
}
DEFAULT_MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
"""``startproject``'s ``MIDDLEWARE``."""

Key = tuple[str, Shape, Variant]
"""(``wsgi`` or ``asgi``, body, variant)."""
urlpatterns: list[Any] = []
"""This module is the project's ``ROOT_URLCONF`` (filled by :func:`_configure`)."""


def _configure() -> None:
    from django.conf import settings

    if settings.configured:
        return
    settings.configure(
        DEBUG=False,
        SECRET_KEY="bench",
        ALLOWED_HOSTS=["*"],
        ROOT_URLCONF=__name__,
        INSTALLED_APPS=[
            "django.contrib.contenttypes",
            "django.contrib.auth",
            "django.contrib.sessions",
            "django.contrib.messages",
        ],
        MIDDLEWARE=list(DEFAULT_MIDDLEWARE),
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
        USE_TZ=True,
    )
    import django
    from django.http import HttpRequest, JsonResponse
    from django.urls import path
    from django.views.decorators.csrf import csrf_exempt

    django.setup()

    @csrf_exempt
    def chat(request: HttpRequest) -> JsonResponse:
        return JsonResponse(answer(json.loads(request.body)))

    @csrf_exempt
    async def achat(request: HttpRequest) -> JsonResponse:
        return JsonResponse(answer(json.loads(request.body)))

    urlpatterns[:] = [path("chat", chat), path("achat", achat)]


def _handlers(middleware: list[str]) -> tuple[Any, Any]:
    """A WSGI and an ASGI handler whose middleware chain is ``middleware`` (Django reads
    ``MIDDLEWARE`` as a handler is built)."""
    from django.conf import settings
    from django.core.handlers.asgi import ASGIHandler
    from django.core.handlers.wsgi import WSGIHandler

    settings.MIDDLEWARE = middleware
    return WSGIHandler(), ASGIHandler()


def django_section(rounds: int, per_round: int) -> dict[Key, float]:
    """Every Django variant, in-process, interleaved; the tables printed."""
    _configure()
    from django.conf import settings
    from opentelemetry.instrumentation.django import DjangoInstrumentor

    handlers: dict[Variant, tuple[Any, Any]] = {Variant.BARE: _handlers(list(DEFAULT_MIDDLEWARE))}
    client, _ = no_op_client("pk-bench-django")
    settings.LEMMA_LANGFUSE = client
    settings.LEMMA_AGENT_NAME = "support-agent"
    lemma = ["lemma_middleware.django.LemmaMiddleware", *DEFAULT_MIDDLEWARE]
    handlers[Variant.LEMMA] = _handlers(lemma)
    settings.MIDDLEWARE = list(DEFAULT_MIDDLEWARE)
    instrumentor = DjangoInstrumentor()
    instrumentor.instrument(tracer_provider=otel_provider(NoOpExporter()))
    handlers[Variant.OTEL] = _handlers(list(settings.MIDDLEWARE))  # its middleware first
    callers: dict[Key, Callable[[], None]] = {}
    for shape in DJANGO_BODIES:
        for variant in DJANGO_VARIANTS:
            wsgi, asgi = handlers[variant]
            callers[("wsgi", shape, variant)] = wsgi_caller(wsgi, "/chat", shape.body)
            callers[("asgi", shape, variant)] = asgi_caller(asgi, "/achat", shape.body)
    medians = interleave(callers, rounds, per_round)
    instrumentor.uninstrument()
    for kind, handler in (("wsgi", "WSGIHandler, sync view"), ("asgi", "ASGIHandler, async view")):
        for shape in DJANGO_BODIES:
            base = medians[(kind, shape, Variant.BARE)]
            rows = [Row(DJANGO_LABELS[v], medians[(kind, shape, v)]) for v in DJANGO_VARIANTS]
            print_table(
                f"Django {kind.upper()}, in-process ({handler}, startproject MIDDLEWARE, "
                f"POST: {shape.name})",
                rows,
                base,
            )
    return medians
