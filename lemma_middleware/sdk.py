"""Every use of private Langfuse and OpenTelemetry state, in one place, checked at start-up.

The middleware needs a few things the SDKs do not expose publicly. Each is read here and
nowhere else; :func:`inspect_client` and :func:`check_span_internals` find out at start-up
whether they are still where this module expects them. A missing one is logged once, as an
error naming what is lost, and the public API (or switching the feature off) takes over:

==============================  ============================  =====================================
private state                   used for                      without it
==============================  ============================  =====================================
``Langfuse._otel_tracer``       starting the root with its    ``start_as_current_observation``
                                attributes in one call        (public, slower)
``Langfuse._mask``              applying the client's         bodies are not recorded (privacy
                                ``mask=`` to the root         fails closed)
``Langfuse._environment``,      the client's environment      ``LANGFUSE_TRACING_ENVIRONMENT``,
``Langfuse._release``           and release                   ``LANGFUSE_RELEASE`` / the options
``Langfuse._resources``         a user-supplied client's      span processors not installed:
                                provider, key, export filter  no re-parenting, no late identity
``Langfuse._tracing_enabled``   a disabled client             taken as enabled
``Span._parent``                re-parenting under the        no re-parenting
                                nearest exported ancestor
``TracerProvider.               running the ancestry          added last: children of unexported
_active_span_processor``        processor before Langfuse's   spans may be marked app roots
``langfuse._client.propagation  carrying the propagated       Langfuse's ``propagate_attributes``
._get_propagated_context_key``  attributes in the request's   (public; also writes them on the
                                context directly              root once more)
``LangfuseSpanProcessor.        letting batches that cannot   every batch goes through Langfuse's
_batch_processor._exporter``,   hold media skip Langfuse's    media pass (public behaviour,
``LangfuseTransforming          media pass (an identical      slower export)
SpanExporter._exporter``        copy of every span)
``langfuse._client.get_client  making ``get_client()`` in a  with several clients in the
._current_public_key``          request return the            process, ``get_client()`` without a
                                middleware's client           key gives a disabled client
the text of Langfuse's          noticing a client created     no warning that it stays
"initialized without            before the middleware's       disabled
public_key" log line            with no key (Lemma/OTLP only)
``LangfuseSpanProcessor.        doing that processor's part   roots go through Langfuse's
_span_export_expectation_by     for the middleware's roots    processor (slower)
_id``, ``_app_root_lock``,      directly (the app-root mark
``_should_export_span``,        and the bookkeeping children
``_available_skills``; the      look up), through a copy of
SDK ``Tracer``'s                the client's tracer
``span_processor``,
``_instrumentation_scope``,
``_span_limits``
``LangfuseResourceManager.      noticing that a Langfuse      no warning that the client's
_instances``                    client for the key exists     settings are not the middleware's
                                already (its settings win)
FastAPI's ``scope["fastapi.     skipping FastAPI's native     FastAPI's telemetry runs; wrapped
telemetry"]`` key, the OTel     telemetry when nothing        by the middleware, it starts a
API's default meter/logger      would receive what it         detached trace (warned, with the
provider classes, ``Langfuse    records                       fix)
SpanProcessor._should_export
_span``
==============================  ============================  =====================================
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import weakref
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from functools import cache
from typing import Any, cast

from langfuse import Langfuse, propagate_attributes
from langfuse._client import propagation as langfuse_propagation
from langfuse._client.constants import LANGFUSE_TRACER_NAME
from langfuse._client.span_exporter import LangfuseTransformingSpanExporter
from langfuse._client.span_processor import LangfuseSpanProcessor
from langfuse.span_filter import is_default_export_span
from opentelemetry import _logs as otel_logs
from opentelemetry import baggage
from opentelemetry import context as otel_context
from opentelemetry import metrics as otel_metrics
from opentelemetry import trace as otel_trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import SpanContext, format_span_id

from .attributes import json_text
from .logs import log_once

ShouldExport = Callable[[ReadableSpan], bool]
StartRoot = Callable[[str, Context, dict[str, Any]], Span]

_MISSING = object()

# The private client attributes read here, by name (a test renames them to see the fallbacks).
CLIENT_INTERNALS = {
    "tracer": "_otel_tracer",
    "mask": "_mask",
    "environment": "_environment",
    "release": "_release",
    "resources": "_resources",
    "enabled": "_tracing_enabled",
}


def _client_internal(client: Langfuse, name: str) -> Any:
    return getattr(client, CLIENT_INTERNALS[name], _MISSING)


def _missing(what: str, consequence: str) -> None:
    log_once(
        f"sdk-internal:{what}",
        logging.ERROR,
        "lemma_middleware: this langfuse/opentelemetry version has no %s; %s",
        what,
        consequence,
    )


@dataclass(frozen=True)
class ClientAccess:
    """What the middleware reads from a Langfuse client, found once at start-up."""

    enabled: bool
    start_root: StartRoot
    """Starts the root span with its attributes, as a child of the given context."""
    mask: Callable[..., Any] | None
    mask_known: bool
    """False when the client's mask could not be read: bodies must not be recorded."""
    environment: str | None
    release: str | None
    provider: TracerProvider | None
    public_key: str | None
    should_export: ShouldExport | None

    @classmethod
    def disabled(cls) -> ClientAccess:
        """No client: nothing is traced."""
        return cls(False, _no_root, None, True, None, None, None, None, None)


