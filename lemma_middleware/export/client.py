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
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from langfuse import Langfuse
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter

from lemma_middleware.core.logs import announce, logger
from lemma_middleware.delivery.exit import watch_provider
from lemma_middleware.delivery.exporter import (
    DeliveryExporter,
)
from lemma_middleware.export.adoption import BUILT_KEYS, destination_exporter
from lemma_middleware.export.adoption import adopt_clients as adopt_earlier_clients
from lemma_middleware.export.destinations import Destination, resolve_destinations
from lemma_middleware.export.processors import (
    wire_client,
)
from lemma_middleware.export.provider import (
    adding_own_processors,
    provider_for,
)
from lemma_middleware.export.settings import ExportSettings
from lemma_middleware.sdk.client import ClientAccess, inspect_client
from lemma_middleware.sdk.clients import langfuse_client_exists


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
    export: ExportSettings
    adopt_clients: bool


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
    adopt_clients: bool = True,
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

    Langfuse clients created before this one (``adopt_clients``) get the same export,
    batching and mask: see :mod:`lemma_middleware.export.adoption`.
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
        export=ExportSettings.read(
            timeout=timeout,
            flush_at=flush_at,
            flush_interval=flush_interval,
            max_backlog_bytes=max_backlog_bytes,
            redact_fields=redact_fields,
        ),
        adopt_clients=adopt_clients,
    )
    with _clients_lock:
        client = _clients.get(recipe)
        if client is None:
            client = _clients[recipe] = _build(recipe)
        return client


def _build(recipe: ClientRecipe) -> Langfuse:
    provider = provider_for(recipe.tracer_provider, recipe.service_name, recipe.release)
    primary = _primary_export(recipe)
    existed = langfuse_client_exists(primary.public_key)
    settings = recipe.export
    with adding_own_processors(provider):  # the client's export by Langfuse's default filter
        client = Langfuse(
            tracer_provider=provider,
            mask=settings.mask(),
            environment=recipe.environment,
            release=recipe.release,
            timeout=int(settings.timeout),
            flush_interval=settings.flush_interval,
            flush_at=settings.flush_at,
            **primary.langfuse_arguments,
        )
        if not existed:  # else created before: adopted below
            BUILT_KEYS.add(primary.public_key)
        extra = [destination_exporter(d, settings) for d in primary.extra]
        delivering = [*primary.delivering, *extra]
        if recipe.span_exporter is None and recipe.adopt_clients:
            ours = {primary.public_key: primary.delivering}
            adopted = adopt_earlier_clients(settings, client, ours)
            delivering += [e for e in adopted if e not in delivering]
        wire_client(
            client,
            extra,
            delivering,
            schedule_delay_millis=settings.flush_interval * 1000,
            max_export_batch_size=settings.flush_at,
            export_timeout_millis=settings.timeout * 1000,
        )
    watch_provider(provider)
    if recipe.span_exporter is None:
        where = ", ".join(f"{d.name} ({d.endpoint})" for d in recipe.destinations)
        announce(
            f"lemma_middleware: exporting traces to {where}, {settings.describe()}, "
            f"{settings.describe_delivery()}"
        )
    return client


def export_passed_client(client: Langfuse, settings: ExportSettings) -> ClientAccess:
    """A client passed as ``langfuse=``: adopted with every other client of the process, and
    given the destinations the environment configures besides Langfuse (Lemma, OTLP), each
    through a batch processor of its own."""
    adopted = adopt_earlier_clients(settings, client)
    if inspect_client(client).public_key in BUILT_KEYS:  # build_client() passed: it has them
        return wire_client(client, (), adopted)
    destinations, problems = resolve_destinations()
    for problem in problems:
        logger.error("lemma_middleware: misconfiguration: %s", problem)
    extra = [destination_exporter(d, settings) for d in destinations if not d.langfuse_account]
    if extra:
        announce(
            "lemma_middleware: the Langfuse client passed also exports to "
            + ", ".join(f"{e.name} ({e.sender.endpoint})" for e in extra)
        )
    provider = inspect_client(client).provider
    with adding_own_processors(provider) if provider else contextlib.nullcontext():
        return wire_client(
            client,
            extra,
            [*adopted, *extra],
            schedule_delay_millis=settings.flush_interval * 1000,
            max_export_batch_size=settings.flush_at,
            export_timeout_millis=settings.timeout * 1000,
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
        exporter = destination_exporter(langfuse, recipe.export)
        arguments = {"secret_key": secret, "base_url": base_url, "span_exporter": exporter}
        return PrimaryExport(key, {"public_key": key, **arguments}, extra, [exporter])
    first = extra.pop(0)
    digest = hashlib.sha256(repr(first).encode()).hexdigest()[:12]
    key = recipe.public_key or f"lemma-mw-{first.name}-{digest}"
    exporter = destination_exporter(first, recipe.export)
    arguments = {"secret_key": "unused", "span_exporter": exporter}
    return PrimaryExport(key, {"public_key": key, **arguments}, extra, [exporter])
