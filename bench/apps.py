"""The apps the benchmark compares: one agent endpoint, traced in each of the ways a user could.

ASGI variants, all ``FastAPI()`` as users write it (its native telemetry on, so it records
spans whenever a global SDK tracer provider exists): ``bare``; ``fastapi-otel`` (FastAPI's
native telemetry on a global OpenTelemetry SDK provider with the OTLP/HTTP exporter: what a
FastAPI user picks today); ``otel`` (OpenTelemetry's ASGI middleware, explicit provider);
``handwritten`` (``@app.middleware("http")`` opening ``start_as_current_observation`` +
``propagate_attributes`` around ``call_next``, as Langfuse's docs suggest, with a plain
``Langfuse()`` client, which makes its provider global); ``lemma``; ``lemma-telemetry-off``
(``FastAPI(telemetry={"tracing": False})``: not the default); ``lemma-nocapture``.
WSGI variants (Flask): ``bare``, ``handwritten`` (``before_request``/``teardown_request``),
``otel`` (OpenTelemetry's WSGI instrumentation), ``lemma``, ``lemma-nocapture``.
Both kinds: ``lemma-sampled-out`` and ``lemma-sampled-out-no-keep`` (conversation sampling
at rate 0, :data:`SAMPLED_OUT`: every turn dropped by design).

With ``agent=True`` an app also serves ``POST /agent``, an agent's turn
(:func:`agent_turn`): a tool call and a generation, recorded as observations through the
app's Langfuse client when it has one.

Servers import ``bench.apps:asgi_app`` / ``bench.apps:wsgi_app``; the variant comes from the
environment variable ``BENCH_VARIANT``. In one process (the in-process sections) there is a
single global provider for many variants, so there each variant's ``FastAPI()`` is handed
the provider its own process would have made global (``telemetry_provider``).
"""

from __future__ import annotations

import base64
import gc
import json
import os
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

from langfuse import Langfuse, propagate_attributes
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from bench.traffic import SSE_CHUNK, SSE_CHUNKS

AGENT = "support-agent"
STREAM_CHUNK = b"data: " + b"x" * (64 * 1024 - 8) + b"\n\n"


class NoOpExporter(SpanExporter):
    """Drops every span: what remains is the request-path cost."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


OTEL_PROVIDERS: list[TracerProvider] = []


def otel_provider(exporter: SpanExporter) -> TracerProvider:
    """An OpenTelemetry SDK provider with a batch processor, as users set one up."""
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    OTEL_PROVIDERS.append(provider)
    return provider


def answer(body: dict[str, Any]) -> dict[str, Any]:
    """The agent's answer: a short message echoed upper-cased (the benchmark's first body,
    and the hostile one: the output is then as big as the input), or a short reply to a
    conversation history."""
    return {"answer": (body.get("message") or "Thanks, I will look into it.").upper()}


SAMPLED_OUT: dict[str, dict[str, Any]] = {
    "lemma-sampled-out": {"sample_rate": 0.0},
    "lemma-sampled-out-no-keep": {"sample_rate": 0.0, "keep_errors": False},
}
"""The middleware's sampling options of the variants that drop every turn by design."""
LEMMA_VARIANTS = ("lemma", "lemma-nocapture", "lemma-telemetry-off", *SAMPLED_OUT)
"""The variants traced by this middleware."""


def _look_up(question: str) -> dict[str, Any]:
    """The agent's tool: a lookup answered from nowhere (the work is not what is measured)."""
    return {"order": "A-1042", "status": "in transit", "matched": len(question)}


def agent_turn(client: Langfuse | None, body: dict[str, Any]) -> dict[str, Any]:
    """An agent's turn: a tool call on the last message, then the model asked with the whole
    conversation, then :func:`answer`. With ``client``, each step is an observation through
    it, as an instrumented agent records them (children of the request's trace); with None,
    the same steps, unrecorded (the bare app: no tracing at all)."""
    messages = body.get("messages") or [{"role": "user", "content": body.get("message") or ""}]
    question = str(messages[-1].get("content") or "")
    reply = answer(body)
    if client is None:
        _look_up(question)
        return reply
    with client.start_as_current_observation(
        name="lookup-order", as_type="tool", input={"query": question}
    ) as tool:
        tool.update(output=_look_up(question))
    with client.start_as_current_observation(
        name="llm", as_type="generation", model="gpt-4o-mini", input=messages
    ) as generation:
        generation.update(
            output=reply["answer"], usage_details={"input": len(messages) * 50, "output": 12}
        )
    return reply


def _identity(headers: Any) -> dict[str, Any]:
    return {
        "user_id": headers.get("x-user-id"),
        "session_id": headers.get("x-conversation-id"),
        "trace_name": AGENT,
        "metadata": {"tenant_id": headers.get("x-tenant-id") or ""},
    }


