"""Request bodies as chat agents get them, for the benchmark's request-shape tables.

A chat endpoint receives the conversation so far on every turn (OpenAI-style ``messages``),
typically 5-60 KB, full of everyday support words (password, token, API key, secret). The
texts are made from a fixed vocabulary with a fixed seed: the same bytes in every run.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

_WORDS = (
    "the", "a", "to", "and", "of", "my", "is", "it", "in", "for", "you", "on", "your", "order",
    "parcel", "delivery", "account", "help", "please", "thanks", "can", "could", "would",
    "when", "where", "what", "why", "how", "issue", "problem", "refund", "shipping", "address",
    "email", "phone", "number", "change", "update", "reset", "login", "sign", "page", "app",
    "error", "message", "support", "team", "today", "yesterday", "week", "day", "time", "hours",
    "minutes", "working", "still", "not", "received", "tracking", "status", "customer",
    "service", "return", "item", "price", "invoice", "billing",
)  # fmt: skip
_EVERYDAY_SECRETS_WORDS = (
    "password", "token", "API key", "tokens", "secret", "api key", "access token", "passwords",
)  # fmt: skip
SYSTEM_PROMPT = "You are a helpful support agent for an online shop. Be brief and kind."


def _sentence(rng: random.Random, with_words: bool) -> str:
    words = [rng.choice(_WORDS) for _ in range(rng.randint(8, 22))]
    if with_words and rng.random() < 0.5:
        words[rng.randrange(len(words))] = rng.choice(_EVERYDAY_SECRETS_WORDS)
    text = " ".join(words)
    return text[0].upper() + text[1:] + rng.choice(".?!..")


def conversation(size: int, with_words: bool = True, seed: int = 7) -> bytes:
    """An OpenAI-style chat request of about ``size`` bytes: a system prompt, then user and
    assistant turns; with ``with_words``, half the sentences use one of the everyday words
    secrets are named by."""
    rng = random.Random(seed)
    messages = [{"role": "system", "content": SYSTEM_PROMPT}]
    length = 100
    while length < size:
        role = "user" if len(messages) % 2 else "assistant"
        content = " ".join(_sentence(rng, with_words) for _ in range(rng.randint(2, 8)))
        messages.append({"role": role, "content": content})
        length += len(content) + 40
    return json.dumps({"model": "gpt-4o-mini", "messages": messages, "stream": False}).encode()


@dataclass(frozen=True)
class Shape:
    """One kind of request: its body, and whether the answer is streamed."""

    name: str
    body: bytes
    stream: bool = False


SHORT = Shape("one short message", json.dumps({"message": "where is my parcel?"}).encode())
PROMPT = Shape("2 KB prompt", conversation(2_000))
HISTORY = Shape("28 KB history, everyday words", conversation(28_000))
HISTORY_CLEAN = Shape("28 KB history, without them", conversation(28_000, with_words=False))
OVER_CAP = Shape("200 KB body (over the cap)", conversation(200_000))
HOSTILE = Shape('64 KB "password" repeated', json.dumps({"message": "password " * 7282}).encode())
PLAIN = Shape('64 KB "delivery" repeated', json.dumps({"message": "delivery " * 7282}).encode())
"""The hostile body's twin: the same size and shape, no word a secret is named by."""
SSE = Shape("SSE answer, 500 chunks", PROMPT.body, stream=True)

SHAPES = (SHORT, PROMPT, HISTORY, HISTORY_CLEAN, OVER_CAP, HOSTILE, PLAIN, SSE)
"""The request-shape table's rows; the history is the headline row."""

SSE_CHUNKS = 500
SSE_CHUNK = b'data: {"delta": "token "}\n\n'

REDACTION_PIECES = (
    "password", "Password", "PASSWORD", "passwd", "pwd", "token", "Token", "tokens",
    "access_token", "accessToken", "api_key", "api-key", "api.key", "apiKey", "APIKEY",
    "apikey", "secret", "client_secret", "cookie", "private_key", "privateKey", "credit_card",
    "card_number", "cvv", "ssn", "ssn_last4", "authorization", "my", "db.", "x-", "_", "-",
    ".", ":", "=", ": ", " = ", '"', '":', '": ', "\\", '\\"', "\\n", " ", "  ", "\n", "\t",
    ",", ";", "&", "}", "]", "{", "[", "'", "Bearer ", "Bearer", "eyJ", "eyJhbGciOiJIUzI1NiJ9",
    "sk-", "sk-proj-", "AKIA", "ASIA", "AIza", "ghp_", "gho_", "xoxb-", "abcdefghij",
    "0123456789ABCDEF", "hunter2", "where is my parcel", "the", "a", "\u00e9", "\u017f",
    "\u212a", "\u0130", "\u0131", "\u2003",
)  # fmt: skip
"""What secrets, their names and their surroundings are made of: names in several spellings,
delimiters, quotes, escapes, whitespace, the secret shapes' literals, words, and characters
Python's case-insensitive matching folds onto ASCII letters. The property tests and the
benchmark's search for the slowest input draw from these."""
