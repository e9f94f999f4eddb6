"""One traced request, from start to end: identity, the root, propagation, finish.

Read top to bottom: :class:`RequestTrace` is created by :meth:`Tracing.start` when a request
arrives; it works out who the request belongs to, starts the parentless root and builds the
context that carries the root and the propagated attributes; the adapter activates that
context wherever the request's code runs; children started in it get Lemma's raw keys (see
:class:`~lemma_middleware.request.scope.RequestScopeProcessor`); identity that arrives late is
applied to the root and to later children; :meth:`RequestTrace.finish` records input, output
and outcome and ends the root.
"""

from __future__ import annotations

import re
import time
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from opentelemetry import baggage, propagate
from opentelemetry import context as otel_context
from opentelemetry import trace as otel_trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import Span
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.trace import (
    INVALID_SPAN,
    NonRecordingSpan,
    SpanContext,
    Status,
    StatusCode,
    TraceFlags,
)

from lemma_middleware.core.attributes import (
    METADATA_PREFIX,
    TraceValues,
    json_text,
    propagate_arguments,
    propagated_metadata,
    raw_attributes,
    root_attributes,
    span_attributes,
)
from lemma_middleware.core.identity import (
    Identity,
    IdentitySources,
    first_header,
    identity_from_baggage,
    identity_from_mapping,
    user_id_of,
)
from lemma_middleware.core.logs import call_guarded, contained
from lemma_middleware.core.options import TracingOptions
from lemma_middleware.core.recording import Exchange, Overrides, Recorder, RequestInfo
from lemma_middleware.core.sampling import KeptBecause
from lemma_middleware.request.sampling import TurnSampling
from lemma_middleware.sdk.client import StartRoot
from lemma_middleware.sdk.clients import CURRENT_PUBLIC_KEY
from lemma_middleware.sdk.direct_propagation import propagation_context
from lemma_middleware.sdk.propagation import downstream_context