def _no_root(name: str, parent: Context, attributes: dict[str, Any]) -> Span:
    raise RuntimeError("tracing is off")


def inspect_client(client: Langfuse) -> ClientAccess:
    """Read what the middleware needs from ``client``, falling back to the public API."""
    tracer = _client_internal(client, "tracer")
    enabled_flag = _client_internal(client, "enabled")
    if isinstance(tracer, otel_trace.NoOpTracer) or enabled_flag is False:
        return ClientAccess.disabled()  # no keys, or tracing switched off
    if enabled_flag is _MISSING:
        _missing("Langfuse._tracing_enabled", "the client is taken as enabled")

    start_root: StartRoot
    if callable(getattr(tracer, "start_span", None)):
        start_root = _tracer_start_root(tracer)
    else:
        _missing("Langfuse._otel_tracer", "roots are started through the public API (slower)")
        start_root = _public_start_root(client)

    mask = _client_internal(client, "mask")
    mask_known = mask is not _MISSING
    if not mask_known:
        _missing(
            "Langfuse._mask",
            "the client's mask cannot be applied, so request and response bodies are not recorded",
        )

    resources = _client_internal(client, "resources")
    if resources is _MISSING:
        _missing(
            "Langfuse._resources",
            "span processors are not installed (no re-parenting, no late identity)",
        )
        resources = None
    provider = getattr(resources, "tracer_provider", None)
    return ClientAccess(
        enabled=True,
        start_root=start_root,
        mask=cast(Callable[..., Any], mask) if mask_known and mask is not None else None,
        mask_known=mask_known,
        environment=_text(_client_internal(client, "environment")),
        release=_text(_client_internal(client, "release")),
        provider=provider if isinstance(provider, TracerProvider) else None,
        public_key=_text(getattr(resources, "public_key", None)),
        should_export=getattr(resources, "should_export_span", None),
    )


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _tracer_start_root(tracer: Any) -> StartRoot:
    def start_root(name: str, parent: Context, attributes: dict[str, Any]) -> Span:
        return cast(Span, tracer.start_span(name, context=parent, attributes=attributes))

    return start_root


def _public_start_root(client: Langfuse) -> StartRoot:
    def start_root(name: str, parent: Context, attributes: dict[str, Any]) -> Span:
        token = otel_context.attach(parent)
        try:
            with client.start_as_current_observation(name=name, as_type="agent", end_on_exit=False):
                span = otel_trace.get_current_span()
        finally:
            otel_context.detach(token)
        span.set_attributes(attributes)
        return cast(Span, span)

    return start_root


