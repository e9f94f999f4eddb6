"""What the root records when a request ends: input, output and outcome.

Input and output go through one pipeline (:meth:`Recorder.side`): the handler's
``set_input``/``set_output`` value, else the captured body rendered by its content type,
else a fallback that keeps the root from being empty; then the Langfuse client's ``mask``;
then serialised within the size limit. The outcome (level, status message, HTTP metadata)
does not depend on the bodies.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from langfuse import LangfuseOtelSpanAttributes as Langfuse

from lemma_middleware.core.attributes import METADATA_PREFIX, Keys, json_text
from lemma_middleware.core.capture import BodyCapture, parsed, query_dict, render_body
from lemma_middleware.core.logs import call_guarded, contained
from lemma_middleware.core.options import TracingOptions


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
    client: str | None = None
    """The peer's address as the server sees it (behind a proxy: the proxy's)."""


_CONTENT_TYPE = ("content-type", b"content-type")


_CONTENT_ENCODING = ("content-encoding", b"content-encoding")


def _text(value: str | bytes) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else value


class Exchange:
    """What an adapter observes of one request and its response as they pass through."""

    __slots__ = (
        "completed_at",
        "disconnected",
        "request_body",
        "response_body",
        "response_content_encoding",
        "response_content_type",
        "route",
        "status",
    )

    def __init__(self, options: TracingOptions) -> None:
        limit = options.max_body_bytes
        self.request_body = BodyCapture(limit) if options.capture_input else None
        self.response_body = BodyCapture(limit) if options.capture_output else None
        self.status: int | None = None
        self.route: str | None = None
        self.response_content_type: str | None = None
        self.response_content_encoding: str | None = None
        self.completed_at: int | None = None
        """When the last body chunk was sent (ns); the root's end time."""
        self.disconnected = False

    def response_started(
        self, status: int | None, headers: Iterable[tuple[str, str]] | Iterable[tuple[bytes, bytes]]
    ) -> None:
        """Note the status and the headers that say how to read the body (names and values
        as WSGI's text or ASGI's bytes)."""
        self.status = status
        for name, value in headers:
            lowered = name.lower()
            if lowered in _CONTENT_TYPE:
                self.response_content_type = _text(value)
            elif lowered in _CONTENT_ENCODING:
                self.response_content_encoding = _text(value)

    def unread_body_wanted(self, headers: Mapping[str, str], error: BaseException | None) -> int:
        """How many bytes of a request body the app never read the adapter should fetch now,
        so that a failed turn records what caused it (0: none). Only when the request failed
        (an exception, no response, or 4xx/5xx), the app read nothing, the client is still
        there, and the request declares a body; at most the capture limit."""
        body = self.request_body
        if body is None or body.total or self.disconnected:
            return 0
        if error is None and self.status is not None and self.status < 400:
            return 0
        length = headers.get("content-length", "").strip()
        if length.isdigit():
            return min(int(length), body.limit)
        if "chunked" in headers.get("transfer-encoding", "").lower():
            return body.limit
        return 0


UNREAD_BODY_WAIT = 0.1
"""Seconds an adapter waits at most for a failed request's unread body."""


class Overrides:
    """What the handler asked to record instead of the bodies (``set_input``/``set_output``)
    and instead of the route the adapter found (``set_route``)."""

    __slots__ = ("has_input", "has_output", "input", "output", "route")

    def __init__(self) -> None:
        self.has_input = self.has_output = False
        self.input: Any = None
        self.output: Any = None
        self.route: str | None = None

    def set_input(self, value: Any) -> None:
        """Record ``value`` as the input."""
        self.input, self.has_input = value, True

    def set_output(self, value: Any) -> None:
        """Record ``value`` as the output."""
        self.output, self.has_output = value, True


def _masked(mask: Callable[..., Any], value: Any) -> Any:
    return mask(data=parsed(value))


def serialise(value: Any, limit: int) -> str:
    """``value`` as the text Langfuse records, cut at ``limit`` characters with a marker."""
    text = value if isinstance(value, str) else json_text(value)
    if len(text) > limit:
        text = f"{text[:limit]}… [truncated: {len(text)} characters in total]"
    return text


