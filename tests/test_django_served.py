"""Django served for real (issue 23): the example project (examples/django_app) under
gunicorn (WSGI, 2 gthread workers) and uvicorn (ASGI), a real SQLite database for auth,
export over OTLP/HTTP protobuf to a receiver on 127.0.0.1. A session user (logged in with
``POST /login``) and a Django REST framework token user are on the root and on every child;
the route template, a view's exception, sync and async streams come out right."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from examples.demo import ROOT, start_gunicorn, start_uvicorn
from examples.django_app.database import SETTINGS, prepare_database
from lemma_middleware.testing.contract import assert_conformant

from .apps.flaky_destination import FlakyDestination
from .helpers import environ_without_destinations

pytest.importorskip("django", reason="Django is not installed")
pytest.importorskip("rest_framework", reason="Django REST framework is not installed")

META = "langfuse.trace.metadata."
SERVERS = {
    "gunicorn": lambda env: start_gunicorn("examples.django_app.wsgi", env),
    "uvicorn": lambda env: start_uvicorn("examples.django_app.asgi:application", env),
}


@pytest.fixture(scope="module", params=sorted(SERVERS))
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    destination = FlakyDestination().start()
    env = environ_without_destinations() | {
        "DJANGO_SETTINGS_MODULE": SETTINGS,
        "DJANGO_DB": str(tmp_path_factory.mktemp("django") / "db.sqlite3"),
        "LEMMA_OTLP_ENDPOINT": destination.url,
    }
    prepare_database(env)
    process, url = SERVERS[request.param](env)
    try:
        yield request.param, url, destination
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=40)
        destination.stop()


def test_a_session_user_is_on_the_root_and_every_child(served: Any) -> None:
    server, url, destination = served
    with httpx.Client(base_url=url, timeout=30) as client:
        login = client.post("/login", json={"username": "alice", "password": "alice-password"})
        assert login.status_code == 200
        for path in ("/chat/t-18851", "/achat/t-18851"):
            response = client.post(
                path, json={"message": "hi"}, headers={"x-conversation-id": "t-18851"}
            )
            assert response.status_code == 200, response.text
            spans = destination.trace(response.headers["x-trace-id"], {"support-agent", "fake-llm"})
            root, children = FlakyDestination.root_and_children(spans)
            assert root.attributes["user.id"] == "alice", (server, path)
            assert [child.attributes.get("user.id") for child in children] == ["alice"]
            assert json.loads(root.attributes[META + "http.route"]) == path[1:].replace(
                "t-18851", "<str:thread_id>"
            )
            assert root.attributes["session.id"] == "t-18851"
            assert_conformant(spans)


def test_a_rest_framework_token_user_is_on_the_root_and_every_child(served: Any) -> None:
    _server, url, destination = served
    headers = {"authorization": "Token token-bob", "x-conversation-id": "t-2"}
    response = httpx.post(
        f"{url}/api/chat", json={"message": "refund"}, headers=headers, timeout=30
    )
    assert response.status_code == 200, response.text
    spans = destination.trace(response.headers["x-trace-id"], {"support-agent", "fake-llm"})
    root, children = FlakyDestination.root_and_children(spans)
    assert root.attributes["user.id"] == "bob"
    assert [child.attributes.get("user.id") for child in children] == ["bob"]
    assert json.loads(root.attributes["langfuse.trace.input"]) == {"message": "refund"}
    assert "refund request" in root.attributes["langfuse.trace.output"]
    assert "Token token-bob" not in json.dumps(root.attributes)


def test_a_failing_view_is_an_error_naming_the_exception(served: Any) -> None:
    _server, url, destination = served
    response = httpx.post(f"{url}/fail", json={"message": "go"}, timeout=30)
    assert response.status_code == 500
    spans = destination.trace(response.headers["x-trace-id"], {"support-agent", "fake-llm"})
    root, _ = FlakyDestination.root_and_children(spans)
    assert root.attributes["langfuse.observation.level"] == "ERROR"
    assert root.attributes["langfuse.observation.status_message"] == (
        "RuntimeError: the knowledge base is unreachable"
    )


@pytest.mark.parametrize("path", ["/stream", "/astream"])
def test_a_stream_ends_its_root_at_the_last_chunk_with_the_model_inside(
    served: Any, path: str
) -> None:
    _server, url, destination = served
    started = time.time_ns()
    with httpx.stream("POST", f"{url}{path}", json={"message": "hello"}, timeout=30) as response:
        body = b"".join(response.iter_bytes())
        trace_id = response.headers["x-trace-id"]
    spans = destination.trace(trace_id, {"support-agent", "fake-llm"})
    root, children = FlakyDestination.root_and_children(spans)
    assert body.count(b"data: ") > 3
    assert "You said:" in root.attributes["langfuse.trace.output"]
    (llm,) = children
    assert started <= root.start_ns <= llm.start_ns <= llm.end_ns <= root.end_ns


def test_manage_py_check_passes_on_the_example_and_fails_on_a_bad_option(tmp_path: Path) -> None:
    env = environ_without_destinations() | {"DJANGO_DB": str(tmp_path / "db.sqlite3")}
    command = [sys.executable, "-m", "django", "check", "--settings", SETTINGS]
    assert subprocess.run(command, env=env, cwd=ROOT, timeout=60).returncode == 0
    (tmp_path / "bad_settings.py").write_text(
        f"from {SETTINGS} import *\nLEMMA_SAMPLE_RATE = 2\n", encoding="utf-8"
    )
    bad = subprocess.run(
        [*command[:-1], "bad_settings"],
        env=env | {"PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])},
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert bad.returncode != 0
    assert "lemma_middleware.E001" in bad.stderr and "sample_rate" in bad.stderr
