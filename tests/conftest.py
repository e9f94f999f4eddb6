"""Shared fixtures: a real Langfuse client whose spans land in an in-memory exporter."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from langfuse import Langfuse
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from lemma_middleware import build_client

_keys = itertools.count()


@dataclass
class Captured:
    """A real Langfuse client and the spans it exported."""

    client: Langfuse
    exporter: InMemorySpanExporter
    provider: TracerProvider

    def spans(self) -> list[ReadableSpan]:
        self.client.flush()
        return list(self.exporter.get_finished_spans())

    def roots(self) -> list[ReadableSpan]:
        return [s for s in self.spans() if s.parent is None]

    def root(self) -> ReadableSpan:
        roots = self.roots()
        assert len(roots) == 1, [s.name for s in roots]
        return roots[0]

    def children(self, root: ReadableSpan) -> list[ReadableSpan]:
        return [
            s for s in self.spans() if s.context.trace_id == root.context.trace_id and s is not root
        ]


@pytest.fixture
def captured() -> Iterator[Captured]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    client = build_client(
        span_exporter=exporter,
        tracer_provider=provider,
        public_key=f"pk-test-{next(_keys)}",
        flush_interval=0.05,
    )
    assert client is not None
    yield Captured(client, exporter, provider)
    provider.shutdown()


def assert_tree_whole(spans: list[ReadableSpan]) -> None:
    """One parentless root per trace, and every exported span's parent exported too."""
    ids = {s.context.span_id for s in spans}
    by_trace: dict[int, list[ReadableSpan]] = {}
    for span in spans:
        by_trace.setdefault(span.context.trace_id, []).append(span)
    for trace_spans in by_trace.values():
        roots = [s for s in trace_spans if s.parent is None]
        assert len(roots) == 1, [s.name for s in roots]
        for span in trace_spans:
            if span.parent is not None:
                assert span.parent.span_id in ids, f"{span.name} has an unexported parent"
                assert not span.attributes.get("langfuse.internal.is_app_root"), span.name


class _InternalErrors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(autouse=True)
def no_internal_errors(request: pytest.FixtureRequest) -> Iterator[Any]:
    """Fail any test in which the middleware logged an internal error it swallowed,
    unless the test is marked ``expect_internal_errors``."""
    handler = _InternalErrors()
    logger = logging.getLogger("lemma_middleware")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
    if request.node.get_closest_marker("expect_internal_errors") is None:
        assert not handler.records, [r.getMessage() for r in handler.records]


@pytest.fixture(autouse=True)
def fresh_log_once() -> None:
    from lemma_middleware import identity

    identity._logged_once.clear()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "expect_internal_errors: the test provokes logged errors")


DESTINATION_VARIABLES = (
    "LANGFUSE_PUBLIC_KEY",
    "LANGFUSE_SECRET_KEY",
    "LEMMA_API_KEY",
    "LEMMA_PROJECT_ID",
    "LEMMA_OTLP_ENDPOINT",
)


@pytest.fixture
def no_destinations(monkeypatch: pytest.MonkeyPatch) -> None:
    """No Langfuse keys, no Lemma key, no OTLP endpoint in the environment."""
    for name in DESTINATION_VARIABLES:
        monkeypatch.delenv(name, raising=False)
