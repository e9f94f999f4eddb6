"""The trace contract as code: judge stored or captured traces, one line per violation.

``check_traces(spans)`` groups spans by trace and applies every rule of
``shared/docs/trace-contract.md`` that can be read off the spans:

* ``single-root``: exactly one span without a parent, every parent present (no orphans), and
  no child marked ``langfuse.internal.is_app_root`` (Langfuse shows such a child as a second
  root of the trace);
* ``agent-name``: the root carries a trace name and ``gen_ai.agent.name`` in snake_case,
  kebab-case or CamelCase;
* ``input``: the root carries an input;
* ``output-or-error``: the root carries an output, or level ERROR with a status message;
* ``thread``: the root carries ``session.id`` and ``lemma.thread_id`` (every turn of a thread);
* ``user``: the root carries ``user.id``;
* ``no-secrets``: no credential-looking value, and no sensitive field left unredacted, in any
  attribute;
* ``propagated``: every child carries the root's thread, user and trace name (across
  services, a called service's root and its children carry their own agent name; a called
  service's root may be an app root in Langfuse's sense);
* ``typed``: every child says what it is, in a convention Langfuse maps to an observation
  type: ``langfuse.observation.type``, ``gen_ai.*`` (OpenTelemetry GenAI),
  ``openinference.span.kind`` (OpenInference), ``traceloop.span.kind`` or
  ``llm.request.type`` (OpenLLMetry), ``ai.operationId`` (Vercel AI SDK).

Spans may be :class:`~lemma_middleware.receiver.ReceivedSpan` (the inbox) or OpenTelemetry
``ReadableSpan`` objects (in-memory capture); see :func:`as_records`.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan

from lemma_middleware.core.attributes import Keys
from lemma_middleware.core.options import AGENT_NAME_PATTERN
from lemma_middleware.core.redaction import REDACTED, Redactor
from lemma_middleware.testing.records import ReceivedSpan

_CREDENTIAL = re.compile(r"\b(?:Bearer|Basic)\s+[A-Za-z0-9._~+/=-]{8,}|\bsk-[A-Za-z0-9_-]{16,}")


_PROPAGATED = (Keys.THREAD, Keys.USER, Keys.AGENT)


_TYPE_KEYS = (
    Keys.TYPE,
    "openinference.span.kind",
    "traceloop.span.kind",
    "llm.request.type",
    "ai.operationId",
)
"""Attributes that tell Langfuse what an observation is (besides any ``gen_ai.*``)."""


@dataclass(frozen=True)
class Violation:
    """One broken rule, in one trace."""

    trace_id: str
    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.trace_id} {self.rule}: {self.message}"


def as_records(spans: Iterable[ReceivedSpan | ReadableSpan]) -> list[ReceivedSpan]:
    """Spans in one shape, whether they came from the inbox or an in-memory exporter."""
    records: list[ReceivedSpan] = []
    for span in spans:
        if isinstance(span, ReceivedSpan):
            records.append(span)
            continue
        context = span.get_span_context()
        assert context is not None
        records.append(
            ReceivedSpan(
                trace_id=format(context.trace_id, "032x"),
                span_id=format(context.span_id, "016x"),
                parent_span_id=format(span.parent.span_id, "016x") if span.parent else None,
                name=span.name,
                start_ns=span.start_time or 0,
                end_ns=span.end_time or 0,
                attributes=dict(span.attributes or {}),
                resource=dict(span.resource.attributes),
                scope=span.instrumentation_scope.name if span.instrumentation_scope else "",
                status_code=span.status.status_code.value,
            )
        )
    return records


def group_by_trace(spans: Iterable[ReceivedSpan]) -> dict[str, list[ReceivedSpan]]:
    """Spans grouped by trace id, in arrival order."""
    traces: dict[str, list[ReceivedSpan]] = {}
    for span in spans:
        traces.setdefault(span.trace_id, []).append(span)
    return traces


def _secret_problems(span: ReceivedSpan, redactor: Redactor) -> list[str]:
    problems: list[str] = []
    for key, value in span.attributes.items():
        if not isinstance(value, str):
            continue
        if _CREDENTIAL.search(value):
            problems.append(f"{span.name}: {key} holds a credential")
            continue
        if value[:1] in "{[":
            try:
                document = json.loads(value)
            except ValueError:
                continue
            leaked = _unredacted_fields(document, _sensitivity(redactor))
            if leaked:
                problems.append(f"{span.name}: {key} has unredacted {', '.join(sorted(leaked))}")
    return problems


@functools.lru_cache(maxsize=8)
def _sensitivity(redactor: Redactor) -> Callable[[str], bool]:
    """``redactor.is_sensitive``, remembered per key (bounded: keys are untrusted), as the
    same few keys (``role``, ``content``) fill every conversation history; for the last few
    redactors (a test suite makes one per check)."""
    return functools.lru_cache(maxsize=4096)(redactor.is_sensitive)


def _unredacted_fields(value: Any, is_sensitive: Callable[[str], bool]) -> set[str]:
    found: set[str] = set()
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str) and is_sensitive(key):
                if item not in (REDACTED, None, ""):
                    found.add(key)
            else:
                found |= _unredacted_fields(item, is_sensitive)
    elif isinstance(value, list):
        for item in value:
            found |= _unredacted_fields(item, is_sensitive)
    return found


def roots_of(spans: Iterable[ReceivedSpan]) -> list[ReceivedSpan]:
    """The parentless spans, oldest first."""
    return sorted((s for s in spans if s.parent_span_id is None), key=lambda s: s.start_ns)


def check_trace(spans: Sequence[ReceivedSpan], redactor: Redactor | None = None) -> list[Violation]:
    """Every contract violation of one trace's spans."""
    redactor = redactor or Redactor()
    trace_id = spans[0].trace_id
    violations: list[Violation] = []

    def fail(rule: str, message: str) -> None:
        violations.append(Violation(trace_id, rule, message))

    ids = {s.span_id for s in spans}
    roots = [s for s in spans if s.parent_span_id is None]
    orphans = [s for s in spans if s.parent_span_id is not None and s.parent_span_id not in ids]
    if len(roots) != 1:
        fail("single-root", f"{len(roots)} spans without a parent (want exactly 1)")
    for orphan in orphans:
        fail("single-root", f"{orphan.name!r} has a parent that was never exported")
    by_id = {s.span_id: s for s in spans}
    for child in spans:
        if (
            child.parent_span_id is not None
            and child.attributes.get(Keys.IS_APP_ROOT)
            and not _enters_service(child, by_id)
        ):
            fail(
                "single-root",
                f"child {child.name!r} is marked langfuse.internal.is_app_root: Langfuse "
                "shows it as a second root",
            )
    for span in spans:
        for problem in _secret_problems(span, redactor):
            fail("no-secrets", problem)
    if len(roots) != 1:
        return violations

    root = roots[0]
    a = root.attributes
    name = a.get(Keys.AGENT)
    agent = a.get(Keys.AGENT_NAME)
    if not name or not agent:
        fail("agent-name", "root has no trace name or gen_ai.agent.name")
    elif not AGENT_NAME_PATTERN.fullmatch(str(agent)):
        fail("agent-name", f"agent name {agent!r} is not snake_case, kebab-case or CamelCase")
    if not (a.get(Keys.TRACE_INPUT) or a.get(Keys.INPUT)):
        fail("input", "root has no input")
    failed = a.get(Keys.LEVEL) == "ERROR"
    if failed and not a.get(Keys.STATUS_MESSAGE):
        fail("output-or-error", "root is an ERROR without a status message")
    if not failed and not (a.get(Keys.TRACE_OUTPUT) or a.get(Keys.OUTPUT)):
        fail("output-or-error", "root has neither an output nor an error")
    if not a.get(Keys.THREAD) or not a.get(Keys.LEMMA_THREAD):
        fail("thread", "root has no thread id (session.id and lemma.thread_id)")
    if not a.get(Keys.USER):
        fail("user", "root has no user.id")
    for child in spans:
        if child is root:
            continue
        # A service's root continuing the trace of the service that called it carries its
        # own agent name; its children carry it too. Thread and user are the conversation's.
        local_root = _service_root(child, by_id)
        for key in _PROPAGATED:
            reference = (
                a.get(key)
                if local_root is root or key != Keys.AGENT
                else local_root.attributes.get(key)
            )
            if reference and child.attributes.get(key) != reference:
                fail("propagated", f"child {child.name!r} lacks the root's {key}")
        if not any(k in child.attributes for k in _TYPE_KEYS) and not any(
            k.startswith("gen_ai.") for k in child.attributes
        ):
            fail("typed", f"child {child.name!r} has no observation type")
    return violations


