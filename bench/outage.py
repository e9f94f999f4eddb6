"""The outage section: the middleware, the hand-written middleware and FastAPI's native
OpenTelemetry under uvicorn at a steady rate while the inbox is down, then hanging."""

from __future__ import annotations

import itertools
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.harness import Inbox, received_by_service, serve, wait_quiet
from bench.variants import Variant

OUTAGE_LABELS = {
    Variant.LEMMA: "lemma middleware",
    Variant.HANDWRITTEN: "hand-written middleware (plain Langfuse())",
    Variant.FASTAPI_OTEL: "FastAPI native OTel, OTLP/HTTP exporter",
}
"""The outage table's variants, in order, and how it names them."""
IDENTITY = {"x-conversation-id": "conv-1", "x-user-id": "user-1", "x-tenant-id": "acme"}


@dataclass
class Outcome:
    """One variant through the outage: requests answered, and how many have no trace."""

    served: int
    lost: int


def _steady_load(
    url: str, rate: float, stop: threading.Event, log: list[tuple[float, float]]
) -> None:
    """POST /chat at ``rate`` requests/s until ``stop``; ``log`` gets (start, seconds) of
    every request answered 200."""
    interval = 1 / rate
    with httpx.Client(timeout=30) as client:
        next_at = time.monotonic()
        while not stop.is_set():
            started = time.monotonic()
            response = client.post(f"{url}/chat", json={"message": "parcel?"}, headers=IDENTITY)
            if response.status_code == 200:
                log.append((started, time.monotonic() - started))
            next_at += interval
            time.sleep(max(0.0, next_at - time.monotonic()))


def outage_section(up: float, outage: float, rate: float) -> dict[Variant, Outcome]:
    """The destination down (connection refused) for ``outage`` seconds, then hanging
    (accepting, never answering) as long, under steady load: requests served against
    traces received once the servers have stopped, and request latency in each phase."""
    phases: list[tuple[str, float]] = []
    with tempfile.TemporaryDirectory() as folder:
        inbox = Inbox(Path(folder) / "inbox.sqlite3")
        inbox.start()
        try:
            servers = {
                variant: serve("asgi", variant, {**inbox.env, "OTEL_SERVICE_NAME": str(variant)})
                for variant in OUTAGE_LABELS
            }
            stop = threading.Event()
            logs: dict[Variant, list[tuple[float, float]]] = {v: [] for v in servers}
            loaders = [
                threading.Thread(target=_steady_load, args=(url, rate, stop, logs[v]))
                for v, (_, url) in servers.items()
            ]
            for loader in loaders:
                loader.start()
            steps: list[tuple[str, Callable[[], None], float]] = [
                ("up", lambda: None, up),
                ("down", inbox.stop, outage),
                ("up again", inbox.start, up),
                ("hanging", inbox.freeze, outage),
                ("up at the end", inbox.thaw, 2 * up),
            ]
            for name, action, seconds in steps:
                action()
                phases.append((name, time.monotonic()))
                time.sleep(seconds)
            stop.set()
            for loader in loaders:
                loader.join()
            phases.append(("stopped", time.monotonic()))
            for process, _ in servers.values():
                process.send_signal(signal.SIGTERM)
            for process, _ in servers.values():
                process.wait(timeout=120)
            wait_quiet()
        finally:
            inbox.stop()
        received = received_by_service(inbox.database)
    print(
        f"\nOutage, ASGI under uvicorn, {rate:.0f} req/s each: the inbox down (connection "
        f"refused) for {outage:.0f}s, then hanging (SIGSTOP) for {outage:.0f}s; traces "
        "counted after the servers stopped"
    )
    names = [name for name, _ in phases[:-1]]
    print(
        f"{'variant':44} {'served':>7} {'traces':>7} {'lost':>6}  "
        + " ".join(f"{'p99 ' + n:>16}" for n in names)
    )
    outcomes: dict[Variant, Outcome] = {}
    for variant, log in logs.items():
        served = len(log)  # POST /chat answered 200 (a variant may also trace its start-up probe)
        traces = received.get(variant, (0, 0))[1]
        outcomes[variant] = Outcome(served, max(0, served - traces))
        p99s = []
        for (_, begin), (_, end) in itertools.pairwise(phases):
            took = sorted(seconds for started, seconds in log if begin <= started < end)
            p99s.append(f"{took[int(0.99 * (len(took) - 1))] * 1000:14.1f}ms" if took else "-")
        print(
            f"{OUTAGE_LABELS[variant]:44} {served:7} {traces:7} {outcomes[variant].lost:6}  "
            + " ".join(f"{p:>16}" for p in p99s)
        )
    return outcomes
