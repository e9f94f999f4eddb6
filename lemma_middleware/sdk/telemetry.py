"""Whether web frameworks' own telemetry would reach anyone: FastAPI's skip key, the span
processors' export filters, the global meter and logger providers.
"""

from __future__ import annotations

import weakref
from functools import cache
from typing import Any

from langfuse._client.span_processor import LangfuseSpanProcessor
from langfuse.span_filter import is_default_export_span
from opentelemetry import _logs as otel_logs
from opentelemetry import metrics as otel_metrics
from opentelemetry.sdk.trace import TracerProvider

from lemma_middleware.sdk.probe import report_missing
from lemma_middleware.sdk.spans import check_span_internals, flattened

FASTAPI_TELEMETRY_KEY = "fastapi.telemetry"
"""A scope carrying this key is served by FastAPI without its native telemetry (FastAPI
sets it itself for excluded requests and mounted apps)."""


@cache
def fastapi_honours_telemetry_key() -> bool:
    """Whether the installed FastAPI skips its telemetry for a scope with the key."""
    try:
        import inspect

        import fastapi.telemetry  # noqa: F401  (a FastAPI with native telemetry)
        from fastapi import FastAPI
    except ImportError:
        return False  # no FastAPI, or one without native telemetry: nothing to skip
    try:
        source = inspect.getsource(FastAPI.__call__)
    except (OSError, TypeError):
        source = ""
    if FASTAPI_TELEMETRY_KEY in source:
        return True
    report_missing(
        "FastAPI's scope['fastapi.telemetry'] key",
        "FastAPI's native telemetry runs inside the middleware when it wraps the app",
    )
    return False


def exports_framework_spans(provider: TracerProvider) -> bool:
    """Whether any span processor on ``provider`` could export a web framework's spans: True
    unless every one exports by Langfuse's default filter (Langfuse's own processors with
    that filter, and processors marked ``exports_by_langfuse_filter``), or when the
    processors cannot be read."""
    if not check_span_internals()[1]:
        return True
    processors: Any = provider._active_span_processor._span_processors
    known = _langfuse_filtered.get(provider)
    if known is not None and known[0] is processors:
        return known[1]
    exports = not all(
        getattr(p, "exports_by_langfuse_filter", False)
        or (
            isinstance(p, LangfuseSpanProcessor)
            and getattr(p, "_should_export_span", None) is is_default_export_span
        )
        for p in flattened(processors)
    )
    _langfuse_filtered[provider] = (processors, exports)
    return exports


_langfuse_filtered: weakref.WeakKeyDictionary[TracerProvider, tuple[Any, bool]] = (
    weakref.WeakKeyDictionary()
)


def telemetry_pipelines_configured() -> bool:
    """True when a meter or logger provider other than the OpenTelemetry API's default is
    installed globally (what FastAPI's telemetry would feed besides spans)."""
    try:
        providers = (otel_metrics.get_meter_provider(), otel_logs.get_logger_provider())
    except Exception:
        return True
    return any(
        not type(p).__module__.startswith(("opentelemetry.metrics", "opentelemetry._logs"))
        for p in providers
    )
