"""The quick-start demo: the local trace inbox (SQLite), the FastAPI support agent under real
uvicorn, the Flask one and the Django one (SQLite users, Django REST framework) under real
gunicorn, a scripted conversation against each (two users, two threads, three turns each,
one streaming turn, one failing turn), then the threads, one thread's turns and the contract
checker's verdict. No account, no internet. With LANGFUSE_PUBLIC_KEY/SECRET_KEY/HOST set, the
examples send there instead.

Run: ``./dev demo`` (or ``python -m examples.demo`` inside the project's venv).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from lemma_middleware.inbox.cli import main as cli
from lemma_middleware.inbox.schema import default_db
from lemma_middleware.inbox.server import DEFAULT_PORT, Inbox
from lemma_middleware.inbox.store import SpanStore
from lemma_middleware.testing.contract import roots_of

PUBLIC_KEY, SECRET_KEY = "pk-lf-demo", "sk-lf-demo"
ROOT = Path(__file__).resolve().parents[1]

SCRIPT = [
    # (token, thread, message, streaming)
    ("token-alice", "thread-alice", "Hi, my order arrived broken", False),
    ("token-alice", "thread-alice", "I would like a refund", True),
    ("token-alice", "thread-alice", "Thanks!", False),
    ("token-bob", "thread-bob", "Where is my parcel?", False),
    ("token-bob", "thread-bob", "crash", False),
    ("token-bob", "thread-bob", "Never mind, found it", False),
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


def play(base_url: str, prefix: str) -> None:
    """Play the scripted conversation; thread ids get ``prefix`` so the two apps' threads
    stay apart in the inbox."""
    # One connection per turn: uvicorn closes a connection after an unhandled exception.
    for token, thread_name, message, streaming in SCRIPT:
        thread = f"{prefix}-{thread_name}"
        with httpx.Client(base_url=base_url, timeout=10) as client:
            headers = {
                "authorization": f"Bearer {token}",
                "x-conversation-id": thread,
                "x-tenant-id": "acme",
            }
            path = "/chat/stream" if streaming else "/chat"
            if message == "crash":
                print("  -- the next turn fails on purpose: the agent raises (an ERROR trace)")
            response = client.post(path, json={"message": message}, headers=headers)
            trace_id = response.headers.get("x-trace-id") or "(none on a 500 page: see below)"
            print(f"  {thread} {message!r:34} -> {response.status_code} trace {trace_id}")


SERVERS = [
    ("fastapi", "FastAPI example under uvicorn", start_uvicorn, "examples.fastapi_app.app:app"),
    (
        "flask",
        "Flask example under gunicorn (2 workers, gthread)",
        start_gunicorn,
        "examples.flask_app.app:app",
    ),
    (
        "django",
        "Django example under gunicorn (SQLite users, Django REST framework tokens)",
        start_gunicorn,
        "examples.django_app.wsgi",
    ),
]


def run_one(prefix: str, label: str, start: Any, app: str, env: dict[str, str]) -> None:
    """Play the script against one example app, then stop it (which flushes its traces)."""
    print(f"\n== {label}")
    if prefix == "django":
        from examples.django_app.database import prepare_database

        env = env | {"DJANGO_DB": str(Path(tempfile.mkdtemp()) / "db.sqlite3")}
        prepare_database(env)
    server, url = start(app, env)
    try:
        play(url, prefix)
    finally:
        server.send_signal(signal.SIGTERM)  # shutdown flushes pending traces
        server.wait(timeout=30)


def main() -> int:
    own_host = "LANGFUSE_HOST" in os.environ and "LANGFUSE_PUBLIC_KEY" in os.environ
    db = str(default_db().with_name("demo.sqlite3"))  # kept after the demo, to explore
    for stale in (db, f"{db}-wal", f"{db}-shm"):
        Path(stale).unlink(missing_ok=True)
    with Inbox(db, port=0, keys={PUBLIC_KEY: SECRET_KEY}) as inbox:
        env = dict(os.environ)
        if not own_host:
            env |= {
                "LANGFUSE_PUBLIC_KEY": PUBLIC_KEY,
                "LANGFUSE_SECRET_KEY": SECRET_KEY,
                "LANGFUSE_HOST": inbox.base_url,
            }
        print(f"inbox on {inbox.base_url} ({db}); traces go to {env['LANGFUSE_HOST']}")
        for prefix, label, start, app in SERVERS:
            run_one(prefix, label, start, app, env)
        if own_host:
            print("\ntraces were sent to LANGFUSE_HOST; the local inbox was not used")
            return 0
        expected = len(SCRIPT) * len(SERVERS)
        deadline = time.monotonic() + 10
        while len(roots_of(SpanStore(db).spans())) < expected and time.monotonic() < deadline:
            time.sleep(0.1)
    command = _command()
    print(f"\n$ {command} threads")
    cli(["--db", db, "threads"])
    print(f"\n$ {command} show flask-thread-alice")
    cli(["--db", db, "show", "flask-thread-alice"])
    print(f"\n$ {command} check")
    verdict = cli(["--db", db, "check"])
    roots = roots_of(SpanStore(db).spans())
    for root in roots:
        if root.attributes.get("langfuse.observation.level") == "ERROR":
            thread = root.attributes.get("session.id")
            print(f"planned failure in {thread}: trace {root.trace_id} (level ERROR, as it should)")
    print(f"\n{len(roots)} of {expected} turns arrived as traces")
    print(
        f"\nExplore them: {command} --db {db} inbox   "
        f"(web view on http://127.0.0.1:{DEFAULT_PORT}/, Ctrl-C to stop)"
    )
    return verdict if len(roots) == expected else 1


def _command() -> str:
    """How to run the ``lemma-middleware`` command from here (inside the project's venv)."""
    installed = Path(sys.executable).parent / "lemma-middleware"
    if installed.exists():
        try:
            return str(installed.relative_to(Path.cwd()))
        except ValueError:
            return str(installed)
    return f"{sys.executable} -m lemma_middleware"


if __name__ == "__main__":
    raise SystemExit(main())
