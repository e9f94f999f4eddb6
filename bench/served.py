"""The end-to-end sections: the apps under real servers (uvicorn, gunicorn) loaded by
``wrk``, every traced variant exporting for real to the local inbox in another process
(``e2e``, and ``e2e-history`` through :mod:`bench.shapes`), and the middleware under several
batch settings (``batching``).
"""

from __future__ import annotations

import os
import signal
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.harness import (
    BODY,
    STARTUP_PROBES,
    Load,
    cpu_seconds,
    local_inbox,
    process_tree,
    received_by_service,
    serve,
    wait_quiet,
    wrk,
)
from bench.variants import LABELS, Variant

WRK_SCRIPT = """
-- Every request belongs to one of 100,000 conversations of 5,000 users (one tenant), as
-- an agent's traffic does: no per-value cache anywhere sees the same ids over and over.
wrk.method = "POST"
local file = io.open(os.getenv("BENCH_BODY_FILE"), "rb")
wrk.body = file:read("*a")
file:close()
math.randomseed(os.time())
request = function()
  local conversation = math.random(1, 100000)
  return wrk.format(nil, nil, {
    ["Content-Type"] = "application/json",
    ["X-Conversation-Id"] = "conv-" .. conversation,
    ["X-User-Id"] = "user-" .. (conversation % 5000),
    ["X-Tenant-Id"] = "acme",
  })
end
"""

E2E_VARIANTS = {
    "asgi": (
        Variant.BARE,
        Variant.FASTAPI_OTEL,
        Variant.OTEL,
        Variant.HANDWRITTEN,
        Variant.LEMMA,
        Variant.LEMMA_TELEMETRY_OFF,
    ),
    "wsgi": (Variant.BARE, Variant.OTEL, Variant.HANDWRITTEN, Variant.LEMMA),
}
"""The end-to-end table's variants, by kind of app."""


@dataclass
class Served:
    """One variant under load: medians over the rounds, and what reached the inbox."""

    load: Load
    requests: int
    """Every request the server answered (rounds, warm-up and start-up probes)."""
    spans: int
    traces: int
    server_cpu_us: float = 0.0
    """CPU per request of the server's processes (every thread: requests, export), median."""
    inbox_cpu_us: float = 0.0
    """CPU per request of the inbox storing what the server exported, median."""
    full_collections: list[float] = field(default_factory=list)
    """The server's full garbage collections during the measured rounds: each pause, ms."""

    @property
    def missing(self) -> int:
        """Requests measured with no trace received (above 0: the variant dropped some)."""
        return self.requests - STARTUP_PROBES - self.traces


EndToEnd = dict[str, dict[Variant, Served]]
"""End-to-end results by kind of app (``asgi``, ``wsgi``), then variant."""


@dataclass
class Server:
    """One server to run: the ``service.name`` it exports under (the key of its results),
    the kind of app (``asgi``: uvicorn, ``wsgi``: gunicorn), its variant, more environment."""

    service: str
    kind: str
    variant: Variant
    env: dict[str, str] = field(default_factory=dict)


def load_in_turn(
    groups: list[list[Server]], seconds: float, connections: int, rounds: int, body: bytes = BODY
) -> dict[str, Served]:
    """Each group's servers run at once (idle ones cost nothing) and are loaded in turn,
    round by round, after a warm-up; medians over the rounds, by service. Every server
    exports to one local inbox under its own ``service.name``; the spans received are
    counted once the servers have stopped (and flushed). Per round, the CPU the server's
    processes and the inbox used (until the machine is idle again) per request, and the
    server's full garbage collections (:func:`bench.apps.log_full_collections`) within the
    round."""
    samples: dict[str, list[Load]] = {}
    cpu: dict[str, list[tuple[float, float]]] = {}
    windows: dict[str, list[tuple[float, float]]] = {}  # the measured rounds, wall clock
    served: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as folder:
        script = str(Path(folder) / "post.lua")
        Path(script).write_text(WRK_SCRIPT)
        Path(folder, "body").write_bytes(body)
        os.environ["BENCH_BODY_FILE"] = str(Path(folder, "body"))
        database = Path(folder) / "inbox.sqlite3"
        with local_inbox(database) as inbox:
            assert inbox.process is not None
            inbox_pid = [inbox.process.pid]
            for group in groups:
                for server in group:
                    (Path(folder) / server.service).mkdir()
                servers = {
                    server.service: serve(
                        server.kind,
                        server.variant,
                        {
                            **inbox.env,
                            **server.env,
                            "OTEL_SERVICE_NAME": server.service,
                            "BENCH_GC_FOLDER": str(Path(folder) / server.service),
                        },
                    )
                    for server in group
                }
                try:
                    for name, (_, url) in servers.items():
                        warm = wrk(f"{url}/chat", min(3, seconds), connections, script)
                        served[name] = warm.requests + STARTUP_PROBES
                    for _ in range(rounds):
                        for name, (process, url) in servers.items():
                            wait_quiet()
                            tree = process_tree(process.pid)
                            before = cpu_seconds(tree), cpu_seconds(inbox_pid)
                            started = time.time()
                            load = wrk(f"{url}/chat", seconds, connections, script)
                            windows.setdefault(name, []).append((started, time.time()))
                            wait_quiet()  # the export and the inbox's storing, until idle
                            after = cpu_seconds(tree), cpu_seconds(inbox_pid)
                            samples.setdefault(name, []).append(load)
                            per_request = 1e6 / max(load.requests, 1)  # seconds -> µs/request
                            cpu.setdefault(name, []).append(
                                (
                                    (after[0] - before[0]) * per_request,
                                    (after[1] - before[1]) * per_request,
                                )
                            )
                            served[name] += load.requests
                finally:
                    for process, _ in servers.values():
                        process.send_signal(signal.SIGTERM)
                    for process, _ in servers.values():
                        process.wait(timeout=60)
            wait_quiet()  # the inbox stores what the servers flushed on their way out
            received = received_by_service(database)
            pauses = {
                name: [
                    float(pause)
                    for log in (Path(folder) / name).glob("*.txt")
                    for when, pause in (line.split() for line in log.read_text().splitlines())
                    if any(start <= float(when) <= end for start, end in windows[name])
                ]
                for name in samples
            }
    return {
        name: Served(
            Load(
                statistics.median(load.requests_per_s for load in loads),
                statistics.median(load.p50_ms for load in loads),
                statistics.median(load.p99_ms for load in loads),
                sum(load.errors for load in loads),
                sum(load.requests for load in loads),
            ),
            served[name],
            *received.get(name, (0, 0)),
            statistics.median(server for server, _ in cpu[name]),
            statistics.median(inbox for _, inbox in cpu[name]),
            pauses[name],
        )
        for name, loads in samples.items()
    }


