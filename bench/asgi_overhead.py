"""Seed of the benchmark suite: per-request cost of the ASGI middleware, in-process.

Interleaves bare / traced / excluded-path / capture-off round by round and prints medians
and the overhead over bare. Spans go to a no-op exporter, so this is request-path CPU.
Run: ``.venv/bin/python bench/asgi_overhead.py [rounds] [requests-per-round]``.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from lemma_middleware import LemmaMiddleware, build_client


class NoOpExporter(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def agent_app() -> FastAPI:
    app = FastAPI(telemetry={"tracing": False})

    @app.post("/chat")
    async def chat(body: dict[str, Any]) -> dict[str, Any]:
        return {"answer": body["message"].upper()}

    @app.post("/health")
    async def health(body: dict[str, Any]) -> dict[str, Any]:
        return {"answer": body["message"].upper()}

    return app


BODY = b'{"message": "where is my parcel?"}'
HEADERS = [
    (b"content-type", b"application/json"),
    (b"x-conversation-id", b"conv-1"),
    (b"x-user-id", b"user-1"),
    (b"x-tenant-id", b"acme"),
]


async def one_request(app: Any, path: str) -> None:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": HEADERS,
        "client": ("127.0.0.1", 1),
        "server": ("t", 80),
    }
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": BODY, "more_body": False}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        return None

    await app(scope, receive, send)


async def main(rounds: int, per_round: int) -> None:
    client = build_client(
        span_exporter=NoOpExporter(), tracer_provider=TracerProvider(), public_key="pk-bench"
    )
    bare = agent_app()
    variants: dict[str, tuple[Any, str]] = {
        "bare app": (bare, "/chat"),
        "lemma middleware, traced": (
            LemmaMiddleware(agent_app(), langfuse=client, agent_name="a"),
            "/chat",
        ),
        "lemma middleware, capture off": (
            LemmaMiddleware(
                agent_app(),
                langfuse=client,
                agent_name="a",
                capture_input=False,
                capture_output=False,
            ),
            "/chat",
        ),
        "lemma middleware, excluded path": (
            LemmaMiddleware(agent_app(), langfuse=client, agent_name="a"),
            "/health",
        ),
    }
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for app, path in variants.values():  # warm up
        for _ in range(200):
            await one_request(app, path)
    for _ in range(rounds):
        for name, (app, path) in variants.items():
            start = time.perf_counter()
            for _ in range(per_round):
                await one_request(app, path)
            samples[name].append((time.perf_counter() - start) / per_round * 1e6)
    base = statistics.median(samples["bare app"])
    print(f"{'variant':34} {'median us/req':>14} {'overhead us':>12} {'ratio':>6}")
    for name, values in samples.items():
        median = statistics.median(values)
        print(f"{name:34} {median:14.1f} {median - base:12.1f} {median / base:6.2f}")


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:]]
    asyncio.run(main(*(args or [15, 300])))