def sdk_floor(client: Langfuse, headers: dict[str, str], body: bytes, answer: Any) -> None:
    """The irreducible work, straight on the SDK with no HTTP layer: the same root
    observation the middleware writes (type, name, the contract's raw keys), the same
    propagated attributes, the request's input and the answer as output."""
    thread, tenant = headers.get("x-conversation-id"), headers.get("x-tenant-id")
    with (
        client.start_as_current_observation(name=AGENT, as_type="agent") as root,
        propagate_attributes(
            user_id=headers.get("x-user-id"),
            session_id=thread,
            trace_name=AGENT,
            metadata={"gen_ai.agent.name": AGENT, "lemma.thread_id": thread, "tenant_id": tenant},
        ),
    ):
        text_in, text_out = body.decode(), json.dumps(answer)
        root.update(input=text_in, output=text_out)
        root._otel_span.set_attributes(
            {
                "gen_ai.agent.name": AGENT,
                "lemma.thread_id": thread,
                "app.tenant.id": tenant,
                "langfuse.trace.input": text_in,
                "langfuse.trace.output": text_out,
                "langfuse.trace.metadata.http.method": '"POST"',
                "langfuse.trace.metadata.http.route": '"/chat"',
                "langfuse.trace.metadata.http.status_code": "200",
            }
        )


# ASGI ------------------------------------------------------------------------------


def make_asgi(
    variant: str,
    client: Langfuse | None,
    otel_exporter: SpanExporter | None = None,
    telemetry_provider: TracerProvider | None = None,
    agent: bool = False,
) -> Any:
    """The FastAPI agent, traced as ``variant`` says. ``telemetry_provider``: the provider
    FastAPI's native telemetry would find global in this variant's own process. ``agent``:
    serve ``POST /agent`` too (:func:`agent_turn`, observations through ``client``)."""
    from fastapi import FastAPI, Request
    from fastapi.responses import Response, StreamingResponse

    if variant == "fastapi-otel" and telemetry_provider is None and otel_exporter is not None:
        telemetry_provider = otel_provider(otel_exporter)
    if variant == "lemma-telemetry-off":
        app = FastAPI(telemetry={"tracing": False})
    elif telemetry_provider is not None:
        app = FastAPI(telemetry={"tracer_provider": telemetry_provider})
    else:
        app = FastAPI()

    @app.post("/chat")
    async def chat(body: dict[str, Any]) -> dict[str, Any]:
        return answer(body)

    @app.post("/health")
    async def health(body: dict[str, Any]) -> dict[str, Any]:
        return answer(body)

    @app.post("/chat/stream")
    async def chat_stream(body: dict[str, Any]) -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(SSE_CHUNKS):
                yield SSE_CHUNK

        return StreamingResponse(chunks(), media_type="text/event-stream")

    @app.get("/stream")
    async def stream(mb: int = 1024) -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(mb * 16):
                yield STREAM_CHUNK

        return StreamingResponse(chunks(), media_type="text/event-stream")

    if agent:

        @app.post("/agent")
        async def agent_route(body: dict[str, Any]) -> dict[str, Any]:
            return agent_turn(client, body)

    if variant == "handwritten":
        assert client is not None

        @app.middleware("http")
        async def trace(request: Request, call_next: Callable[[Request], Any]) -> Any:
            body = await request.body()
            with (
                client.start_as_current_observation(
                    name=AGENT, as_type="agent", input=json.loads(body or b"null")
                ) as root,
                propagate_attributes(**_identity(request.headers)),
            ):
                response = await call_next(request)
                content = b"".join([chunk async for chunk in response.body_iterator])
                root.update(output=content.decode())
                return Response(content, response.status_code, dict(response.headers))

    if variant in LEMMA_VARIANTS:
        from lemma_middleware import LemmaMiddleware

        capture = variant == "lemma" or variant in SAMPLED_OUT
        app.add_middleware(
            LemmaMiddleware,
            agent_name=AGENT,
            langfuse=client,
            capture_input=capture,
            capture_output=capture,
            exclude_paths=["/health"],
            # the bench hands the client (variants may share a process): adopt none of theirs
            adopt_clients=client is None,
            **SAMPLED_OUT.get(variant, {}),
        )
    if variant == "otel":
        from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

        return OpenTelemetryMiddleware(
            app, tracer_provider=otel_provider(otel_exporter or NoOpExporter())
        )
    return app


# WSGI ------------------------------------------------------------------------------


