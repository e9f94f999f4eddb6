"""The other Langfuse clients of the process: whether one exists for a key, whether one was
created without a key, and Langfuse's per-context public key that ``get_client()`` reads.

Importing this module (``import lemma_middleware`` does) installs the watch for keyless
clients on Langfuse's logger, so a client created after the import is noticed.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar

from lemma_middleware.sdk.probe import report_missing


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
