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
uvicorn and reports the server's peak RSS. The inbox section times the local inbox's pages
at 200,000 and 1,000,000 stored spans.
"""

from __future__ import annotations

import argparse
import os
import sys

from bench.django_section import django_section
from bench.inbox_section import inbox_section
from bench.inprocess import asgi_section, export_cost_section, wsgi_section
from bench.memory import memory_section
from bench.outage import outage_section
from bench.sampling import sampling_section
from bench.served import batching_section, e2e_section
from bench.shapes import e2e_history_section, layers_section, redaction_section, shapes_section
from bench.startup import startup_section
from bench.targets import Figures, judge

SECTIONS = (
    "asgi,wsgi,django,shapes,layers,redaction,sampling,startup,e2e,e2e-history,batching,"
    "memory,outage,inbox"
)
"""Every section (``asgi`` includes the export table), in the order they run."""


def main(argv: list[str] | None = None) -> int:
    """Run the sections asked for, print their tables and, on a full run, the targets."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="tiny run, no targets (for CI)")
    parser.add_argument("--only", default=SECTIONS)
    parser.add_argument("--seconds", type=float, default=5.0, help="wrk duration per round")
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args(argv)
    sections = set(args.only.split(","))
    rounds, per_round, seconds, megabytes = (
        (3, 30, 1.0, 16) if args.smoke else (21, 300, args.seconds, 1024)
    )
    served_rounds = 1 if args.smoke else 3
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} cores; "
        f"medians of {rounds} interleaved rounds"
    )
    figures = Figures()
    if "asgi" in sections:
        figures.asgi = asgi_section(rounds, per_round)
        export_cost_section(64 if args.smoke else 1024)
    if "wsgi" in sections:
        figures.wsgi = wsgi_section(rounds, per_round)
    if "django" in sections:
        figures.django = django_section(rounds, per_round)
    if "shapes" in sections:
        figures.shapes = shapes_section(1 if args.smoke else 5, args.smoke)
    if "layers" in sections:
        layers_section()
    if "redaction" in sections:
        figures.redaction = redaction_section(5 if args.smoke else 300)
    if "sampling" in sections:
        figures.sampling = sampling_section(*((3, 20) if args.smoke else (21, 200)))
    if "startup" in sections:
        figures.startup = startup_section(*((1, 100) if args.smoke else (3, 1000)))
    if "e2e-history" in sections:
        figures.history = e2e_history_section(seconds, args.connections, served_rounds)
    if "e2e" in sections:
        figures.e2e = e2e_section(seconds, args.connections, served_rounds)
    if "batching" in sections:
        batching_section(seconds, args.connections, served_rounds)
    if "memory" in sections:
        figures.memory = memory_section(megabytes)
    if "outage" in sections:
        figures.outage = outage_section(*((2.0, 3.0, 10.0) if args.smoke else (10.0, 30.0, 20.0)))
    if "inbox" in sections:
        figures.inbox = (
            inbox_section((3_000,), 3_000, 3)
            if args.smoke
            else inbox_section((200_000, 1_000_000), 200_000, 5)
        )
    if not args.smoke:
        judge(figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
