"""What every section of the benchmark measures with: the request it sends, interleaved
timing and its table, servers under uvicorn or gunicorn, ``wrk``, CPU accounting from
``/proc``, waiting for the machine to be idle, and the local inbox in a process of its own.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import httpx

ROOT = Path(__file__).resolve().parents[1]
BODY = b'{"message": "where is my parcel?"}'
"""The request's body unless a section says otherwise."""
HEADERS = {
    "content-type": "application/json",
    "x-conversation-id": "conv-1",
    "x-user-id": "user-1",
    "x-tenant-id": "acme",
}
"""The in-process request's headers: JSON, and the three identity headers."""

Key = TypeVar("Key", bound=Hashable)


# interleaved timing ------------------------------------------------------------------------


@dataclass
class Row:
    """One line of an in-process table."""

    name: str
    median_us: float
    beside_floor: bool = True
    """Whether the line shows its overhead relative to the SDK floor (when the table has one)."""


def print_table(title: str, rows: list[Row], base: float, floor: float | None = None) -> None:
    """An in-process table: per-request time, overhead over ``base`` (the bare app), ratio to
    it and, with ``floor``, that overhead relative to the SDK floor's."""
    print(f"\n{title}")
    header = f"{'variant':42} {'median us/req':>13} {'overhead us':>12} {'x bare':>7}"
    print(header + ("  overhead / SDK floor" if floor else ""))
    for row in rows:
        overhead = row.median_us - base
        line = f"{row.name:42} {row.median_us:13.1f} {overhead:12.1f} {row.median_us / base:7.2f}"
        if floor and row.beside_floor:
            line += f"  {overhead / floor:8.2f}"
        print(line)


