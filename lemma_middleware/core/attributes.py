"""What a request's trace carries, as span attributes: one table, one encoding.

Every value the middleware writes besides input, output and outcome is a row of
:data:`ATTRIBUTE_TABLE`, listing each key it is written under:

* ``propagated``: the keyword of Langfuse's ``propagate_attributes``, which writes the
  Langfuse key on the root and on every span started in the request;
* ``langfuse``: that Langfuse key (the SDK's public ``LangfuseOtelSpanAttributes`` names);
* ``metadata``: the key under ``langfuse.trace.metadata.`` (propagated as metadata);
* ``raw``: the key Lemma's ingest reads besides Langfuse's own, written by the middleware
  on the root and on every exported child;
* ``root_only``: raw keys written on the root alone.

Langfuse drops propagated values over 200 characters; metadata is JSON-encoded before that
check, so :func:`metadata_value` cuts a value until its JSON form fits.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any, NamedTuple

from langfuse import LangfuseOtelSpanAttributes as Langfuse

from lemma_middleware.core.identity import LANGFUSE_VALUE_LIMIT, Identity
from lemma_middleware.core.logs import log_once

METADATA_PREFIX = Langfuse.TRACE_METADATA + "."


_PLAIN_TEXT = re.compile(r'[^"\\\x00-\x1f\x7f]*')


def json_text(value: Any) -> str:
    """``value`` as JSON text (what Langfuse stores for metadata and bodies)."""
    if isinstance(value, str) and _PLAIN_TEXT.fullmatch(value):
        return f'"{value}"'  # what json.dumps gives, without its cost
    return json.dumps(value, ensure_ascii=False, default=str)


def metadata_value(key: str, value: Any) -> str:
    """A metadata value as text Langfuse keeps: cut with ``…`` so that its JSON form, which
    is what Langfuse checks, is at most 200 characters."""
    text = value if isinstance(value, str) else json_text(value)
    if len(json_text(text)) <= LANGFUSE_VALUE_LIMIT:
        return text
    log_once(
        f"metadata-long:{key}",
        logging.INFO,
        "lemma_middleware: metadata %r is longer than Langfuse keeps; truncated (logged once)",
        key,
    )
    low, high = 0, min(len(text), LANGFUSE_VALUE_LIMIT)  # the longest prefix that fits
    while low < high:
        middle = (low + high + 1) // 2
        if len(json_text(text[:middle] + "…")) <= LANGFUSE_VALUE_LIMIT:
            low = middle
        else:
            high = middle - 1
    return text[:low] + "…"


class TraceValues(NamedTuple):
    """Everything a request's trace carries besides its input, output and outcome."""

    agent_name: str
    identity: Identity
    environment: str | None
    release: str | None
    version: str | None
    static_metadata: Mapping[str, str]


@dataclass(frozen=True)
class Row:
    """One value of the table (a path into :class:`TraceValues`) and every key it is
    written under."""

    path: str
    propagated: str | None = None
    langfuse: str | None = None
    metadata: str | None = None
    raw: str | None = None
    root_only: str | None = None
    value: attrgetter[str | None] = field(init=False, repr=False, compare=False)
    """This row's value in a :class:`TraceValues`."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "value", attrgetter(self.path))


ATTRIBUTE_TABLE: tuple[Row, ...] = (
    Row(
        "identity.thread_id",
        "session_id",
        Langfuse.TRACE_SESSION_ID,
        "lemma.thread_id",
        "lemma.thread_id",
    ),
    Row("identity.user_id", "user_id", Langfuse.TRACE_USER_ID),
    Row("identity.tenant_id", metadata="tenant_id", raw="app.tenant.id"),
    Row(
        "agent_name",
        "trace_name",
        Langfuse.TRACE_NAME,
        "gen_ai.agent.name",
        root_only="gen_ai.agent.name",
    ),
    Row(
        "environment",
        "environment",
        Langfuse.ENVIRONMENT,
        "deployment.environment.name",
        "deployment.environment.name",
    ),
    Row("version", "version", Langfuse.VERSION),
    Row("release", raw=Langfuse.RELEASE, root_only="service.version"),
)


def propagated_metadata(values: TraceValues) -> dict[str, str]:
    """The metadata propagated to the root and every child."""
    metadata = dict(values.static_metadata)
    metadata.update({k: metadata_value(k, v) for k, v in values.identity.metadata.items()})
    for row in ATTRIBUTE_TABLE:
        value = row.value(values)
        if row.metadata and value:
            metadata[row.metadata] = value
    return metadata


def propagate_arguments(
    values: TraceValues, metadata: dict[str, str] | None = None
) -> dict[str, Any]:
    """The keyword arguments of Langfuse's ``propagate_attributes`` for ``values``
    (``metadata``: :func:`propagated_metadata` of ``values``, if already computed)."""
    arguments: dict[str, Any] = {
        "metadata": propagated_metadata(values) if metadata is None else metadata
    }
    for row in ATTRIBUTE_TABLE:
        if row.propagated:
            arguments[row.propagated] = row.value(values)
    return arguments


def raw_attributes(values: TraceValues) -> dict[str, str]:
    """Lemma's raw keys, written on the root and on every exported child."""
    return {row.raw: value for row in ATTRIBUTE_TABLE if row.raw and (value := row.value(values))}


