"""What is never recorded: sensitive fields at any depth, and secrets in text.

:class:`Redactor` works on a copy and costs about one pass over the text whatever it holds:

* **Structures** (parsed JSON, forms, query strings, what an observation records): a value
  whose key is sensitive is replaced; every string leaf goes through the text rules.
* **Text** (leaves, text bodies, JSON that did not parse): values after a sensitive name
  (``"name": value``, ``name=value``, ``name: value``) and secret-shaped values anywhere.

Linear by construction, and about one pass: a text is first screened with one-character
``in`` tests (memchr speed). Names are found from the delimiters: only a text holding ``:``
or ``=`` is lower-cased and reversed, and searched for each delimiter (a literal, found at C
speed) followed, in the reversed text, by optional whitespace and quote and a reversed
name; each attempt looks at a few characters. A secret shape is searched for only when the
text holds its literal's rarest character, and every shape consumes its whole token
(possessive runs), so no attempt re-scans what an earlier one read. The values found are
replaced in one pass. Over-redacting is the safe side: a name may end any key
(``my_password``), and a secret shape covers the whole token it starts.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from typing import Any

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

SECRET_VALUE_PATTERNS: tuple[tuple[str, str, str], ...] = (
    # (the literal a value starts with, at a word boundary; the rest of its shape; the
    # literal's rarest character: a text is searched for it only when it holds that one)
    ("Bearer", r"\s++[A-Za-z0-9._~+/=-]{8,}+", "B"),  # an Authorization header's credentials
    ("eyJ", r"[A-Za-z0-9_-]{5,}+(?:\.[A-Za-z0-9_-]*+){0,2}", "J"),  # a JWT (any base64 JSON)
    ("sk-", r"[A-Za-z0-9_-]{16,}+", "-"),  # OpenAI / Anthropic style API keys
    ("A", r"(?:[KS]IA[0-9A-Z]{16}\b|Iza[0-9A-Za-z_-]{30,}+)", "A"),  # AWS ids, Google keys
    ("gh", r"[pousr]_[A-Za-z0-9]{30,}+", "_"),  # GitHub tokens
    ("xox", r"[abeprs]-[A-Za-z0-9-]{10,}+", "-"),  # Slack tokens
)
"""Values redacted wherever they occur, whatever the field's name. A shape covers the whole
token (``sk-`` and 16 characters or more of ``[A-Za-z0-9_-]``, say), not only its known
part: over-redacting is the safe side, and no attempt can then re-scan a long token."""

SECRET_LITERALS: tuple[tuple[str, str], ...] = (
    ("Bearer", "B"),
    ("eyJ", "J"),
    ("sk-", "-"),
    ("A(?:KIA|SIA|Iza)", "A"),
    ("gh[pousr]_", "_"),
    ("xox[abeprs]-", "-"),
)
"""What every secret shape starts with (a pattern, and its rarest character): a JSON
document whose text holds none of these holds no secret shape once parsed."""

_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_SEPARATORS = re.compile(r"[-. ]")
_KEY_CACHE_SIZE = 4096

# What Python's case-insensitive matching equates with an ASCII letter, beyond lower():
# read as that letter, so that the lower-cased text keeps every position of the original.
_CASE_FOLD = str.maketrans({"\u0130": "i", "\u0131": "i", "\u017f": "s", "\u212a": "k"})

# After a name: the value of `"name": value` (a JSON string, possibly cut, or a bare value),
# of `name=value` (up to & or whitespace, possibly empty), of `name: value` / `name = value`.
_JSON_VALUE = re.compile(r'"\s*+:\s*+("[^"\\]*+(?:\\.[^"\\]*+)*+"?|[^,}\]\s]++)')
_PAIR_VALUE = re.compile(r"=([^&\s]*+)")
_COLON_VALUE = re.compile(r"\s*+[:=]\s*+([^\s,;&]++)")


def _normalise_key(key: str) -> str:
    return _SEPARATORS.sub("_", _CAMEL_BOUNDARY.sub("_", key)).lower()


def _reversed_spelling(field: str) -> str:
    """A field's name in any spelling, reversed: each ``_`` as one of ``_.-`` or a space or
    nothing (``api_key``: ``yek[_. -]?ipa``)."""
    return "[_. -]?".join(re.escape(part[::-1]) for part in reversed(field.split("_")))


def _names(fields: Iterable[str]) -> str:
    return "|".join(sorted({_reversed_spelling(f) for f in fields}, key=len, reverse=True))


def _name_finders(fields: Iterable[str]) -> dict[str, re.Pattern[str]]:
    """Per delimiter (``:``, ``=``), a search of the reversed lower-cased text for that
    delimiter preceded by a name (optionally with a ``"`` after it, then whitespace): each
    attempt starts at a delimiter and looks only at what precedes it. A match ends where
    the name ends in the text."""
    names = _names(fields)
    return {
        delimiter: re.compile(rf'{delimiter}\s*+"?(?=(?:{names}))') for delimiter in (":", "=")
    }


def _json_name_finders(fields: Iterable[str]) -> dict[str, re.Pattern[str]]:
    """The same searches over a JSON document's text, where the whitespace between a name
    and its delimiter may be written as an escape (``\\n``) and the quote after a name in
    a string as ``\\"``: what could be a name once the document is parsed."""
    names = _names(fields)
    return {
        delimiter: re.compile(rf'{delimiter}(?:\s|[ntrf]\\)*+(?:"\\?)?(?=(?:{names}))')
        for delimiter in (":", "=")
    }


class Redactor:
    """Replaces sensitive values by ``[REDACTED]`` (compiled once; linear in its input)."""

    def __init__(self, extra_fields: Iterable[str] = ()) -> None:
        self.extra_fields = frozenset(extra_fields)
        self.fields = frozenset(DEFAULT_REDACT_FIELDS | {_normalise_key(f) for f in extra_fields})
        self._suffixes = tuple("_" + f for f in self.fields)
        self._names = _name_finders(self.fields)
        self._json_names = _json_name_finders(self.fields)
        self._fields_written_as_is = all(json.dumps(f)[1:-1] == f for f in self.fields)
        self._secrets = [
            (rarest, re.compile(rf"{re.escape(literal)}(?<!\w{re.escape(literal)}){shape}"))
            for literal, shape, rarest in SECRET_VALUE_PATTERNS
        ]
        self._secret_literals = [
            (rarest, re.compile(literal)) for literal, rarest in SECRET_LITERALS
        ]
        self._keys: dict[str, tuple[str | None, bool]] = {}
        """Keys seen (bounded, as keys are untrusted): see :meth:`_recorded_key`."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Redactor) and other.fields == self.fields

    def __hash__(self) -> int:
        return hash(self.fields)

    def is_sensitive(self, key: str) -> bool:
        """True when a field of this name is never recorded."""
        normalised = _normalise_key(key)
        return normalised in self.fields or normalised.endswith(self._suffixes)

    def _recorded_key(self, key: str) -> tuple[str | None, bool]:
        """``key`` as recorded when that differs from ``key`` (a key can hold a secret too;
        else None), and whether its field is sensitive; remembered, as the same keys come
        in every request."""
        try:
            return self._keys[key]
        except KeyError:
            recorded = self.redact_text(key)
            verdict = self._keys[key] = (
                None if recorded is key else recorded,
                self.is_sensitive(key),
            )
            if len(self._keys) > _KEY_CACHE_SIZE:
                self._keys.clear()
            return verdict

    def redact(self, value: Any, depth: int = 0) -> Any:
        """``value`` with sensitive fields replaced, at any depth; what is nested deeper than
        :data:`MAX_DEPTH` levels is replaced by :data:`TOO_DEEP` (never recorded unredacted,
        never a recursion error). Returns ``value`` itself when nothing needed replacing."""
        if isinstance(value, str):  # a string may hold a secret as text: "password=..."
            return self.redact_text(value)
        if isinstance(value, dict):
            if depth >= MAX_DEPTH:
                return TOO_DEEP
            changed = False
            copy: dict[Any, Any] = {}
            for key, item in value.items():
                if isinstance(key, str):
                    recorded, sensitive = self._recorded_key(key)
                    if recorded is not None:
                        key, changed = recorded, True
                    if sensitive:
                        copy[key], changed = REDACTED, True
                        continue
                new_item = self.redact(item, depth + 1)
                changed = changed or new_item is not item
                copy[key] = new_item
            return copy if changed else value
        if isinstance(value, list | tuple):  # tuples: an @observe'd function's arguments
            if depth >= MAX_DEPTH:
                return TOO_DEEP
            items = [self.redact(item, depth + 1) for item in value]
            if all(new is old for new, old in zip(items, value, strict=True)):
                return value
            return items if isinstance(value, list) else tuple(items)
        return value

    def finds_nothing_in_json(self, text: str) -> bool:
        """True when ``text``, a JSON document, holds nothing to redact: neither as text
        (:meth:`redact_text`) nor once parsed (:meth:`redact` replaces nothing but parts
        nested deeper than :data:`MAX_DEPTH`). Told from the text at about the cost of one
        search of it, so that a body with nothing sensitive is recorded as it came, neither
        parsed, walked nor serialised again. False when it might: the text holds a secret
        shape's start, a name before a delimiter in any spelling (as a key, or in a string,
        the whitespace between written as ``\\n`` or ``\\t`` included), or a ``\\u``
        escape."""
        if ("\\" in text and "\\u" in text) or not self._fields_written_as_is:
            return False  # a \\u escape could spell anything
        for rarest, literal in self._secret_literals:
            if rarest in text and literal.search(text):
                return False
        reversed_text: str | None = None
        for delimiter, finder in self._json_names.items():
            if delimiter in text:
                if reversed_text is None:
                    reversed_text = (text.lower() if text.isascii() else _fold(text))[::-1]
                if finder.search(reversed_text):
                    return False
        return True

    def mask(self, *, data: Any, **_: Any) -> Any:
        """The redaction as a Langfuse client's ``mask=``: every observation's input, output
        and metadata (children included) goes through it."""
        return self.redact(data)

    def redact_text(self, text: str) -> str:
        """``text`` with the values after sensitive names and secret-shaped values replaced
        (``text`` itself when there is none): ``"name": value`` (the value as a JSON string),
        ``name=value``, ``name: value``, ``name = value``, in any spelling of the name."""
        secrets = list(self._secret_spans(text))
        if secrets:  # first, so that a value after a name runs on as far as it then does
            text = _replaced(text, secrets)
        if ":" in text or "=" in text:
            values = list(self._value_spans(text))
            if values:
                text = _replaced(text, values)
        return text

    def _secret_spans(self, text: str) -> Iterator[tuple[int, int, bool]]:
        for first, pattern in self._secrets:
            if first in text:  # one character: searched at memchr speed
                for found in pattern.finditer(text):
                    yield found.start(), found.end(), False

    def _value_spans(self, text: str) -> Iterator[tuple[int, int, bool]]:
        """Where the values after a sensitive name are (start, end, recorded as a JSON
        string)."""
        reversed_text: str | None = None
        size = len(text)
        for delimiter, finder in self._names.items():
            if delimiter not in text:
                continue
            if reversed_text is None:
                reversed_text = (text.lower() if text.isascii() else _fold(text))[::-1]
            for name in finder.finditer(reversed_text):
                end = size - name.end()  # where the name ends in the text
                if text.startswith('"', end):
                    value = _JSON_VALUE.match(text, end)
                    if value is not None:
                        yield value.start(1), value.end(1), True
                    continue
                if text.startswith("=", end):
                    value = _PAIR_VALUE.match(text, end)
                    if value is not None:
                        yield value.start(1), value.end(1), False
                value = _COLON_VALUE.match(text, end)
                if value is not None:
                    yield value.start(1), value.end(1), False


def _replaced(text: str, spans: list[tuple[int, int, bool]]) -> str:
    """``text`` with each span (start, end, as a JSON string) replaced by :data:`REDACTED`
    (quoted for a JSON string); spans that overlap or touch are replaced once."""
    spans.sort()
    pieces: list[str] = []
    written = -1  # where the last replacement ended (-1: none yet)
    for start, end, quoted in spans:
        if start <= written:  # within what is replaced, or right after it
            written = max(written, end)
            continue
        pieces.append(text[max(written, 0) : start])
        pieces.append(f'"{REDACTED}"' if quoted else REDACTED)
        written = end
    pieces.append(text[written:])
    return "".join(pieces)


def _fold(text: str) -> str:
    """``text`` lower-cased as Python's case-insensitive matching reads it, one character
    for one (so that positions in it are positions in ``text``)."""
    folded = text.translate(_CASE_FOLD).lower()
    if len(folded) == len(text):
        return folded
    return "".join(character.lower()[:1] for character in text.translate(_CASE_FOLD))
