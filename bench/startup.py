"""The start-up patterns of Langfuse's guides, side by side (issue 21): process CPU per
request, every thread counted (the request and the export), in processes of their own
(clients and the global provider are process-wide), rounds interleaved, exporting to the
local inbox with Langfuse keys. Each pattern runs twice, the same code either way: its
objects created before the middleware's client (as the guides teach), and after it (the
default start-up order). The target: every pattern within 10 % of its default order, both
adapters."""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bench.harness import ROOT, local_inbox

PATTERNS = {
    "default": "the middleware builds the first client",
    "get_client": "langfuse = get_client() at import",
    "callback": "CallbackHandler() at import",
    "passed": "Langfuse() passed as langfuse=",
    "observe": "@observe functions at import",
}
"""Each pattern's identifier (what :mod:`bench.startup_app` takes) and its label."""
ADAPTERS = {"asgi": "FastAPI(), add_middleware", "wsgi": "Flask, LemmaFlask"}


@dataclass(frozen=True)
class StartUpCost:
    """The median process CPU per request of one pattern under one adapter."""

    adapter: str
    pattern: str
    early_us: float
    """Its objects created before the middleware's client."""
    late_us: float
    """The same code, its objects created after the middleware's client."""

    @property
    def ratio(self) -> float:
        return self.early_us / self.late_us


def startup_section(rounds: int, requests: int) -> list[StartUpCost]:
    """Every pattern under both adapters, ``rounds`` runs of ``requests`` requests each."""
    print(
        f"\n## Start-up patterns: process CPU per request, {rounds} rounds x {requests} "
        "requests, each pattern in a process of its own, exporting to the local inbox"
    )
    runs: dict[tuple[str, str, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as folder, local_inbox(Path(folder) / "db") as inbox:
        for _ in range(rounds):
            for adapter in ADAPTERS:
                for pattern in PATTERNS:
                    for order in ("early", "late"):
                        command = [sys.executable, "-m", "bench.startup_app", adapter, pattern]
                        done = subprocess.run(
                            [*command, str(requests)],
                            env={**inbox.env, "ORDER": order},
                            cwd=ROOT,
                            capture_output=True,
                            text=True,
                            timeout=300,
                        )
                        if done.returncode != 0:
                            raise RuntimeError(f"{adapter} {pattern}: {done.stderr[-2000:]}")
                        cpu = float(done.stdout.split()[-1])
                        runs.setdefault((adapter, pattern, order), []).append(cpu)
    costs = [
        StartUpCost(
            adapter,
            pattern,
            statistics.median(runs[(adapter, pattern, "early")]),
            statistics.median(runs[(adapter, pattern, "late")]),
        )
        for adapter in ADAPTERS
        for pattern in PATTERNS
    ]
    for adapter, label in ADAPTERS.items():
        print(f"\n{label}")
        print(f"{'start-up':40} {'us/req, first':>14} {'after the mw':>13} {'ratio':>6}")
        for cost in costs:
            if cost.adapter == adapter:
                print(
                    f"{PATTERNS[cost.pattern]:40} {cost.early_us:14.1f} {cost.late_us:13.1f} "
                    f"{cost.ratio:6.2f}"
                )
    return costs


def judge_startup(costs: list[StartUpCost]) -> list[tuple[str, bool, str]]:
    """Issue 21's target, per adapter: every pattern within 10 % of its default order
    (what is asked, whether it is met, the worst ratio)."""
    verdicts = []
    for adapter in ADAPTERS:
        worst = max((c for c in costs if c.adapter == adapter), key=lambda c: c.ratio)
        name = f"{adapter}: every start-up pattern within 10 % of its default order"
        verdicts.append((name, worst.ratio <= 1.10, f"worst {worst.pattern}: {worst.ratio:.2f}x"))
    return verdicts


if __name__ == "__main__":
    for name, met, detail in judge_startup(startup_section(3, 1000)):
        print(f"{'MET ' if met else 'MISS'}  {name}  {detail}")
