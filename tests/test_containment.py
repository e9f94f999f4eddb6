"""The one containment idiom (``with contained(what, consequence):``): an error of the
middleware's own is logged once per what and error type, saying what it costs, and not
raised; what is not an error (KeyboardInterrupt, SystemExit, cancellation) goes through."""

from __future__ import annotations

import asyncio
import logging

import pytest

from lemma_middleware.core.logs import contained


@pytest.mark.expect_internal_errors
def test_an_error_is_logged_once_with_its_cost_and_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="lemma_middleware")
    for _ in range(3):
        with contained("reading the widget", "the widget is not recorded"):
            raise ValueError("no widget here")
    [record] = [r for r in caplog.records if "reading the widget" in r.getMessage()]
    assert record.levelno == logging.ERROR and record.exc_info is not None
    assert record.getMessage() == (
        "lemma_middleware: reading the widget failed (ValueError: no widget here); "
        "the widget is not recorded (logged once)"
    )
    with contained("reading the widget", "the widget is not recorded"):
        raise KeyError("another type")  # another error type: its own line
    assert sum("reading the widget" in r.getMessage() for r in caplog.records) == 2


def test_the_level_is_the_callers_and_a_clean_block_logs_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="lemma_middleware")
    with contained("a quiet check", level=logging.DEBUG):
        raise RuntimeError("minor")
    with contained("a clean block"):
        pass
    [record] = [r for r in caplog.records if "a quiet check" in r.getMessage()]
    assert record.levelno == logging.DEBUG
    assert not [r for r in caplog.records if "a clean block" in r.getMessage()]


@pytest.mark.parametrize("raised", [KeyboardInterrupt, SystemExit, asyncio.CancelledError])
def test_what_is_not_an_error_goes_through(raised: type[BaseException]) -> None:
    with pytest.raises(raised), contained("a block interrupted"):
        raise raised()
