"""Whatever the start-up order, every Langfuse client of the process gets the middleware's
guarantees (issue 21). Each case serves tests/apps/start_up_matrix_app.py with a real server,
sends requests while the destination is up, down (503 for 6 s, longer than Langfuse's own
exporter retries) and up again, then stops the server: every request's trace arrives at
every destination, with its child made through the pattern's client and its generation,
no secret of the child's input is exported, and the middleware's delivery at exit takes at
most ``flush_timeout`` in each process (the whole exit is only bounded against a hang).
The cases run side by side (most of a case is waiting), each in processes of its own."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from examples.demo import ROOT, free_port, wait_until_up

from .apps.flaky_destination import FlakyDestination
from .helpers import environ_without_destinations, langfuse_environ

PATTERNS = ("default", "get_client", "callback", "passed", "observe")
KINDS = ("langfuse", "lemma", "otlp", "langfuse+lemma")
PATHS = {
    "langfuse": "/api/public/otel/v1/traces",
    "lemma": "/otel/v1/traces",
    "otlp": "/v1/traces",
}
PROJECT_ID = "5b0c7b3e-8f6d-4a43-9d0e-3f1f6f2b9a11"
SECRET_VALUES = ("hunter2-horse-staple", "sk-live-abcdefghijklmnop1234567890")
FLUSH_TIMEOUT = 4.0  # the app's
OUTAGE_SECONDS = 6.0
EXIT_DELIVERY = re.compile(r"delivery took ([0-9.]+) s")
"""The DEBUG lines of the lifespan shutdown and of each process's exit (uvicorn re-raises
SIGTERM, so no exit handler runs there): the seconds the middleware spent delivering."""
EXIT_OVERHEAD = 10.0
"""Seconds the server and the interpreter may add to the exit: gunicorn's arbiter reaping
its worker, then a second exit, and the interpreter's teardown take about 1 s alone and
several on a loaded machine (8.3 s seen in CI); a hang until gunicorn's 30 s graceful
timeout still fails."""


def destination_environ(kind: str, base_url: str) -> dict[str, str]:
    env: dict[str, str] = {}
    if "langfuse" in kind:
        env |= langfuse_environ(base_url, "pk-matrix", "sk-matrix")
    if "lemma" in kind:
        env |= {
            "LEMMA_API_KEY": "lemma-key",
            "LEMMA_PROJECT_ID": PROJECT_ID,
            "LEMMA_BASE_URL": f"{base_url}{PATHS['lemma']}",
        }
    if kind == "otlp":
        env |= {"LEMMA_OTLP_ENDPOINT": f"{base_url}{PATHS['otlp']}"}
    return env


def server_command(server: str, port: int) -> list[str]:
    if server == "uvicorn":
        return [sys.executable, "-m", "uvicorn", "tests.apps.start_up_matrix_app:app",
                "--port", str(port), "--log-level", "warning"]  # fmt: skip
    command = [sys.executable, "-m", "gunicorn", "tests.apps.start_up_matrix_app:app",
               "-b", f"127.0.0.1:{port}", "-w", "1", "--log-level", "warning"]  # fmt: skip
    return [*command, "--preload"] if server == "gunicorn --preload" else command


def serve_through_an_outage(
    destination: FlakyDestination, env: dict[str, str], server: str
) -> tuple[int, float, str]:
    """Serve, send requests before, during and after a 2 s outage, wait for delivery, stop;
    the requests sent, the seconds the exit took, the server's stderr."""
    port = free_port()
    process = subprocess.Popen(
        server_command(server, port), env=env, cwd=ROOT, stderr=subprocess.PIPE, text=True
    )
    sent = 0
    try:
        wait_until_up(f"http://127.0.0.1:{port}/health")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:

            def send(count: int) -> None:
                nonlocal sent
                for _ in range(count):
                    headers = {"x-conversation-id": f"conv-{sent}", "x-user-id": "alice"}
                    response = http.post("/chat", json={"message": f"m{sent}"}, headers=headers)
                    assert response.status_code == 200, response.text
                    sent += 1
                    time.sleep(0.1)

            send(4)
            destination.mode = 503  # down: every export is answered 503
            outage_ends = time.monotonic() + OUTAGE_SECONDS
            while time.monotonic() < outage_ends:
                send(1)
                time.sleep(0.4)
            destination.mode = "up"
            send(4)
        roots_expected = sent * (2 if "+" in env.get("KIND", "") else 1)
        deadline = time.monotonic() + 25
        while time.monotonic() < deadline and roots(destination) < roots_expected:
            time.sleep(0.2)
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
        return sent, time.monotonic() - started, stderr
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def roots(destination: FlakyDestination) -> int:
    with destination._lock:
        return sum(1 for _, span in destination.received if span.parent_span_id is None)


