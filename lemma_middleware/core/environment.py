"""Every environment variable the package reads, in one table, read one way.

An empty value counts as unset. A number that is not positive is logged once as a
misconfiguration and its default is used. Values are read when a middleware or the inbox
is built (not at import), so a test or a process manager that sets them first is seen.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import overload

from lemma_middleware.core.logs import log_once

VARIABLES: Mapping[str, str] = {
    # where traces go (export.destinations)
    "LEMMA_API_KEY": "Lemma's API key (with LEMMA_PROJECT_ID: export to Lemma)",
    "LEMMA_PROJECT_ID": "Lemma's project id, a UUID",
    "LEMMA_BASE_URL": "Lemma's full OTLP traces URL",
    "LANGFUSE_PUBLIC_KEY": "Langfuse's public key (with LANGFUSE_SECRET_KEY: export to Langfuse)",
    "LANGFUSE_SECRET_KEY": "Langfuse's secret key",
    "LANGFUSE_BASE_URL": "Langfuse's base URL (also read as LANGFUSE_HOST)",
    "LANGFUSE_HOST": "Langfuse's base URL",
    "LANGFUSE_OTEL_TRACES_EXPORT_PATH": "the OTLP traces path under Langfuse's base URL",
    "LEMMA_OTLP_ENDPOINT": "any OTLP/HTTP traces URL",
    "LEMMA_OTLP_HEADERS": "headers for LEMMA_OTLP_ENDPOINT: name=value,name=value",
    # how traces are exported (export.client, export.provider)
    "LANGFUSE_FLUSH_AT": "spans per export batch",
    "LANGFUSE_FLUSH_INTERVAL": "seconds between exports at most",
    "LEMMA_EXPORT_BACKLOG_MB": "compressed megabytes kept for retry per destination",
    "OTEL_SERVICE_NAME": "the service name (then the middleware's is not set)",
    # what traces carry (core.options)
    "LEMMA_AGENT_NAME": "the agent name when agent_name is not given",
    "LANGFUSE_TRACING_ENVIRONMENT": "the environment when environment is not given",
    "LANGFUSE_RELEASE": "the release when release is not given",
    # which turns are kept (core.sampling)
    "LEMMA_SAMPLE_RATE": "the fraction of conversations kept when sample_rate is not given",
    "LANGFUSE_SAMPLE_RATE": "Langfuse's own trace sampling (only where Langfuse makes the "
    "tracer provider; the middleware says what it does)",
    # the local inbox (inbox)
    "LEMMA_INBOX_DB": "the inbox's SQLite file",
    "XDG_DATA_HOME": "where the inbox's default file lives",
}
"""Each variable read, and what it sets (the README's tables give the defaults)."""


def variable(name: str, environ: Mapping[str, str] | None = None) -> str | None:
    """The value of ``name`` (one of :data:`VARIABLES`), None when unset or empty."""
    if name not in VARIABLES:
        raise KeyError(f"{name} is not an environment variable this package reads")
    value = (os.environ if environ is None else environ).get(name)
    return value or None


@overload
def positive_number(name: str, kind: type[int], default: int) -> int: ...
@overload
def positive_number(name: str, kind: type[float], default: float) -> float: ...
def positive_number(name: str, kind: type[int] | type[float], default: float) -> float:
    """The value of ``name`` as a positive ``kind``, else ``default`` (a value that is not
    one is logged once)."""
    raw = variable(name)
    if raw is None:
        return default
    try:
        value = kind(raw)
    except ValueError:
        value = 0
    if value > 0:
        return value
    log_once(
        f"environment:{name}",
        logging.ERROR,
        "lemma_middleware: misconfiguration: %s=%r is not a positive number",
        name,
        raw,
    )
    return default
