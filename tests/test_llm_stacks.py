"""The LLM stacks people run, inside FastAPI (native telemetry on and off) and Flask, each in
a process of its own (instrumentors use the global tracer provider), against a local fake
OpenAI-compatible server and the real client libraries, exporting for real to a receiver on
127.0.0.1: every request is one conformant trace whose LLM spans sit under the root and
carry the request's thread and user."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest

from examples.demo import start_uvicorn
from lemma_middleware.inbox.receiver import OTLPReceiver
from lemma_middleware.testing.contract import check_traces
from lemma_middleware.testing.records import ReceivedSpan

from .helpers import environ_without_destinations, langfuse_environ, run_test_app

pytest.importorskip("openai", reason="the llm extra is not installed")

STACKS = {  # stack -> the requests its app makes
    "langfuse-openai": ["/chat", "/stream", "/embed", "/achat"],
    "observe": ["/chat"],
    "langchain": ["/chat"],
    "langgraph": ["/chat"],
    "openinference": ["/chat", "/respond", "/respond-stream"],
    "openllmetry": ["/chat", "/respond", "/respond-stream"],
    "agents": ["/chat"],
}
LLM_TYPES = {"generation", "embedding", "LLM", "EMBEDDING", "llm"}


@pytest.fixture(scope="module")
def fake_openai() -> Iterator[str]:
    process, url = start_uvicorn("tests.apps.fake_openai:app", dict(os.environ))
    try:
        yield f"{url}/v1"
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=20)


def is_llm_span(span: ReceivedSpan) -> bool:
    a = span.attributes
    kind = (
        a.get("langfuse.observation.type")
        or a.get("openinference.span.kind")
        or a.get("llm.request.type")
    )
    return kind in LLM_TYPES or "gen_ai.request.model" in a or "gen_ai.system" in a


def run_stack(fake_openai: str, stack: str, framework: str, **settings: str) -> list[ReceivedSpan]:
    """Run the stack's app once; the spans its destination received."""
    with OTLPReceiver(keys={"pk-llm": "sk-llm"}, bearer="lemma-key") as receiver:
        env = environ_without_destinations()
        if settings.pop("DESTINATION", "langfuse") == "lemma":
            env |= {
                "LEMMA_API_KEY": "lemma-key",
                "LEMMA_PROJECT_ID": "5b0c7b3e-8f6d-4a43-9d0e-3f1f6f2b9a11",
                "LEMMA_BASE_URL": f"{receiver.base_url}/otel/v1/traces",
            }
        else:
            env |= langfuse_environ(receiver.base_url, "pk-llm", "sk-llm")
        env |= {
            "OPENAI_BASE_URL": fake_openai,
            "OPENAI_API_KEY": "fake-key",
            "STACK": stack,
            "FRAMEWORK": framework,
            "REQUESTS": ",".join(STACKS[stack]),
            **settings,
        }
        run_test_app("tests.apps.llm_app", env, timeout=120)
        return receiver.spans


def assert_one_trace_per_request(spans: list[ReceivedSpan], paths: list[str]) -> None:
    roots = [s for s in spans if s.parent_span_id is None]
    assert len(roots) == len(paths), sorted(s.name for s in spans)
    violations = check_traces(spans)
    assert not violations, [str(v) for v in violations]
    for root in roots:
        assert root.name == "support-agent"
        trace = [s for s in spans if s.trace_id == root.trace_id and s is not root]
        llm = [s for s in trace if is_llm_span(s)]
        assert llm, (root.attributes.get("langfuse.trace.input"), [s.name for s in trace])
        for span in trace:
            assert span.attributes.get("session.id") == "conv-7", span.name


@pytest.mark.parametrize("framework", ["fastapi", "fastapi-no-telemetry", "flask"])
@pytest.mark.parametrize("stack", list(STACKS))
def test_each_request_is_one_trace_with_its_llm_spans_under_the_root(
    fake_openai: str, stack: str, framework: str
) -> None:
    assert_one_trace_per_request(run_stack(fake_openai, stack, framework), STACKS[stack])


@pytest.mark.parametrize("destination", ["langfuse", "lemma"])
@pytest.mark.parametrize("stack", list(STACKS))
def test_a_client_created_before_the_middlewares_changes_nothing(
    fake_openai: str, stack: str, destination: str
) -> None:
    """``get_client()`` first, as a module of the app would at import (Lemma only: a client
    without keys, which the middleware makes a twin of its own)."""
    spans = run_stack(fake_openai, stack, "fastapi", EARLY="1", DESTINATION=destination)
    assert_one_trace_per_request(spans, STACKS[stack])
