"""The inbox's store at scale: trace and thread rows kept with the spans, pages of threads,
search over inputs and outputs, a change marker, counters, retention by count and age, an
earlier version's file indexed on open, and what a turn "said" for the conversation view."""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lemma_middleware.core.attributes import Keys
from lemma_middleware.inbox import store as store_module
from lemma_middleware.inbox.cli import main
from lemma_middleware.inbox.server import Inbox
from lemma_middleware.inbox.store import SpanStore
from lemma_middleware.inbox.views import ThreadQuery, TraceRow, said
from lemma_middleware.testing.records import ReceivedSpan


def turn(
    number: int,
    thread: str | None,
    *,
    user: str = "alice",
    said_text: str = "hello",
    answer: str = "hi there",
    children: int = 2,
    error: str | None = None,
    start_ns: int | None = None,
) -> list[ReceivedSpan]:
    """One request's spans as the middleware exports them: the root and its children."""
    trace_id = f"{number:032x}"
    start = start_ns if start_ns is not None else 1_700_000_000_000_000_000 + number * 10**9
    attributes: dict[str, Any] = {
        Keys.USER: user,
        Keys.TENANT: "acme",
        Keys.AGENT: "support-agent",
        Keys.TRACE_INPUT: json.dumps({"message": said_text}),
        Keys.TRACE_OUTPUT: json.dumps({"answer": answer}),
        Keys.HTTP_STATUS: "500" if error else "200",
        Keys.TYPE: "agent",
    }
    if thread is not None:
        attributes[Keys.THREAD] = thread
    if error:
        attributes[Keys.LEVEL] = "ERROR"
        attributes[Keys.STATUS_MESSAGE] = error
    root = ReceivedSpan(
        trace_id, f"{number:08x}00000000", None, "support-agent", start, start + 5 * 10**6,
        attributes, {"service.name": "app"}, "langfuse-sdk", 2 if error else 0,
    )  # fmt: skip
    child = {Keys.TYPE: "generation", Keys.USER: user}
    times = (start + 10**6, start + 4 * 10**6)
    kids = [
        ReceivedSpan(
            trace_id,
            f"{number:08x}{k + 1:08x}",
            root.span_id,
            "llm-call",
            *times,
            child,
            {},
            "langfuse-sdk",
            0,
        )
        for k in range(children)
    ]
    return [*kids, root]


def test_trace_and_thread_rows_follow_the_spans_and_children_may_come_first(
    tmp_path: Path,
) -> None:
    store = SpanStore(tmp_path / "inbox.sqlite3")
    first = turn(1, "thread-a", said_text="where is my parcel?", answer="on its way")
    store.add(first[:-1])  # the children arrive in an earlier batch than their root
    assert store.trace_row(first[0].trace_id) is None
    assert store.threads() == []
    store.add(first[-1:])
    store.add(turn(2, "thread-a", error="ValueError: the model is down"))
    (thread,) = store.threads()
    assert (thread.thread_id, thread.turns, thread.errors, thread.users) == (
        "thread-a",
        2,
        1,
        ["alice"],
    )
    row = store.trace_row(first[0].trace_id)
    assert isinstance(row, TraceRow)
    assert (row.user_said, row.agent_said, row.http_status, row.span_count) == (
        "where is my parcel?",
        "on its way",
        200,
        3,
    )
    assert [t.level for t in store.turns("thread-a")] == ["DEFAULT", "ERROR"]
    assert store.span_count() == 6 and store.trace_count() == 2


def test_the_change_marker_moves_with_every_batch_and_resent_spans_count_once(
    tmp_path: Path,
) -> None:
    store = SpanStore(tmp_path / "inbox.sqlite3")
    marker = store.version()
    spans = turn(1, "t")
    store.add(spans)
    assert store.version() > marker
    marker = store.version()
    store.add(spans)  # an exporter's retry
    assert store.version() > marker
    assert store.span_count() == 3 == len(store.spans()) and store.trace_count() == 1
    assert store.threads()[0].turns == 1


def test_threads_come_a_page_at_a_time_newest_first(tmp_path: Path) -> None:
    store = SpanStore(tmp_path / "inbox.sqlite3")
    for number in range(60):
        store.add(turn(number, f"thread-{number:02d}", children=0))
    first = store.threads(ThreadQuery(limit=50))
    second = store.threads(ThreadQuery(limit=50, offset=50))
    assert [t.thread_id for t in first][:2] == ["thread-59", "thread-58"]
    assert len(first) == 50 and len(second) == 10
    assert {t.thread_id for t in first} | {t.thread_id for t in second} == {
        f"thread-{n:02d}" for n in range(60)
    }


