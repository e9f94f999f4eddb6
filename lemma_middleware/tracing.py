"""The framework-neutral core: what a traced request records and how its trace is shaped.

The ASGI and WSGI adapters only translate their protocol into calls on
:class:`Tracing` (compiled once per middleware) and :class:`RequestTrace` (one per
request). Every rule about extraction, recording and trace shape lives here.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, cast

from langfuse import Langfuse, propagate_attributes
from opentelemetry import baggage
from opentelemetry import context as otel_context
from opentelemetry import trace as otel_trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.trace import (
    INVALID_SPAN,
    NonRecordingSpan,
    SpanContext,
    Status,
    StatusCode,
    TraceFlags,
)

from .capture import BodyCapture, Redactor, parsed, query_dict, render_body
from .export import ExportedAncestryProcessor, ExportFilter, build_client, is_enabled
from .identity import (
    HeaderNames,
    Identity,
    IdentityResolver,
    first_header,
    header_names,
    log_once,
    user_id_from_auth_user,
)

logger = logging.getLogger("lemma_middleware")

_ACTIVE_KEY = otel_context.create_key("lemma_middleware.request_trace")

DEFAULT_EXCLUDE_PATHS: tuple[str, ...] = (
    "/health",
    "/healthz",
    "/livez",
    "/readyz",
    "/ready",
    "/ping",
    "/metrics",
    "/favicon.ico",
    "/docs",
    "/redoc",
    "/openapi.json",
    "/static/",
)
"""Paths not traced by default: exact matches, or a match followed by ``/``; an entry ending
in ``/`` is a prefix. ``/health`` excludes ``/health`` and ``/health/db``, not ``/healthcare``."""

DEFAULT_EXCLUDE_METHODS: frozenset[str] = frozenset({"OPTIONS", "HEAD"})

SECRET_HEADERS: frozenset[str] = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "cookie",
        "set-cookie",
        "x-api-key",
        "api-key",
        "x-auth-token",
    }
)

_AGENT_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")
_TRACEPARENT = re.compile(r"[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}")
_MAX_METADATA_CHARS = 190  # Langfuse drops metadata values over 200 chars once JSON-encoded

AgentName = str | Callable[[Any], str] | None


@dataclass
class RequestInfo:
    """What an adapter knows about an incoming request when it starts."""

    method: str
    path: str
    query_string: str
    headers: Mapping[str, str]
    """Lower-cased header names (the first value of repeated headers)."""
    request: Any
    """What user callables receive: a Starlette ``Request`` (ASGI) or the WSGI environ."""
    auth_user: Callable[[], Any] | None = None
    """Returns the authenticated user of the request, when the framework knows it."""


_PLAIN_TEXT = re.compile(r'[^"\\\x00-\x1f\x7f]*')


def _json(value: Any) -> str:
    if isinstance(value, str) and _PLAIN_TEXT.fullmatch(value):
        return f'"{value}"'  # what json.dumps gives, without its cost
    return json.dumps(value, ensure_ascii=False, default=str)


def _serialise(value: Any, limit: int) -> str:
    text = value if isinstance(value, str) else _json(value)
    if len(text) > limit:
        text = f"{text[:limit]}… [truncated: {len(text)} characters in total]"
    return text


def _metadata_value(key: str, value: Any) -> str:
    text = value if isinstance(value, str) else _json(value)
    if len(text) > _MAX_METADATA_CHARS:
        log_once(
            f"metadata-long:{key}",
            logging.INFO,
            "lemma_middleware: metadata %r is longer than Langfuse keeps; truncated (logged once)",
            key,
        )
        text = text[: _MAX_METADATA_CHARS - 1] + "…"
    return text


def _masked(mask: Callable[..., Any], value: Any) -> Any:
    return mask(data=parsed(value))


def _call_guarded(name: str, function: Callable[..., Any], *args: Any) -> Any:
    try:
        return function(*args)
    except Exception as error:
        log_once(
            f"callback:{name}:{type(error).__name__}",
            logging.ERROR,
            "lemma_middleware: %s raised %s: %s; ignored (logged once)",
            name,
            type(error).__name__,
            error,
        )
        return None


class Tracing:
    """Compiled options shared by every request a middleware traces (see the README)."""

    def __init__(
        self,
        *,
        agent_name: AgentName = None,
        thread_header: HeaderNames = "x-conversation-id",
        user_header: HeaderNames = "x-user-id",
        tenant_header: HeaderNames = "x-tenant-id",
        identity_resolver: IdentityResolver | None = None,
        use_auth_user: bool = True,
        langfuse: Langfuse | None = None,
        environment: str | None = None,
        release: str | None = None,
        version: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        exclude_paths: Iterable[str | re.Pattern[str]] = DEFAULT_EXCLUDE_PATHS,
        exclude_methods: Iterable[str] = DEFAULT_EXCLUDE_METHODS,
        capture_input: bool = True,
        capture_output: bool = True,
        max_body_bytes: int = 64 * 1024,
        redact_fields: Iterable[str] = (),
        input_from: Callable[[Any], Any] | None = None,
        output_from: Callable[[Any], Any] | None = None,
        trace_id_header: str | None = "x-trace-id",
        continue_upstream_trace: bool = False,
        service_name: str | None = None,
    ) -> None:
        self.agent_name = agent_name or os.environ.get("LEMMA_AGENT_NAME") or "agent"
        if isinstance(self.agent_name, str) and not _AGENT_NAME.fullmatch(self.agent_name):
            logger.warning(
                "lemma_middleware: agent_name %r is not snake_case, kebab-case or CamelCase; "
                "Lemma groups agents by this name",
                self.agent_name,
            )
        if agent_name is None and not os.environ.get("LEMMA_AGENT_NAME"):
            logger.warning("lemma_middleware: no agent_name and no LEMMA_AGENT_NAME; using 'agent'")
        self.thread_headers = header_names(thread_header)
        self.user_headers = header_names(user_header)
        self.tenant_headers = header_names(tenant_header)
        for name in (*self.thread_headers, *self.user_headers, *self.tenant_headers):
            if name in SECRET_HEADERS:
                raise ValueError(f"{name!r} carries secrets and cannot be an identity header")
        self.identity_resolver = identity_resolver
        self.wants_request = identity_resolver is not None or callable(self.agent_name)
        self.use_auth_user = use_auth_user
        self.environment = self._valid_environment(
            environment or os.environ.get("LANGFUSE_TRACING_ENVIRONMENT")
        )
        self.release = release or os.environ.get("LANGFUSE_RELEASE")
        self.version = version
        self.static_metadata = {
            str(k): _metadata_value(str(k), v) for k, v in (metadata or {}).items()
        }
        self.exact_excludes: set[str] = set()
        self.prefix_excludes: list[str] = []
        self.pattern_excludes: list[re.Pattern[str]] = []
        for entry in exclude_paths:
            if isinstance(entry, re.Pattern):
                self.pattern_excludes.append(entry)
            elif entry.endswith("/"):
                self.prefix_excludes.append(entry)
            else:
                self.exact_excludes.add(entry)
                self.prefix_excludes.append(entry + "/")
        self.prefix_tuple = tuple(self.prefix_excludes)
        self.exclude_methods = frozenset(m.upper() for m in exclude_methods)
        self.capture_input = capture_input
        self.capture_output = capture_output
        self.max_body_bytes = max(0, int(max_body_bytes))
        self.redactor = Redactor(redact_fields)
        self.input_from = input_from
        self.output_from = output_from
        self.trace_id_header = (
            trace_id_header.lower().encode("latin-1") if trace_id_header else None
        )
        self.continue_upstream_trace = continue_upstream_trace

        try:
            if langfuse is None:
                service = service_name or (
                    self.agent_name if isinstance(self.agent_name, str) else None
                )
                langfuse = build_client(
                    service_name=service, environment=self.environment, release=self.release
                )
            else:
                install_processors(langfuse)
        except Exception:
            logger.exception("lemma_middleware: setting up export failed; tracing is off")
            langfuse = None
        self.langfuse = langfuse
        self.enabled = is_enabled(langfuse)
        self.tracer: Any = getattr(langfuse, "_otel_tracer", None)
        self.mask: Callable[..., Any] | None = getattr(langfuse, "_mask", None)
        if self.environment is None:
            self.environment = self._valid_environment(getattr(langfuse, "_environment", None))
        client_release = getattr(langfuse, "_release", None)
        self.static_root_attributes: dict[str, Any] = {}
        if self.release or client_release:
            self.static_root_attributes["langfuse.release"] = self.release or client_release
        if self.release or self.version:
            self.static_root_attributes["service.version"] = self.release or self.version
        if not self.enabled:
            logger.warning(
                "lemma_middleware: tracing is off (no Langfuse keys, no LEMMA_API_KEY/"
                "LEMMA_PROJECT_ID, no LEMMA_OTLP_ENDPOINT, or a disabled client); "
                "requests are served untraced"
            )

    @staticmethod
    def _valid_environment(environment: str | None) -> str | None:
        if environment is None:
            return None
        if re.fullmatch(r"(?!langfuse)[a-z0-9_-]{1,40}", environment):
            return environment
        logger.error(
            "lemma_middleware: environment %r does not match ^(?!langfuse)[a-z0-9_-]+$ "
            "(max 40 chars); Langfuse would drop it, so it is not recorded",
            environment,
        )
        return None

    def is_excluded(self, method: str, path: str) -> bool:
        """True for requests that are passed through untraced."""
        if method in self.exclude_methods or path in self.exact_excludes:
            return True
        if self.prefix_tuple and path.startswith(self.prefix_tuple):
            return True
        return any(p.fullmatch(path) for p in self.pattern_excludes)

    def start(self, request: RequestInfo) -> RequestTrace | None:
        """Open the root observation for ``request``; None if that failed (logged once)."""
        try:
            return RequestTrace(self, request)
        except Exception as error:
            log_once(
                f"start:{type(error).__name__}",
                logging.ERROR,
                "lemma_middleware: could not start a trace (%s: %s); request served untraced "
                "(logged once)",
                type(error).__name__,
                error,
            )
            return None

    def flush(self) -> None:
        """Export pending traces now (blocking; call off the request path)."""
        if self.langfuse is not None and self.enabled:
            self.langfuse.flush()


class Exchange:
    """What an adapter observes of one request and its response as they pass through."""

    __slots__ = (
        "completed_at",
        "disconnected",
        "request_body",
        "request_headers",
        "response_body",
        "response_content_encoding",
        "response_content_type",
        "route",
        "status",
        "trace",
        "tracing",
    )

    def __init__(self, tracing: Tracing, request_headers: Mapping[str, str]) -> None:
        self.tracing = tracing
        self.request_headers = request_headers
        """Lower-cased names, the first value of repeated headers."""
        self.request_body = BodyCapture(tracing.max_body_bytes) if tracing.capture_input else None
        self.response_body = BodyCapture(tracing.max_body_bytes) if tracing.capture_output else None
        self.status: int | None = None
        self.route: str | None = None
        self.response_content_type: str | None = None
        self.response_content_encoding: str | None = None
        self.completed_at: int | None = None
        """When the last body chunk was sent (ns); the root's end time."""
        self.disconnected = False
        self.trace: RequestTrace | None = None

    def finish(self, error: BaseException | None = None) -> None:
        """Record the request on its root and end it (idempotent)."""
        if self.trace is not None:
            self.trace.finish(self, error)


