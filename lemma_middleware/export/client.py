"""The Langfuse client the middleware exports through: built once per configuration, with
its destinations, batching and mask, and wired with the middleware's span processors.

:func:`build_client` reads the configuration (arguments, else the environment), looks the
client up by its :class:`ClientRecipe`, and builds it in small steps when it is new: the
tracer provider, the primary export (what the Langfuse client itself exports through), the
warnings about clients created earlier, the client, the extra destinations, the wiring.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from langfuse import Langfuse
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter

from lemma_middleware.core.environment import positive_number
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

DEFAULT_FLUSH_AT = 128
"""Spans per export batch (Langfuse's own default is 512)."""
DEFAULT_FLUSH_INTERVAL = 1.0
"""Seconds between exports at most (Langfuse's own default is 5)."""


@dataclass(frozen=True)
class ClientRecipe:
    """Everything a built client depends on: equal recipes share one client."""

    destinations: tuple[Destination, ...]
    span_exporter: SpanExporter | None
    """Replaces every destination (compared by identity)."""
    tracer_provider: TracerProvider | None
    public_key: str | None
    service_name: str | None
    environment: str | None
    release: str | None
    timeout: float
    flush_at: int
    flush_interval: float
    backlog_bytes: int
    redact_fields: frozenset[str] | None
    """None: no mask."""


@dataclass
class PrimaryExport:
    """What the Langfuse client itself exports through, and the destinations left for
    batch processors of their own."""

    public_key: str
    langfuse_arguments: dict[str, Any]
    extra: list[Destination]
    delivering: list[DeliveryExporter] = field(default_factory=list)


_clients: dict[ClientRecipe, Langfuse] = {}
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
        for recipe in [r for r, c in _clients.items() if c is client]:
            del _clients[recipe]


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
    recipe = ClientRecipe(
        destinations=tuple(destinations),
        span_exporter=span_exporter,
        tracer_provider=tracer_provider,
        public_key=public_key,
        service_name=service_name,
        environment=environment,
        release=release,
        timeout=timeout,
        flush_at=flush_at or positive_number("LANGFUSE_FLUSH_AT", int, DEFAULT_FLUSH_AT),
        flush_interval=flush_interval
        or positive_number("LANGFUSE_FLUSH_INTERVAL", float, DEFAULT_FLUSH_INTERVAL),
        backlog_bytes=max_backlog_bytes
        or int(
            positive_number("LEMMA_EXPORT_BACKLOG_MB", float, DEFAULT_MAX_BACKLOG_BYTES / 2**20)
            * 2**20
        ),
        redact_fields=None if redact_fields is None else frozenset(redact_fields),
    )
    with _clients_lock:
        client = _clients.get(recipe)
        if client is None:
            client = _clients[recipe] = _build(recipe)
        return client


def _build(recipe: ClientRecipe) -> Langfuse:
    provider = provider_for(recipe.tracer_provider, recipe.service_name, recipe.release)
    primary = _primary_export(recipe)
    if recipe.span_exporter is None:
        _warn_about_earlier_clients(primary, recipe)
    owned = (
        provider.adding_own_processors()
        if isinstance(provider, OwnedTracerProvider)
        else contextlib.nullcontext()
    )
    with owned:  # the client's processors export by Langfuse's default filter
        client = Langfuse(
            tracer_provider=provider,
            mask=None if recipe.redact_fields is None else Redactor(recipe.redact_fields).mask,
            environment=recipe.environment,
            release=recipe.release,
            timeout=int(recipe.timeout),
            flush_interval=recipe.flush_interval,
            flush_at=recipe.flush_at,
            **primary.langfuse_arguments,
        )
        extra = [_exporter(d, recipe) for d in primary.extra]
        wire_client(
            client,
            extra,
            [*primary.delivering, *extra],
            schedule_delay_millis=recipe.flush_interval * 1000,
            max_export_batch_size=recipe.flush_at,
            export_timeout_millis=recipe.timeout * 1000,
        )
    watch_provider(provider)
    if recipe.span_exporter is None:
        where = ", ".join(f"{d.name} ({d.endpoint})" for d in recipe.destinations)
        announce(
            f"lemma_middleware: exporting traces to {where}, in batches of up to "
            f"{recipe.flush_at} spans at least every {recipe.flush_interval:g} s"
        )
    return client


def _exporter(destination: Destination, recipe: ClientRecipe) -> DeliveryExporter:
    return DeliveryExporter(
        destination.name,
        OTLPHTTPSender(destination.endpoint, destination.headers),
        timeout=recipe.timeout,
        max_backlog_bytes=recipe.backlog_bytes,
    )


def _primary_export(recipe: ClientRecipe) -> PrimaryExport:
    """The user's span exporter (no destination then); else the Langfuse destination,
    with its account; else the first destination, under a key derived from it."""
    if recipe.span_exporter is not None:
        key = recipe.public_key or f"lemma-mw-{id(recipe.span_exporter):x}"
        arguments = {"secret_key": "unused", "span_exporter": recipe.span_exporter}
        return PrimaryExport(key, {"public_key": key, **arguments}, [])
    extra = list(recipe.destinations)
    langfuse = next((d for d in extra if d.langfuse_account), None)
    if langfuse is not None and langfuse.langfuse_account:
        extra.remove(langfuse)
        key, secret, base_url = langfuse.langfuse_account
        exporter = _exporter(langfuse, recipe)
        arguments = {"secret_key": secret, "base_url": base_url, "span_exporter": exporter}
        return PrimaryExport(key, {"public_key": key, **arguments}, extra, [exporter])
    first = extra.pop(0)
    digest = hashlib.sha256(repr(first).encode()).hexdigest()[:12]
    key = recipe.public_key or f"lemma-mw-{first.name}-{digest}"
    exporter = _exporter(first, recipe)
    arguments = {"secret_key": "unused", "span_exporter": exporter}
    return PrimaryExport(key, {"public_key": key, **arguments}, extra, [exporter])


def _warn_about_earlier_clients(primary: PrimaryExport, recipe: ClientRecipe) -> None:
    """Langfuse clients created before this one keep their own settings."""
    if not any(d.langfuse_account for d in recipe.destinations) and keyless_client_created():
        logger.warning(
            "lemma_middleware: a Langfuse client was created before the middleware's, with "
            "no Langfuse keys (get_client() or CallbackHandler() at import time?); it stays "
            "disabled and nothing recorded through it is exported. With Lemma or OTLP "
            "destinations only, call get_client() inside your handlers, or create the "
            "middleware's client first (build_client() at the top of your module)"
        )
    if langfuse_client_exists(primary.public_key):
        logger.warning(
            "lemma_middleware: a Langfuse client for public key %s was created before the "
            "middleware's (get_client() or CallbackHandler() at import time?); Langfuse "
            "keeps the first client's settings, so observations made through it are not "
            "masked with the middleware's redaction and its export has no retry backlog. "
            "Create the middleware's client first (build_client() at the top of your "
            "module) or pass it: LemmaMiddleware(app, langfuse=build_client())",
            primary.public_key,
        )


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
