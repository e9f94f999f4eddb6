"""The steps a handler takes in the test apps: an @observe LLM call and a tool observation."""

from __future__ import annotations

from collections.abc import Callable

from langfuse import Langfuse, observe


@observe(name="llm-call", as_type="generation")
def _observed_llm(text: str) -> str:
    return text.upper()


def agent_steps(client: Langfuse) -> tuple[Callable[[str], str], Callable[[str], str]]:
    """``llm(text)`` (an ``@observe`` generation) and ``tool(name)`` traced by ``client``."""
    public_key = client._resources.public_key  # @observe needs it with several clients

    def llm(text: str) -> str:
        return str(_observed_llm(text, langfuse_public_key=public_key))  # type: ignore[call-arg]

    def tool(name: str) -> str:
        with client.start_as_current_observation(name=name, as_type="tool"):
            return name

    return llm, tool
