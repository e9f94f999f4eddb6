"""The redaction as it was before issue 19 (regexes with backtracking), kept as the oracle the
property tests compare the linear redaction with: nothing this redacts may survive."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from lemma_middleware.core.redaction import DEFAULT_REDACT_FIELDS, MAX_DEPTH, REDACTED, TOO_DEEP

SECRET_VALUE_PATTERNS: tuple[str, ...] = (
    r"\bBearer\s+[A-Za-z0-9._~+/=-]{8,}",
    r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*",
    r"\bsk-(?:[A-Za-z0-9]+-)*[A-Za-z0-9_]{16,}",
    r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",
    r"\bgh[pousr]_[A-Za-z0-9]{30,}",
    r"\bxox[abeprs]-[A-Za-z0-9-]{10,}",
    r"\bAIza[0-9A-Za-z_-]{30,}",
)

_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_SEPARATORS = re.compile(r"[-. ]")


def _normalise_key(key: str) -> str:
    return _SEPARATORS.sub("_", _CAMEL_BOUNDARY.sub("_", key)).lower()


class ReferenceRedactor:
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
        return isinstance(other, ReferenceRedactor) and other.fields == self.fields

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