class RequestTrace:
    """The root observation of one request, and everything recorded on it."""

    def __init__(self, tracing: Tracing, request: RequestInfo) -> None:
        self.tracing = tracing
        self.request = request
        self.input_override: Any = None
        self.output_override: Any = None
        self.has_input_override = False
        self.has_output_override = False
        self._finished = False
        self.handled_error: BaseException | None = None
        self._auth_pending = tracing.use_auth_user and request.auth_user is not None

        headers = request.headers
        self.layers: dict[str, Identity] = {}
        from_headers = Identity()
        from_headers.merge(
            thread_id=first_header(headers, tracing.thread_headers),
            user_id=first_header(headers, tracing.user_headers),
            tenant_id=first_header(headers, tracing.tenant_headers),
        )
        self.layers["header"] = from_headers
        self._check_auth_user()
        if tracing.identity_resolver is not None:
            resolved = _call_guarded(
                "identity_resolver", tracing.identity_resolver, request.request
            )
            if isinstance(resolved, Mapping) and resolved:
                layer = Identity()
                layer.merge(
                    thread_id=resolved.get("thread_id"),
                    user_id=resolved.get("user_id"),
                    tenant_id=resolved.get("tenant_id"),
                    metadata=resolved.get("metadata"),
                )
                self.layers["resolver"] = layer

        agent = tracing.agent_name
        if callable(agent):
            agent = _call_guarded("agent_name", agent, request.request) or "agent"
        self.agent_name = str(agent)

        upstream = _TRACEPARENT.fullmatch(headers.get("traceparent", "").strip())
        identity = self.identity()
        root_attributes: dict[str, Any] = {
            "langfuse.observation.type": "agent",
            "gen_ai.agent.name": self.agent_name,
            **tracing.static_root_attributes,
            **self._raw_attributes(identity),
        }
        # A fresh trace, never a child of whatever span is current (FastAPI's or OpenTelemetry
        # ASGI's server span, a span from upstream); baggage is dropped too. Other context
        # values (FastAPI's per-request telemetry) are kept.
        fresh = otel_trace.set_span_in_context(
            INVALID_SPAN, baggage.clear(otel_context.get_current())
        )
        parent = fresh
        if upstream:
            trace_id, span_id = upstream.group(1), upstream.group(2)
            root_attributes["langfuse.trace.metadata.upstream.trace_id"] = f'"{trace_id}"'
            root_attributes["langfuse.trace.metadata.upstream.span_id"] = f'"{span_id}"'
            if tracing.continue_upstream_trace:
                remote = SpanContext(
                    int(trace_id, 16),
                    int(span_id, 16),
                    is_remote=True,
                    trace_flags=TraceFlags(TraceFlags.SAMPLED),
                )
                parent = otel_trace.set_span_in_context(NonRecordingSpan(remote), fresh)
                root_attributes["langfuse.internal.as_root"] = True
        # The root observation, started on the Langfuse client's tracer with its attributes
        # in one go (the SDK's observation wrapper would write them one call at a time).
        span = cast(
            Span,
            tracing.tracer.start_span(self.agent_name, context=parent, attributes=root_attributes),
        )
        self.span = span
        self.span_context: SpanContext = span.get_span_context()
        self.trace_id = format(self.span_context.trace_id, "032x")
        token = otel_context.attach(otel_trace.set_span_in_context(span, fresh))
        try:
            # Entered once: it writes the attributes on the root, and the context it builds
            # is kept and re-attached wherever the request's code runs.
            with propagate_attributes(
                user_id=identity.user_id,
                session_id=identity.thread_id,
                trace_name=self.agent_name,
                environment=tracing.environment,
                version=tracing.version,
                metadata=self._propagated_metadata(identity),
            ):
                self.context = otel_context.set_value(_ACTIVE_KEY, self, otel_context.get_current())
        finally:
            otel_context.detach(token)
        self.child_attributes = self._raw_attributes(identity)

    # identity -----------------------------------------------------------------

    def identity(self) -> Identity:
        """The effective identity: bind() > identity_resolver > auth user > headers."""
        effective = Identity()
        for name in ("header", "auth", "resolver", "bind"):
            layer = self.layers.get(name)
            if layer is not None:
                effective.overlay(layer)
        return effective

    def _check_auth_user(self) -> bool:
        if not self._auth_pending or self.request.auth_user is None:
            return False
        user = _call_guarded("auth user lookup", self.request.auth_user)
        if isinstance(user, str):  # e.g. the WSGI REMOTE_USER
            user_id: str | None = user or None
        else:
            user_id = user_id_from_auth_user(user) if user is not None else None
        if user_id is None:
            return False
        self._auth_pending = False
        layer = Identity()
        layer.merge(user_id=user_id)
        self.layers["auth"] = layer
        return True

    def _propagated_metadata(self, identity: Identity) -> dict[str, str]:
        metadata = dict(self.tracing.static_metadata)
        metadata.update({k: _metadata_value(k, v) for k, v in identity.metadata.items()})
        metadata["gen_ai.agent.name"] = self.agent_name
        if identity.thread_id:
            metadata["lemma.thread_id"] = identity.thread_id
        if identity.tenant_id:
            metadata["tenant_id"] = identity.tenant_id
        if self.tracing.environment:
            metadata["deployment.environment.name"] = self.tracing.environment
        return metadata

    def _raw_attributes(self, identity: Identity) -> dict[str, Any]:
        """Keys Lemma reads besides Langfuse's own, written on the root and on children."""
        attributes: dict[str, Any] = {}
        if identity.thread_id:
            attributes["lemma.thread_id"] = identity.thread_id
        if identity.tenant_id:
            attributes["app.tenant.id"] = identity.tenant_id
        if self.tracing.environment:
            attributes["deployment.environment.name"] = self.tracing.environment
        if self.tracing.release:
            attributes["langfuse.release"] = self.tracing.release
        return attributes

    def _identity_attributes(self, identity: Identity) -> dict[str, Any]:
        """Span attributes carrying ``identity`` (the keys propagate_attributes writes)."""
        attributes = self._raw_attributes(identity)
        if identity.user_id:
            attributes["user.id"] = identity.user_id
        if identity.thread_id:
            attributes["session.id"] = identity.thread_id
        for key, value in self._propagated_metadata(identity).items():
            attributes[f"langfuse.trace.metadata.{key}"] = json.dumps(value, ensure_ascii=False)
        return attributes

    def refresh_identity(self) -> None:
        """Apply a late identity (bind(), auth user) to the root and to later children."""
        attributes = self._identity_attributes(self.identity())
        self.span.set_attributes(attributes)
        self.child_attributes = attributes

    def sync_auth_user(self, *, last_chance: bool = False) -> None:
        """Pick up the authenticated user if it became known since the request started.
        ``last_chance``: the framework's auth context ends after this call; stop looking."""
        if self._auth_pending and self._check_auth_user():
            self.refresh_identity()
        if last_chance:
            self._auth_pending = False

    def record_exception(self, error: BaseException) -> None:
        """Note an exception the framework turned into a response (e.g. Flask's 500)."""
        self.handled_error = error

    def bind(self, **values: Any) -> None:
        """Overlay identity values from the handler (highest precedence)."""
        layer = self.layers.setdefault("bind", Identity())
        if layer.merge(**values):
            self.refresh_identity()

    def on_child_start(self, span: Span) -> None:
        """Called for every span started in this request (see RequestScopeProcessor)."""
        self.sync_auth_user()
        span.set_attributes(self.child_attributes)

    # context ------------------------------------------------------------------

    def activate(self) -> object:
        """Make the root and the propagated attributes current; pass the result to
        :meth:`deactivate` in the same thread/task."""
        return otel_context.attach(self.context)

    @staticmethod
    def deactivate(token: object) -> None:
        """Undo :meth:`activate`."""
        otel_context.detach(token)  # type: ignore[arg-type]

    # recording ----------------------------------------------------------------

    def finish(self, exchange: Exchange, error: BaseException | None = None) -> None:
        """Record input, output, outcome and metadata on the root and end it (once)."""
        if self._finished:
            return
        self._finished = True
        try:
            self._record(exchange, error)
        except Exception as failure:
            log_once(
                f"finish:{type(failure).__name__}",
                logging.ERROR,
                "lemma_middleware: recording the trace failed (%s: %s) (logged once)",
                type(failure).__name__,
                failure,
            )
        finally:
            self.span.end(end_time=exchange.completed_at)

    def _record(self, exchange: Exchange, error: BaseException | None) -> None:
        tracing = self.tracing
        self.sync_auth_user()
        error = error or self.handled_error
        request_body, response_body = exchange.request_body, exchange.response_body
        status = exchange.status
        limit = max(tracing.max_body_bytes, 1024) + 200  # room for a truncation marker
        attributes: dict[str, Any] = {}

        recorded_input: Any = None
        if self.has_input_override:
            recorded_input = tracing.redactor.redact(self.input_override)
        elif tracing.capture_input:
            if request_body is not None and request_body.total:
                recorded_input = render_body(
                    request_body,
                    exchange.request_headers.get("content-type"),
                    exchange.request_headers.get("content-encoding"),
                    tracing.redactor,
                    "request",
                )
            else:
                recorded_input = query_dict(self.request.query_string, tracing.redactor)
            if tracing.input_from is not None and recorded_input is not None:
                recorded_input = _call_guarded(
                    "input_from", tracing.input_from, parsed(recorded_input)
                )
        if recorded_input is None and tracing.capture_input:
            # Nothing read and no query: name the request rather than leave the root empty.
            recorded_input = f"{self.request.method} {self.request.path}"
        if recorded_input is not None:
            if tracing.mask is not None:  # the client's own `mask=`, as the SDK applies it
                recorded_input = _call_guarded(
                    "Langfuse mask", _masked, tracing.mask, recorded_input
                )
            text = _serialise(recorded_input, limit)
            attributes["langfuse.observation.input"] = text
            attributes["langfuse.trace.input"] = text

        recorded_output: Any = None
        if self.has_output_override:
            recorded_output = tracing.redactor.redact(self.output_override)
        elif tracing.capture_output and error is None and response_body is not None:
            recorded_output = render_body(
                response_body,
                exchange.response_content_type,
                exchange.response_content_encoding,
                tracing.redactor,
                "response",
            )
            if tracing.output_from is not None and recorded_output is not None:
                recorded_output = _call_guarded(
                    "output_from", tracing.output_from, parsed(recorded_output)
                )
        if recorded_output is None and tracing.capture_output and error is None and status:
            recorded_output = f"<empty body, HTTP {status}>"
        if recorded_output is not None:
            if tracing.mask is not None:
                recorded_output = _call_guarded(
                    "Langfuse mask", _masked, tracing.mask, recorded_output
                )
            text = _serialise(recorded_output, limit)
            attributes["langfuse.observation.output"] = text
            attributes["langfuse.trace.output"] = text

        attributes["langfuse.trace.metadata.http.method"] = _json(self.request.method)
        if exchange.route:
            attributes["langfuse.trace.metadata.http.route"] = _json(exchange.route)
        else:  # no route matched (a 404, a bare ASGI/WSGI app): the path says what was asked
            attributes["langfuse.trace.metadata.http.path"] = _json(self.request.path)
        if status is not None:
            attributes["langfuse.trace.metadata.http.status_code"] = str(status)

        level: str | None = None
        message: str | None = None
        if error is not None:
            level, message = "ERROR", f"{type(error).__name__}: {error}"[:500]
        elif exchange.disconnected and exchange.completed_at is None:
            level, message = "WARNING", "client disconnected before the response was complete"
            attributes["langfuse.trace.metadata.http.client_disconnected"] = "true"
        elif status is None:
            level, message = "ERROR", "the app returned without sending a response"
        elif status >= 500:
            level, message = "ERROR", f"HTTP {status}"
        elif status >= 400:
            level, message = "WARNING", f"HTTP {status}"
        if level is not None:
            attributes["langfuse.observation.level"] = level
            attributes["langfuse.observation.status_message"] = message
            if level == "ERROR":
                self.span.set_status(Status(StatusCode.ERROR, message))
        self.span.set_attributes(attributes)


