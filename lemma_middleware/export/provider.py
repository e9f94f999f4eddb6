"""The tracer provider the middleware creates when the app has none.

With a global SDK provider in place, web frameworks record their own spans on it: FastAPI's
native telemetry (``FastAPI()`` as everyone writes it) opens a server span and operation
spans for every request, OpenTelemetry's ASGI/WSGI/HTTP-client instrumentations do the same.
No destination of this middleware exports them (Langfuse's export filter drops them), yet
each one is created, run through every span processor and encoded into nothing: on a small
endpoint that is about as much work as the trace itself.

:class:`OwnedTracerProvider` hands those frameworks a tracer that records nothing: the span
it returns carries its parent's context, so anything started inside (an LLM call, a tool)
is a child of the real parent, exactly as it would be a grandchild through the dropped span
after re-parenting. This holds only while every span processor on the provider exports by
Langfuse's default filter (the ones :func:`~lemma_middleware.export.build_client` adds).
As soon as anything else adds a processor (a user's own exporter, a Langfuse client with
its own ``should_export_span``), framework spans are recorded again, as on any provider.
A provider the user created is never this class and is left alone.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, cast

from opentelemetry import trace as otel_trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.trace import Link, NonRecordingSpan, Span, SpanContext, SpanKind, Tracer

from lemma_middleware.core.environment import variable
from lemma_middleware.core.logs import logger
from lemma_middleware.sdk.telemetry import (
    exports_framework_spans,
    fastapi_honours_telemetry_key,
    telemetry_pipelines_configured,
)

FRAMEWORK_SCOPES: frozenset[str] = frozenset(
    {
        "fastapi",  # FastAPI's native telemetry
        "opentelemetry.instrumentation.asgi",
        "opentelemetry.instrumentation.fastapi",
        "opentelemetry.instrumentation.starlette",
        "opentelemetry.instrumentation.wsgi",
        "opentelemetry.instrumentation.flask",
        "opentelemetry.instrumentation.django",
        "opentelemetry.instrumentation.falcon",
        "opentelemetry.instrumentation.pyramid",
        "opentelemetry.instrumentation.tornado",
        "opentelemetry.instrumentation.aiohttp_server",
        "opentelemetry.instrumentation.httpx",
        "opentelemetry.instrumentation.requests",
        "opentelemetry.instrumentation.urllib",
        "opentelemetry.instrumentation.urllib3",
        "opentelemetry.instrumentation.aiohttp_client",
    }
)
"""Instrumentation scopes of web servers and HTTP clients: their spans carry no ``gen_ai.*``
attribute and no LLM scope, so Langfuse's default filter never exports them."""


