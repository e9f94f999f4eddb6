"""The package's logger, once-per-process log lines, and guarded calls of user code."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

logger = logging.getLogger("lemma_middleware")


_logged_once: set[str] = set()


def announce(message: str) -> None:
    """An informational line users should see once at start-up: logged at INFO when
    logging is configured for this package, else written to stderr (Python would drop an
    INFO record with no handler)."""
    if logger.hasHandlers():
        logger.info(message)
    else:
        print(message, file=sys.stderr)


def log_once(key: str, level: int, message: str, *args: object) -> None:
    """Log ``message`` the first time ``key`` is seen in this process."""
    if key in _logged_once:
        return
    _logged_once.add(key)
    logger.log(level, message, *args)


def report_callback_error(name: str, error: BaseException) -> None:
    """Log that the user callable ``name`` raised (once per callable and error type)."""
    log_once(
        f"callback:{name}:{type(error).__name__}",
        logging.ERROR,
        "lemma_middleware: %s raised %s: %s; ignored (logged once)",
        name,
        type(error).__name__,
        error,
    )


def call_guarded(name: str, function: Callable[..., Any], *args: Any) -> Any:
    """``function(*args)``, or None when it raises (reported once)."""
    try:
        return function(*args)
    except Exception as error:
        report_callback_error(name, error)
        return None


def report_untraced(error: BaseException) -> None:
    """Log that a request is served untraced because its trace could not start (once per
    error type)."""
    log_once(
        f"start:{type(error).__name__}",
        logging.ERROR,
        "lemma_middleware: could not start a trace (%s: %s); request served untraced (logged once)",
        type(error).__name__,
        error,
    )
