"""The fixtures every test gets: a real Langfuse client whose spans land in an in-memory
exporter, no internal error swallowed unnoticed, no destination in the environment.
Helpers are in :mod:`tests.helpers`."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest

from lemma_middleware.testing.plugin import TraceCapture


@pytest.fixture
def captured(lemma_traces: TraceCapture) -> TraceCapture:
    """The project's tests use the same fixture users get (``lemma_traces``)."""
    return lemma_traces


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
    from lemma_middleware.core import logs

    logs._logged_once.clear()


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