class OwnedTracerProvider(TracerProvider):
    """An SDK provider whose framework spans cost nothing while nobody exports them."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._start_owning()

    @classmethod
    def take_over(cls, provider: TracerProvider) -> bool:
        """Make ``provider`` one of these if it is a plain SDK provider on which nothing could
        export framework spans (the one Langfuse creates for the first client when there is
        none, holding only Langfuse's processors): its framework spans then cost nothing,
        until a processor that could export them is added. True if it is one now."""
        if isinstance(provider, cls):
            return True
        if type(provider) is not TracerProvider or exports_framework_spans(provider):
            return False
        provider.__class__ = cls
        cls._start_owning(cast(OwnedTracerProvider, provider))
        return True

    def _start_owning(self) -> None:
        self.records_framework_spans = False
        """True once a processor not known to export by Langfuse's default filter was added."""
        self._adding_own: int | None = None

    @contextmanager
    def adding_own_processors(self) -> Iterator[None]:
        """Processors added by this thread inside the block export by the default filter."""
        self._adding_own = threading.get_ident()
        try:
            yield
        finally:
            self._adding_own = None

    def add_span_processor(self, span_processor: SpanProcessor) -> None:
        super().add_span_processor(span_processor)
        if self._adding_own != threading.get_ident():
            self.records_framework_spans = True

    def get_tracer(
        self,
        instrumenting_module_name: str,
        instrumenting_library_version: str | None = None,
        schema_url: str | None = None,
        attributes: Any = None,
    ) -> Tracer:
        tracer = super().get_tracer(
            instrumenting_module_name, instrumenting_library_version, schema_url, attributes
        )
        if instrumenting_module_name in FRAMEWORK_SCOPES:
            return PassThroughTracer(tracer, self)
        return tracer


class PassThroughTracer(Tracer):
    """A framework's tracer on an :class:`OwnedTracerProvider`: while the provider has no
    processor that could export the framework's spans, a started span is the parent's
    context, not recording; otherwise the real tracer's span."""

    def __init__(self, tracer: Tracer, provider: OwnedTracerProvider) -> None:
        self._tracer = tracer
        self._provider = provider

    def start_span(
        self,
        name: str,
        context: Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Mapping[str, Any] | None = None,
        links: Sequence[Link] | None = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
    ) -> Span:
        if self._provider.records_framework_spans:
            return self._tracer.start_span(
                name,
                context,
                kind,
                attributes,
                links,
                start_time,
                record_exception,
                set_status_on_exception,
            )
        return NonRecordingSpan(_parent_context(context))

    def start_as_current_span(  # type: ignore[override]
        self,
        name: str,
        context: Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Mapping[str, Any] | None = None,
        links: Sequence[Link] | None = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
        end_on_exit: bool = True,
    ) -> AbstractContextManager[Span]:
        """The real tracer's, or the parent's context left current: code inside sees the
        same current span as it would without the framework's telemetry."""
        span = self.start_span(
            name,
            context,
            kind,
            attributes,
            links,
            start_time,
            record_exception,
            set_status_on_exception,
        )
        if not self._provider.records_framework_spans and (
            context is None or not otel_trace.get_current_span(context).get_span_context().is_valid
        ):
            return _Yield(span)  # the parent's context, already current
        return otel_trace.use_span(
            span,
            end_on_exit=end_on_exit,
            record_exception=record_exception,
            set_status_on_exception=set_status_on_exception,
        )


def _parent_context(context: Context | None) -> SpanContext:
    """The span context a framework span started with ``context`` would have as parent. A
    server instrumentation passes the context it extracted from the request headers alone:
    without a ``traceparent`` that holds no span, and the current one (the request's root,
    when the middleware wraps the framework) is the parent instead."""
    parent = otel_trace.get_current_span(context).get_span_context()
    if context is not None and not parent.is_valid:
        return otel_trace.get_current_span().get_span_context()
    return parent


class _Yield(AbstractContextManager[Span]):
    """``with`` gives ``span`` and changes nothing."""

    __slots__ = ("span",)

    def __init__(self, span: Span) -> None:
        self.span = span

    def __enter__(self) -> Span:
        return self.span

    def __exit__(self, *exc_info: object) -> None:
        return None


def adding_own_processors(provider: TracerProvider) -> AbstractContextManager[None]:
    """Within the block, processors this thread adds to ``provider`` export by Langfuse's
    default filter (the middleware's own): framework spans stay free on an
    :class:`OwnedTracerProvider` (any other provider: nothing changes)."""
    if isinstance(provider, OwnedTracerProvider):
        return provider.adding_own_processors()
    return nullcontext()


def provider_for(
    tracer_provider: TracerProvider | None, service_name: str | None, release: str | None
) -> TracerProvider:
    """``tracer_provider`` if given, else the global SDK provider if there is one, else a
    new :class:`OwnedTracerProvider` (resource ``service.name``/``service.version``), made
    global so that OpenTelemetry instrumentations (LLM clients, frameworks) reach it."""
    if tracer_provider is not None:
        return tracer_provider
    current = otel_trace.get_tracer_provider()
    if isinstance(current, TracerProvider):
        logger.info(
            "lemma_middleware: adding the export to the existing global TracerProvider "
            "(its resource, incl. service.name, is kept)"
        )
        OwnedTracerProvider.take_over(current)
        return current
    attributes: dict[str, Any] = {}
    if service_name and not variable("OTEL_SERVICE_NAME"):
        attributes["service.name"] = service_name
    if release:
        attributes["service.version"] = release
    provider = OwnedTracerProvider(resource=Resource.create(attributes))
    otel_trace.set_tracer_provider(provider)
    return provider


def framework_telemetry_idle(provider: TracerProvider | None) -> bool:
    """True while a framework's native telemetry would produce nothing anyone receives: no
    span processor on ``provider`` exports framework spans (only Langfuse's default filter
    and the middleware's own) and no SDK meter or logger provider is installed. The ASGI
    adapter then serves FastAPI apps without their telemetry, which would otherwise restart
    the trace context from the request headers inside the middleware."""
    if provider is None:
        return False
    if isinstance(provider, OwnedTracerProvider) and provider.records_framework_spans:
        return False
    return (
        fastapi_honours_telemetry_key()
        and not exports_framework_spans(provider)
        and not telemetry_pipelines_configured()
    )
