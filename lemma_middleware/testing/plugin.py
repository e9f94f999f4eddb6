"""Testing helpers for users' own suites (a pytest plugin, loaded automatically).

The ``lemma_traces`` fixture gives a real Langfuse client whose spans stay in memory (no
network). Pass it to the middleware and assert on what your app produced::

    def test_chat_traces_are_conformant(lemma_traces):
        app = create_app()
        app.add_middleware(LemmaMiddleware, agent_name="agent", langfuse=lemma_traces.client)
        TestClient(app).post("/chat", json={"message": "hi"}, headers={"x-conversation-id": "t1"})
        lemma_traces.assert_conformant()
        assert lemma_traces.root().attributes["session.id"] == "t1"
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest
from langfuse import Langfuse
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from lemma_middleware.export.client import build_client, capture_builds, forget_client
from lemma_middleware.export.processors import unwire_provider
from lemma_middleware.sdk.client import inspect_client
from lemma_middleware.testing.contract import Violation, assert_conformant, check_traces

_keys = itertools.count()


class TraceCapture:
    """A real Langfuse client exporting to memory, and views on what it exported.

    By default on a tracer provider of its own: only what goes through ``client`` (the
    middleware given ``langfuse=capture.client``, ``@observe``, ``start_observation``) is
    seen. With ``production=True`` its export sits on the process's global provider, as the
    middleware's does in production: FastAPI's native telemetry, OpenTelemetry
    instrumentors (OpenInference, OpenLLMetry, ...) and ``get_client()`` reach it, and it
    keeps exactly what Langfuse's export filter keeps; a middleware (or ``build_client()``)
    created while it is open, without ``langfuse=``, uses it."""

    def __init__(self, *, production: bool = False) -> None:
        self.exporter = InMemorySpanExporter()
        self.production = production
        self.public_key = f"pk-lemma-test-{next(_keys)}"
        client = build_client(
            span_exporter=self.exporter,
            tracer_provider=None if production else TracerProvider(),
            public_key=self.public_key,
            flush_interval=0.05,
        )
        assert client is not None
        self.client: Langfuse = client
        provider = inspect_client(client).provider
        assert provider is not None
        self.provider: TracerProvider = provider
        if production:
            capture_builds(client)

    def spans(self) -> list[ReadableSpan]:
        """Every exported span so far (flushes first)."""
        self.client.flush()
        return list(self.exporter.get_finished_spans())

    def roots(self) -> list[ReadableSpan]:
        """The root of every trace."""
        return [s for s in self.spans() if s.parent is None]

    def root(self) -> ReadableSpan:
        """The root of the one trace captured (fails if there is not exactly one)."""
        roots = self.roots()
        assert len(roots) == 1, f"expected one trace, got {[s.name for s in roots]}"
        return roots[0]

    def children(self, root: ReadableSpan) -> list[ReadableSpan]:
        """Every other span of ``root``'s trace."""
        trace_id = root.context.trace_id
        return [s for s in self.spans() if s.context.trace_id == trace_id and s is not root]

    def violations(self) -> list[Violation]:
        """The trace contract violations among the captured traces."""
        return check_traces(self.spans())

    def assert_conformant(self) -> None:
        """Fail unless every captured trace satisfies the trace contract."""
        assert_conformant(self.spans())

    def clear(self) -> None:
        """Forget what was captured."""
        self.client.flush()
        self.exporter.clear()

    def close(self) -> None:
        """Stop the export machinery (a production capture leaves the global provider as
        it found it)."""
        if not self.production:
            self.provider.shutdown()
            return
        capture_builds(None)
        self.client.flush()
        unwire_provider(self.provider, self.public_key)
        forget_client(self.client)


@pytest.fixture
def lemma_traces() -> Iterator[TraceCapture]:
    """Captures the traces the code under test produces, in memory."""
    capture = TraceCapture()
    try:
        yield capture
    finally:
        capture.close()


@pytest.fixture
def lemma_production_traces() -> Iterator[TraceCapture]:
    """Captures what the production setup exports: the global tracer provider, FastAPI's
    native telemetry, instrumentors, Langfuse's export filter (``TraceCapture(production=
    True)``). Build the app inside the test (or add the middleware with ``add_middleware``,
    which builds it on the first request) so that the middleware uses the capture."""
    capture = TraceCapture(production=True)
    try:
        yield capture
    finally:
        capture.close()