def check_destination(spans: list[Any], sent: int, where: str) -> None:
    names = Counter(span.name for span in spans)
    assert names["support-agent"] == sent, (where, names)
    assert names["lookup"] == sent, (where, names)  # the child made the pattern's way
    assert names["llm"] == sent, (where, names)  # the generation
    exported = json.dumps([span.attributes for span in spans])
    assert not any(secret in exported for secret in SECRET_VALUES), where
    by_id = {span.span_id: span for span in spans}
    for span in spans:
        if span.name in ("lookup", "llm"):
            parent = by_id.get(span.parent_span_id)
            assert parent is not None and parent.name == "support-agent", (where, span.name)


CASES = [
    (pattern, kind, placement, server)
    for pattern in PATTERNS
    for kind in KINDS
    for placement in ("add_middleware", "wrap")
    for server in ("uvicorn", "gunicorn", "gunicorn --preload")
]
"""Every pattern x destination x placement x server (uvicorn serves the FastAPI app,
gunicorn the Flask app: ``add_middleware`` is ``LemmaFlask(app)`` there)."""


@dataclass
class Outcome:
    sent: int
    exit_seconds: float
    stderr: str
    received: list[tuple[str, Any]]


def run_case(pattern: str, kind: str, placement: str, server: str, **settings: str) -> Outcome:
    destination = FlakyDestination().start()
    try:
        base_url = f"http://127.0.0.1:{destination.port}"
        env = environ_without_destinations() | destination_environ(kind, base_url)
        env |= {
            "PATTERN": pattern,
            "PLACEMENT": placement,
            "ADAPTER": "asgi" if server == "uvicorn" else "wsgi",
            "KIND": kind,
            **settings,
        }
        sent, exit_seconds, stderr = serve_through_an_outage(destination, env, server)
    finally:
        destination.stop()
    return Outcome(sent, exit_seconds, stderr, list(destination.received))


@pytest.fixture(scope="module")
def outcomes() -> Iterator[dict[tuple[str, ...], Outcome | BaseException]]:
    def outcome(case: tuple[str, ...]) -> Outcome | BaseException:
        try:
            return run_case(*case)
        except BaseException as error:  # reported by the case's own test
            return error

    with ThreadPoolExecutor(max_workers=8) as pool:
        yield dict(zip(CASES, pool.map(outcome, CASES), strict=True))


@pytest.mark.parametrize(("pattern", "kind", "placement", "server"), CASES)
def test_every_client_gets_the_guarantees_whatever_the_start_up_order(
    outcomes: dict[tuple[str, ...], Outcome | BaseException],
    pattern: str,
    kind: str,
    placement: str,
    server: str,
) -> None:
    outcome = outcomes[(pattern, kind, placement, server)]
    if isinstance(outcome, BaseException):
        raise outcome
    stderr = outcome.stderr[-3000:]
    by_path: dict[str, list[Any]] = {}
    for path, span in outcome.received:
        by_path.setdefault(path, []).append(span)
    expected_paths = {PATHS[part] for part in kind.split("+")}
    assert set(by_path) == expected_paths, (set(by_path), stderr)
    for path in expected_paths:
        check_destination(by_path[path], outcome.sent, f"{path}: {stderr}")
    exit_deliveries = [float(seconds) for seconds in EXIT_DELIVERY.findall(outcome.stderr)]
    assert exit_deliveries, stderr  # the server delivered at shutdown or exit
    assert max(exit_deliveries) <= FLUSH_TIMEOUT + 0.5, stderr
    assert outcome.exit_seconds < FLUSH_TIMEOUT + EXIT_OVERHEAD, stderr


def test_adopt_clients_false_keeps_a_passed_client_as_langfuse_configured_it() -> None:
    """The opt-out does what it says, and says so: the passed client exports through
    Langfuse's own exporter, unmasked (its settings), with no retry backlog."""
    outcome = run_case("passed", "langfuse", "add_middleware", "uvicorn", ADOPT="0")
    assert "adopt_clients=False" in outcome.stderr
    assert "no retry backlog" in outcome.stderr
    exported = json.dumps([span.attributes for _, span in outcome.received])
    assert SECRET_VALUES[0] in exported  # Langfuse's behaviour: no mask was configured
