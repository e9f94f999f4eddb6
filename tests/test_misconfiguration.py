"""An invalid option never turns into 500s: it is reported once, loudly, naming the option
and the fix; the server fails at start-up where it can (lifespan, WSGI construction), and
requests are served untraced where it cannot."""

from __future__ import annotations

import subprocess
import sys
import time

import httpx
import pytest

from examples.demo import free_port
from lemma_middleware import LemmaMiddleware, LemmaWSGIMiddleware, OptionError

BAD_OPTIONS = [
    ("thread_header=authorization", "thread_header='authorization'"),
    ("thred_header=x-thread", "did you mean 'thread_header'?"),
    ("max_body_bytes=lots", "max_body_bytes='lots'"),
]


def _serve(command: list[str], env_option: str) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    process = subprocess.Popen(
        [*command, "--port" if "uvicorn" in command else "-b", _address(command, port)],
        env={"BAD_OPTION": env_option, "PATH": "/usr/bin:/bin"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return process, f"http://127.0.0.1:{port}"


def _address(command: list[str], port: int) -> str:
    return str(port) if "uvicorn" in command else f"127.0.0.1:{port}"


def _wait(process: subprocess.Popen[str], url: str) -> bool:
    """True once the server answers; False if it exited first."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            httpx.get(url, timeout=0.5)
            return True
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError("the server neither started nor exited")


def _failed_start(command: list[str], env_option: str) -> str:
    """Start the server, expect it to exit with an error before answering; its output."""
    process, url = _serve(command, env_option)
    try:
        assert not _wait(process, url)
        output = process.communicate(timeout=10)[0]
    finally:
        process.kill()
    assert process.returncode != 0
    return output


def _uvicorn(lifespan: str) -> list[str]:
    app = "tests.apps.misconfigured_apps:asgi_app"
    return [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--lifespan", lifespan]


@pytest.mark.parametrize(("option", "named"), BAD_OPTIONS)
@pytest.mark.parametrize("lifespan", ["auto", "on"])
def test_uvicorn_with_lifespan_fails_at_start_naming_the_option(
    option: str, named: str, lifespan: str
) -> None:
    output = _failed_start(_uvicorn(lifespan), option)
    assert named in output and "invalid configuration" in output


@pytest.mark.parametrize(("option", "named"), BAD_OPTIONS[:1])
def test_uvicorn_without_lifespan_serves_untraced_and_says_why_once(
    option: str, named: str
) -> None:
    process, url = _serve(_uvicorn("off"), option)
    try:
        assert _wait(process, url)
        for _ in range(3):
            response = httpx.post(f"{url}/chat", json={"message": "hi"}, timeout=5)
            assert response.status_code == 200 and response.json() == {"answer": "HI"}
            assert "x-trace-id" not in response.headers
    finally:
        process.terminate()
        output = process.communicate(timeout=10)[0]
    assert output.count("invalid configuration") == 1, output
    assert named in output


def test_gunicorn_fails_at_start_naming_the_option() -> None:
    command = [sys.executable, "-m", "gunicorn", "tests.apps.misconfigured_apps:wsgi_app()"]
    assert BAD_OPTIONS[0][1] in _failed_start(command, BAD_OPTIONS[0][0])


@pytest.mark.expect_internal_errors
def test_the_adapters_report_an_option_error() -> None:
    async def app(scope: object, receive: object, send: object) -> None:
        return None

    middleware = LemmaMiddleware(app, user_header="cookie")
    assert isinstance(middleware.configuration_error, OptionError)
    assert "user_header='cookie'" in str(middleware.configuration_error)
    with pytest.raises(OptionError, match="unknown option 'agent'"):
        LemmaWSGIMiddleware(lambda environ, start_response: [], agent="x")


def test_the_typed_options_are_exactly_the_compiled_options() -> None:
    """``Options`` (what type checkers see in ``add_middleware``) and the signature of
    ``TracingOptions.compile`` (the reference) name the same options with the same types."""
    import typing

    from lemma_middleware.core import options

    typed = typing.get_type_hints(options.Options)
    compiled = typing.get_type_hints(options.TracingOptions.compile)
    compiled.pop("return")
    assert typed == compiled


def test_add_middleware_type_checks_and_flags_a_misspelt_option(tmp_path: object) -> None:
    from pathlib import Path

    source = Path(str(tmp_path)) / "app.py"
    source.write_text(
        "from fastapi import FastAPI\n"
        "from lemma_middleware import LemmaMiddleware\n"
        "app = FastAPI()\n"
        'app.add_middleware(LemmaMiddleware, agent_name="agent", thread_header="x-thread")\n'
        'app.add_middleware(LemmaMiddleware, thred_header="x-thread")\n'
    )
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    errors = [line for line in done.stdout.splitlines() if ": error:" in line]
    assert len(errors) == 1, done.stdout
    assert "app.py:5:" in errors[0] and 'did you mean "thread_header"' in errors[0]