def current() -> RequestTrace | None:
    """The trace of the request being handled, or None outside a traced request."""
    active = otel_context.get_value(_ACTIVE_KEY)
    return active if isinstance(active, RequestTrace) else None


def current_root_context() -> SpanContext | None:
    """The root span context of the current request (for the ancestry processor)."""
    active = current()
    return active.span_context if active is not None else None


class RequestScopeProcessor(SpanProcessor):
    """Gives every exported span started inside a traced request the raw Lemma keys and
    any identity bound late (bind(), auth user). Runs after the Langfuse span processor.
    Spans that are not exported (a framework's own) are left untouched."""

    def __init__(self, exported: ExportFilter) -> None:
        self._exported = exported

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        active = otel_context.get_value(_ACTIVE_KEY, parent_context)
        if not isinstance(active, RequestTrace) or span is active.span:
            return
        if span.context.trace_id != active.span_context.trace_id:
            return
        try:
            if not self._exported(span):
                return
            active.on_child_start(span)
        except Exception:
            logger.debug("lemma_middleware: request scope failed", exc_info=True)

    def on_end(self, span: ReadableSpan) -> None:
        return None


def install_processors(client: Langfuse) -> None:
    """Add the ancestry and request-scope processors to a user-supplied client's provider
    (once). The ancestry processor has to run before Langfuse's own; private SDK state is
    touched for that, so a failure only logs."""
    resources: Any = getattr(client, "_resources", None)
    provider: Any = getattr(resources, "tracer_provider", None)
    if provider is None or getattr(provider, "_lemma_processors", False):
        return
    try:
        exported = ExportFilter(resources.public_key, resources.should_export_span)
        ancestry = ExportedAncestryProcessor(exported, current_root_context)
        multi = provider._active_span_processor
        with multi._lock:
            multi._span_processors = (ancestry, *multi._span_processors)
        provider.add_span_processor(RequestScopeProcessor(exported))
        provider._lemma_processors = True
    except Exception as error:
        logger.warning("lemma_middleware: could not install span processors: %s", error)