@cache
def check_span_internals() -> tuple[bool, bool]:
    """Whether spans can be re-parented and processors put first (checked once)."""
    provider = TracerProvider()
    span = cast(Span, provider.get_tracer("lemma_middleware.check").start_span("check"))
    span.end()
    can_reparent = "_parent" in vars(span)
    if can_reparent:
        substitute = SpanContext(1, 2, is_remote=False)
        span._parent = substitute
        can_reparent = span.parent is substitute
    if not can_reparent:
        _missing("Span._parent", "spans under never-exported parents are not re-parented")
    multi = getattr(provider, "_active_span_processor", None)
    can_prepend = isinstance(getattr(multi, "_span_processors", None), tuple) and hasattr(
        getattr(multi, "_lock", None), "__enter__"
    )
    if not can_prepend:
        _missing(
            "TracerProvider._active_span_processor",
            "the ancestry processor runs after Langfuse's when the client already exists",
        )
    provider.shutdown()
    return can_reparent, can_prepend


def reparent(span: Span, parent: SpanContext) -> None:
    """Make ``parent`` the parent ``span`` is exported with."""
    if check_span_internals()[0]:
        span._parent = parent


def add_processor_first(provider: TracerProvider, processor: SpanProcessor) -> None:
    """Add ``processor`` so that it runs before every processor already added."""
    if not check_span_internals()[1]:
        provider.add_span_processor(processor)
        return
    multi: Any = provider._active_span_processor
    with multi._lock:
        multi._span_processors = (processor, *multi._span_processors)


# the root's span processors ---------------------------------------------------------------

_PROPAGATED_PREFIX = "langfuse.propagated."
_NO_ROOT_SHORTCUT = (
    "LangfuseSpanProcessor's app-root bookkeeping as this version knows it",
    "roots go through Langfuse's span processor (slower)",
)
_IS_APP_ROOT = "langfuse.internal.is_app_root"


def _propagates_nothing(context: Context | None) -> bool:
    """Whether Langfuse's processor finds no propagated attribute in ``context`` (no value
    set by ``propagate_attributes``, no baggage)."""
    if context is None:
        return False
    return not any(
        isinstance(key, str) and key.startswith(_PROPAGATED_PREFIX) for key in context
    ) and not baggage.get_all(context)


class _RootProcessors(SpanProcessor):
    """The provider's span processors, in their order, as they run for the middleware's
    roots: Langfuse's processor of the client's key does its part for a root directly.

    For a parentless span of its own client, started in a context with nothing
    propagated, that processor (``LangfuseSpanProcessor.on_start``/``on_end``) finds no
    attribute to propagate, marks the span as the trace's app root, remembers that it is
    exported (children look that up), and at the end hands it to its batch queue and
    forgets it. Done directly, the same work costs a fraction (no export-filter calls, no
    id formatting twice, no attribute-limit pass). :func:`root_shortcut_works` checks at
    start-up that both give the same spans."""

    def __init__(self, multi: Any, langfuse: LangfuseSpanProcessor) -> None:
        self._multi = multi
        self._langfuse = langfuse
        self._expected: dict[str, bool] = langfuse._span_export_expectation_by_id
        self._lock = langfuse._app_root_lock

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        for processor in self._multi._span_processors:
            if processor is self._langfuse:  # every span started here is a marked root
                with self._lock:
                    self._expected[format_span_id(span.context.span_id)] = True
            else:
                processor.on_start(span, parent_context=parent_context)

    def _on_ending(self, span: Span) -> None:
        for processor in self._multi._span_processors:
            processor._on_ending(span)

    def on_end(self, span: ReadableSpan) -> None:
        for processor in self._multi._span_processors:
            if processor is self._langfuse:
                try:
                    BatchSpanProcessor.on_end(processor, span)
                finally:
                    with self._lock:
                        self._expected.pop(format_span_id(span.context.span_id), None)
            else:
                processor.on_end(span)


def _shortcut_start_root(tracer: Any, langfuse: LangfuseSpanProcessor, multi: Any) -> StartRoot:
    root_tracer = copy.copy(tracer)
    root_tracer.span_processor = _RootProcessors(multi, langfuse)
    room = getattr(getattr(tracer, "_span_limits", None), "max_span_attributes", 128)
    room = float("inf") if room is None else room  # None: no limit

    def start_root(name: str, parent: Context, attributes: dict[str, Any]) -> Span:
        if (
            len(attributes) >= room  # Langfuse would drop its mark rather than evict ours
            or otel_trace.get_current_span(parent).get_span_context().is_valid
            or not _propagates_nothing(parent)
        ):
            return cast(Span, tracer.start_span(name, context=parent, attributes=attributes))
        span = root_tracer.start_span(
            name, context=parent, attributes={**attributes, _IS_APP_ROOT: True}
        )
        return cast(Span, span)

    return start_root