def _served_line(label: str, result: Served, base: float | None) -> str:
    load = result.load
    line = (
        f"{label:40} {load.requests_per_s:7.0f} "
        f"{f'{load.requests_per_s / base:.2f}' if base else '-':>6} "
        f"{load.p50_ms:7.2f} {load.p99_ms:7.2f} {load.errors:7} "
        f"{result.spans / result.requests:9.2f} {result.server_cpu_us:8.0f} "
        f"{result.inbox_cpu_us:8.0f} {len(result.full_collections):7} "
        f"{statistics.median(result.full_collections or [0]):8.1f}"
    )
    if result.spans:
        line += f"  {result.traces} / {result.requests}"
        if result.missing > 0:
            line += f"  DROPPED {result.missing}"
    return line


SERVED_HEADER = (
    f"{'variant':40} {'req/s':>7} {'x bare':>6} {'p50 ms':>7} {'p99 ms':>7} "
    f"{'non-2xx':>7} {'spans/req':>9} {'srv CPU':>8} {'inbox CPU':>8} {'full GC':>7} "
    f"{'pause ms':>8}"
    "  traces received / requests"
)


def e2e_section(
    seconds: float,
    connections: int,
    rounds: int,
    variants: dict[str, tuple[Variant, ...]] = E2E_VARIANTS,
    body: bytes = BODY,
    bodies: str = "",
) -> EndToEnd:
    """Every variant under a real server and real export, each request carrying ``body``
    (``bodies`` says which in the titles); a traced variant that received fewer traces than
    it served requests dropped some, and is flagged."""
    plans = [
        [Server(f"{kind} {variant}", kind, variant) for variant in kind_variants]
        for kind, kind_variants in variants.items()
    ]
    results = load_in_turn(plans, seconds, connections, rounds, body=body)
    by_kind = {
        kind: {variant: results[f"{kind} {variant}"] for variant in kind_variants}
        for kind, kind_variants in variants.items()
    }
    servers_used = {"asgi": "uvicorn, 1 worker", "wsgi": "gunicorn --reuse-port, 2 gthread x 8"}
    for kind, kind_results in by_kind.items():
        print(
            f"\nEnd to end, {kind.upper()} under {servers_used[kind]}{bodies}, wrk -t1 "
            f"-c{connections}, {rounds} rounds of {round(seconds)}s, export to the local inbox "
            "(medians)"
        )
        print(SERVED_HEADER)
        base = kind_results[Variant.BARE].load.requests_per_s
        for variant, result in kind_results.items():
            print(_served_line(LABELS[kind][variant], result, base))
    return by_kind


BATCH_SETTINGS = ((512, 5), (512, 1), (128, 1), (128, 5), (64, 1))
"""(``LANGFUSE_FLUSH_AT``, ``LANGFUSE_FLUSH_INTERVAL``) pairs the batching section compares."""


def batching_section(
    seconds: float, connections: int, rounds: int
) -> dict[tuple[int, int], Served]:
    """The middleware's ASGI variant under Langfuse's batch settings (``LANGFUSE_FLUSH_AT``
    spans per export, ``LANGFUSE_FLUSH_INTERVAL`` seconds at most between exports)."""
    plan = [
        Server(
            f"asgi lemma, flush_at={at}, interval={interval}",
            "asgi",
            Variant.LEMMA,
            {"LANGFUSE_FLUSH_AT": str(at), "LANGFUSE_FLUSH_INTERVAL": str(interval)},
        )
        for at, interval in BATCH_SETTINGS
    ]
    results = load_in_turn([plan], seconds, connections, rounds)
    by_setting = {
        setting: results[server.service]
        for setting, server in zip(BATCH_SETTINGS, plan, strict=True)
    }
    print(
        f"\nBatching, ASGI lemma middleware under uvicorn, wrk -t1 -c{connections}, "
        f"{rounds} rounds of {round(seconds)}s (medians; 512 / 5s is Langfuse's default)"
    )
    print(SERVED_HEADER)
    for (at, interval), result in by_setting.items():
        print(_served_line(f"flush_at={at} interval={interval}s", result, None))
    return by_setting
