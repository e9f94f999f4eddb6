"""The contract checker catches each kind of violation, and passes the examples' traces."""

from __future__ import annotations

import pytest

from lemma_middleware.testing.contract import ContractViolation, assert_conformant, check_traces
from lemma_middleware.testing.records import ReceivedSpan

from .apps.asgi_apps import make_app
from .apps.wsgi_apps import call, make_flask_app
from .helpers import HEADERS, Captured, post, span

GOOD_ROOT = {
    "langfuse.trace.name": "support-agent",
    "gen_ai.agent.name": "support-agent",
    "langfuse.observation.type": "agent",
    "langfuse.trace.input": '{"message": "hi"}',
    "langfuse.trace.output": '{"answer": "HI"}',
    "session.id": "t1",
    "lemma.thread_id": "t1",
    "user.id": "u1",
}
GOOD_CHILD = {
    "session.id": "t1",
    "user.id": "u1",
    "langfuse.trace.name": "support-agent",
    "langfuse.observation.type": "generation",
}


def rules(spans: list[ReceivedSpan]) -> set[str]:
    return {v.rule for v in check_traces(spans)}


def test_a_good_trace_passes() -> None:
    assert check_traces([span("r", None, GOOD_ROOT), span("c", "r", GOOD_CHILD)]) == []


@pytest.mark.parametrize(
    ("spans", "rule"),
    [
        ([span("r", None, GOOD_ROOT), span("x", None, GOOD_ROOT)], "single-root"),  # sibling roots
        ([span("r", None, GOOD_ROOT), span("c", "ghost", GOOD_CHILD)], "single-root"),  # orphan
        ([span("r", None, {**GOOD_ROOT, "gen_ai.agent.name": "support agent!"})], "agent-name"),
        (
            [span("r", None, {k: v for k, v in GOOD_ROOT.items() if k != "langfuse.trace.name"})],
            "agent-name",
        ),
        (
            [span("r", None, {k: v for k, v in GOOD_ROOT.items() if k != "langfuse.trace.input"})],
            "input",
        ),
        (
            [span("r", None, {k: v for k, v in GOOD_ROOT.items() if k != "langfuse.trace.output"})],
            "output-or-error",
        ),
        (
            [
                span(
                    "r",
                    None,
                    {
                        **GOOD_ROOT,
                        "langfuse.trace.output": "",
                        "langfuse.observation.level": "ERROR",
                    },
                )
            ],
            "output-or-error",
        ),
        ([span("r", None, {k: v for k, v in GOOD_ROOT.items() if k != "session.id"})], "thread"),
        ([span("r", None, {k: v for k, v in GOOD_ROOT.items() if k != "user.id"})], "user"),
        (
            [
                span(
                    "r",
                    None,
                    {**GOOD_ROOT, "langfuse.trace.input": '{"user": {"password": "hunter2"}}'},
                )
            ],
            "no-secrets",
        ),
        ([span("r", None, {**GOOD_ROOT, "http.header": "Bearer abcdefghijklmnop"})], "no-secrets"),
        (
            [span("r", None, GOOD_ROOT), span("c", "r", {**GOOD_CHILD, "session.id": "other"})],
            "propagated",
        ),
        (
            [
                span("r", None, GOOD_ROOT),
                span("c", "r", {k: v for k, v in GOOD_CHILD.items() if k != "user.id"}),
            ],
            "propagated",
        ),
        (
            [
                span("r", None, GOOD_ROOT),
                span(
                    "c",
                    "r",
                    {k: v for k, v in GOOD_CHILD.items() if k != "langfuse.observation.type"},
                ),
            ],
            "typed",
        ),
        (
            [
                span("r", None, GOOD_ROOT),
                span("c", "r", {**GOOD_CHILD, "langfuse.internal.is_app_root": True}),
            ],
            "single-root",
        ),
    ],
    ids=[
        "sibling-roots",
        "orphan",
        "bad-agent-name",
        "no-agent-name",
        "no-input",
        "no-output",
        "error-without-message",
        "no-thread",
        "no-user",
        "unredacted-field",
        "credential",
        "wrong-thread-on-child",
        "no-user-on-child",
        "untyped-child",
        "child-marked-app-root",
    ],
)
def test_each_kind_of_violation_is_caught_with_its_trace_id(
    spans: list[ReceivedSpan], rule: str
) -> None:
    violations = check_traces(spans)
    assert rule in {v.rule for v in violations}
    assert all(str(v).startswith("t" * 32 + " ") for v in violations)


def test_an_error_with_a_status_message_needs_no_output() -> None:
    root = {
        **GOOD_ROOT,
        "langfuse.observation.level": "ERROR",
        "langfuse.observation.status_message": "ValueError: x",
    }
    del root["langfuse.trace.output"]
    assert rules([span("r", None, root)]) == set()


async def test_the_middlewares_traces_are_conformant(captured: Captured) -> None:
    app = make_app(captured.client)
    for path in ("/chat/conv-42", "/children", "/stream", "/background"):
        await post(app, path, json={"message": "hi"}, headers=HEADERS)
    flask_app = make_flask_app(captured.client)
    call(
        flask_app, "POST", "/chat/c", json_body={"message": "hi", "password": "pw"}, headers=HEADERS
    )
    call(flask_app, "POST", "/stream", headers=HEADERS)
    call(flask_app, "POST", "/boom", json_body={"message": "x"}, headers=HEADERS)
    captured.assert_conformant()
    assert len(captured.roots()) == 7


def test_assert_conformant_lists_every_violation() -> None:
    with pytest.raises(ContractViolation, match=r"2 trace contract violation\(s\)") as failure:
        assert_conformant(
            [
                span(
                    "r",
                    None,
                    {
                        k: v
                        for k, v in GOOD_ROOT.items()
                        if k not in ("user.id", "langfuse.trace.input")
                    },
                )
            ]
        )
    assert "user: root has no user.id" in str(failure.value)
    with pytest.raises(ContractViolation, match="no spans"):
        assert_conformant([])


@pytest.mark.parametrize(
    "typing",
    [
        {"langfuse.observation.type": "tool"},
        {"gen_ai.operation.name": "chat"},
        {"openinference.span.kind": "LLM"},
        {"traceloop.span.kind": "task"},
        {"llm.request.type": "chat"},
        {"ai.operationId": "ai.generateText"},
    ],
    ids=lambda typing: next(iter(typing)),
)
def test_every_typing_convention_langfuse_maps_is_accepted(typing: dict[str, str]) -> None:
    child = {k: v for k, v in GOOD_CHILD.items() if k != "langfuse.observation.type"} | typing
    assert check_traces([span("r", None, GOOD_ROOT), span("c", "r", child)]) == []


def test_a_called_service_continuing_the_trace_is_one_conformant_trace() -> None:
    """Service B's root continues A's trace: it is an app root of its own, with its own agent
    name, and its children carry B's name; thread and user are the conversation's."""
    b_root = {
        **GOOD_CHILD,
        "langfuse.trace.name": "billing-agent",
        "langfuse.observation.type": "agent",
        "langfuse.internal.is_app_root": True,
    }
    b_child = {**GOOD_CHILD, "langfuse.trace.name": "billing-agent"}
    spans = [
        span("a", None, GOOD_ROOT),
        span("b", "a", b_root, service="billing"),
        span("c", "b", b_child, service="billing"),
    ]
    assert check_traces(spans) == []
    same_service = [span("a", None, GOOD_ROOT), span("b", "a", b_root)]
    assert "single-root" in rules(same_service)