def _langfuse_processor(provider: TracerProvider, public_key: str) -> LangfuseSpanProcessor | None:
    multi: Any = provider._active_span_processor
    for processor in multi._span_processors:
        if (
            isinstance(processor, LangfuseSpanProcessor)
            and getattr(processor, "public_key", None) == public_key
        ):
            return processor
    return None


def _can_shortcut(tracer: Any, langfuse: LangfuseSpanProcessor, public_key: str) -> bool:
    """Whether this client's roots are what the shortcut assumes (started by its own
    Langfuse tracer, exported by Langfuse's default filter, no skills to attach), and the
    processor keeps its app-root bookkeeping where the shortcut expects it (logged if not)."""
    scope = getattr(tracer, "_instrumentation_scope", None)
    if not (
        getattr(scope, "name", None) == LANGFUSE_TRACER_NAME
        and (getattr(scope, "attributes", None) or {}).get("public_key") == public_key
        and getattr(langfuse, "_should_export_span", None) is is_default_export_span
        and getattr(langfuse, "_available_skills", None) is None
    ):
        return False  # the client's own configuration: Langfuse's processor does its work
    if (
        isinstance(tracer, otel_trace.Tracer)
        and hasattr(tracer, "span_processor")
        and isinstance(getattr(langfuse, "_span_export_expectation_by_id", None), dict)
        and hasattr(getattr(langfuse, "_app_root_lock", None), "__enter__")
    ):
        return True
    _missing(*_NO_ROOT_SHORTCUT)
    return False


def _probe_roots(shortcut: bool) -> list[tuple[Any, ...]]:
    """A root and a child started as the middleware starts them, on a private provider with
    a Langfuse processor, through the shortcut or not; what the processor exported, and
    what it still remembers afterwards."""
    keep = _Keep()
    provider = TracerProvider()
    processor = LangfuseSpanProcessor(
        public_key="pk-lemma-check",
        secret_key="sk-lemma-check",
        base_url="http://127.0.0.1:9",
        span_exporter=keep,
    )
    try:
        provider.add_span_processor(processor)
        tracer = provider.get_tracer(
            LANGFUSE_TRACER_NAME, "check", attributes={"public_key": "pk-lemma-check"}
        )
        start_root = (
            _shortcut_start_root(tracer, processor, provider._active_span_processor)
            if shortcut
            else _tracer_start_root(tracer)
        )
        parent = otel_trace.set_span_in_context(otel_trace.INVALID_SPAN, Context())
        root = start_root("agent", parent, {"langfuse.observation.type": "agent", "n": 1})
        root.set_attributes({"langfuse.observation.input": '{"q": "x"}'})
        inside = otel_trace.set_span_in_context(root, parent)
        child = tracer.start_span("llm", context=inside, attributes={"gen_ai.system": "x"})
        child.end()
        root.end()
        processor.force_flush()
        remembered = dict(processor._span_export_expectation_by_id)
    finally:
        processor.shutdown()  # type: ignore[no-untyped-call]
        provider.shutdown()
    return [
        (
            s.name,
            tuple((s.attributes or {}).items()),
            s.parent is not None,
            s.kind,
            s.status.status_code,
        )
        for s in keep.spans
    ] + [("remembered", tuple(remembered.items()))]


@cache
def root_shortcut_works() -> bool:
    """Whether roots started through the shortcut come out as Langfuse's processor makes
    them (checked once, on a private provider)."""
    try:
        works = _probe_roots(shortcut=True) == _probe_roots(shortcut=False)
    except Exception:
        works = False
    if not works:
        _missing(*_NO_ROOT_SHORTCUT)
    return works


def shortcut_roots(client: Langfuse, access: ClientAccess) -> ClientAccess:
    """``access`` starting roots through :class:`_RootProcessors` when the client and this
    Langfuse version allow it; unchanged otherwise."""
    if access.provider is None or access.public_key is None:
        return access
    tracer = _client_internal(client, "tracer")
    try:
        langfuse = _langfuse_processor(access.provider, access.public_key)
        if langfuse is None or not _can_shortcut(tracer, langfuse, access.public_key):
            return access
        if not root_shortcut_works():
            return access
        multi = access.provider._active_span_processor
        return dataclasses.replace(access, start_root=_shortcut_start_root(tracer, langfuse, multi))
    except Exception:
        return access


