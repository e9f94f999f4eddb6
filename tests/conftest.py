"""Shared fixtures: a real Langfuse client whose spans land in an in-memory exporter."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan

from lemma_middleware.testing.contract import check_traces
from lemma_middleware.testing.plugin import TraceCapture

Captured = TraceCapture


@pytest.fixture
def captured(lemma_traces: TraceCapture) -> TraceCapture:
    """The project's tests use the same fixture users get (``lemma_traces``)."""
    return lemma_traces


def assert_tree_whole(spans: list[ReadableSpan]) -> None:
    """One parentless root per trace, every exported span's parent exported too, and no
    child marked as a trace root."""
    whole = [v for v in check_traces(spans) if v.rule == "single-root"]
    assert not whole, [str(v) for v in whole]
    for span in spans:
        if span.parent is not None:
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
    from lemma_middleware.core import logs

    logs._logged_once.clear()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "expect_internal_errors: the test provokes logged errors")


def environ_without_destinations() -> dict[str, str]:
    """This process's environment without any ``LANGFUSE_*``/``LEMMA_*`` variable: what a
    server or app started by a test gets before the test says where traces go."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("LANGFUSE_", "LEMMA_"))}


def langfuse_environ(base_url: str, public_key: str, secret_key: str) -> dict[str, str]:
    """The variables that send a process's Langfuse export to ``base_url``."""
    return {
        "LANGFUSE_PUBLIC_KEY": public_key,
        "LANGFUSE_SECRET_KEY": secret_key,
        "LANGFUSE_HOST": base_url,
    }


def run_test_app(module: str, env: dict[str, str], timeout: float) -> str:
    """Run ``python -m <module>`` from the project root with ``env``; its stderr (the test
    fails if it exits with an error)."""
    from examples.demo import ROOT

    run = subprocess.run(
        [sys.executable, "-m", module],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    return run.stderr


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
