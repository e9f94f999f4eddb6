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
from collections.abc import Iterable
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
    ("-(?:(?<=sk-)|(?<=xox[abeprs]-))", "-"),  # sk-, xox?- (one search for both)
    ("A(?:KIA|SIA|Iza)", "A"),
    ("gh[pousr]_", "_"),
)
"""What every secret shape starts with (a pattern, and its rarest character): a JSON
document whose text holds none of these holds no secret shape once parsed."""


MAX_VALUES_PER_TEXT = 100
"""Values after sensitive names replaced one by one in one text; a text with more (a
configuration dump, or a body made to cost) has everything before its last 100 replaced
whole: fail closed, and what a text costs stays about one pass over it."""


_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


_SEPARATORS = re.compile(r"[-. ]")


_KEY_CACHE_SIZE = 4096


# What Python's case-insensitive matching equates with an ASCII letter, beyond lower():
# read as that letter, so that the lower-cased text keeps every position of the original.
_CASE_FOLD = (("\u0130", "i"), ("\u0131", "i"), ("\u017f", "s"), ("\u212a", "k"))


# What follows a name before its value: `"` + `:` (JSON), or a delimiter (`:` or `=`), with
# any whitespace around; a JSON string value (possibly cut). A value that is not a JSON
# string runs to the first of its stop characters (see _Runs).
_JSON_LEAD = re.compile(r'"\s*+:\s*+')


_JSON_STRING = re.compile(r'"[^"\\]*+(?:\\.[^"\\]*+)*+"?')


_DELIMITER_LEAD = re.compile(r"\s*+[:=]\s*+")


_BARE_JSON_STOP = re.compile(r"[,}\]\s]")  # `"name": value` not quoted


_VALUE_STOP = re.compile(r"[\s,;&]")  # `name: value`, `name = value`


_PAIR_STOP = re.compile(r"[&\s]")  # `name=value`


class _Runs:
    """Where a value that starts at a position ends, for one kind of value, asked from the
    end of a text towards its start: each question scans only up to where the previous
    answer starts (a run of value characters holding many names is read once, not once
    per name: the cost stays linear)."""

    __slots__ = ("_known_end", "_known_from", "_stop", "_text")

    def __init__(self, text: str, stop: re.Pattern[str]) -> None:
        self._text, self._stop = text, stop
        self._known_from = self._known_end = len(text)

    def end(self, start: int) -> int:
        """The end of the value starting at ``start`` (asked at falling positions)."""
        if start > self._known_from:  # (not asked in this order: scan to the end)
            found = self._stop.search(self._text, start)
            return found.start() if found else len(self._text)
        found = self._stop.search(self._text, start, self._known_from)
        end = found.start() if found else self._known_end
        self._known_from, self._known_end = start, end
        return end