# Langfuse's media pass -----------------------------------------------------------------

# Every string Langfuse's media pass can change contains one of these (a data URI, or JSON
# with inline data); a batch without any is exported by it as an identical copy.
_MEDIA_MARKERS = ("data:", "inline_data", "inlineData", '"data"')


def _may_hold_media(spans: Sequence[ReadableSpan]) -> bool:
    short: list[str] = []  # searched together
    long: dict[int, str] = {}  # searched one by one, once: the root's input and output are
    for span in spans:  # each two attributes holding one object
        for value in (span.attributes or {}).values():
            if isinstance(value, str):
                if len(value) < 1024:
                    short.append(value)
                else:
                    long[id(value)] = value
            elif isinstance(value, tuple | list):
                short.extend(item for item in value if isinstance(item, str))
    return any(_holds_media_marker(text) for text in ("\n".join(short), *long.values()))


def _holds_media_marker(text: str) -> bool:
    return "ata" in text and any(marker in text for marker in _MEDIA_MARKERS)  # all hold "ata"


class MediaScreenedExporter(SpanExporter):
    """Langfuse's transforming exporter for batches that may hold media; the exporter
    behind it, directly, for batches that cannot (what Langfuse would send, unchanged)."""

    def __init__(self, transforming: LangfuseTransformingSpanExporter, inner: SpanExporter):
        self.transforming = transforming
        self.inner = inner

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if _may_hold_media(spans):
            return self.transforming.export(spans)
        return self.inner.export(spans)

    def shutdown(self) -> None:
        self.transforming.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.transforming.force_flush(timeout_millis)


class _Keep(SpanExporter):
    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans.extend(spans)
        return SpanExportResult.SUCCESS


def _media_pass_is_identity(transforming: LangfuseTransformingSpanExporter) -> bool:
    """Whether Langfuse's media pass, as configured on this client, sends a span without
    media unchanged: the same OTLP bytes."""
    provider = TracerProvider()
    span = cast(Span, provider.get_tracer("lemma_middleware.check").start_span("check"))
    span.set_attributes(
        {
            "langfuse.observation.input": '{"message": "where is my parcel?"}',
            "langfuse.trace.metadata.http.route": '"/chat"',
            "langfuse.observation.output": "plain text",
            "gen_ai.request.model": "m",
            "tags": ("a", "b"),
            "count": 3,
        }
    )
    span.end()
    keep = _Keep()
    probe = LangfuseTransformingSpanExporter(
        exporter=keep,
        media_manager=transforming._media_manager,
        mask_otel_spans=None,
    )
    probe.export([span])
    provider.shutdown()
    return len(keep.spans) == 1 and (
        encode_spans(keep.spans).SerializeToString() == encode_spans([span]).SerializeToString()
    )


def _langfuse_batch(provider: TracerProvider, public_key: str) -> Any:
    """The batch processor inside the Langfuse processor of ``public_key`` (None if the
    layout is not the known one)."""
    processor = _langfuse_processor(provider, public_key)
    if processor is None:
        return None
    batch = processor._batch_processor
    return batch if isinstance(batch._exporter, SpanExporter) else None


def langfuse_exporter(provider: TracerProvider, public_key: str) -> SpanExporter | None:
    """What the Langfuse processor of ``public_key`` exports each batch through (for the
    benchmark's export-cost figures)."""
    try:
        batch = _langfuse_batch(provider, public_key)
    except Exception:
        return None
    return cast(SpanExporter, batch._exporter) if batch is not None else None


