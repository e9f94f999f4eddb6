"""What both example apps share: the users behind bearer tokens and a fake, deterministic LLM."""

from __future__ import annotations

from langfuse import get_client, observe

TOKENS = {"token-alice": "alice", "token-bob": "bob"}


@observe(name="fake-llm", as_type="generation")
def fake_llm(message: str) -> str:
    """A deterministic stand-in for a model call, recorded as a child generation."""
    get_client().update_current_generation(
        model="fake-llm-1", usage_details={"input": len(message.split())}
    )
    if "refund" in message.lower():
        return "I have opened a refund request for you."
    return f"You said: {message}. How else can I help?"