class _Values:
    """The values after names in one text, asked from the end of the text towards its
    start (see :class:`_Runs`)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.bare_json = _Runs(text, _BARE_JSON_STOP)
        self.delimited = _Runs(text, _VALUE_STOP)
        self.pair = _Runs(text, _PAIR_STOP)

    def after(self, end: int) -> list[tuple[int, int, bool]]:
        """The values after a name ending at ``end`` (start, end, as a JSON string): of
        `"name": value`; else of `name: value` / `name = value` and of `name=value`, which
        can both follow one name."""
        text = self.text
        if text.startswith('"', end):
            lead = _JSON_LEAD.match(text, end)
            if lead is None:
                return []
            start = lead.end()
            if text.startswith('"', start):
                string = _JSON_STRING.match(text, start)
                assert string is not None  # (it matches any quote)
                return [(start, string.end(), True)]
            stop = self.bare_json.end(start)
            return [(start, stop, True)] if stop > start else []
        found = []
        lead = _DELIMITER_LEAD.match(text, end)
        if lead is not None:
            start = lead.end()
            stop = self.delimited.end(start)
            if stop > start:
                found.append((start, stop, False))
        if text.startswith("=", end):
            found.append((end + 1, self.pair.end(end + 1), False))
        return found


def _normalise_key(key: str) -> str:
    return _SEPARATORS.sub("_", _CAMEL_BOUNDARY.sub("_", key)).lower()


_ANY_SEPARATOR = "[_. -]?"


def _reversed_spelling(field: str) -> tuple[str, ...]:
    """A field's name in any spelling, reversed, as regular-expression pieces: each
    character, and each ``_`` as one of ``_.-`` or a space or nothing (``api_key``:
    ``y e k [_. -]? i p a``)."""
    pieces: list[str] = []
    for number, part in enumerate(reversed(field.split("_"))):
        if number:
            pieces.append(_ANY_SEPARATOR)
        pieces.extend(re.escape(character) for character in part[::-1])
    return tuple(pieces)


def _alternatives(spellings: set[tuple[str, ...]]) -> str:
    """The spellings as one expression factored by their common beginnings (a trie): an
    attempt is decided by one character per position, not one try per field. Only whether
    some spelling starts there matters (the search looks ahead), so a spelling that is the
    beginning of another stands for both."""
    if () in spellings:
        return ""
    if len(spellings) == 1:  # the rest of one spelling (no recursion along a long name)
        return "".join(next(iter(spellings)))
    following: dict[str, set[tuple[str, ...]]] = {}
    for spelling in spellings:
        following.setdefault(spelling[0], set()).add(spelling[1:])
    branches = [piece + _alternatives(rest) for piece, rest in sorted(following.items())]
    return branches[0] if len(branches) == 1 else f"(?:{'|'.join(branches)})"


def _names(fields: Iterable[str]) -> str:
    """The reversed spellings of every field, as one group; led by the set of characters
    a spelling can start with, so that an attempt where none starts fails at once."""
    spellings = {_reversed_spelling(f) for f in fields} - {()}
    if not spellings:
        return "(?!)"
    starts = {spelling[0] for spelling in spellings}
    lead = f"(?=[{''.join(sorted(starts))}])" if _ANY_SEPARATOR not in starts else ""
    try:
        alternatives = _alternatives(spellings)
    except RecursionError:  # names sharing an ending of ~1,000 characters: each in turn
        alternatives = "|".join("".join(spelling) for spelling in sorted(spellings))
    return f"(?:{lead}{alternatives})"


def _name_finders(fields: Iterable[str]) -> dict[str, re.Pattern[str]]:
    """Per delimiter (``:``, ``=``), a search of the reversed lower-cased text for that
    delimiter preceded by a name (optionally with a ``"`` after it, then whitespace): each
    attempt starts at a delimiter and looks only at what precedes it. A match ends where
    the name ends in the text."""
    names = _names(fields)
    return {delimiter: re.compile(rf'{delimiter}\s*+"?(?={names})') for delimiter in (":", "=")}


def _json_name_finders(fields: Iterable[str]) -> dict[str, re.Pattern[str]]:
    """The same searches over a JSON document's text, where the whitespace between a name
    and its delimiter may be written as an escape (``\\n``) and the quote after a name in
    a string as ``\\"``: what could be a name once the document is parsed."""
    names = _names(fields)
    return {
        delimiter: re.compile(rf'{delimiter}(?:\s|[ntrf]\\)*+(?:"\\?)?(?={names})')
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
        ``name=value``, ``name: value``, ``name = value``, in any spelling of the name. A
        text with more than :data:`MAX_VALUES_PER_TEXT` such values has all but the last of
        them replaced whole, with what lies between (what one text can cost is bounded)."""
        original = text
        for rarest, pattern in self._secrets:  # first, so that a value after a name runs
            if rarest in text:  # on as far as it then does; one character: memchr speed
                text = pattern.sub(REDACTED, text)
        if ":" in text or "=" in text:
            spans, cut = self._value_spans(text)
            if cut:
                marker = f"[REDACTED: {cut} characters with more than {MAX_VALUES_PER_TEXT} "
                marker += "sensitive values]"
                shift = len(marker) - cut
                text = marker + text[cut:]
                spans = [(start + shift, stop + shift, quoted) for start, stop, quoted in spans]
            if spans:
                text = _replaced(text, spans)
        return original if text == original else text

    def _value_spans(self, text: str) -> tuple[list[tuple[int, int, bool]], int]:
        """Where the values after a sensitive name are (start, end, recorded as a JSON
        string); with more than :data:`MAX_VALUES_PER_TEXT` names for a delimiter, only
        those after the last ones, and where the text is replaced whole up to (else 0)."""
        reversed_text = (text.lower() if text.isascii() else _fold(text))[::-1]
        size = len(text)
        ends: list[int] = []  # where names end
        beyond = 0  # where the names past the limit end, at most
        for delimiter, finder in self._names.items():
            if delimiter in text:
                for count, name in enumerate(finder.finditer(reversed_text)):  # from the end
                    if count == MAX_VALUES_PER_TEXT:
                        beyond = max(beyond, size - name.end())
                        break
                    ends.append(size - name.end())
        ends.sort(reverse=True)
        values = _Values(text)
        spans = [span for end in ends for span in values.after(end)]
        if not beyond:
            return spans, 0
        cut = max([beyond, *(stop for _, stop, _ in _Values(text).after(beyond))])
        kept = [(max(start, cut), stop, quoted) for start, stop, quoted in spans if stop > cut]
        return kept, cut


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
    for one (so that positions in it are positions in ``text``): U+0130, the one character
    whose ``lower()`` is two, and the three others that match an ASCII letter, are read as
    that letter (replaced at C speed, as each is found)."""
    for character, letter in _CASE_FOLD:
        if character in text:
            text = text.replace(character, letter)
    return text.lower()
