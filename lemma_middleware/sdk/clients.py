"""The other Langfuse clients of the process: whether one exists for a key, whether one was
created without a key, Langfuse's per-context public key that ``get_client()`` reads, and
what adopting them changes (their export target, batching and mask; a disabled client made
a twin of the middleware's).

Importing this module (``import lemma_middleware`` does) installs the watch for keyless
clients on Langfuse's logger, so a client created after the import is noticed.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, cast

from langfuse import Langfuse
from langfuse._client.span_exporter import LangfuseTransformingSpanExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter

from lemma_middleware.sdk.media_screen import MediaScreenedExporter
from lemma_middleware.sdk.probe import report_missing
from lemma_middleware.sdk.spans import langfuse_batch


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
    report_missing(
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


# Adopting the clients created before the middleware's ------------------------------------


@dataclass(frozen=True)
class ClientSettings:
    """What a Langfuse resource manager (one per public key) was created with."""

    public_key: str
    secret_key: str
    base_url: str
    additional_headers: dict[str, str]
    own_exporter: SpanExporter | None
    """The ``span_exporter`` the client was given (None: Langfuse's own OTLP export)."""
    provider: TracerProvider | None
    has_mask: bool


def client_settings() -> list[ClientSettings]:
    """Every Langfuse resource manager of the process (one per public key)."""
    try:
        from langfuse._client.resource_manager import LangfuseResourceManager

        managers = list(LangfuseResourceManager._instances.values())
    except Exception:
        report_missing(
            "LangfuseResourceManager._instances",
            "Langfuse clients created before the middleware's keep Langfuse's own export",
        )
        return []
    found = []
    for manager in managers:
        provider = getattr(manager, "tracer_provider", None)
        found.append(
            ClientSettings(
                public_key=str(manager.public_key),
                secret_key=str(manager.secret_key),
                base_url=str(manager.base_url),
                additional_headers=dict(getattr(manager, "additional_headers", None) or {}),
                own_exporter=getattr(manager, "span_exporter", None),
                provider=provider if isinstance(provider, TracerProvider) else None,
                has_mask=getattr(manager, "mask", None) is not None,
            )
        )
    return found


def replace_export(provider: TracerProvider, public_key: str, exporter: SpanExporter) -> bool:
    """Put ``exporter`` where the Langfuse processor of ``public_key`` sends batches after
    its media pass. False if the processor is not laid out as this version knows it."""
    batch = langfuse_batch(provider, public_key)
    if batch is None:
        return False
    outer = batch._exporter
    if isinstance(outer, MediaScreenedExporter):
        outer.inner = outer.transforming._exporter = exporter
    elif isinstance(outer, LangfuseTransformingSpanExporter):
        outer._exporter = exporter
    else:
        batch._exporter = exporter
    return True


def export_target(provider: TracerProvider, public_key: str) -> SpanExporter | None:
    """What the Langfuse processor of ``public_key`` sends batches to after its media pass."""
    batch = langfuse_batch(provider, public_key)
    if batch is None:
        return None
    outer = batch._exporter
    if isinstance(outer, MediaScreenedExporter):
        return outer.inner
    if isinstance(outer, LangfuseTransformingSpanExporter):
        return outer._exporter
    return cast(SpanExporter, outer)


def set_batching(
    provider: TracerProvider, public_key: str, max_batch: int, interval: float, timeout: float
) -> bool:
    """Give the Langfuse processor of ``public_key`` these batch settings (spans per export,
    seconds between exports at most, seconds an export may take)."""
    batch = langfuse_batch(provider, public_key)
    if batch is None or not hasattr(batch, "_max_export_batch_size"):
        return False
    batch._max_export_batch_size = max_batch
    batch._schedule_delay_millis = interval * 1000
    batch._schedule_delay = interval
    batch._export_timeout_millis = timeout * 1000
    return True


def _live_clients() -> list[Langfuse]:
    """Every Langfuse client alive. By ``type()``, never ``isinstance``: that asks an object
    its ``__class__``, which a lazy proxy (Django's ``LazyObject``, e.g. the static files
    storage) answers by building what it stands for."""
    return [o for o in gc.get_objects() if issubclass(type(o), Langfuse)]


def mask_clients(public_key: str, mask: Callable[..., Any]) -> int:
    """Give every Langfuse client of ``public_key`` that has no mask of its own ``mask``, and
    Langfuse's resources of the key (clients created later copy it); how many were given."""
    try:
        from langfuse._client.resource_manager import LangfuseResourceManager

        manager: Any = LangfuseResourceManager._instances.get(public_key)
    except Exception:
        return 0
    if manager is None:
        return 0
    if manager.mask is None:
        manager.mask = mask
    shared: Callable[..., Any] = manager.mask
    masked = 0
    for client in _live_clients():
        if vars(client).get("_resources") is manager and vars(client).get("_mask") is None:
            client._mask = shared
            masked += 1
    return masked


def enable_disabled_clients(client: Langfuse) -> int:
    """Make every disabled Langfuse client of the process (created without keys before the
    middleware's) a twin of ``client``; how many were enabled."""
    enabled = 0
    state = vars(client)
    for other in _live_clients():
        if other is not client and "_resources" not in vars(other):
            vars(other).update(state)
            enabled += 1
    return enabled
