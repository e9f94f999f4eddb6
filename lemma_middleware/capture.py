"""Bounded copies of request/response bodies and how they are recorded on the root.

A :class:`BodyCapture` keeps at most ``limit`` bytes of what passes through and only
counts the rest, so memory stays bounded whatever the body size. :func:`render_body`
turns the kept bytes into what the trace records: JSON parsed, form bodies as a dict,
text as text, ``text/event-stream`` as the concatenated ``data:`` payloads, binary as a
short placeholder; a truncated body is recorded as text with a visible marker.
:class:`Redactor` replaces sensitive fields at any depth, on a copy.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qsl

from .logs import log_once

REDACTED = "[REDACTED]"
MAX_DEPTH = 64
"""Nesting levels of a body recorded as a structure; deeper parts become :data:`TOO_DEEP`."""
TOO_DEEP = f"[nested deeper than {MAX_DEPTH} levels: not recorded]"

DEFAULT_REDACT_FIELDS: frozenset[str] = frozenset(
    {
        "password",
        "passwd",
        "pwd",
        "secret",
        "client_secret",
        "token",
        "access_token",
        "refresh_token",
        "id_token",
        "api_key",
        "apikey",
        "authorization",
        "cookie",
        "set_cookie",
        "private_key",
        "credit_card",
        "card_number",
        "cvv",
        "ssn",
    }
)
"""Field names redacted by default. A field is sensitive when its name, normalised (camelCase
split into words, lower-cased, ``-``, ``.`` and spaces read as ``_``), equals one of these or
ends with ``_`` + one of them (``openaiApiKey``, ``auth-token``, ``db.password``)."""

SECRET_VALUE_PATTERNS: tuple[str, ...] = (
    r"\bBearer\s+[A-Za-z0-9._~+/=-]{8,}",  # an Authorization header's credentials
    r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*",  # a JWT
    r"\bsk-(?:[A-Za-z0-9]+-)*[A-Za-z0-9_]{16,}",  # OpenAI / Anthropic style API keys
    r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",  # AWS access key ids
    r"\bgh[pousr]_[A-Za-z0-9]{30,}",  # GitHub tokens
    r"\bxox[abeprs]-[A-Za-z0-9-]{10,}",  # Slack tokens
    r"\bAIza[0-9A-Za-z_-]{30,}",  # Google API keys
)
"""Values redacted wherever they occur, whatever the field's name."""

_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_SEPARATORS = re.compile(r"[-. ]")


def _normalise_key(key: str) -> str:
    return _SEPARATORS.sub("_", _CAMEL_BOUNDARY.sub("_", key)).lower()


class Redactor:
    """Replaces the values of sensitive fields by ``[REDACTED]`` (compiled once)."""

    def __init__(self, extra_fields: Iterable[str] = ()) -> None:
        self.extra_fields = frozenset(extra_fields)
        self.fields = frozenset(DEFAULT_REDACT_FIELDS | {_normalise_key(f) for f in extra_fields})
        self._suffixes = tuple("_" + f for f in self.fields)
        # Field names in any spelling: api_key, api-key, api.key, apiKey, APIKEY.
        names = "|".join(
            sorted((re.escape(f).replace("_", "[_.-]?") for f in self.fields), key=len)[::-1]
        )
        name = rf"(?:[A-Za-z0-9_.-]*)(?:{names})"  # any prefix: over-redacting is the safe side
        # "name": "value" / "name": 123 in JSON-like text that could not be parsed
        self._json_text = re.compile(
            rf'("{name}"\s*:\s*)("(?:[^"\\]|\\.)*"?|[^,}}\]\s]+)', re.IGNORECASE
        )
        # name=value in form- or query-like text, name: value / name = value in plain text
        self._pair_text = re.compile(rf"(\b{name}=)[^&\s]*", re.IGNORECASE)
        self._colon_text = re.compile(rf"(\b{name}\s*[:=]\s*)([^\s,;&]+)", re.IGNORECASE)
        self._secret_value = re.compile("|".join(SECRET_VALUE_PATTERNS))
        self._any_name = re.compile(names)  # searched in lower-cased text (much faster)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Redactor) and other.fields == self.fields

    def __hash__(self) -> int:
        return hash(self.fields)

    def may_hold_sensitive(self, text: str) -> bool:
        """False when no sensitive field name and no secret-shaped value occurs anywhere in
        ``text`` (a fast pre-check)."""
        return (
            self._any_name.search(text.lower()) is not None
            or self._secret_value.search(text) is not None
        )

    def is_sensitive(self, key: str) -> bool:
        """True when a field of this name is never recorded."""
        normalised = _normalise_key(key)
        return normalised in self.fields or normalised.endswith(self._suffixes)

    def redact(self, value: Any, depth: int = 0) -> Any:
        """A copy of ``value`` with sensitive fields replaced, at any depth; what is nested
        deeper than :data:`MAX_DEPTH` levels is replaced by :data:`TOO_DEEP` (never recorded
        unredacted, never a recursion error)."""
        if isinstance(value, dict):
            if depth >= MAX_DEPTH:
                return TOO_DEEP
            return {
                self.redact(k, depth) if isinstance(k, str) else k: REDACTED
                if isinstance(k, str) and self.is_sensitive(k)
                else self.redact(v, depth + 1)
                for k, v in value.items()
            }
        if isinstance(value, list | tuple):  # tuples: an @observe'd function's arguments
            if depth >= MAX_DEPTH:
                return TOO_DEEP
            items = [self.redact(v, depth + 1) for v in value]
            return items if isinstance(value, list) else tuple(items)
        if isinstance(value, str):  # a string may hold a secret as text: "password=..."
            return self.redact_text(value) if self.may_hold_sensitive(value) else value
        return value

    def mask(self, *, data: Any, **_: Any) -> Any:
        """The redaction as a Langfuse client's ``mask=``: every observation's input, output
        and metadata (children included) goes through it."""
        if isinstance(data, str):
            return self.redact_text(data)
        return self.redact(data)

    def redact_text(self, text: str) -> str:
        """Best-effort redaction for text that could not be parsed (truncated, broken) or is
        not structured: ``"name": value``, ``name=value``, ``name: value``, and secret-shaped
        values anywhere."""
        text = self._secret_value.sub(REDACTED, text)
        text = self._json_text.sub(rf'\1"{REDACTED}"', text)
        text = self._pair_text.sub(rf"\1{REDACTED}", text)
        return self._colon_text.sub(rf"\1{REDACTED}", text)


