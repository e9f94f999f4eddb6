"""What several test modules share (one module; conftest holds only fixtures): a request
against an ASGI app, the request's identity headers, a received span built by hand, the
trees' shape check, and the environment of the processes tests start."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import httpx
from opentelemetry.sdk.trace import ReadableSpan

from lemma_middleware.testing.contract import check_traces
from lemma_middleware.testing.plugin import TraceCapture
from lemma_middleware.testing.records import ReceivedSpan

Captured = TraceCapture


HEADERS = {"x-conversation-id": "conv-42", "x-user-id": "user-7", "x-tenant-id": "acme"}


async def post(app: object, path: str, **kwargs: object) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        return await client.post(path, **kwargs)  # type: ignore[arg-type]


def span(
    span_id: str,
    parent: str | None,
    attributes: dict[str, Any],
    trace_id: str = "t" * 32,
    service: str = "front",
) -> ReceivedSpan:
    resource = {"service.name": service}
    return ReceivedSpan(
        trace_id, span_id, parent, f"span-{span_id}", 0, 1, attributes, resource, "langfuse-sdk", 0
    )


def assert_tree_whole(spans: list[ReadableSpan]) -> None:
    """One parentless root per trace, every exported span's parent exported too, and no
    child marked as a trace root."""
    whole = [v for v in check_traces(spans) if v.rule == "single-root"]
    assert not whole, [str(v) for v in whole]
    for span in spans:
        if span.parent is not None:
            assert not span.attributes.get("langfuse.internal.is_app_root"), span.name


def environ_without_destinations() -> dict[str, str]:
    """This process's environment without any ``LANGFUSE_*``/``LEMMA_*`` variable: what a
    server or app started by a test gets before the test says where traces go."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("LANGFUSE_", "LEMMA_"))}


def langfuse_environ(base_url: str, public_key: str, secret_key: str) -> dict[str, str]:
    """The variables that send a process's Langfuse export to ``base_url``."""
    return {
        "LANGFUSE_PUBLIC_KEY": public_key,
        "LANGFUSE_SECRET_KEY": secret_key,
        "LANGFUSE_HOST": base_url,
    }


def run_test_app(module: str, env: dict[str, str], timeout: float) -> str:
    """Run ``python -m <module>`` from the project root with ``env``; its stderr (the test
    fails if it exits with an error)."""
    from examples.demo import ROOT

    run = subprocess.run(
        [sys.executable, "-m", module],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    return run.stderr