class Recorder:
    """Turns a finished exchange into the root's attributes (compiled once per middleware).

    ``mask`` is the Langfuse client's ``mask=``; ``bodies_allowed`` False records no input
    or output at all (the mask exists but could not be read: privacy fails closed).
    """

    def __init__(
        self, options: TracingOptions, mask: Callable[..., Any] | None, bodies_allowed: bool
    ) -> None:
        self.options = options
        self.mask = mask
        self.bodies_allowed = bodies_allowed
        self.limit = max(options.max_body_bytes, 1024) + 200  # room for a truncation marker

    def side(
        self,
        *,
        override: tuple[bool, Any],
        capturing: bool,
        render: Callable[[], Any],
        derive: Callable[[Any], Any] | None,
        derive_name: str,
        fallback: str | None,
    ) -> str | None:
        """One side (input or output) of the request, as recorded text, or None."""
        has_override, override_value = override
        value: Any = None
        if has_override:
            value = self.options.redactor.redact(override_value)
        elif capturing:
            value = render()
            if derive is not None and value is not None:
                value = call_guarded(derive_name, derive, parsed(value))
        if value is None and capturing:
            value = fallback
        if value is None:
            return None
        if self.mask is not None:  # the client's own `mask=`, as the SDK applies it
            value = call_guarded("Langfuse mask", _masked, self.mask, value)
        return serialise(value, self.limit)

    def bodies(
        self,
        request: RequestInfo,
        exchange: Exchange,
        overrides: Overrides,
        error: BaseException | None,
    ) -> dict[str, Any]:
        """The root's input and output attributes (none when bodies are not allowed)."""
        bodies: dict[str, Any] = {}
        if self.bodies_allowed:
            with contained("recording input/output", "the trace is recorded without them"):
                self._bodies(bodies, request, exchange, overrides, error)
        return bodies

    def _bodies(
        self,
        attributes: dict[str, Any],
        request: RequestInfo,
        exchange: Exchange,
        overrides: Overrides,
        error: BaseException | None,
    ) -> None:
        options, redactor = self.options, self.options.redactor
        request_body, response_body = exchange.request_body, exchange.response_body

        def render_input() -> Any:
            if request_body is not None and request_body.total:
                return render_body(
                    request_body,
                    request.headers.get("content-type"),
                    request.headers.get("content-encoding"),
                    redactor,
                    "request",
                )
            return query_dict(request.query_string, redactor)

        def render_output() -> Any:
            if response_body is None:
                return None
            return render_body(
                response_body,
                exchange.response_content_type,
                exchange.response_content_encoding,
                redactor,
                "response",
            )

        recorded_input = self.side(
            override=(overrides.has_input, overrides.input),
            capturing=options.capture_input,
            render=render_input,
            derive=options.input_from,
            derive_name="input_from",
            # Nothing read and no query: name the request rather than leave the root empty.
            fallback=f"{request.method} {request.path}",
        )
        if recorded_input is not None:
            attributes[Langfuse.OBSERVATION_INPUT] = recorded_input
            attributes[Keys.TRACE_INPUT] = recorded_input
        status = exchange.status
        recorded_output = self.side(
            override=(overrides.has_output, overrides.output),
            capturing=options.capture_output and error is None,
            render=render_output,
            derive=options.output_from,
            derive_name="output_from",
            fallback=f"<empty body, HTTP {status}>" if status else None,
        )
        if recorded_output is not None:
            attributes[Langfuse.OBSERVATION_OUTPUT] = recorded_output
            attributes[Keys.TRACE_OUTPUT] = recorded_output

    @staticmethod
    def outcome(
        request: RequestInfo, exchange: Exchange, error: BaseException | None
    ) -> tuple[dict[str, Any], str | None]:
        """HTTP metadata, level and status message; the error message when it failed."""
        status = exchange.status
        attributes: dict[str, Any] = {METADATA_PREFIX + "http.method": json_text(request.method)}
        if exchange.route:
            attributes[METADATA_PREFIX + "http.route"] = json_text(exchange.route)
        else:  # no route matched (a 404, a bare ASGI/WSGI app): the path says what was asked
            attributes[METADATA_PREFIX + "http.path"] = json_text(request.path)
        if status is not None:
            attributes[METADATA_PREFIX + "http.status_code"] = str(status)

        level: str | None = None
        message: str | None = None
        if error is not None:
            level, message = "ERROR", f"{type(error).__name__}: {error}"[:500]
        elif exchange.disconnected and exchange.completed_at is None:
            level, message = "WARNING", "client disconnected before the response was complete"
            attributes[METADATA_PREFIX + "http.client_disconnected"] = "true"
        elif status is None:
            level, message = "ERROR", "the app returned without sending a response"
        elif status >= 500:
            level, message = "ERROR", f"HTTP {status}"
        elif status >= 400:
            level, message = "WARNING", f"HTTP {status}"
        if level is not None:
            attributes[Langfuse.OBSERVATION_LEVEL] = level
            attributes[Langfuse.OBSERVATION_STATUS_MESSAGE] = message
        return attributes, message if level == "ERROR" else None
