"""One agent endpoint per LLM stack, served by FastAPI (native telemetry on or off) or Flask,
each written as the library's own guide writes it. Run as a process of its own by
test_llm_stacks.py: ``STACK`` picks the library, ``FRAMEWORK`` the web framework
(``fastapi``, ``fastapi-no-telemetry``, ``flask``); ``OPENAI_BASE_URL`` points at the fake
OpenAI server; the destinations come from the environment; ``EARLY=1`` creates a Langfuse
client with ``get_client()`` first, as a module of the app would at import. It sends the
requests of ``REQUESTS`` (comma-separated paths), flushes and exits."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any

STACK = os.environ["STACK"]
FRAMEWORK = os.environ["FRAMEWORK"]
MODEL = "gpt-fake"
HEADERS = {"x-conversation-id": "conv-7", "x-user-id": "alice", "x-tenant-id": "acme"}


def instrument() -> None:
    """Instrumentors go on the global provider at start-up, before the app is built."""
    if STACK in ("openinference", "agents"):
        from openinference.instrumentation.openai import OpenAIInstrumentor

        OpenAIInstrumentor().instrument()
    if STACK == "agents":
        from agents import set_tracing_disabled
        from openinference.instrumentation.openai_agents import OpenAIAgentsInstrumentor

        set_tracing_disabled(True)  # the Agents SDK's own exporter goes to openai.com
        OpenAIAgentsInstrumentor().instrument()
    if STACK == "openllmetry":
        from opentelemetry.instrumentation.openai import OpenAIInstrumentor as Llmetry

        Llmetry().instrument()


def handlers() -> dict[str, Callable[[str], Any]]:
    """Path -> a function answering one message with the chosen stack."""
    if STACK == "langfuse-openai":
        from langfuse.openai import AsyncOpenAI, OpenAI

        client, async_client = OpenAI(), AsyncOpenAI()

        def chat(message: str) -> str:
            completion = client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": message}]
            )
            return completion.choices[0].message.content or ""

        def stream(message: str) -> str:
            chunks = client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": message}], stream=True
            )
            return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

        def embed(message: str) -> str:
            result = client.embeddings.create(model="embed-fake", input=message)
            return str(len(result.data[0].embedding))

        def achat(message: str) -> str:
            async def call() -> str:
                completion = await async_client.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": message}]
                )
                return completion.choices[0].message.content or ""

            return asyncio.run(call())

        return {"/chat": chat, "/stream": stream, "/embed": embed, "/achat": achat}
    if STACK == "observe":
        from langfuse import get_client, observe

        @observe(as_type="generation")
        def generate(message: str) -> str:
            return f"Answer to: {message}"

        def chat(message: str) -> str:
            with get_client().start_as_current_observation(
                name="hand-made", as_type="generation", model=MODEL, input=message
            ) as generation:
                answer = generate(message)
                generation.update(output=answer, usage_details={"input": 3, "output": 4})
            return answer

        return {"/chat": chat}
    if STACK in ("langchain", "langgraph"):
        from langchain_openai import ChatOpenAI
        from langfuse.langchain import CallbackHandler

        handler = CallbackHandler()
        llm = ChatOpenAI(model=MODEL)
        if STACK == "langchain":

            def chat(message: str) -> str:
                return str(llm.invoke(message, config={"callbacks": [handler]}).content)

            return {"/chat": chat}
        from typing import TypedDict

        from langgraph.graph import END, START, StateGraph

        class State(TypedDict):
            question: str
            answer: str

        def answer_node(state: State) -> dict[str, str]:
            return {"answer": str(llm.invoke(state["question"]).content)}

        builder = StateGraph(State)
        builder.add_node("answer", answer_node)
        builder.add_edge(START, "answer")
        builder.add_edge("answer", END)
        graph = builder.compile()

        def run_graph(message: str) -> str:
            state = graph.invoke({"question": message}, config={"callbacks": [handler]})
            return str(state["answer"])

        return {"/chat": run_graph}
    if STACK in ("openinference", "openllmetry"):
        from openai import OpenAI

        plain = OpenAI()

        def chat(message: str) -> str:
            completion = plain.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": message}]
            )
            return completion.choices[0].message.content or ""

        def respond(message: str) -> str:
            return plain.responses.create(model=MODEL, input=message).output_text

        def respond_stream(message: str) -> str:
            events = plain.responses.create(model=MODEL, input=message, stream=True)
            return "".join(e.delta for e in events if e.type == "response.output_text.delta")

        return {"/chat": chat, "/respond": respond, "/respond-stream": respond_stream}
    if STACK == "agents":
        from agents import Agent, Runner

        agent = Agent(name="Support", instructions="Answer briefly.", model=MODEL)

        def run_agent(message: str) -> str:
            return str(Runner.run_sync(agent, message).final_output)

        return {"/chat": run_agent}
    raise SystemExit(f"unknown STACK {STACK}")


def fastapi_app(routes: dict[str, Callable[[str], Any]]) -> Any:
    from fastapi import FastAPI

    from lemma_middleware import LemmaMiddleware

    app = FastAPI() if FRAMEWORK == "fastapi" else FastAPI(telemetry={"tracing": False})
    for path, answer in routes.items():

        def endpoint(body: dict[str, Any], answer: Callable[[str], Any] = answer) -> Any:
            return {"answer": answer(str(body["message"]))}

        app.add_api_route(path, endpoint, methods=["POST"])
    app.add_middleware(LemmaMiddleware, agent_name="support-agent")
    return app


def flask_app(routes: dict[str, Callable[[str], Any]]) -> Any:
    from flask import Flask, request

    from lemma_middleware import LemmaFlask

    app = Flask(__name__)
    for path, answer in routes.items():

        def endpoint(answer: Callable[[str], Any] = answer) -> Any:
            return {"answer": answer(str((request.get_json() or {})["message"]))}

        app.add_url_rule(path, path, endpoint, methods=["POST"])
    LemmaFlask(app, agent_name="support-agent")
    return app


def main() -> None:
    if os.environ.get("EARLY") == "1":
        from langfuse import get_client

        get_client()  # before the middleware's client, the app's instrumentors and handlers
    instrument()
    routes = handlers()
    paths = os.environ.get("REQUESTS", ",".join(routes)).split(",")
    if FRAMEWORK == "flask":
        app = flask_app(routes)
        with app.test_client() as http:
            for path in paths:
                response = http.post(path, json={"message": f"help {path}"}, headers=HEADERS)
                text = response.get_data(as_text=True)  # read and closed, as a server does
                response.close()
                assert response.status_code == 200, text
    else:
        from fastapi.testclient import TestClient

        with TestClient(fastapi_app(routes)) as http:
            for path in paths:
                response = http.post(path, json={"message": f"help {path}"}, headers=HEADERS)
                assert response.status_code == 200, response.text
    from langfuse import get_client

    get_client().flush()


if __name__ == "__main__":
    main()
