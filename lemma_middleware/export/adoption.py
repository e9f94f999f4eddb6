"""Every Langfuse client of the process gets the middleware's guarantees, whoever created it
and when: a module-level ``get_client()``, a ``CallbackHandler()`` at import, a
``Langfuse()`` built by hand and passed in.

Langfuse keeps one set of resources per public key, made by the first client of the key,
and every later ``Langfuse(...)`` of the key gets those, whatever it asks for. So a client
created before the middleware's is *adopted* when the middleware starts, through
:mod:`lemma_middleware.sdk.clients`:

* its export goes through a :class:`~lemma_middleware.delivery.exporter.DeliveryExporter`
  to the same destination: Langfuse's own OTLP export is replaced by the middleware's (same
  endpoint, same headers; the fast encoder, the retry backlog, the bounded exit, the
  counters), and an exporter the user gave it is wrapped, never redirected (the backlog
  around it);
* its batching becomes the middleware's (``flush_at``, ``flush_interval``);
* it and every client object of its key without a mask of their own get the middleware's
  redaction as ``mask`` (clients created later copy it);
* the middleware's span processors are wired onto its tracer provider.

A client created without keys before the middleware's (Lemma or OTLP only: Langfuse
disables it for good) is made a twin of the middleware's client, so what it records is
exported. Each adoption is one start-up line. ``adopt_clients=False`` (an option) leaves
every such client as Langfuse configured it, and the line says what is then off.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from langfuse import Langfuse
from opentelemetry.sdk.trace.export import SpanExporter

from lemma_middleware.core.environment import variable
from lemma_middleware.core.logs import announce, logger
from lemma_middleware.delivery.exit import watch_provider
from lemma_middleware.delivery.exporter import DeliveryExporter, exporters
from lemma_middleware.delivery.http import OTLPHTTPSender
from lemma_middleware.delivery.wrapped import ExporterSender
from lemma_middleware.export.destinations import Destination, langfuse_destination
from lemma_middleware.export.processors import wire_client
from lemma_middleware.export.provider import OwnedTracerProvider, adding_own_processors
from lemma_middleware.export.settings import ExportSettings
from lemma_middleware.sdk.client import inspect_client
from lemma_middleware.sdk.clients import (
    ClientSettings,
    client_settings,
    enable_disabled_clients,
    export_target,
    mask_clients,
    replace_export,
    set_batching,
)

BUILT_KEYS: set[str] = set()
"""The public keys of the clients the middleware built: never adopted."""


def destination_exporter(destination: Destination, settings: ExportSettings) -> DeliveryExporter:
    """The delivery exporter of one destination."""
    return DeliveryExporter(
        destination.name,
        OTLPHTTPSender(destination.endpoint, destination.headers),
        timeout=settings.timeout,
        max_backlog_bytes=settings.backlog_bytes,
    )


def adopt_clients(
    settings: ExportSettings,
    client: Langfuse,
    ours: Mapping[str, Sequence[DeliveryExporter]] | None = None,
) -> list[DeliveryExporter]:
    """Give every Langfuse client of the process not built by the middleware what
    ``settings`` say, and make the disabled ones twins of ``client``. ``ours``: the
    exporters the middleware made for a key (used when they go where the adopted client
    sends). Returns the exporters now behind ``client``'s own key, for the caller to wire
    with the client (the other keys' clients are wired here)."""
    access = inspect_client(client)
    own: list[DeliveryExporter] = []
    for found in client_settings():
        if found.provider is None or found.public_key in BUILT_KEYS:
            continue
        target = export_target(found.provider, found.public_key)
        if isinstance(target, DeliveryExporter):
            continue  # the middleware's own
        exporter = None
        if target is not None:
            exporter = _adopted_exporter(
                found, target, settings, (ours or {}).get(found.public_key)
            )
            OwnedTracerProvider.take_over(found.provider)  # before the middleware's processors
        if exporter is None or not replace_export(found.provider, found.public_key, exporter):
            if exporter is not None:
                exporters.discard(exporter)
            logger.warning(
                "lemma_middleware: the Langfuse client for public key %s, created before the "
                "middleware's, cannot be adopted (its span processor is not laid out as this "
                "langfuse version's): it exports as Langfuse configured it, without the retry "
                "backlog, the bounded exit and the middleware's batching",
                found.public_key,
            )
            continue
        batched = set_batching(
            found.provider,
            found.public_key,
            settings.flush_at,
            settings.flush_interval,
            settings.timeout,
        )
        mask = settings.mask()
        masked = mask is not None and not found.has_mask
        if masked and mask is not None:
            mask_clients(found.public_key, mask)
        if access.public_key == found.public_key:
            own.append(exporter)
        else:
            other = Langfuse(
                public_key=found.public_key, secret_key=found.secret_key, base_url=found.base_url
            )
            with adding_own_processors(found.provider):
                wire_client(other, (), [exporter])
        watch_provider(found.provider)
        announce(_adoption_line(found, exporter, settings, batched, masked))
    twins = enable_disabled_clients(client) if access.enabled else 0
    if twins:
        announce(
            f"lemma_middleware: {twins} Langfuse client(s) created without keys before the "
            "middleware's (get_client() or CallbackHandler() at import time) now export "
            "through the middleware's client"
        )
    return own


def _adopted_exporter(
    found: ClientSettings,
    target: SpanExporter,
    settings: ExportSettings,
    ours: Sequence[DeliveryExporter] | None,
) -> DeliveryExporter:
    if found.own_exporter is not None:  # the user's exporter: wrapped, never redirected
        return DeliveryExporter(
            type(target).__name__,
            ExporterSender(target),
            timeout=settings.timeout,
            max_backlog_bytes=settings.backlog_bytes,
            send_first=True,
        )
    destination = langfuse_destination(
        found.public_key,
        found.secret_key,
        found.base_url,
        variable("LANGFUSE_OTEL_TRACES_EXPORT_PATH"),
        found.additional_headers,
    )
    for exporter in ours or ():
        sender = exporter.sender
        if isinstance(sender, OTLPHTTPSender) and sender.endpoint == destination.endpoint:
            return exporter
    return destination_exporter(destination, settings)


def _adoption_line(
    found: ClientSettings,
    exporter: DeliveryExporter,
    settings: ExportSettings,
    batched: bool,
    masked: bool,
) -> str:
    where = exporter.sender.endpoint
    parts = [f"exporting to {exporter.name} ({where}) with the retry backlog"]
    parts.append(settings.describe() if batched else "in Langfuse's batches (not changed)")
    parts.append(
        "masked with the middleware's redaction"
        if masked
        else "with its own mask"
        if found.has_mask
        else "unmasked (redact_fields=None)"
    )
    return (
        f"lemma_middleware: the Langfuse client for public key {found.public_key}, which was "
        f"created before the middleware's, is adopted: {', '.join(parts)}"
    )


def keep_clients_as_configured(client: Langfuse) -> None:
    """``adopt_clients=False``: say what the client passed keeps of Langfuse's behaviour
    (nothing to say of a client the middleware built)."""
    if inspect_client(client).public_key in BUILT_KEYS:
        return
    logger.warning(
        "lemma_middleware: adopt_clients=False: the Langfuse client (public key %s) exports as "
        "Langfuse configured it: no retry backlog, no bounded exit, Langfuse's batching, its "
        "own mask (if any)",
        inspect_client(client).public_key,
    )
