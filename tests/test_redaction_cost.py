"""Redaction is linear and loses nothing: the redaction of issue 19 against the one it
replaced (tests/reference_redaction.py), on texts made of what secrets and their names are
made of; and what one body can cost, counted in work rather than timed."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.traffic import REDACTION_PIECES
from lemma_middleware.core.redaction import REDACTED, Redactor

from .reference_redaction import ReferenceRedactor

REDACTOR = Redactor(["ssn_last4"])
REFERENCE = ReferenceRedactor(["ssn_last4"])

pieces = st.sampled_from(REDACTION_PIECES)
texts = st.lists(pieces, max_size=40).map("".join)


@settings(max_examples=3000, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(texts)
def test_nothing_the_previous_redaction_redacted_survives_in_text(text: str) -> None:
    """The previous redaction finds nothing left to redact in what this one records."""
    redacted = REDACTOR.redact_text(text)
    assert REFERENCE.redact_text(redacted) == redacted


def containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.lists(children, max_size=4) | st.dictionaries(texts, children, max_size=4)


documents = st.recursive(
    texts | st.integers() | st.none() | st.booleans(), containers, max_leaves=20
)


@settings(max_examples=1000, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(documents)
def test_nothing_the_previous_redaction_redacted_survives_in_structures(document: Any) -> None:
    redacted = REDACTOR.redact(document)
    assert REFERENCE.redact(redacted) == redacted


@settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    documents,
    st.booleans(),
    st.sampled_from([None, 0, 2]),
    st.sampled_from([(", ", ": "), (",", ":"), (" ,\n", " :\t")]),
)
def test_a_json_text_found_clean_needs_no_redaction(
    document: Any, ascii_only: bool, indent: int | None, separators: tuple[str, str]
) -> None:
    """What lets a body be recorded as it came without walking it: whenever the text
    screen finds nothing, redacting the parsed document changes nothing either (however
    the JSON is written: escapes, non-ASCII, spacing)."""
    text = json.dumps(document, ensure_ascii=ascii_only, indent=indent, separators=separators)
    parsed = json.loads(text)
    if REDACTOR.finds_nothing_in_json(text):
        assert REDACTOR.redact(parsed) is parsed


def test_the_json_screen_sees_what_parsing_reveals() -> None:
    """Names behind escapes, secrets in keys: each makes the screen say "look"."""
    for document in (
        {"password": "x"},
        {"note": "my password\n: hunter2"},
        {"note": 'the "token"\t: abc'},
        {"api key": "x"},
        {"sk-abcdefghijklmnopqrstuvwxyz": 1},
    ):
        text = json.dumps(document)
        assert not REDACTOR.finds_nothing_in_json(text), text
    escaped = r'{"n": "\u0070assword: x"}'  # "password: x" once parsed
    assert not REDACTOR.finds_nothing_in_json(escaped)
    plain = {"messages": [{"role": "user", "content": "reset my password please"}]}
    text = json.dumps(plain)
    assert REDACTOR.finds_nothing_in_json(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("my password: hunter2, thanks", "my password: [REDACTED], thanks"),
        ('{"apiKey": "sk-x", "n": 1}', '{"apiKey": "[REDACTED]", "n": 1}'),
        ("a=1&access_token=abc&b=2", "a=1&access_token=[REDACTED]&b=2"),
        ("Authorization: Bearer abcdefgh12345678", "Authorization: [REDACTED]"),
        ("use sk-proj-abcdefghijklmnop1234 now", f"use {REDACTED} now"),
        ("password=", "password=[REDACTED]"),
        ("I forgot my password and my API key", "I forgot my password and my API key"),
    ],
)
def test_what_text_redaction_records(text: str, expected: str) -> None:
    assert REDACTOR.redact_text(text) == expected


def test_nothing_to_redact_returns_the_same_objects() -> None:
    """What lets a JSON body with nothing sensitive be recorded as it came, unserialised:
    in every request (the keys a redactor remembers are other objects each time)."""
    for _ in range(2):
        document = json.loads('{"messages": [{"role": "user", "content": "my password?"}]}')
        assert REDACTOR.redact(document) is document
    text = "reset my token please"
    assert REDACTOR.redact_text(text) is text


def test_a_text_full_of_secrets_costs_a_bounded_number_of_replacements(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Counted, not timed: however many values a text holds, at most
    MAX_VALUES_PER_TEXT + 1 per delimiter are handled one by one; the text before them is
    replaced whole, so none survives."""
    from lemma_middleware.core import redaction

    calls = 0
    values_after = redaction._Values.after

    def counted(self: Any, end: int) -> list[tuple[int, int, bool]]:
        nonlocal calls
        calls += 1
        return values_after(self, end)

    monkeypatch.setattr(redaction._Values, "after", counted)
    text = "".join(f"pwd:s{n} token=t{n} " for n in range(10_000))
    redacted = REDACTOR.redact_text(text)
    assert calls <= 2 * (redaction.MAX_VALUES_PER_TEXT + 1)
    assert not any(f"s{n} " in redacted or f"t{n} " in redacted for n in range(10_000))
    assert redacted.endswith("pwd:[REDACTED] token=[REDACTED] ")
    assert REFERENCE.redact_text(redacted) == redacted


field_names = st.text(alphabet="abcdeky_", min_size=1, max_size=8)


@settings(max_examples=500, deadline=None)
@given(
    st.sets(field_names, min_size=1, max_size=6), st.text(alphabet='abcdeky_ .-:="', max_size=40)
)
def test_the_factored_name_search_finds_what_every_spelling_tried_in_turn_finds(
    fields: set[str], text: str
) -> None:
    """The names' search is one expression factored by common beginnings (each attempt
    decided a character at a time): it matches at exactly the places where the plain
    alternation of every field's reversed spelling does, for any fields (user fields with a
    leading, doubled or trailing ``_`` included)."""
    import re

    from lemma_middleware.core import redaction

    plain = "|".join("".join(redaction._reversed_spelling(f)) for f in sorted(fields))
    plain_search = re.compile(rf"(?=(?:{plain}))")
    factored_search = re.compile(rf"(?={redaction._names(fields)})")
    assert [m.start() for m in factored_search.finditer(text)] == [
        m.start() for m in plain_search.finditer(text)
    ]


def test_a_text_of_delimiters_alone_is_refused_at_each_one_by_a_single_character() -> None:
    """The worst text the benchmark's search found (a delimiter every byte: an attempt at
    every one) meets the names' leading set at each attempt: redacting it stays within a
    small factor of a plain text of the same size. Counted by what the search is, not
    timed: the expression starts with the set of first characters."""
    from lemma_middleware.core import redaction

    expression = redaction._names(redaction.DEFAULT_REDACT_FIELDS)
    assert expression.startswith("(?:(?=[")
    assert REDACTOR.redact_text(":" * 10_000) == ":" * 10_000


def test_fields_sharing_a_very_long_ending_are_still_found() -> None:
    """Two field names sharing 4,000 characters at their end (a trie as deep as that
    cannot be built recursively) are searched for each in turn: both still found."""
    long = "x" * 4000
    redactor = Redactor([f"a{long}", f"b{long}"])
    for field in (f"a{long}", f"b{long}"):
        assert redactor.redact_text(f"q {field}: hunter2") == f"q {field}: [REDACTED]"