def root_attributes(values: TraceValues, metadata: dict[str, str] | None = None) -> dict[str, Any]:
    """The attributes the root starts with: every key a child gets (see
    :func:`span_attributes`, written here in the same call that starts the root) and the
    root's own."""
    attributes: dict[str, Any] = {
        Langfuse.OBSERVATION_TYPE: "agent",
        **span_attributes(values, metadata),
    }
    for row in ATTRIBUTE_TABLE:
        if row.root_only and (value := row.value(values)):
            attributes[row.root_only] = value
    if values.version and "service.version" not in attributes:
        attributes["service.version"] = values.version
    return attributes


def span_attributes(values: TraceValues, metadata: dict[str, str] | None = None) -> dict[str, str]:
    """Every propagated and raw key as the span attributes Langfuse would write: what a
    late identity (``bind()``, an auth user known late) overwrites on the root and on the
    children started after it."""
    attributes = raw_attributes(values)
    for row in ATTRIBUTE_TABLE:
        value = row.value(values)
        if row.langfuse and value:
            attributes[row.langfuse] = value
    for key, value in (propagated_metadata(values) if metadata is None else metadata).items():
        attributes[METADATA_PREFIX + key] = json_text(value)
    return attributes


def _written_key(path: str, kind: str) -> str:
    """The key ``kind`` (``raw``, ``root_only``) the table writes the value ``path`` under."""
    row = next(row for row in ATTRIBUTE_TABLE if row.path == path)
    key = getattr(row, kind)
    assert isinstance(key, str)
    return key


class Keys:
    """The keys a reader of exported traces looks up (the contract checker, the inbox):
    the written ones from :data:`ATTRIBUTE_TABLE` and Langfuse's, never spelt twice."""

    THREAD = Langfuse.TRACE_SESSION_ID
    LEMMA_THREAD = _written_key("identity.thread_id", "raw")
    USER = Langfuse.TRACE_USER_ID
    TENANT = _written_key("identity.tenant_id", "raw")
    AGENT = Langfuse.TRACE_NAME
    AGENT_NAME = _written_key("agent_name", "root_only")
    TRACE_INPUT = "langfuse.trace.input"
    """The trace's input as Langfuse's ingest reads it (no public SDK name in 5.x)."""
    TRACE_OUTPUT = "langfuse.trace.output"
    INPUT = Langfuse.OBSERVATION_INPUT
    OUTPUT = Langfuse.OBSERVATION_OUTPUT
    TYPE = Langfuse.OBSERVATION_TYPE
    LEVEL = Langfuse.OBSERVATION_LEVEL
    STATUS_MESSAGE = Langfuse.OBSERVATION_STATUS_MESSAGE
    IS_APP_ROOT = Langfuse.IS_APP_ROOT
    MODEL = Langfuse.OBSERVATION_MODEL
    USAGE = Langfuse.OBSERVATION_USAGE_DETAILS
    TRACE_METADATA = METADATA_PREFIX
    OBSERVATION_METADATA = Langfuse.OBSERVATION_METADATA + "."
    HTTP_STATUS = METADATA_PREFIX + "http.status_code"
