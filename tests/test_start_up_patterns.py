"""The start-up patterns of Langfuse's guides, in a fresh process each (the global tracer
provider and Langfuse's client registry are process-wide): a client created with
``get_client()`` before the middleware's, either placement of the middleware, FastAPI's
native telemetry on, every destination configuration. Each gives one conformant trace per
request at every destination: one root, the LLM and tool spans under it with the thread."""

from __future__ import annotations

import pytest

from lemma_middleware.inbox.receiver import OTLPReceiver
from lemma_middleware.testing.contract import check_traces

from .helpers import environ_without_destinations, langfuse_environ, run_test_app

PROJECT_ID = "5b0c7b3e-8f6d-4a43-9d0e-3f1f6f2b9a11"


def destinations(kind: str, base_url: str) -> dict[str, str]:
    langfuse = langfuse_environ(base_url, "pk-start", "sk-start")
    lemma = {
        "LEMMA_API_KEY": "lemma-key",
        "LEMMA_PROJECT_ID": PROJECT_ID,
        "LEMMA_BASE_URL": f"{base_url}/otel/v1/traces",
    }
    return {
        "langfuse": langfuse,
        "langfuse+lemma": langfuse | lemma,
        "lemma": lemma,
        "otlp": {
            "LEMMA_OTLP_ENDPOINT": f"{base_url}/v1/traces",
            "LEMMA_OTLP_HEADERS": "Authorization=Bearer lemma-key",
        },
    }[kind]


CASES = [
    (placement, early, kind)
    for placement in ("add_middleware", "wrap")
    for early in (False, True)
    for kind in ("langfuse", "langfuse+lemma", "lemma", "otlp")
    # without Langfuse keys an early get_client() is a disabled client (README)
    if not (early and kind in ("lemma", "otlp"))
]


def run_app(receiver: OTLPReceiver, kind: str, **settings: str) -> str:
    """Run the app once against ``receiver``; its stderr."""
    env = environ_without_destinations()
    env |= destinations(kind, receiver.base_url) | settings
    return run_test_app("tests.apps.start_up_app", env, timeout=60)


@pytest.mark.parametrize(("placement", "early", "kind"), CASES)
def test_one_whole_trace_per_request_whatever_was_created_first(
    placement: str, early: bool, kind: str
) -> None:
    with OTLPReceiver(keys={"pk-start": "sk-start"}, bearer="lemma-key") as receiver:
        stderr = run_app(receiver, kind, PLACEMENT=placement, EARLY="1" if early else "0")
        assert "started a server span of its own" not in stderr
        # Langfuse keeps the early client's settings: said, with the fix
        assert ("was created before the middleware's" in stderr) is early, stderr[-2000:]
        per_destination = 2 if kind == "langfuse+lemma" else 1
        assert receiver.wait_for(lambda spans: len(spans) >= 3 * per_destination, 10)
    by_path: dict[str, list] = {}
    for request in receiver.requests:
        by_path.setdefault(request.path, []).extend(request.spans)
    assert len(by_path) == per_destination
    for path, spans in by_path.items():
        assert sorted(s.name for s in spans) == ["llm", "lookup", "support-agent"], path
        assert not check_traces(spans), [str(v) for v in check_traces(spans)]
        (root,) = [s for s in spans if s.parent_span_id is None]
        for child in spans:
            if child is not root:
                assert child.parent_span_id == root.span_id, child.name
                assert child.attributes["session.id"] == "conv-1"
                assert not child.attributes.get("langfuse.internal.is_app_root")


def test_a_framework_that_detaches_the_trace_inside_the_middleware_is_reported_with_the_fix() -> (
    None
):
    """The app exports FastAPI's spans itself, so FastAPI's telemetry must run; wrapped by
    the middleware, it restarts the context from the headers: said once, with the fix."""
    with OTLPReceiver(keys={"pk-start": "sk-start"}) as receiver:
        stderr = run_app(receiver, "langfuse", PLACEMENT="wrap", USER_EXPORTER="1")
        assert stderr.count("'fastapi' started a server span of its own") == 1, stderr[-2000:]
        assert "app.add_middleware(LemmaMiddleware" in stderr
        inside = run_app(receiver, "langfuse", PLACEMENT="add_middleware", USER_EXPORTER="1")
        assert "started a server span of its own" not in inside


@pytest.mark.parametrize("kind", ["lemma", "otlp"])
def test_a_keyless_client_created_first_exports_through_the_middlewares_client(kind: str) -> None:
    """Without Langfuse keys, get_client() at import time gives a disabled client that the
    app keeps; the middleware makes it a twin of its own client, so the tool span made
    through it arrives, in the request's trace, and says so at start-up."""
    with OTLPReceiver(keys={"pk-start": "sk-start"}, bearer="lemma-key") as receiver:
        stderr = run_app(receiver, kind, PLACEMENT="add_middleware", EARLY="1")
        assert "now export through the middleware's client" in stderr, stderr[-2000:]
        assert receiver.wait_for(lambda spans: len(spans) >= 3, 10)
    spans = receiver.spans
    assert sorted(s.name for s in spans) == ["llm", "lookup", "support-agent"]
    assert not check_traces(spans), [str(v) for v in check_traces(spans)]
