"""What both adapters share: the compiled options, the Langfuse client, and starting a
request's trace.

An adapter (ASGI, WSGI) builds one :class:`Tracing` from its keyword options, asks
:meth:`Tracing.is_excluded` for each request, and starts the request's
:class:`~lemma_middleware.request.RequestTrace` with :meth:`Tracing.start` (or
:meth:`Tracing.start_async`, which awaits async user callables and runs sync ones in a
worker thread so they cannot block the event loop).
"""

from __future__ import annotations

import dataclasses
import inspect
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from asgiref.sync import async_to_sync, sync_to_async
from langfuse import Langfuse

from lemma_middleware.core.logs import (
    UNTRACED,
    call_guarded,
    contained,
    logger,
    report_callback_error,
)
from lemma_middleware.core.options import TracingOptions, compile_options, valid_environment
from lemma_middleware.core.recording import Recorder, RequestInfo
from lemma_middleware.core.sampling import SamplingRules
from lemma_middleware.delivery.deadline import deadline
from lemma_middleware.delivery.exit import set_exit_timeout, wait_for_backlogs
from lemma_middleware.export.adoption import keep_clients_as_configured
from lemma_middleware.export.client import build_client, export_passed_client
from lemma_middleware.export.processors import wire_client
from lemma_middleware.export.provider import framework_telemetry_idle
from lemma_middleware.export.sampling import start_sampling
from lemma_middleware.export.settings import ExportSettings
from lemma_middleware.request.trace import RequestTrace, TraceSetup
from lemma_middleware.sdk.client import ClientAccess, inspect_client

_UNTRACED: tuple[Langfuse | None, ClientAccess] = (None, ClientAccess.disabled())


def _is_async(function: Callable[..., Any]) -> bool:
    """An ``async def`` function, or an object whose ``__call__`` is one."""
    return inspect.iscoroutinefunction(function) or inspect.iscoroutinefunction(
        type(function).__call__
    )


class Tracing:
    """Compiled options and export shared by every request a middleware traces."""

    def __init__(self, **options: Any) -> None:
        """``options``: those of :meth:`TracingOptions.compile` (the README's table)."""
        compiled = compile_options(options)
        set_exit_timeout(compiled.flush_timeout)
        client, access = self._client(compiled)
        self.langfuse: Langfuse | None = client
        self.access: ClientAccess = access
        self.enabled = access.enabled
        sampling = SamplingRules()  # what setting sampling up falls back to: every turn kept
        if access.enabled:
            with contained("setting up sampling", "every turn is kept"):
                sampling = start_sampling(access.provider, compiled.sampling)
        self.options: TracingOptions = dataclasses.replace(
            compiled,
            environment=compiled.environment or valid_environment(access.environment),
            release=compiled.release or access.release,
            sampling=sampling,
        )
        mask = access.mask
        if getattr(mask, "__self__", None) == self.options.redactor:
            mask = None  # the client masks with this very redaction: the root has it already
        self.recorder = Recorder(self.options, mask, bodies_allowed=access.mask_known)
        self.setup = TraceSetup(self.options, self.recorder, access.start_root, access.public_key)
        """What each request's trace is given (see :class:`.request.trace.RequestTrace`)."""
        self.is_excluded = self.options.is_excluded
        """``is_excluded(method, path)``: True for a request passed through untraced."""
        callables = [
            (name, function)
            for name, function in (
                ("identity_resolver", self.options.identity_resolver),
                ("agent_name", self.options.agent_name),
            )
            if callable(function)
        ]
        # Each user callable as the sync adapter calls it and as the async one awaits it.
        self._sync_callables = [
            (name, async_to_sync(f) if _is_async(f) else f) for name, f in callables
        ]
        self._async_callables = [
            (name, f if _is_async(f) else sync_to_async(f, thread_sensitive=False))
            for name, f in callables
        ]
        self.framework_telemetry_idle = partial(framework_telemetry_idle, access.provider)
        """True while FastAPI's native telemetry would record nothing anyone receives (the
        ASGI adapter then serves the request without it; see :mod:`.provider`)."""
        self.awaits_callables = bool(callables)
        """Whether :meth:`start_async` has anything to await (else :meth:`start` will do)."""
        if not self.enabled:
            logger.warning(
                "lemma_middleware: tracing is off (no Langfuse keys, no LEMMA_API_KEY/"
                "LEMMA_PROJECT_ID, no LEMMA_OTLP_ENDPOINT, or a disabled client); "
                "requests are served untraced"
            )

    @staticmethod
    def _client(options: TracingOptions) -> tuple[Langfuse | None, ClientAccess]:
        client = options.langfuse
        with contained("setting up export", "tracing is off"):
            if client is not None and options.adopt_clients and not inspect_client(client).enabled:
                client = None  # a client without keys: the middleware's, made its twin
            if client is None:  # built, and the clients created before it adopted
                client = build_client(
                    service_name=options.service_name,
                    environment=options.environment,
                    release=options.release,
                    redact_fields=options.redactor.extra_fields,
                    adopt_clients=options.adopt_clients,
                )
                return (client, wire_client(client)) if client is not None else _UNTRACED
            if not options.adopt_clients:  # the client passed, as Langfuse configured it
                keep_clients_as_configured(client)
                return client, wire_client(client)
            settings = ExportSettings.read(redact_fields=options.redactor.extra_fields)
            return client, export_passed_client(client, settings)
        return _UNTRACED

    def start(self, request: RequestInfo) -> RequestTrace | None:
        """Open the root observation for ``request``; None if that failed (logged once).
        Async user callables are run to completion on a private event loop."""
        results = {
            name: call_guarded(name, function, request.request)
            for name, function in self._sync_callables
        }
        return self._start(request, results)

    async def start_async(self, request: RequestInfo) -> RequestTrace | None:
        """:meth:`start` for an event loop: async user callables are awaited, sync ones run
        in a worker thread."""
        results = {}
        for name, function in self._async_callables:
            try:
                results[name] = await function(request.request)
            except Exception as error:
                report_callback_error(name, error)
        return self._start(request, results)

    def _start(self, request: RequestInfo, results: dict[str, Any]) -> RequestTrace | None:
        with contained("starting the trace", UNTRACED):
            return RequestTrace(
                self.setup, request, results.get("identity_resolver"), results.get("agent_name")
            )
        return None

    def flush(self) -> None:
        """Export pending traces now, within ``flush_timeout`` (blocking; call off the
        request path). What a destination that is down could not take stays in its backlog
        (delivered later, or bounded at exit)."""
        if self.langfuse is not None and self.enabled:
            started = time.monotonic()
            with deadline(self.options.flush_timeout):
                self.langfuse.flush()
                wait_for_backlogs()
            logger.debug(
                "lemma_middleware: flush: delivery took %.2f s (flush_timeout %.1f s)",
                time.monotonic() - started,
                self.options.flush_timeout,
            )
