"""The package's logger, once-per-process log lines, and the two ways errors are kept away
from the app.

* An error of the middleware itself: the work that may fail runs in ``with contained(what,
  consequence):``, like Sentry's ``capture_internal_exceptions``. The exception is logged
  once per ``what`` and error type, with what it costs, and the request goes on.
* An error of the user's code (a callable passed as an option): :func:`call_guarded`.

Any other ``except`` in the package handles an expected failure of something outside it
(the network, a server, an SDK layout probed at start-up) and says what it does instead.
"""

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


def log_once(
    key: str, level: int, message: str, *args: object, exc_info: BaseException | None = None
) -> None:
    """Log ``message`` the first time ``key`` is seen in this process (with the traceback
    of ``exc_info``, if given)."""
    if key in _logged_once:
        return
    _logged_once.add(key)
    logger.log(level, message, *args, exc_info=exc_info)


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


UNTRACED = "the request is served untraced"
"""What it costs when a request's trace cannot start."""


class Containment:
    """The context manager :func:`contained` returns (a class, not a generator: it runs
    several times per request, and this costs a third of ``contextlib``'s)."""

    __slots__ = ("consequence", "level", "what")

    def __init__(self, what: str, consequence: str, level: int) -> None:
        self.what = what
        self.consequence = consequence
        self.level = level

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: object
    ) -> bool:
        if error is None or not isinstance(error, Exception):
            return False  # nothing raised, or not an error: it goes through
        log_once(
            f"{self.what}:{type(error).__name__}",
            self.level,
            "lemma_middleware: %s failed (%s: %s); %s (logged once)",
            self.what,
            type(error).__name__,
            error,
            self.consequence,
            exc_info=error,
        )
        return True


def contained(
    what: str, consequence: str = "ignored", *, level: int = logging.ERROR
) -> Containment:
    """Run the block; an exception it raises is an internal error: logged once per ``what``
    and error type (``lemma_middleware: <what> failed (<Type>: <message>); <consequence>``)
    and not raised. Exceptions that are not errors (``KeyboardInterrupt``, ``SystemExit``,
    cancellation) go through."""
    return Containment(what, consequence, level)