def make_wsgi(
    variant: str,
    client: Langfuse | None,
    otel_exporter: SpanExporter | None = None,
    agent: bool = False,
) -> Any:
    """The Flask agent, traced as ``variant`` says. ``agent``: serve ``POST /agent`` too
    (:func:`agent_turn`, observations through ``client``)."""
    from flask import Flask, Response, g, request

    app = Flask(__name__)

    @app.post("/chat")
    def chat() -> dict[str, Any]:
        return answer(request.get_json())

    @app.post("/health")
    def health() -> dict[str, Any]:
        return answer(request.get_json())

    @app.post("/chat/stream")
    def chat_stream() -> Response:
        request.get_json()
        return Response((SSE_CHUNK for _ in range(SSE_CHUNKS)), mimetype="text/event-stream")

    if agent:

        @app.post("/agent")
        def agent_route() -> dict[str, Any]:
            return agent_turn(client, request.get_json())

    if variant == "handwritten":
        assert client is not None

        @app.before_request
        def open_trace() -> None:
            g.root_cm = client.start_as_current_observation(
                name=AGENT, as_type="agent", input=request.get_json(silent=True)
            )
            g.root = g.root_cm.__enter__()
            g.propagation = propagate_attributes(**_identity(request.headers))
            g.propagation.__enter__()

        @app.after_request
        def record_output(response: Response) -> Response:
            g.root.update(output=response.get_data(as_text=True))
            return response

        @app.teardown_request
        def close_trace(error: BaseException | None) -> None:
            if "propagation" in g:
                g.propagation.__exit__(None, None, None)
                g.root_cm.__exit__(None, None, None)

    if variant in ("lemma", "lemma-nocapture", *SAMPLED_OUT):
        from lemma_middleware import LemmaWSGIMiddleware

        capture = variant == "lemma" or variant in SAMPLED_OUT
        app.wsgi_app = LemmaWSGIMiddleware(  # type: ignore[method-assign]
            app.wsgi_app,
            agent_name=AGENT,
            langfuse=client,
            capture_input=capture,
            capture_output=capture,
            exclude_paths=["/health"],
            # the bench hands the client (variants may share a process): adopt none of theirs
            adopt_clients=client is None,
            **SAMPLED_OUT.get(variant, {}),
        )
    if variant == "otel":
        from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware

        app.wsgi_app = OpenTelemetryMiddleware(  # type: ignore[method-assign]
            app.wsgi_app, tracer_provider=otel_provider(otel_exporter or NoOpExporter())
        )
    return app


# entry points for real servers, configured by environment -------------------------------


def _server_client(variant: str) -> Langfuse | None:
    if variant == "handwritten":  # as Langfuse's docs set it up: keys from the environment
        return Langfuse()
    from lemma_middleware import build_client

    return build_client(service_name=AGENT)


def _server_otel_exporter() -> SpanExporter:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    host = os.environ.get("LANGFUSE_HOST", "http://127.0.0.1:8787")
    keys = f"{os.environ.get('LANGFUSE_PUBLIC_KEY')}:{os.environ.get('LANGFUSE_SECRET_KEY')}"
    auth = "Basic " + base64.b64encode(keys.encode()).decode()
    return OTLPSpanExporter(endpoint=f"{host}/v1/traces", headers={"Authorization": auth})


NO_CLIENT = ("bare", "otel", "fastapi-otel")


def asgi_app_from_env() -> Any:
    variant = os.environ.get("BENCH_VARIANT", "bare")
    client = None if variant in NO_CLIENT else _server_client(variant)
    if variant == "fastapi-otel":  # the global provider FastAPI's native telemetry finds
        from opentelemetry import trace

        trace.set_tracer_provider(otel_provider(_server_otel_exporter()))
        return make_asgi(variant, None)
    return make_asgi(variant, client, _server_otel_exporter() if variant == "otel" else None)


def wsgi_app_from_env() -> Any:
    variant = os.environ.get("BENCH_VARIANT", "bare")
    client = None if variant in NO_CLIENT else _server_client(variant)
    return make_wsgi(variant, client, _server_otel_exporter() if variant == "otel" else None)


def log_full_collections(folder: str) -> None:
    """Time every full garbage collection of this process; each one (when, and its pause in
    ms) is appended to a file in ``folder`` as it happens (uvicorn ends on the signal
    itself: no exit hooks). With 16 requests in flight, each pause holds all of them: at
    these loads, what a server's p99 mostly is."""
    started: list[float] = []

    def timed(phase: str, info: dict[str, int]) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            started[:] = [time.perf_counter()]
        elif started:
            pause = (time.perf_counter() - started[0]) * 1000
            with Path(folder, f"{os.getpid()}.txt").open("a") as log:
                log.write(f"{time.time():.3f} {pause:.3f}\n")

    gc.callbacks.append(timed)


if os.environ.get("BENCH_GC_FOLDER"):
    log_full_collections(os.environ["BENCH_GC_FOLDER"])
if os.environ.get("BENCH_VARIANT"):
    asgi_app = asgi_app_from_env() if os.environ.get("BENCH_KIND", "asgi") == "asgi" else None
    wsgi_app = wsgi_app_from_env() if os.environ.get("BENCH_KIND") == "wsgi" else None
