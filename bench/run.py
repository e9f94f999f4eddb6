"""Benchmark: what tracing a request costs, side by side with the alternatives, in one run.

    .venv/bin/python -m bench.run            # full run (a few minutes), targets judged
    .venv/bin/python -m bench.run --smoke    # seconds; keeps the script from rotting (CI)
    .venv/bin/python -m bench.run --only asgi,wsgi,e2e,memory

In-process sections drive the apps with no sockets, the variants interleaved round by round;
they report medians of per-request time and the overhead over the bare app. Every
Langfuse/OpenTelemetry variant exports to a no-op exporter there, so the figures are
request-path CPU. The end-to-end section serves the apps under uvicorn (1 worker) and
gunicorn (2 workers, gthread) on 127.0.0.1, loads them with wrk, and exports for real to the
local inbox running in another process. The memory section streams 1 GB of SSE through
uvicorn and reports the server's peak RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import io
import itertools
import os
import re
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from langfuse import Langfuse
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from bench.apps import OTEL_PROVIDERS, NoOpExporter, make_asgi, make_wsgi, sdk_floor
from lemma_middleware import build_client
from lemma_middleware.delivery.encoding import encode_batch
from lemma_middleware.export.provider import OwnedTracerProvider
from lemma_middleware.sdk.media_screen import langfuse_exporter

ROOT = Path(__file__).resolve().parents[1]
BODY = b'{"message": "where is my parcel?"}'
HEADERS = {
    "content-type": "application/json",
    "x-conversation-id": "conv-1",
    "x-user-id": "user-1",
    "x-tenant-id": "acme",
}


@dataclass
class Row:
    name: str
    median_us: float


def print_table(title: str, rows: list[Row], base: float, floor: float | None = None) -> None:
    print(f"\n{title}")
    header = f"{'variant':42} {'median us/req':>13} {'overhead us':>12} {'x bare':>7}"
    print(header + ("  overhead / SDK floor" if floor else ""))
    for row in rows:
        overhead = row.median_us - base
        line = f"{row.name:42} {row.median_us:13.1f} {overhead:12.1f} {row.median_us / base:7.2f}"
        if floor and row.name not in ("bare app", "Langfuse SDK floor (no HTTP)"):
            line += f"  {overhead / floor:8.2f}"
        print(line)


def interleave(
    variants: dict[str, Callable[[], None]], rounds: int, per_round: int
) -> dict[str, float]:
    """Median per-call time in us of each variant, rounds interleaved."""
    samples: dict[str, list[float]] = {name: [] for name in variants}
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


def no_op_client(key: str) -> tuple[Any, TracerProvider]:
    """The middleware's client and the provider it would create (and make global) in a
    process of its own, exporting to nowhere."""
    provider = OwnedTracerProvider()
    client = build_client(span_exporter=NoOpExporter(), tracer_provider=provider, public_key=key)
    assert client is not None
    return client, provider


def users_langfuse(key: str, exporter: SpanExporter | None = None) -> tuple[Any, TracerProvider]:
    """A plain ``Langfuse()`` client as the docs set one up, on a provider like the one it
    would make global, exporting to nowhere (or ``exporter``)."""
    provider = TracerProvider()
    client = Langfuse(
        public_key=key,
        secret_key="unused",
        span_exporter=exporter or NoOpExporter(),
        tracer_provider=provider,
    )
    return client, provider


# in-process ASGI --------------------------------------------------------------------------


def asgi_caller(app: Any, path: str, body: bytes = BODY) -> Callable[[], None]:
    loop = asyncio.new_event_loop()
    raw_headers = [(k.encode(), v.encode()) for k, v in HEADERS.items()]
    scope_template = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": raw_headers,
        "client": ("127.0.0.1", 1),
        "server": ("t", 80),
    }

    async def one() -> None:
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.sleep(3600)
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            return None

        await app(dict(scope_template), receive, send)

    return lambda: loop.run_until_complete(one())


BARE_WITH_TELEMETRY = "bare app, FastAPI telemetry on"
"""The bare app once a global provider exists (the middleware's, with nothing exporting
FastAPI's spans): FastAPI's native telemetry then runs for every request, excluded paths
included; the excluded path is judged against this."""

ASGI_NAMES = {
    "bare": "bare app",
    "fastapi-otel": "FastAPI native OTel, global SDK provider",
    "otel": "OpenTelemetry ASGI middleware",
    "handwritten": "hand-written middleware (docs)",
    "lemma": "lemma middleware, traced",
    "lemma-telemetry-off": "lemma, FastAPI telemetry off (not dflt)",
}


def asgi_section(rounds: int, per_round: int) -> dict[str, float]:
    client, provider = no_op_client("pk-bench-asgi")
    hand, hand_provider = users_langfuse("pk-bench-hand")
    floor_client, _ = no_op_client("pk-bench-floor")
    names = ASGI_NAMES
    variants = {
        names["bare"]: asgi_caller(make_asgi("bare", None), "/chat"),
        BARE_WITH_TELEMETRY: asgi_caller(
            make_asgi("bare", None, telemetry_provider=provider), "/chat"
        ),
        names["fastapi-otel"]: asgi_caller(
            make_asgi("fastapi-otel", None, NoOpExporter()), "/chat"
        ),
        names["otel"]: asgi_caller(make_asgi("otel", None), "/chat"),
        names["handwritten"]: asgi_caller(
            make_asgi("handwritten", hand, telemetry_provider=hand_provider), "/chat"
        ),
        "Langfuse SDK floor (no HTTP)": lambda: sdk_floor(
            floor_client, HEADERS, BODY, {"answer": "X"}
        ),
        names["lemma"]: asgi_caller(
            make_asgi("lemma", client, telemetry_provider=provider), "/chat"
        ),
        names["lemma-telemetry-off"]: asgi_caller(
            make_asgi("lemma-telemetry-off", client), "/chat"
        ),
        "lemma middleware, capture off": asgi_caller(
            make_asgi("lemma-nocapture", client, telemetry_provider=provider), "/chat"
        ),
        "lemma middleware, excluded path": asgi_caller(
            make_asgi("lemma", client, telemetry_provider=provider), "/health"
        ),
    }
    medians = interleave(variants, rounds, per_round)
    floor = medians["Langfuse SDK floor (no HTTP)"]
    rows = [
        Row(name, value + (medians["bare app"] if name.startswith("Langfuse SDK") else 0))
        for name, value in medians.items()
    ]  # the floor is shown as bare + floor
    print_table(
        "ASGI, in-process (FastAPI() POST /chat, JSON body, 3 identity headers)",
        rows,
        medians["bare app"],
        floor,
    )
    return medians


# export cost ---------------------------------------------------------------------------


def otlp_exporter_encoding(compress: bool) -> Callable[[Sequence[ReadableSpan]], bytes]:
    """What OpenTelemetry's OTLP/HTTP exporter does before the network: encode, serialise
    and, when configured (Langfuse's exporter: gzip; the OTLP default: none), gzip at its
    default level."""

    def encode(spans: Sequence[ReadableSpan]) -> bytes:
        payload = encode_spans(spans).SerializePartialToString()
        return gzip.compress(payload) if compress else payload

    return encode


class EncodeOnly(SpanExporter):
    """An exporter that encodes as ``encode`` does and sends nothing. Keeps the spans it is
    given while ``keeping``."""

    def __init__(self, encode: Callable[[Sequence[ReadableSpan]], bytes]) -> None:
        self.encode = encode
        self.kept: list[ReadableSpan] = []
        self.keeping = True

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self.keeping:
            self.kept.extend(spans)
        self.encode(spans)
        return SpanExportResult.SUCCESS


def export_cost_section(requests: int) -> dict[str, float]:
    """CPU per request spent on the export thread, through each variant's real export
    chain (for Langfuse clients: the processor's own exporter, media pass included), for
    the spans one request produces."""
    costs: dict[str, float] = {}
    spans_per_request: dict[str, float] = {}
    for variant in ("fastapi-otel", "otel", "handwritten", "lemma"):
        name = ASGI_NAMES[variant]
        encode = EncodeOnly(
            encode_batch if variant == "lemma" else otlp_exporter_encoding(variant == "handwritten")
        )
        chain: SpanExporter | None = encode
        client, provider = None, None
        if variant == "handwritten":
            client, provider = users_langfuse("pk-cost-hand", encode)
            chain = langfuse_exporter(provider, "pk-cost-hand")
        elif variant == "lemma":
            provider = OwnedTracerProvider()
            client = build_client(
                span_exporter=encode, tracer_provider=provider, public_key="pk-cost-lemma"
            )
            chain = langfuse_exporter(provider, "pk-cost-lemma")
        assert chain is not None
        app = make_asgi(variant, client, encode, telemetry_provider=provider)
        call = asgi_caller(app, "/chat")
        flush = client.flush if client is not None else OTEL_PROVIDERS[-1].force_flush
        for number in range(1, requests + 1):
            call()
            if number % 128 == 0:
                flush()  # keeps every batch queue far from full: every span is counted
        flush()
        encode.keeping = False
        spans = encode.kept
        spans_per_request[name] = len(spans) / requests
        timings = []
        for _ in range(5):
            start = time.perf_counter()
            for batch in range(0, len(spans), 512):
                chain.export(spans[batch : batch + 512])
            timings.append((time.perf_counter() - start) / requests * 1e6)
        costs[name] = statistics.median(timings)
    print("\nExport, per request, on the background export thread (no network)")
    print(f"{'variant':40} {'us/request':>10} {'spans/request':>14}")
    for name, value in costs.items():
        print(f"{name:40} {value:10.1f} {spans_per_request[name]:14.2f}")
    return costs


# in-process WSGI --------------------------------------------------------------------------


def wsgi_caller(app: Any, path: str, body: bytes = BODY) -> Callable[[], None]:
    environ_template = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "t",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.url_scheme": "http",
        "wsgi.version": (1, 0),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": str(len(body)),
        **{
            f"HTTP_{k.upper().replace('-', '_')}": v
            for k, v in HEADERS.items()
            if k != "content-type"
        },
    }

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        return None

    def one() -> None:
        environ = dict(environ_template)
        environ["wsgi.input"] = io.BytesIO(body)
        result = app(environ, start_response)
        for _ in result:
            pass
        close = getattr(result, "close", None)
        if close is not None:
            close()

    return one


def wsgi_section(rounds: int, per_round: int) -> dict[str, float]:
    client, _ = no_op_client("pk-bench-wsgi")
    hand, _ = users_langfuse("pk-bench-hand-wsgi")
    floor_client, _ = no_op_client("pk-bench-floor-wsgi")
    variants = {
        "bare app": wsgi_caller(make_wsgi("bare", None), "/chat"),
        "hand-written before/teardown_request": wsgi_caller(
            make_wsgi("handwritten", hand), "/chat"
        ),
        "OpenTelemetry WSGI instrumentation": wsgi_caller(make_wsgi("otel", None), "/chat"),
        "Langfuse SDK floor (no HTTP)": lambda: sdk_floor(
            floor_client, HEADERS, BODY, {"answer": "X"}
        ),
        "lemma middleware, traced": wsgi_caller(make_wsgi("lemma", client), "/chat"),
        "lemma middleware, capture off": wsgi_caller(make_wsgi("lemma-nocapture", client), "/chat"),
        "lemma middleware, excluded path": wsgi_caller(make_wsgi("lemma", client), "/health"),
    }
    medians = interleave(variants, rounds, per_round)
    floor = medians["Langfuse SDK floor (no HTTP)"]
    rows = [
        Row(name, value + (medians["bare app"] if name.startswith("Langfuse SDK") else 0))
        for name, value in medians.items()
    ]
    print_table(
        "WSGI, in-process (Flask POST /chat, same request)", rows, medians["bare app"], floor
    )
    return medians


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
        if self.process is not None:
            self.process.send_signal(signal.SIGCONT)
            self.process.send_signal(signal.SIGINT)
            self.process.wait(timeout=60)
            self.process = None

    def freeze(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
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


# end to end -----------------------------------------------------------------------------

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


@dataclass
class Load:
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
    from examples.demo import free_port as port

    return port()


STARTUP_PROBES = 1
"""Requests :func:`serve` makes to a server before it is measured (``POST /health``)."""


def serve(kind: str, variant: str, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**env, "BENCH_VARIANT": variant, "BENCH_KIND": kind}
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


E2E_VARIANTS = {
    "asgi": ("bare", "fastapi-otel", "otel", "handwritten", "lemma", "lemma-telemetry-off"),
    "wsgi": ("bare", "otel", "handwritten", "lemma"),
}
WSGI_NAMES = {
    "bare": "bare app",
    "otel": "OpenTelemetry WSGI middleware",
    "handwritten": "hand-written before/teardown_request",
    "lemma": "lemma middleware, traced",
}


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


def _received(database: Path) -> dict[str, tuple[int, int]]:
    """Spans and traces the inbox stored, per ``service.name``."""
    with sqlite3.connect(database) as db:
        rows = db.execute(
            "SELECT json_extract(resource, '$.\"service.name\"'), COUNT(*), "
            "COUNT(DISTINCT trace_id) FROM spans GROUP BY 1"
        ).fetchall()
    return {str(service): (spans, traces) for service, spans, traces in rows}


Plan = dict[str, tuple[str, str, dict[str, str]]]
"""Servers by name: (kind, variant, extra environment)."""


def load_in_turn(
    groups: list[Plan], seconds: float, connections: int, rounds: int, body: bytes = BODY
) -> dict[str, Served]:
    """Each group's servers run at once (idle ones cost nothing) and are loaded in turn,
    round by round, after a warm-up; medians over the rounds. Every server exports to one
    local inbox under its own ``service.name``; the spans received are counted once the
    servers have stopped (and flushed). Per round, the CPU the server's processes and the
    inbox used (until the machine is idle again) per request, and the server's full garbage
    collections (:func:`bench.apps.log_full_collections`) within the round."""
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
            for plan in groups:
                for name in plan:
                    (Path(folder) / name).mkdir()
                servers = {
                    name: serve(
                        kind,
                        variant,
                        {
                            **inbox.env,
                            **extra,
                            "OTEL_SERVICE_NAME": name,
                            "BENCH_GC_FOLDER": str(Path(folder) / name),
                        },
                    )
                    for name, (kind, variant, extra) in plan.items()
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
            received = _received(database)
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
        if result.traces < result.requests - STARTUP_PROBES:
            line += f"  DROPPED {result.requests - STARTUP_PROBES - result.traces}"
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
    variants: dict[str, tuple[str, ...]] = E2E_VARIANTS,
    body: bytes = BODY,
    bodies: str = "",
) -> dict[str, Served]:
    """Every variant under a real server and real export, each request carrying ``body``
    (``bodies`` says which in the titles); a traced variant that received fewer traces than
    it served requests dropped some, and is flagged."""
    plans: list[Plan] = [
        {f"{kind} {name}": (kind, name, {}) for name in names} for kind, names in variants.items()
    ]
    results = load_in_turn(
        plans,
        seconds,
        connections,
        rounds,
        body=body,
    )
    servers_used = {"asgi": "uvicorn, 1 worker", "wsgi": "gunicorn --reuse-port, 2 gthread x 8"}
    for kind, names in variants.items():
        labels = ASGI_NAMES if kind == "asgi" else WSGI_NAMES
        print(
            f"\nEnd to end, {kind.upper()} under {servers_used[kind]}{bodies}, wrk -t1 "
            f"-c{connections}, {rounds} rounds of {round(seconds)}s, export to the local inbox "
            "(medians)"
        )
        print(SERVED_HEADER)
        base = results[f"{kind} bare"].load.requests_per_s
        for name in names:
            print(_served_line(labels[name], results[f"{kind} {name}"], base))
    return results


def batching_section(seconds: float, connections: int, rounds: int) -> None:
    """The middleware's ASGI variant under Langfuse's batch settings (``LANGFUSE_FLUSH_AT``
    spans per export, ``LANGFUSE_FLUSH_INTERVAL`` seconds at most between exports)."""
    settings = [(512, 5), (512, 1), (128, 1), (128, 5), (64, 1)]
    plan = {
        f"flush_at={at} interval={interval}s": (
            "asgi",
            "lemma",
            {"LANGFUSE_FLUSH_AT": str(at), "LANGFUSE_FLUSH_INTERVAL": str(interval)},
        )
        for at, interval in settings
    }
    results = load_in_turn([plan], seconds, connections, rounds)
    print(
        f"\nBatching, ASGI lemma middleware under uvicorn, wrk -t1 -c{connections}, "
        f"{rounds} rounds of {round(seconds)}s (medians; 512 / 5s is Langfuse's default)"
    )
    print(SERVED_HEADER)
    for name, result in results.items():
        print(_served_line(name, result, None))


# memory ---------------------------------------------------------------------------------


def peak_rss_streaming(variant: str, megabytes: int, env: dict[str, str]) -> float:
    """Peak RSS (MB) of a uvicorn server streaming ``megabytes`` of SSE to a reader."""
    process, url = serve("asgi", variant, env)
    try:
        with httpx.stream("GET", f"{url}/stream?mb={megabytes}", timeout=120) as response:
            received = sum(len(chunk) for chunk in response.iter_raw(1 << 20))
        assert received >= megabytes * 1024 * 1024, received
        status = Path(f"/proc/{process.pid}/status").read_text()
        return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024  # type: ignore[union-attr]
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)


def memory_section(megabytes: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as folder, local_inbox(Path(folder) / "db") as inbox:
        peaks = {v: peak_rss_streaming(v, megabytes, inbox.env) for v in ("bare", "lemma")}
    print(f"\nMemory: peak RSS of uvicorn streaming {megabytes} MB of SSE to a client")
    print(f"{'variant':38} {'peak RSS MB':>12}")
    print(f"{'bare app':38} {peaks['bare']:12.1f}")
    print(
        f"{'lemma middleware, traced':38} {peaks['lemma']:12.1f}  "
        f"(+{peaks['lemma'] - peaks['bare']:.1f} MB)"
    )
    return peaks


# outage ---------------------------------------------------------------------------------

OUTAGE_VARIANTS = {
    "lemma": "lemma middleware",
    "handwritten": "hand-written middleware (plain Langfuse())",
    "fastapi-otel": "FastAPI native OTel, OTLP/HTTP exporter",
}
IDENTITY = {"x-conversation-id": "conv-1", "x-user-id": "user-1", "x-tenant-id": "acme"}


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


def outage_section(up: float, outage: float, rate: float) -> dict[str, tuple[int, int]]:
    """The destination down (connection refused) for ``outage`` seconds, then hanging
    (accepting, never answering) as long, under steady load: requests served against
    traces received once the servers have stopped, and request latency in each phase."""
    phases: list[tuple[str, float]] = []
    with tempfile.TemporaryDirectory() as folder:
        inbox = Inbox(Path(folder) / "inbox.sqlite3")
        inbox.start()
        try:
            servers = {
                variant: serve("asgi", variant, {**inbox.env, "OTEL_SERVICE_NAME": variant})
                for variant in OUTAGE_VARIANTS
            }
            stop = threading.Event()
            logs: dict[str, list[tuple[float, float]]] = {v: [] for v in servers}
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
        received = _received(inbox.database)
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
    lost: dict[str, tuple[int, int]] = {}
    for variant, log in logs.items():
        served = len(log)  # POST /chat answered 200 (a variant may also trace its start-up probe)
        traces = received.get(variant, (0, 0))[1]
        lost[variant] = (served, max(0, served - traces))
        p99s = []
        for (_, begin), (_, end) in itertools.pairwise(phases):
            took = sorted(seconds for started, seconds in log if begin <= started < end)
            p99s.append(f"{took[int(0.99 * (len(took) - 1))] * 1000:14.1f}ms" if took else "-")
        print(
            f"{OUTAGE_VARIANTS[variant]:44} {served:7} {traces:7} {lost[variant][1]:6}  "
            + " ".join(f"{p:>16}" for p in p99s)
        )
    return lost


# targets --------------------------------------------------------------------------------


def judge(
    asgi: dict[str, float] | None,
    wsgi: dict[str, float] | None,
    e2e: dict[str, Served] | None,
    memory: dict[str, float] | None,
    outage: dict[str, tuple[int, int]] | None = None,
    more: list[tuple[str, bool, str]] | None = None,
) -> None:
    """The targets of the performance and hardening issues, judged on this run's figures
    (``more``: checks judged elsewhere, printed with these)."""
    checks: list[tuple[str, bool, str]] = list(more or [])
    if asgi:
        base = asgi["bare app"]
        ours = asgi[ASGI_NAMES["lemma"]] - base
        hand = asgi[ASGI_NAMES["handwritten"]] - base
        excluded = asgi["lemma middleware, excluded path"] - asgi[BARE_WITH_TELEMETRY]
        checks += [
            (
                "ASGI overhead <= 1/3 of hand-written",
                ours <= hand / 3,
                f"{ours:.0f} vs {hand:.0f} us",
            ),
            (
                "ASGI excluded path < 5 us over bare+telemetry",
                excluded < 5,
                f"{excluded:.1f} us",
            ),
        ]
    if wsgi:
        base = wsgi["bare app"]
        ours = wsgi["lemma middleware, traced"] - base
        otel = wsgi["OpenTelemetry WSGI instrumentation"] - base
        excluded = wsgi["lemma middleware, excluded path"] - base
        checks += [
            ("WSGI overhead <= OpenTelemetry WSGI's", ours <= otel, f"{ours:.0f} vs {otel:.0f} us"),
            ("WSGI excluded path < 5 us over bare", excluded < 5, f"{excluded:.1f} us"),
        ]
    if e2e:
        lemma, hand_load = e2e["asgi lemma"].load, e2e["asgi handwritten"].load
        native, middleware = e2e["asgi fastapi-otel"].load, e2e["asgi otel"].load
        best_otel = max(native.requests_per_s, middleware.requests_per_s)
        lowest_p99 = min(native.p99_ms, middleware.p99_ms)
        wsgi_ours, wsgi_otel = e2e["wsgi lemma"].load, e2e["wsgi otel"].load
        checks += [
            (
                "e2e ASGI req/s >= both OpenTelemetry's",
                lemma.requests_per_s >= best_otel,
                f"{lemma.requests_per_s:.0f} vs {native.requests_per_s:.0f} / "
                f"{middleware.requests_per_s:.0f}",
            ),
            (
                "e2e ASGI req/s >= 2x hand-written",
                lemma.requests_per_s >= 2 * hand_load.requests_per_s,
                f"{lemma.requests_per_s / hand_load.requests_per_s:.2f}x",
            ),
            (
                "e2e ASGI p99 <= the lower OpenTelemetry p99",
                lemma.p99_ms <= lowest_p99,
                f"{lemma.p99_ms:.1f} vs {native.p99_ms:.1f} / {middleware.p99_ms:.1f} ms",
            ),
            (
                "e2e WSGI req/s >= OpenTelemetry WSGI's",
                wsgi_ours.requests_per_s >= wsgi_otel.requests_per_s,
                f"{wsgi_ours.requests_per_s:.0f} vs {wsgi_otel.requests_per_s:.0f}",
            ),
            (
                "e2e WSGI p99 <= OpenTelemetry WSGI's",
                wsgi_ours.p99_ms <= wsgi_otel.p99_ms,
                f"{wsgi_ours.p99_ms:.1f} vs {wsgi_otel.p99_ms:.1f} ms",
            ),
        ]
        for kind in ("asgi", "wsgi"):
            result = e2e[f"{kind} lemma"]
            missing = result.requests - STARTUP_PROBES - result.traces
            checks.append(
                (
                    f"e2e {kind.upper()}: no trace dropped",
                    missing <= 0,
                    f"{result.traces} traces / {result.requests} requests",
                )
            )
    if memory:
        extra = memory["lemma"] - memory["bare"]
        checks.append(("streaming peak RSS within 20 MB of bare", extra <= 20, f"+{extra:.1f} MB"))
    if outage:
        served, lost = outage["lemma"]
        checks.append(("30 s down + 30 s hanging: no trace lost", lost == 0, f"{lost} of {served}"))
    print("\nTargets (ratios from this run)")
    for name, ok, detail in checks:
        print(f"  {'MET ' if ok else 'MISS'}  {name:52} {detail}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="tiny run, no targets (for CI)")
    parser.add_argument(
        "--only",
        default="asgi,wsgi,shapes,layers,redaction,e2e,e2e-history,batching,memory,outage",
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="wrk duration per round")
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args(argv)
    sections = set(args.only.split(","))
    rounds, per_round, seconds, megabytes = (
        (3, 30, 1.0, 16) if args.smoke else (21, 300, args.seconds, 1024)
    )
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} cores; "
        f"medians of {rounds} interleaved rounds"
    )
    asgi = asgi_section(rounds, per_round) if "asgi" in sections else None
    if "asgi" in sections:
        export_cost_section(64 if args.smoke else 1024)
    wsgi = wsgi_section(rounds, per_round) if "wsgi" in sections else None
    from bench.shapes import (
        e2e_history_section,
        judge_shapes,
        layers_section,
        redaction_section,
        shapes_section,
    )

    shapes = shapes_section(1 if args.smoke else 5, args.smoke) if "shapes" in sections else None
    if "layers" in sections:
        layers_section()
    redaction = redaction_section(5 if args.smoke else 300) if "redaction" in sections else None
    history = (
        e2e_history_section(seconds, args.connections, 1 if args.smoke else 3)
        if "e2e-history" in sections
        else None
    )
    e2e = (
        e2e_section(seconds, args.connections, 1 if args.smoke else 3)
        if "e2e" in sections
        else None
    )
    if "batching" in sections:
        batching_section(seconds, args.connections, 1 if args.smoke else 3)
    memory = memory_section(megabytes) if "memory" in sections else None
    outage = (
        outage_section(*((2.0, 3.0, 10.0) if args.smoke else (10.0, 30.0, 20.0)))
        if "outage" in sections
        else None
    )
    if not args.smoke:
        judge(asgi, wsgi, e2e, memory, outage, judge_shapes(shapes, redaction, history))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