def screen_media_pass(provider: TracerProvider, public_key: str) -> bool:
    """Let batches without media skip the media pass of the Langfuse processor of
    ``public_key`` on ``provider``. False (and nothing changed) where that cannot be done
    safely: a client-level ``mask_otel_spans``, an unknown processor layout, or a media pass
    that changes spans without media."""
    try:
        batch = _langfuse_batch(provider, public_key)
        transforming = batch._exporter if batch is not None else None
        if batch is not None and not isinstance(transforming, LangfuseTransformingSpanExporter):
            return False  # no media pass at all (or already screened): nothing to skip
        if isinstance(transforming, LangfuseTransformingSpanExporter):
            if transforming._mask_otel_spans is not None:
                return False  # the client masks spans at export: leave the pass whole
            inner = transforming._exporter
            if isinstance(inner, SpanExporter) and _media_pass_is_identity(transforming):
                batch._exporter = MediaScreenedExporter(transforming, inner)
                return True
    except Exception:
        pass
    _missing(
        "LangfuseSpanProcessor._batch_processor._exporter",
        "every export batch goes through Langfuse's media pass (slower export)",
    )
    return False


# propagated attributes -------------------------------------------------------------------


def _public_propagation(base: Context, arguments: dict[str, Any]) -> Context:
    token = otel_context.attach(base)
    try:
        with propagate_attributes(**arguments):
            return otel_context.get_current()
    finally:
        otel_context.detach(token)


# The private Langfuse function naming a propagated value's context key (a test renames it).
PROPAGATION_KEY_FUNCTION = "_get_propagated_context_key"


def _direct_propagation(base: Context, arguments: dict[str, Any]) -> Context:
    context_key = getattr(langfuse_propagation, PROPAGATION_KEY_FUNCTION)
    values = dict(base)  # one new context, rather than one per value
    for name, value in arguments.items():
        if value is None:
            continue
        key = context_key(name)
        if isinstance(value, dict):  # metadata: JSON text, merged with an enclosing one's
            enclosing: dict[str, str] = base.get(key) or {}  # type: ignore[assignment]
            value = enclosing | {k: json_text(v) for k, v in value.items()}
        values[key] = value
    return Context(values)


@cache
def direct_propagation_works() -> bool:
    """Whether putting the propagated values in the context directly gives the context
    ``propagate_attributes`` gives (checked once, on sample values, inside an enclosing
    propagation so that the metadata merge is checked too)."""
    sample = {
        "user_id": "user-1",
        "session_id": "thread-1",
        "trace_name": "agent",
        "environment": "production",
        "version": "v1",
        "metadata": {"tenant_id": "Zürich AG", "lemma.thread_id": "thread-1", "q": 'say "hi"'},
    }
    try:
        outer = _public_propagation(otel_context.Context(), {"metadata": {"team": "a"}})
        works = _direct_propagation(outer, sample) == _public_propagation(outer, sample)
    except Exception:
        works = False
    if not works:
        _missing(
            "langfuse._client.propagation._get_propagated_context_key",
            "propagated attributes go through propagate_attributes (slower)",
        )
    return works


def propagation_context(base: Context, arguments: dict[str, Any]) -> Context:
    """``base`` carrying ``arguments`` (those of Langfuse's ``propagate_attributes``, already
    valid) as that function would, for every span started in it."""
    if direct_propagation_works():
        return _direct_propagation(base, arguments)
    return _public_propagation(base, arguments)


def downstream_context(base: Context, arguments: dict[str, Any]) -> Context:
    """``base`` with ``arguments`` also as W3C baggage entries, exactly as Langfuse's
    ``propagate_attributes(as_baggage=True)`` writes them (public API)."""
    token = otel_context.attach(base)
    try:
        with propagate_attributes(**arguments, as_baggage=True):
            return otel_context.get_current()
    finally:
        otel_context.detach(token)


# FastAPI's native telemetry -------------------------------------------------------------

FASTAPI_TELEMETRY_KEY = "fastapi.telemetry"
"""A scope carrying this key is served by FastAPI without its native telemetry (FastAPI
sets it itself for excluded requests and mounted apps)."""


@cache
def fastapi_honours_telemetry_key() -> bool:
    """Whether the installed FastAPI skips its telemetry for a scope with the key."""
    try:
        import inspect

        import fastapi.telemetry  # noqa: F401  (a FastAPI with native telemetry)
        from fastapi import FastAPI
    except ImportError:
        return False  # no FastAPI, or one without native telemetry: nothing to skip
    try:
        source = inspect.getsource(FastAPI.__call__)
    except (OSError, TypeError):
        source = ""
    if FASTAPI_TELEMETRY_KEY in source:
        return True
    _missing(
        "FastAPI's scope['fastapi.telemetry'] key",
        "FastAPI's native telemetry runs inside the middleware when it wraps the app",
    )
    return False