# late binding, from handlers -------------------------------------------------------


def bind(
    *,
    user_id: object = None,
    thread_id: object = None,
    tenant_id: object = None,
    metadata: Mapping[str, Any] | None = None,
) -> None:
    """Attach identity found after the middleware ran (e.g. in a FastAPI dependency).

    Bound values win over every other source, land on the root and on every observation
    created after the call in this request. Outside a traced request: does nothing.
    """
    active = current()
    if active is None:
        return
    try:
        active.bind(user_id=user_id, thread_id=thread_id, tenant_id=tenant_id, metadata=metadata)
    except Exception as error:
        log_once(
            f"bind:{type(error).__name__}",
            logging.ERROR,
            "lemma_middleware: bind failed: %s",
            error,
        )


def set_input(value: Any) -> None:
    """Record ``value`` as the request's input instead of the HTTP body (redacted)."""
    active = current()
    if active is not None:
        active.input_override = value
        active.has_input_override = True


def set_output(value: Any) -> None:
    """Record ``value`` as the agent's answer instead of the HTTP response (redacted)."""
    active = current()
    if active is not None:
        active.output_override = value
        active.has_output_override = True


def get_trace_id() -> str | None:
    """The 32-hex trace id of the current request, or None outside a traced request."""
    active = current()
    return active.trace_id if active is not None else None