def interleave(
    variants: dict[Key, Callable[[], None]], rounds: int, per_round: int
) -> dict[Key, float]:
    """Median per-call time in us of each variant, rounds interleaved."""
    samples: dict[Key, list[float]] = {name: [] for name in variants}
    for run in variants.values():  # warm up
        for _ in range(max(20, per_round // 5)):
            run()
    for _ in range(rounds):
        for name, run in variants.items():
            start = time.perf_counter()
            for _ in range(per_round):
                run()
            samples[name].append((time.perf_counter() - start) / per_round * 1e6)
    return {name: statistics.median(values) for name, values in samples.items()}


# servers and their load ------------------------------------------------------------------


@dataclass
class Load:
    """What ``wrk`` measured in one run."""

    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    requests: int


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk(url: str, seconds: float, connections: int, script: str) -> Load:
    """``wrk`` with ``script`` (its body from the file ``BENCH_BODY_FILE`` names)."""
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "--latency",
            "-s",
            script,
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    try:
        rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
        p50 = _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
        p99 = _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    except (AttributeError, KeyError) as error:
        raise RuntimeError(f"could not read wrk's output:\n{out}") from error
    errors_match = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    return Load(rps, p50, p99, int(errors_match.group(1)) if errors_match else 0, requests)


def free_port() -> int:
    """A TCP port free on 127.0.0.1."""
    from examples.demo import free_port as port

    return port()


STARTUP_PROBES = 1
"""Requests :func:`serve` makes to a server before it is measured (``POST /health``)."""


def serve(kind: str, variant: str, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    """``variant`` of :mod:`bench.apps` served on 127.0.0.1 (``asgi``: uvicorn, 1 worker;
    ``wsgi``: gunicorn, 2 gthread workers x 8 threads), once it answers: process and URL."""
    port = free_port()
    env = {**env, "BENCH_VARIANT": str(variant), "BENCH_KIND": kind}
    if kind == "asgi":
        command = [sys.executable, "-m", "uvicorn", "bench.apps:asgi_app", "--port", str(port)]
        command += ["--host", "127.0.0.1", "--log-level", "warning", "--no-access-log"]
    else:
        # --reuse-port: without it the kernel often hands every connection to one worker
        command = [sys.executable, "-m", "gunicorn", "-w", "2", "-k", "gthread", "--threads", "8"]
        command += ["--reuse-port", "-b", f"127.0.0.1:{port}", "--log-level", "warning"]
        command += ["bench.apps:wsgi_app"]
    process = subprocess.Popen(command, env=env, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.post(f"{url}/health", json={"message": "x"}, timeout=1)
            return process, url
        except httpx.TransportError:
            if time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"{kind} {variant} did not start") from None
            time.sleep(0.1)


# CPU accounting ----------------------------------------------------------------------------


def _cpu_times() -> tuple[int, int]:
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return fields[3] + fields[4], sum(fields)  # idle + iowait, total


_TICKS = os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (a gunicorn arbiter and its workers)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            text = stat.read_text()
            parent = int(text[text.rindex(")") + 2 :].split()[1])
            children.setdefault(parent, []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo += children.get(current, [])
    return tree


def cpu_seconds(pids: Sequence[int]) -> float:
    """CPU time (user + system, every thread) the processes have used so far."""
    ticks = 0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            text = Path(f"/proc/{pid}/stat").read_text()
            fields = text[text.rindex(")") + 2 :].split()
            ticks += int(fields[11]) + int(fields[12])
    return ticks / _TICKS


def wait_quiet(limit: float = 15.0, idle_share: float = 0.9) -> None:
    """Wait until the machine is idle again (exports and the inbox caught up), so one
    variant's background work is not charged to the next."""
    deadline = time.monotonic() + limit
    idle, total = _cpu_times()
    while time.monotonic() < deadline:
        time.sleep(0.5)
        idle2, total2 = _cpu_times()
        if total2 > total and (idle2 - idle) / (total2 - total) >= idle_share:
            return
        idle, total = idle2, total2


# the local inbox ---------------------------------------------------------------------------


class Inbox:
    """The local inbox in a process of its own: started, stopped (connection refused),
    frozen (connections accepted, never answered) and thawed by the outage section."""

    def __init__(self, database: Path) -> None:
        self.database = database
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def env(self) -> dict[str, str]:
        """The environment that points the servers' Langfuse export (and nothing else) here."""
        return {
            **{k: v for k, v in os.environ.items() if not k.startswith(("LANGFUSE_", "LEMMA_"))},
            "LANGFUSE_PUBLIC_KEY": "pk-bench",
            "LANGFUSE_SECRET_KEY": "sk-bench",
            "LANGFUSE_HOST": f"http://127.0.0.1:{self.port}",
        }

    def start(self) -> None:
        """Start the inbox and wait until it answers."""
        self.process = subprocess.Popen(
            [
                *(sys.executable, "-m", "lemma_middleware", "--db", str(self.database), "inbox"),
                *("--port", str(self.port), "--key", "pk-bench:sk-bench"),
            ],
            stdout=subprocess.DEVNULL,
            cwd=ROOT,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.TransportError):
                httpx.get(f"http://127.0.0.1:{self.port}/", timeout=0.5)
                return
            time.sleep(0.05)
        raise RuntimeError("the inbox did not start")

    def stop(self) -> None:
        """Stop the inbox (thawed first if frozen); connections are refused from then on."""
        if self.process is not None:
            self.process.send_signal(signal.SIGCONT)
            self.process.send_signal(signal.SIGINT)
            self.process.wait(timeout=60)
            self.process = None

    def freeze(self) -> None:
        """SIGSTOP: connections accepted, never answered."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT after :meth:`freeze`."""
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)


@contextlib.contextmanager
def local_inbox(database: Path) -> Iterator[Inbox]:
    """The local inbox in a process of its own (its ``env`` points the servers' Langfuse
    export, and nothing else, at it)."""
    inbox = Inbox(database)
    inbox.start()
    try:
        yield inbox
    finally:
        inbox.stop()


def received_by_service(database: Path) -> dict[str, tuple[int, int]]:
    """Spans and traces the inbox stored, per ``service.name``."""
    with sqlite3.connect(database) as db:
        rows = db.execute(
            "SELECT json_extract(resource, '$.\"service.name\"'), COUNT(*), "
            "COUNT(DISTINCT trace_id) FROM spans GROUP BY 1"
        ).fetchall()
    return {str(service): (spans, traces) for service, spans, traces in rows}