def exports_framework_spans(provider: TracerProvider) -> bool:
    """Whether any span processor on ``provider`` could export a web framework's spans: True
    unless every one exports by Langfuse's default filter (Langfuse's own processors with
    that filter, and processors marked ``exports_by_langfuse_filter``), or when the
    processors cannot be read."""
    if not check_span_internals()[1]:
        return True
    processors: Any = provider._active_span_processor._span_processors
    known = _langfuse_filtered.get(provider)
    if known is not None and known[0] is processors:
        return known[1]
    exports = not all(
        getattr(p, "exports_by_langfuse_filter", False)
        or (
            isinstance(p, LangfuseSpanProcessor)
            and getattr(p, "_should_export_span", None) is is_default_export_span
        )
        for p in processors
    )
    _langfuse_filtered[provider] = (processors, exports)
    return exports


_langfuse_filtered: weakref.WeakKeyDictionary[TracerProvider, tuple[Any, bool]] = (
    weakref.WeakKeyDictionary()
)


def telemetry_pipelines_configured() -> bool:
    """True when a meter or logger provider other than the OpenTelemetry API's default is
    installed globally (what FastAPI's telemetry would feed besides spans)."""
    try:
        providers = (otel_metrics.get_meter_provider(), otel_logs.get_logger_provider())
    except Exception:
        return True
    return any(
        not type(p).__module__.startswith(("opentelemetry.metrics", "opentelemetry._logs"))
        for p in providers
    )


def detach_client(provider: TracerProvider, public_key: str, processors: Sequence[Any]) -> None:
    """Take the Langfuse processor of ``public_key`` and ``processors`` off ``provider`` and
    forget Langfuse's client for the key (the production capture of the testing helpers,
    whose clients live on the process's global provider one test at a time)."""
    if check_span_internals()[1]:
        multi: Any = provider._active_span_processor
        with multi._lock:
            multi._span_processors = tuple(
                p
                for p in multi._span_processors
                if p not in processors
                and not (isinstance(p, LangfuseSpanProcessor) and p.public_key == public_key)
            )
    try:
        from langfuse._client.resource_manager import LangfuseResourceManager

        LangfuseResourceManager._instances.pop(public_key, None)
    except Exception:
        pass


def langfuse_client_exists(public_key: str) -> bool:
    """Whether a Langfuse client for ``public_key`` was created in this process already
    (Langfuse keeps the first one's settings for every later ``Langfuse(...)``)."""
    try:
        from langfuse._client.resource_manager import LangfuseResourceManager

        return public_key in LangfuseResourceManager._instances
    except Exception:
        return False


def _current_public_key_variable() -> ContextVar[str | None] | None:
    try:
        from langfuse._client import get_client as get_client_module

        variable = get_client_module._current_public_key
    except Exception:
        variable = None
    if isinstance(variable, ContextVar):
        return variable
    _missing(
        "langfuse._client.get_client._current_public_key",
        "with several Langfuse clients in the process, get_client() inside a request "
        "returns a disabled client",
    )
    return None


CURRENT_PUBLIC_KEY = _current_public_key_variable()
"""Langfuse's per-context public key: ``get_client()`` (``@observe``, integrations) without
a key returns the client of this key. Set to the middleware's client's key while a request
runs; None if this Langfuse version has no such variable."""


class _KeylessClientWatch(logging.Filter):
    """Notices Langfuse's log line for a client created without a public key (a
    module-level ``get_client()`` or ``CallbackHandler()`` before the middleware's client
    exists, in a Lemma- or OTLP-only setup: that client stays disabled)."""

    seen = False

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.seen and "initialized without public_key" in str(record.msg):
            self.seen = True
        return True


_keyless_watch = _KeylessClientWatch()
logging.getLogger("langfuse").addFilter(_keyless_watch)


def keyless_client_created() -> bool:
    """Whether a Langfuse client without a public key was created in this process (seen
    only if this module was imported first, as ``import lemma_middleware`` does)."""
    return _keyless_watch.seen