_RELEASED = Context()
_TRACEPARENT = re.compile(r"[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


@dataclass(frozen=True)
class TraceSetup:
    """What every request's trace needs from the middleware's set-up (built once, by
    :class:`~lemma_middleware.adapters.tracing.Tracing`)."""

    options: TracingOptions
    recorder: Recorder
    start_root: StartRoot
    """Starts the root span with its attributes (see :class:`.sdk.client.ClientAccess`)."""
    public_key: str | None
    """The client's key, made the one ``get_client()`` returns while the request runs."""


class RequestTrace:
    """The root observation of one request, and everything recorded on it."""

    def __init__(
        self,
        setup: TraceSetup,
        request: RequestInfo,
        resolved: object = None,
        agent_name: object = None,
    ) -> None:
        """``resolved``/``agent_name``: what the identity resolver and an agent-name callable
        returned for this request (:class:`~lemma_middleware.adapters.tracing.Tracing` calls
        them, sync or async)."""
        options = setup.options
        self.setup = setup
        self.request = request
        self.overrides = Overrides()
        self._finished = False
        self.upstream_sampled: bool | None = None
        """A trusted caller's ``traceparent`` sampled flag (None: no such caller)."""
        self.handled_error: BaseException | None = None

        # Who the request belongs to.
        headers = request.headers
        from_headers = Identity()
        from_headers.merge(
            thread_id=first_header(headers, options.thread_headers),
            user_id=first_header(headers, options.user_headers),
            tenant_id=first_header(headers, options.tenant_headers),
        )
        self.identity = IdentitySources(from_headers)
        self._auth_pending = options.use_auth_user and request.auth_user is not None
        self._check_auth_user()
        self.trusted_upstream = options.trusts(request.client)
        if self.trusted_upstream:
            self.identity.set("upstream", identity_from_baggage(headers.get("baggage")))
        self.identity.set("resolver", identity_from_mapping(resolved))
        name = agent_name if callable(options.agent_name) else options.agent_name
        self.agent_name = str(name or "agent")
        values = self.values()

        # The root: a fresh trace, never a child of whatever span is current (FastAPI's or
        # OpenTelemetry ASGI's server span, a span from upstream); baggage is dropped too.
        # Other context values (FastAPI's per-request telemetry) are kept.
        metadata = propagated_metadata(values)  # computed once for the root and the context
        fresh = otel_trace.set_span_in_context(
            INVALID_SPAN, baggage.clear(otel_context.get_current())
        )
        upstream: dict[str, Any] = {}
        parent = self._upstream_parent(headers.get("traceparent", ""), fresh, upstream)
        rules, thread_id = options.sampling, values.identity.thread_id
        if rules.dropped_at_start(thread_id, self.upstream_sampled):
            # Nothing of this turn can be kept: a root that records nothing, so the
            # handler's observations record nothing either (their parent is not sampled).
            span: Span | NonRecordingSpan = _unrecorded_root(parent)
        else:
            attributes = root_attributes(values, metadata)
            attributes.update(upstream)
            span = setup.start_root(self.agent_name, parent, attributes)
        self.span = span
        self.span_context: SpanContext = span.get_span_context()
        self.trace_id = format(self.span_context.trace_id, "032x")
        self.sampling: TurnSampling | None = None
        """Whether the turn is kept, when sampling is on (see :mod:`.request.sampling`)."""
        if rules.active and (span.is_recording() or isinstance(span, _UnrecordedRoot)):
            self._started = time.monotonic()
            self.sampling = TurnSampling(
                rules, self.span_context.trace_id, thread_id, self.upstream_sampled
            )

        # The context the request's code runs in: the root, the propagated attributes
        # (Langfuse's processor writes them on every child), and this.
        propagated = propagation_context(
            otel_trace.set_span_in_context(span, fresh), propagate_arguments(values, metadata)
        )
        if options.propagate_downstream:  # thread, user, tenant as W3C baggage too
            propagated = downstream_context(propagated, propagate_arguments(values, metadata))
        self.context: Context = otel_context.set_value(ACTIVE_REQUEST, self, propagated)
        self.child_attributes: dict[str, str] = raw_attributes(values)

    def _upstream_parent(
        self, traceparent: str, fresh: Context, attributes: dict[str, Any]
    ) -> Context:
        """Keep an incoming ``traceparent`` as metadata; continue it only when asked."""
        upstream = _TRACEPARENT.fullmatch(traceparent.strip())
        if not upstream:
            return fresh
        trace_id, span_id = upstream.group(1), upstream.group(2)
        attributes[METADATA_PREFIX + "upstream.trace_id"] = f'"{trace_id}"'
        attributes[METADATA_PREFIX + "upstream.span_id"] = f'"{span_id}"'
        options = self.setup.options
        continued = options.continue_upstream_trace and (
            self.trusted_upstream or not options.trusted_upstreams
        )
        if self.trusted_upstream or continued:  # the caller's sampling decision is followed
            self.upstream_sampled = bool(int(upstream.group(3), 16) & TraceFlags.SAMPLED)
        if not continued:
            return fresh
        remote = SpanContext(
            int(trace_id, 16),
            int(span_id, 16),
            is_remote=True,
            trace_flags=TraceFlags(TraceFlags.SAMPLED),
        )
        attributes["langfuse.internal.as_root"] = True
        return otel_trace.set_span_in_context(NonRecordingSpan(remote), fresh)

    # identity -----------------------------------------------------------------

    def values(self) -> TraceValues:
        """What the trace carries now (identity in precedence order)."""
        options = self.setup.options
        return TraceValues(
            agent_name=self.agent_name,
            identity=self.identity.effective(),
            environment=options.environment,
            release=options.release,
            version=options.version,
            static_metadata=options.static_metadata,
        )

    def _check_auth_user(self) -> bool:
        if not self._auth_pending or self.request.auth_user is None:
            return False
        user = call_guarded("auth user lookup", self.request.auth_user)
        user_id = user_id_of(user)
        if user_id is None:
            return False
        self._auth_pending = False
        layer = Identity()
        layer.merge(user_id=user_id)
        self.identity.set("auth", layer)
        return True

    def _apply_late_identity(self) -> None:
        attributes = span_attributes(self.values())
        self.span.set_attributes(attributes)
        self.child_attributes = attributes

    def sync_auth_user(self, *, last_chance: bool = False) -> None:
        """Pick up the authenticated user if it became known since the request started.
        ``last_chance``: the framework's auth context ends after this call; stop looking."""
        if self._auth_pending and self._check_auth_user():
            self._apply_late_identity()
        if last_chance:
            self._auth_pending = False

    def bind(self, **values: Any) -> None:
        """Overlay identity values from the handler (highest precedence); a thread id
        bound decides the sampling of a turn that had none."""
        if self.identity.bind(**values):
            self._apply_late_identity()
            thread_id = self.identity.effective().thread_id
            if self.sampling is not None and thread_id is not None:
                self.sampling.thread_known(thread_id)

    def on_child_start(self, span: Span) -> None:
        """Called for every exported span started in this request."""
        self.sync_auth_user()
        span.set_attributes(self.child_attributes)

    # context ------------------------------------------------------------------

    def activate(self) -> object:
        """Make the root and the propagated attributes current (and the middleware's client
        the one ``get_client()`` returns); pass the result to :meth:`deactivate` in the same
        thread/task."""
        key = self.setup.public_key
        return (
            otel_context.attach(self.context),
            ENTERED.set(self),
            CURRENT_PUBLIC_KEY.set(key) if CURRENT_PUBLIC_KEY is not None and key else None,
        )

    @staticmethod
    def deactivate(token: Any) -> None:
        """Undo :meth:`activate`."""
        context_token, entered_token, key_token = token
        otel_context.detach(context_token)
        ENTERED.reset(entered_token)
        if key_token is not None:
            CURRENT_PUBLIC_KEY.reset(key_token)  # type: ignore[union-attr]

    def outgoing_headers(self) -> dict[str, str]:
        """``traceparent`` (the current span) and W3C ``baggage`` (thread, user, tenant and
        the propagated metadata as they are now) for a call to another service."""
        context = downstream_context(otel_context.get_current(), propagate_arguments(self.values()))
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=context)
        traceparent = carrier.get("traceparent")
        if self.sampling is not None and traceparent is not None and len(traceparent) == 55:
            carrier["traceparent"] = traceparent[:53] + ("01" if self.sampling.head_kept else "00")
        return carrier

    # end ----------------------------------------------------------------------

    def record_exception(self, error: BaseException) -> None:
        """Note an exception the framework turned into a response (e.g. Flask's 500)."""
        self.handled_error = error

    @property
    def finished(self) -> bool:
        """True once :meth:`finish` ran."""
        return self._finished

    def finish(self, exchange: Exchange, error: BaseException | None = None) -> None:
        """Decide the turn's sampling, record input, output and outcome on the root if it
        is kept, and end it (once). A turn sampling drops costs no body rendering."""
        if self._finished:
            return
        self._finished = True
        if isinstance(self.span, _UnrecordedRoot):  # dropped as it started
            if self.sampling is not None:
                self.sampling.finish(failed=False, seconds=0.0)
            return
        try:
            with contained("recording the trace", "the root ends without what failed"):
                self.sync_auth_user()
                recorder, error = self.setup.recorder, error or self.handled_error
                if self.overrides.route is not None:  # set_route() wins over the adapter's
                    exchange.route = self.overrides.route
                attributes, failure = recorder.outcome(self.request, exchange, error)
                if self.sampling is not None:
                    seconds = time.monotonic() - self._started
                    because = self.sampling.finish(failure is not None, seconds)
                    if because is None:
                        return
                    attributes.update(self._sampling_metadata(because))
                if failure is not None:
                    self.span.set_status(Status(StatusCode.ERROR, failure))
                attributes.update(recorder.bodies(self.request, exchange, self.overrides, error))
                self.span.set_attributes(attributes)
        finally:
            if self.sampling is not None and not self.sampling.finished:
                self.sampling.finish(failed=True, seconds=0.0)  # recording failed: as an error
            self.span.end(end_time=exchange.completed_at)

    def _sampling_metadata(self, because: KeptBecause) -> dict[str, str]:
        assert self.sampling is not None
        metadata = {
            METADATA_PREFIX + "sampling.kept_because": json_text(str(because)),
            METADATA_PREFIX + "sampling.rate": repr(self.sampling.rules.rate),
        }
        if self.sampling.children_dropped:
            metadata[METADATA_PREFIX + "sampling.children_dropped"] = str(
                self.sampling.children_dropped
            )
        return metadata

    def release(self) -> None:
        """Drop the request's context; the adapter calls this when it is done with the
        request (after :meth:`finish`). The context refers to this trace and this trace to
        the context: released, reference counting frees both at once rather than the
        garbage collector later (fewer and shorter collection pauses under load). Code
        still running in the context (a background task) keeps its own reference to it."""
        self.context = _RELEASED


class _UnrecordedRoot(NonRecordingSpan):
    """The root of a turn sampling drops as it starts (nothing is recorded or exported)."""


_ids = RandomIdGenerator()


def _unrecorded_root(parent: Context) -> _UnrecordedRoot:
    """A not-sampled root in a continued upstream trace, or in a new trace."""
    upstream = otel_trace.get_current_span(parent).get_span_context()
    trace_id = upstream.trace_id if upstream.is_valid else _ids.generate_trace_id()
    return _UnrecordedRoot(
        SpanContext(trace_id, _ids.generate_span_id(), is_remote=False, trace_flags=TraceFlags(0))
    )


ACTIVE_REQUEST = otel_context.create_key("lemma_middleware.request_trace")


ENTERED: ContextVar[RequestTrace | None] = ContextVar("lemma_middleware_entered", default=None)
"""The request an adapter is serving in this task or thread, kept apart from the
OpenTelemetry context: a server instrumentation inside the middleware may replace that
context (it restarts from the request headers), and this tells the processors it happened."""