def test_the_threads_command_lists_the_newest_fifty_unless_told(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "inbox.sqlite3"
    store = SpanStore(db)
    for number in range(60):
        store.add(turn(number, f"thread-{number:02d}", children=0))
    assert main(["--db", str(db), "threads"]) == 0
    out = capsys.readouterr().out
    assert "thread-59" in out and "thread-10" in out and "thread-09" not in out
    assert "--limit 0 for all" in out
    assert main(["--db", str(db), "threads", "--limit", "0", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 60
    assert main(["--db", str(db), "threads", "--limit", "60"]) == 0
    out = capsys.readouterr().out
    assert "thread-00" in out and "--limit" not in out


@pytest.mark.parametrize("command", [["threads", "--limit", "-1"], ["inbox", "--max-spans", "-5"]])
def test_a_negative_bound_is_refused_not_read_as_delete_everything(
    tmp_path: Path, command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_status:
        main(["--db", str(tmp_path / "inbox.sqlite3"), *command])
    assert exit_status.value.code == 2 and "must be 0 or more" in capsys.readouterr().err
    with pytest.raises(ValueError, match="0 \\(no bound\\) or more"):
        SpanStore(tmp_path / "inbox.sqlite3", max_spans=-5)


def test_filters_errors_and_search_pick_the_threads_with_such_a_turn(tmp_path: Path) -> None:
    store = SpanStore(tmp_path / "inbox.sqlite3")
    store.add(turn(1, "parcel", said_text="Where is my PARCEL?"))
    store.add(turn(2, "refund", user="bob", said_text="refund please", answer="done"))
    store.add(turn(3, "refund", user="bob", said_text="thanks", error="TimeoutError: slow"))
    store.add(turn(4, None, said_text="this has no thread"))

    def found(**query: Any) -> list[str]:
        return [t.thread_id for t in store.threads(ThreadQuery(**query))]

    assert found(search="parcel") == ["parcel"]  # case-insensitive
    assert found(search="done") == ["refund"]  # outputs too
    assert found(search="is") == ["", "parcel"]  # under three characters: still found
    assert found(search='"; DROP TABLE spans; --') == []
    assert found(user="bob") == ["refund"] and found(errors=True) == ["refund"]
    assert found(user="alice", search="refund") == []
    assert "" not in found(include_unthreaded=False)


SEARCHABLE = st.text(
    st.characters(min_codepoint=32, max_codepoint=126) | st.sampled_from("éüÉÜ€\"'%_*"),
    max_size=12,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(texts=st.lists(SEARCHABLE, min_size=1, max_size=4), needle=SEARCHABLE)
def test_search_finds_exactly_the_threads_whose_text_contains_the_query(
    tmp_path_factory: pytest.TempPathFactory, texts: list[str], needle: str
) -> None:
    store = SpanStore(tmp_path_factory.mktemp("search") / "inbox.sqlite3")
    for number, text in enumerate(texts):
        store.add(turn(number, f"thread-{number}", said_text=text, answer="fine", children=0))
    expected = {
        f"thread-{number}"
        for number, text in enumerate(texts)
        if needle.strip().lower() in text.lower() or needle.strip().lower() in "fine"
    }
    query = needle.strip()
    if not query:
        return
    got = {t.thread_id for t in store.threads(ThreadQuery(search=query, limit=None))}
    assert got == expected


@pytest.mark.parametrize("query", ["é", "É", "fé", "afé", "AFÉ", "café"])
def test_search_ignores_case_beyond_ascii_short_or_long(tmp_path: Path, query: str) -> None:
    store = SpanStore(tmp_path / "inbox.sqlite3")
    store.add(turn(1, "thread-cafe", said_text="CAFÉ au lait", children=0))
    assert [t.thread_id for t in store.threads(ThreadQuery(search=query))] == ["thread-cafe"]


def test_retention_keeps_the_newest_spans_deleting_whole_traces_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = SpanStore(tmp_path / "inbox.sqlite3", max_spans=100)
    caplog.set_level(logging.INFO, "lemma_middleware.inbox")
    for number in range(40):  # 3 spans each: 120 in all
        store.add(turn(number, f"thread-{number % 7}"))
    assert store.span_count() <= 100 == store.max_spans
    assert store.span_count() == len(store.spans())
    kept = {s.trace_id for s in store.spans()}
    assert f"{0:032x}" not in kept and f"{39:032x}" in kept  # the oldest went first
    counts: dict[str, int] = {}
    for span in store.spans():
        counts[span.trace_id] = counts.get(span.trace_id, 0) + 1
    assert set(counts.values()) == {3}  # whole traces, never part of one
    assert sum(t.turns for t in store.threads(ThreadQuery(limit=None))) == len(kept)
    assert store.trace_count() == len(kept)
    assert any("retention deleted" in r.getMessage() for r in caplog.records)


def test_retention_by_age(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1_000_000.0]
    monkeypatch.setattr(store_module.time, "time", lambda: now[0])
    store = SpanStore(tmp_path / "inbox.sqlite3", max_age=3600)
    store.add(turn(1, "old"))
    now[0] += 7200
    store.add(turn(2, "new"))
    assert [t.thread_id for t in store.threads()] == ["new"]
    assert store.span_count() == 3


def test_a_file_an_earlier_version_wrote_is_indexed_when_opened(tmp_path: Path) -> None:
    path = tmp_path / "inbox.sqlite3"
    with sqlite3.connect(path) as old:  # the schema this store had before trace rows
        old.execute(
            "CREATE TABLE spans (trace_id TEXT NOT NULL, span_id TEXT NOT NULL, "
            "parent_span_id TEXT, name TEXT NOT NULL, start_ns INTEGER NOT NULL, end_ns INTEGER "
            "NOT NULL, attributes TEXT NOT NULL, resource TEXT NOT NULL, scope TEXT NOT NULL, "
            "status_code INTEGER NOT NULL, received_at REAL NOT NULL, "
            "PRIMARY KEY (trace_id, span_id))"
        )
        for s in turn(1, "thread-old") + turn(2, "thread-old"):
            old.execute(
                "INSERT INTO spans VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0)",
                (s.trace_id, s.span_id, s.parent_span_id, s.name, s.start_ns, s.end_ns,
                 json.dumps(s.attributes), json.dumps(s.resource), s.scope, s.status_code),
            )  # fmt: skip
    store = SpanStore(path)
    assert [(t.thread_id, t.turns) for t in store.threads()] == [("thread-old", 2)]
    assert store.span_count() == 6


def test_rows_another_version_built_are_rebuilt_from_the_spans_when_opened(
    tmp_path: Path,
) -> None:
    """As a file of the commit before this layout: trace rows without ``id``, a text index
    of other columns, and a marker but no schema number."""
    path = tmp_path / "inbox.sqlite3"
    store = SpanStore(path)
    store.add(turn(1, "thread-a") + turn(2, "thread-b"))
    store.close()
    with sqlite3.connect(path) as old:
        old.executescript(
            "DELETE FROM meta WHERE key = 'schema'; DROP TABLE traces; DROP TABLE trace_text; "
            "CREATE TABLE traces (trace_id TEXT PRIMARY KEY, thread_id TEXT, input TEXT); "
            "CREATE VIRTUAL TABLE trace_text USING fts5 (trace_id, input, output);"
        )
    reopened = SpanStore(path)
    assert {t.thread_id for t in reopened.threads()} == {"thread-a", "thread-b"}
    assert [t.thread_id for t in reopened.threads(ThreadQuery(search="hello"))] == [
        "thread-b",
        "thread-a",
    ]
    reopened.add(turn(3, "thread-a"))  # and it goes on indexing
    assert reopened.trace_count() == 3 and reopened.span_count() == 9


def test_a_trace_that_cannot_be_indexed_is_set_aside_and_the_rest_are_indexed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from lemma_middleware.inbox import indexing

    store = SpanStore(tmp_path / "inbox.sqlite3")
    good, bad = turn(1, "thread-good"), turn(2, "thread-bad")
    store.add(good + bad, index=False)
    real_check = indexing.check_trace

    def check(spans: list[ReceivedSpan], redactor: Any) -> Any:
        if spans[0].trace_id == bad[0].trace_id:
            raise RecursionError("a span tree too deep to judge")
        return real_check(spans, redactor)

    monkeypatch.setattr(indexing, "check_trace", check)
    with caplog.at_level(logging.WARNING, logger="lemma_middleware.inbox"):
        assert store.index_pending() == 2
    assert [t.thread_id for t in store.threads()] == ["thread-good"]
    assert f"trace {bad[0].trace_id} could not be indexed (RecursionError" in caplog.text
    assert store.index_pending() == 0  # set aside: not retried forever
    assert len(store.trace(bad[0].trace_id)) == 3  # its spans are kept


def test_a_database_error_while_indexing_is_raised_and_nothing_is_set_aside(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lemma_middleware.inbox import indexing

    store = SpanStore(tmp_path / "inbox.sqlite3")
    store.add(turn(1, "thread-a"), index=False)

    def locked(*args: Any) -> Any:
        raise sqlite3.OperationalError("database is locked")

    with monkeypatch.context() as patched:
        patched.setattr(indexing, "check_trace", locked)
        with pytest.raises(sqlite3.OperationalError):
            store.index_pending()
    assert store.threads() == []
    assert store.index_pending() == 1  # the next pass indexes it
    assert [t.thread_id for t in store.threads()] == ["thread-a"]


async def test_unknown_threads_and_traces_answer_404_and_state_is_the_marker(
    tmp_path: Path,
) -> None:
    with Inbox(tmp_path / "inbox.sqlite3", port=0, announce=None) as inbox:
        inbox.store.add(turn(1, "thread-a"))
        async with httpx.AsyncClient(base_url=inbox.base_url) as client:
            assert (await client.get("/traces/" + "f" * 32)).status_code == 404
            assert (await client.get("/threads/nope")).status_code == 404
            assert (await client.get(f"/traces/{1:032x}")).status_code == 200
            assert (await client.get("/threads/thread-a")).status_code == 200
            state = (await client.get("/api/state")).json()
            assert state == {"version": inbox.store.version(), "traces": 1, "spans": 3}
            page = (await client.get("/", params={"q": "hello"})).text
            assert "thread-a" in page
            assert "thread-a" not in (await client.get("/", params={"q": "absent"})).text


def test_inbox_command_options_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    from lemma_middleware.inbox.cli import _age

    assert (_age("90"), _age("30m"), _age("12h"), _age("7d")) == (90, 1800, 43200, 604800)
    for bad in ("soon", "-1", "0"):
        with pytest.raises(Exception, match="age"):
            _age(bad)
    with pytest.raises(SystemExit):
        main(["inbox", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "inbox.sqlite3" in out  # the default database is a file, not a folder
    assert "--max-spans" in out and "--max-age" in out


@pytest.mark.parametrize(
    ("recorded", "role", "expected"),
    [
        ('{"message": "where is my parcel?"}', "user", "where is my parcel?"),
        ('{"answer": "on its way"}', "assistant", "on its way"),
        (
            json.dumps(
                {
                    "messages": [
                        {"role": "system", "content": "be kind"},
                        {"role": "user", "content": "first"},
                        {"role": "assistant", "content": "reply"},
                        {"role": "user", "content": [{"type": "text", "text": "second"}]},
                    ]
                }
            ),
            "user",
            "second",
        ),
        ('"plain words"', "user", "plain words"),
        ("not json at all", "user", "not json at all"),
        ('{"unknown": 1}', "user", '{"unknown": 1}'),
        (None, "user", None),
    ],
)
def test_what_a_turn_said(recorded: str | None, role: str, expected: str | None) -> None:
    assert said(recorded, role=role) == expected


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=50),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


@given(value=JSON, role=st.sampled_from(["user", "assistant"]), as_text=st.booleans())
def test_what_a_turn_said_is_bounded_text_whatever_was_recorded(
    value: Any, role: str, as_text: bool
) -> None:
    result = said(json.dumps(value) if as_text else value, role=role)
    assert result is None or (isinstance(result, str) and len(result) <= 2000)


def test_an_arriving_traces_line_leaves_out_what_it_does_not_have() -> None:
    from lemma_middleware.inbox.views import summary_line

    spans = turn(1, None)
    root = spans[-1]
    del root.attributes[Keys.TENANT]
    line = summary_line(root, spans)
    assert "None" not in line and "tenant=" not in line and "thread=" not in line
    assert "user=alice" in line and "children=2" in line and "level=DEFAULT" in line
