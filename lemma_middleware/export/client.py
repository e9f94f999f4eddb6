"""The Langfuse client the middleware exports through: built once per configuration, with
its destinations, batching and mask, and wired with the middleware's span processors.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from langfuse import Langfuse
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter

from lemma_middleware.core.logs import announce, log_once, logger
from lemma_middleware.core.redaction import Redactor
from lemma_middleware.delivery.exit import watch_provider
from lemma_middleware.delivery.exporter import (
    DEFAULT_MAX_BACKLOG_BYTES,
    DeliveryExporter,
    FlushWaitsForDelivery,
)
from lemma_middleware.delivery.http import OTLPHTTPSender
from lemma_middleware.export.destinations import Destination, resolve_destinations
from lemma_middleware.export.processors import DestinationProcessor, ExportFilter, wire_provider
from lemma_middleware.export.provider import OwnedTracerProvider, provider_for
from lemma_middleware.sdk.client import ClientAccess, inspect_client
from lemma_middleware.sdk.clients import keyless_client_created, langfuse_client_exists
from lemma_middleware.sdk.media_screen import screen_media_pass
from lemma_middleware.sdk.root_shortcut import shortcut_roots


def _exporter(destination: Destination, timeout: float, backlog_bytes: int) -> DeliveryExporter:
    return DeliveryExporter(
        destination.name,
        OTLPHTTPSender(destination.endpoint, destination.headers),
        timeout=timeout,
        max_backlog_bytes=backlog_bytes,
    )


DEFAULT_FLUSH_AT = 128
"""Spans per export batch (Langfuse's own default is 512)."""


DEFAULT_FLUSH_INTERVAL = 1.0
"""Seconds between exports at most (Langfuse's own default is 5)."""


def _env_number(name: str, kind: type[int] | type[float], default: float) -> Any:
    raw = os.environ.get(name)
    if raw:
        try:
            value = kind(raw)
            if value > 0:
                return value
        except ValueError:
            pass
        logger.error(
            "lemma_middleware: misconfiguration: %s=%r is not a positive number", name, raw
        )
    return default


_clients: dict[tuple[Any, ...], Langfuse] = {}


_clients_lock = threading.Lock()


_capturing: Langfuse | None = None
"""While set (the ``lemma_production_traces`` fixture), :func:`build_client` called without
an exporter or provider of its own returns it, so apps built in a test export to memory."""


def capture_builds(client: Langfuse | None) -> None:
    """Make :func:`build_client` return ``client`` (None: stop), for the testing helpers."""
    global _capturing
    _capturing = client


def forget_client(client: Langfuse) -> None:
    """Drop ``client`` from :func:`build_client`'s cache (the testing helpers' teardown)."""
    with _clients_lock:
        for key in [k for k, v in _clients.items() if v is client]:
            del _clients[key]


def build_client(
    *,
    service_name: str | None = None,
    environment: str | None = None,
    release: str | None = None,
    lemma_api_key: str | None = None,
    lemma_project_id: str | None = None,
    lemma_url: str | None = None,
    langfuse_public_key: str | None = None,
    langfuse_secret_key: str | None = None,
    langfuse_host: str | None = None,
    otlp_endpoint: str | None = None,
    otlp_headers: Mapping[str, str] | None = None,
    span_exporter: SpanExporter | None = None,
    tracer_provider: TracerProvider | None = None,
    public_key: str | None = None,
    timeout: float = 5.0,
    flush_interval: float | None = None,
    flush_at: int | None = None,
    redact_fields: Iterable[str] | None = (),
    max_backlog_bytes: int | None = None,
) -> Langfuse | None:
    """A Langfuse client exporting to every configured destination, or None if there is none.

    ``span_exporter`` (with a distinct ``public_key``) replaces all destinations, e.g. an
    in-memory exporter in tests. Clients are built once per configuration and reused.
    Without ``tracer_provider``, the global provider is used if one is set, else a new one
    (resource ``service.name``) is created and made global, so that OpenTelemetry
    instrumentations (LLM clients, FastAPI) reach the same export.

    The client's ``mask`` is the middleware's redaction (:data:`DEFAULT_REDACT_FIELDS` plus
    ``redact_fields``; ``redact_fields=None`` for no mask): every observation of the client,
    children of a request included, is redacted as the root's input and output are.

    Batching: at most ``flush_at`` spans per export (``LANGFUSE_FLUSH_AT``, else
    :data:`DEFAULT_FLUSH_AT`), at least every ``flush_interval`` seconds
    (``LANGFUSE_FLUSH_INTERVAL``, else :data:`DEFAULT_FLUSH_INTERVAL`). Smaller batches than
    Langfuse's 512 keep each export's hold on the interpreter short: the benchmark's
    batching section measured p99 under load against both settings.

    Delivery: each destination retries batches that failed on a timeout, a connection
    error, 429 or 5xx, from a backlog of at most ``max_backlog_bytes`` compressed bytes
    (``LEMMA_EXPORT_BACKLOG_MB``, else 32 MB); see :mod:`lemma_middleware.delivery`.
    """
    if _capturing is not None and span_exporter is None and tracer_provider is None:
        return _capturing
    flush_at = flush_at or _env_number("LANGFUSE_FLUSH_AT", int, DEFAULT_FLUSH_AT)
    backlog_bytes = max_backlog_bytes or int(
        _env_number("LEMMA_EXPORT_BACKLOG_MB", float, DEFAULT_MAX_BACKLOG_BYTES / 2**20) * 2**20
    )
    flush_interval = flush_interval or _env_number(
        "LANGFUSE_FLUSH_INTERVAL", float, DEFAULT_FLUSH_INTERVAL
    )
    destinations, problems = resolve_destinations(
        lemma_api_key=lemma_api_key,
        lemma_project_id=lemma_project_id,
        lemma_url=lemma_url,
        langfuse_public_key=langfuse_public_key,
        langfuse_secret_key=langfuse_secret_key,
        langfuse_host=langfuse_host,
        otlp_endpoint=otlp_endpoint,
        otlp_headers=otlp_headers,
    )
    for problem in problems:
        logger.error("lemma_middleware: misconfiguration: %s", problem)
    if span_exporter is None and not destinations:
        return None

    key = (
        tuple((d.name, d.endpoint, tuple(sorted(d.headers.items()))) for d in destinations),
        id(span_exporter),
        id(tracer_provider),
        public_key,
        service_name,
        environment,
        release,
        flush_at,
        flush_interval,
        backlog_bytes,
        None if redact_fields is None else frozenset(redact_fields),
    )
    with _clients_lock:
        client = _clients.get(key)
        if client is not None:
            return client
        provider = provider_for(tracer_provider, service_name, release)
        owned = (
            provider.adding_own_processors()
            if isinstance(provider, OwnedTracerProvider)
            else contextlib.nullcontext()
        )

        langfuse_destination = next((d for d in destinations if d.langfuse_account), None)
        extra = [d for d in destinations if d is not langfuse_destination]
        langfuse_kwargs: dict[str, Any] = {}
        delivering: list[DeliveryExporter] = []  # every exporter of this client
        if span_exporter is not None:
            pk = public_key or f"lemma-mw-{id(span_exporter):x}"
            langfuse_kwargs = {
                "public_key": pk,
                "secret_key": "unused",
                "span_exporter": span_exporter,
            }
            extra = []
        elif langfuse_destination is not None and langfuse_destination.langfuse_account:
            pk, secret, base_url = langfuse_destination.langfuse_account
            langfuse_kwargs = {
                "public_key": pk,
                "secret_key": secret,
                "base_url": base_url,
                "span_exporter": _exporter(langfuse_destination, timeout, backlog_bytes),
            }
            delivering.append(langfuse_kwargs["span_exporter"])
        else:
            primary = extra.pop(0)
            digest = hashlib.sha256(repr(primary).encode()).hexdigest()[:12]
            pk = public_key or f"lemma-mw-{primary.name}-{digest}"
            langfuse_kwargs = {
                "public_key": pk,
                "secret_key": "unused",
                "span_exporter": _exporter(primary, timeout, backlog_bytes),
            }
            delivering.append(langfuse_kwargs["span_exporter"])

        if span_exporter is None and langfuse_destination is None and keyless_client_created():
            logger.warning(
                "lemma_middleware: a Langfuse client was created before the middleware's, with "
                "no Langfuse keys (get_client() or CallbackHandler() at import time?); it stays "
                "disabled and nothing recorded through it is exported. With Lemma or OTLP "
                "destinations only, call get_client() inside your handlers, or create the "
                "middleware's client first (build_client() at the top of your module)"
            )
        if span_exporter is None and langfuse_client_exists(pk):
            logger.warning(
                "lemma_middleware: a Langfuse client for public key %s was created before the "
                "middleware's (get_client() or CallbackHandler() at import time?); Langfuse "
                "keeps the first client's settings, so observations made through it are not "
                "masked with the middleware's redaction and its export has no retry backlog. "
                "Create the middleware's client first (build_client() at the top of your "
                "module) or pass it: LemmaMiddleware(app, langfuse=build_client())",
                pk,
            )
        with owned:  # the client's processors export by Langfuse's default filter
            client = Langfuse(
                tracer_provider=provider,
                mask=None if redact_fields is None else Redactor(redact_fields).mask,
                environment=environment,
                release=release,
                timeout=int(timeout),
                flush_interval=flush_interval,
                flush_at=flush_at,
                **langfuse_kwargs,
            )
            extra_exporters = [_exporter(d, timeout, backlog_bytes) for d in extra]
            delivering += extra_exporters
            wire_client(
                client,
                extra_exporters,
                delivering,
                schedule_delay_millis=flush_interval * 1000,
                max_export_batch_size=flush_at,
                export_timeout_millis=timeout * 1000,
            )
        watch_provider(provider)
        if span_exporter is None:
            where = ", ".join(f"{d.name} ({d.endpoint})" for d in destinations)
            announce(
                f"lemma_middleware: exporting traces to {where}, in batches of up to "
                f"{flush_at} spans at least every {flush_interval:g} s"
            )
        _clients[key] = client
        return client


def wire_client(
    client: Langfuse,
    extra: Sequence[SpanExporter] = (),
    delivering: Sequence[DeliveryExporter] = (),
    **batch_options: Any,
) -> ClientAccess:
    """Add the middleware's processors to the tracer provider ``client`` really uses (the
    one path for clients built here and clients users bring): ancestry, request scope, a
    batch processor (``batch_options``) for each ``extra`` exporter, and last, when the
    client delivers through ``delivering``, :class:`FlushWaitsForDelivery`."""
    access = inspect_client(client)
    if access.provider is None or access.public_key is None:
        if access.enabled:
            log_once(
                "wire-client",
                logging.WARNING,
                "lemma_middleware: the Langfuse client's tracer provider is unknown; spans "
                "under never-exported parents are not re-parented and late identity is not "
                "propagated",
            )
        return access
    exported = ExportFilter(access.public_key, access.should_export)
    processors: tuple[SpanProcessor, ...] = tuple(
        DestinationProcessor(exporter, exported, **batch_options) for exporter in extra
    )
    if delivering:
        processors += (FlushWaitsForDelivery(delivering),)
    wire_provider(access.provider, exported, processors)
    screen_media_pass(access.provider, access.public_key)
    return shortcut_roots(client, access)