def _service(span: ReceivedSpan) -> object:
    return span.resource.get("service.name")


def _enters_service(span: ReceivedSpan, by_id: dict[str, ReceivedSpan]) -> bool:
    """Whether ``span``'s parent was exported by another service (a call across services
    that continues the caller's trace): ``span`` is that service's root."""
    parent = by_id.get(span.parent_span_id or "")
    return parent is not None and _service(parent) != _service(span)


def _service_root(span: ReceivedSpan, by_id: dict[str, ReceivedSpan]) -> ReceivedSpan:
    """The root of the part of the trace ``span``'s service exported: its nearest ancestor
    (or itself) whose parent is missing or belongs to another service."""
    seen = 0
    while span.parent_span_id in by_id and not _enters_service(span, by_id) and seen < 10_000:
        span = by_id[span.parent_span_id]
        seen += 1
    return span


def check_traces(
    spans: Iterable[ReceivedSpan | ReadableSpan], redactor: Redactor | None = None
) -> list[Violation]:
    """Every contract violation across all traces in ``spans``."""
    violations: list[Violation] = []
    for trace_spans in group_by_trace(as_records(spans)).values():
        violations.extend(check_trace(trace_spans, redactor))
    return violations


class ContractViolation(AssertionError):
    """Raised by :func:`assert_conformant`; its message lists every violation."""


def assert_conformant(
    spans: Iterable[ReceivedSpan | ReadableSpan], redactor: Redactor | None = None
) -> None:
    """Fail (AssertionError) unless every trace in ``spans`` satisfies the contract."""
    records = as_records(spans)
    if not records:
        raise ContractViolation("no spans were captured")
    violations = check_traces(records, redactor)
    if violations:
        raise ContractViolation(
            f"{len(violations)} trace contract violation(s):\n"
            + "\n".join(f"  {v}" for v in violations)
        )
