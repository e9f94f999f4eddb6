"""The quick-start demo: the FastAPI support agent under real uvicorn, sending real traces
to a local receiver on 127.0.0.1 (no account, no internet), then what arrived.

Run: ``./dev demo`` (or ``python -m examples.demo`` inside the project's venv).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx

from lemma_middleware.receiver import OTLPReceiver, ReceivedSpan

PUBLIC_KEY, SECRET_KEY = "pk-lf-demo", "sk-lf-demo"
ROOT = Path(__file__).resolve().parents[1]

SCRIPT = [
    # (token, thread, message, streaming)
    ("token-alice", "thread-alice-1", "Hi, my order arrived broken", False),
    ("token-alice", "thread-alice-1", "I would like a refund", True),
    ("token-alice", "thread-alice-1", "Thanks!", False),
    ("token-bob", "thread-bob-1", "Where is my parcel?", False),
    ("token-bob", "thread-bob-1", "crash", False),
    ("token-bob", "thread-bob-1", "Never mind, found it", False),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until_up(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=0.5)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def start_server(
    command: list[str], port: int, env: dict[str, str]
) -> tuple[subprocess.Popen[bytes], str]:
    """Run a server command listening on 127.0.0.1:``port``; return it once it answers."""
    process = subprocess.Popen(command, env=env, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(f"{url}/health")
    except BaseException:
        process.kill()
        raise
    return process, url


def start_uvicorn(app: str, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    """Serve an ASGI app under real uvicorn (1 worker)."""
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port)]
    return start_server([*command, "--log-level", "critical"], port, env)


def start_gunicorn(
    app: str, env: dict[str, str], *, preload: bool = False
) -> tuple[subprocess.Popen[bytes], str]:
    """Serve a WSGI app under real gunicorn: 2 workers, gthread, 4 threads each."""
    port = free_port()
    command = [sys.executable, "-m", "gunicorn", "-w", "2", "-k", "gthread", "--threads", "4"]
    command += ["-b", f"127.0.0.1:{port}", "--log-level", "critical", "--graceful-timeout", "10"]
    return start_server([*command, *(["--preload"] if preload else []), app], port, env)


def play(base_url: str) -> None:
    # One connection per turn: uvicorn closes a connection after an unhandled exception.
    for token, thread, message, streaming in SCRIPT:
        with httpx.Client(base_url=base_url, timeout=10) as client:
            headers = {
                "authorization": f"Bearer {token}",
                "x-conversation-id": thread,
                "x-tenant-id": "acme",
            }
            path = "/chat/stream" if streaming else "/chat"
            response = client.post(path, json={"message": message}, headers=headers)
            trace_id = response.headers.get("x-trace-id")
            print(f"  {thread} {message!r:34} -> {response.status_code} trace {trace_id}")


def summarise(spans: list[ReceivedSpan]) -> None:
    by_trace: dict[str, list[ReceivedSpan]] = defaultdict(list)
    for span in spans:
        by_trace[span.trace_id].append(span)
    roots = sorted((s for s in spans if s.parent_span_id is None), key=lambda s: s.start_ns)
    print(f"\nreceived {len(spans)} spans in {len(by_trace)} traces")
    for root in roots:
        a = root.attributes
        children = [s.name for s in by_trace[root.trace_id] if s is not root]
        print(
            f"  thread={a.get('session.id')} user={a.get('user.id')} "
            f"tenant={a.get('app.tenant.id')} agent={a.get('langfuse.trace.name')} "
            f"service={root.resource.get('service.name')} "
            f"level={a.get('langfuse.observation.level', 'DEFAULT')}"
        )
        print(f"    input : {str(a.get('langfuse.trace.input'))[:80]}")
        output = a.get("langfuse.trace.output", a.get("langfuse.observation.status_message"))
        print(f"    output: {str(output)[:80]}")
        print(f"    children: {children}")


SERVERS = [
    ("FastAPI example under uvicorn", start_uvicorn, "examples.fastapi_app.app:app"),
    (
        "Flask example under gunicorn (2 workers, gthread)",
        start_gunicorn,
        "examples.flask_app.app:app",
    ),
]


def run_one(label: str, start: Any, app: str) -> bool:
    """Play the script against one example app; True when every turn arrived as a trace."""
    with OTLPReceiver(keys={PUBLIC_KEY: SECRET_KEY}) as receiver:
        env = {
            **os.environ,
            "LANGFUSE_PUBLIC_KEY": os.environ.get("LANGFUSE_PUBLIC_KEY", PUBLIC_KEY),
            "LANGFUSE_SECRET_KEY": os.environ.get("LANGFUSE_SECRET_KEY", SECRET_KEY),
            "LANGFUSE_HOST": os.environ.get("LANGFUSE_HOST", receiver.base_url),
        }
        print(f"\n== {label}; traces go to {env['LANGFUSE_HOST']}")
        server, url = start(app, env)
        try:
            play(url)
        finally:
            server.send_signal(signal.SIGTERM)  # shutdown flushes pending traces
            server.wait(timeout=30)
        if env["LANGFUSE_HOST"] != receiver.base_url:
            return True  # sent to the configured host instead
        receiver.wait_for(
            lambda spans: sum(s.parent_span_id is None for s in spans) >= len(SCRIPT), 10
        )
        summarise(receiver.spans)
        return sum(s.parent_span_id is None for s in receiver.spans) == len(SCRIPT)


def main() -> int:
    results = [run_one(label, start, app) for label, start, app in SERVERS]
    return 0 if all(results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