class BodyCapture:
    """Keeps the first ``limit`` bytes of a body and counts all of them."""

    __slots__ = ("_chunks", "kept", "limit", "total")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._chunks: list[bytes] = []
        self.kept = 0
        self.total = 0

    def feed(self, data: bytes | memoryview) -> None:
        """Account for ``data``; keep it while under the limit."""
        size = len(data)
        if not size:
            return
        self.total += size
        room = self.limit - self.kept
        if room > 0:
            piece = data if size <= room else data[:room]
            self._chunks.append(bytes(piece))
            self.kept += len(piece)

    @property
    def truncated(self) -> bool:
        """True when more bytes passed than were kept."""
        return self.total > self.kept

    def data(self) -> bytes:
        """The kept bytes."""
        if len(self._chunks) > 1:
            self._chunks = [b"".join(self._chunks)]
        return self._chunks[0] if self._chunks else b""


class RawJSON(str):
    """A JSON document recorded as received (no field needed redacting); parse it with
    :func:`parsed` where a structure is needed."""


def parsed(value: Any) -> Any:
    """``value``, with a :class:`RawJSON` document parsed (text if it is not valid JSON)."""
    if isinstance(value, RawJSON):
        try:
            return json.loads(value)
        except (ValueError, RecursionError):
            return str(value)
    return value


def media_type_of(content_type: str | None) -> str:
    """``"application/json; charset=utf-8"`` -> ``"application/json"``."""
    if not content_type:
        return ""
    return content_type.split(";", 1)[0].strip().lower()


def _is_json(media_type: str) -> bool:
    return media_type == "application/json" or media_type.endswith("+json")


def _is_text(media_type: str) -> bool:
    return (
        media_type.startswith("text/")
        or media_type.endswith("+xml")
        or media_type in ("application/xml", "application/javascript", "application/x-ndjson")
    )


def _decode(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


def _truncation_marker(capture: BodyCapture) -> str:
    return f"… [truncated: {capture.total} bytes in total, first {capture.kept} recorded]"


def _form_dict(text: str) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in parse_qsl(text, keep_blank_values=True):
        existing = result.get(key)
        if existing is None:
            result[key] = value
        elif isinstance(existing, list):
            existing.append(value)
        else:
            result[key] = [existing, value]
    return result


def query_dict(query_string: str, redactor: Redactor) -> dict[str, Any] | None:
    """Query parameters as a redacted dict, or None without any."""
    if not query_string:
        return None
    return redactor.redact(_form_dict(query_string)) or None


def sse_payloads(text: str) -> str:
    """The concatenated ``data:`` payloads of an event stream (``[DONE]`` left out)."""
    parts: list[str] = []
    for line in text.splitlines():
        if line.startswith("data:"):
            payload = line[5:]
            if payload.startswith(" "):
                payload = payload[1:]
            if payload != "[DONE]":
                parts.append(payload)
    return "".join(parts)


def render_body(
    capture: BodyCapture,
    content_type: str | None,
    content_encoding: str | None,
    redactor: Redactor,
    direction: str,
) -> Any:
    """What the trace records for a captured body (None for an empty body)."""
    if capture.total == 0:
        return None
    media_type = media_type_of(content_type)
    if content_encoding and content_encoding.strip().lower() not in ("identity", ""):
        return f"<{content_encoding.strip()}-encoded {media_type or 'body'}, {capture.total} bytes>"
    data = capture.data()
    if media_type == "text/event-stream":
        text = sse_payloads(_decode(data))
        return redactor.redact_text(
            text + (_truncation_marker(capture) if capture.truncated else "")
        )
    if capture.truncated:
        if _is_json(media_type) or _is_text(media_type) or media_type.endswith("urlencoded"):
            return redactor.redact_text(_decode(data)) + _truncation_marker(capture)
        return f"<binary {media_type or 'body'}, {capture.total} bytes>"
    if _is_json(media_type):
        text = _decode(data)
        if not redactor.may_hold_sensitive(text):
            return RawJSON(text)  # nothing to redact: record the bytes as they came
        try:
            return redactor.redact(json.loads(text))
        except (ValueError, RecursionError):  # broken, or nested past the parser's limit
            log_once(
                f"badjson:{direction}",
                logging.INFO,
                "lemma_middleware: a %s body declared as JSON did not parse (broken or nested "
                "too deep); recorded as redacted text (logged once)",
                direction,
            )
            return redactor.redact_text(_decode(data))
    if media_type == "application/x-www-form-urlencoded":
        return redactor.redact(_form_dict(_decode(data)))
    if media_type.startswith("multipart/"):
        return f"<{media_type}, {capture.total} bytes>"
    if _is_text(media_type):
        return redactor.redact_text(_decode(data))
    if not media_type:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            return f"<binary body, {capture.total} bytes>"
        if text.isprintable() or all(c.isprintable() or c in "\r\n\t" for c in text):
            return redactor.redact_text(text)
    return f"<binary {media_type or 'body'}, {capture.total} bytes>"
