"""``lemma-middleware`` (or ``python -m lemma_middleware``): the local inbox and its views.

lemma-middleware inbox [--port 8787] [--key PK:SK] [--max-spans N] [--max-age 7d]
                                                     receive traces; web view on the same port
lemma-middleware threads [--limit 50] [--json]       list conversations, newest first
lemma-middleware show THREAD_OR_TRACE_ID [--json]    print turns as trees
lemma-middleware check [--json]                      judge traces; exit 1 on violations, 2 on none

Every command takes ``--db FILE`` (before or after the command; env ``LEMMA_INBOX_DB``;
default ``~/.local/share/lemma-middleware/inbox.sqlite3``), so they all agree on the data
wherever they run.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from lemma_middleware.core.environment import variable
from lemma_middleware.inbox.schema import default_db
from lemma_middleware.inbox.server import DEFAULT_PORT, Inbox
from lemma_middleware.inbox.store import DEFAULT_MAX_SPANS, SpanStore
from lemma_middleware.inbox.views import ThreadQuery, render_tree
from lemma_middleware.testing.contract import check_traces

THREADS_SHOWN = 50
"""How many threads ``lemma-middleware threads`` lists unless told (``--limit``)."""


def _keys(pairs: Sequence[str]) -> dict[str, str]:
    keys: dict[str, str] = {}
    for pair in pairs:
        public, sep, secret = pair.partition(":")
        if not sep:
            raise SystemExit(f"--key takes PUBLIC:SECRET, got {pair!r}")
        keys[public] = secret
    langfuse_public, langfuse_secret = (
        variable("LANGFUSE_PUBLIC_KEY"),
        variable("LANGFUSE_SECRET_KEY"),
    )
    if not keys and langfuse_public and langfuse_secret:
        keys[langfuse_public] = langfuse_secret
    return keys


def _age(text: str) -> float:
    """``--max-age``: seconds, or a number with ``s``, ``m``, ``h`` or ``d``."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = (text[:-1], text[-1]) if text[-1:] in units else (text, "s")
    try:
        seconds = float(number) * units[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not an age: {text!r} (try 3600, 30m, 12h or 7d)"
        ) from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"--max-age must be positive, got {text!r}")
    return seconds


def _count(text: str) -> int:
    """``--limit``, ``--max-spans``: a whole number, 0 or more (0: no bound)."""
    try:
        number = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {number}")
    return number


def _default_db_text() -> str:
    """The default database as a user reads it: the file, with ``~`` for the home folder."""
    path = default_db()
    try:
        return "~/" + str(path.relative_to(Path.home()))
    except ValueError:
        return str(path)


def _inbox(args: argparse.Namespace) -> int:
    keys = _keys(args.key)
    inbox = Inbox(
        args.db,
        port=args.port,
        keys=keys,
        bearer=args.bearer,
        max_spans=args.max_spans,
        max_age=args.max_age,
    )
    print(f"lemma-middleware inbox on {inbox.base_url} storing in {args.db}")
    retention = f"the newest {args.max_spans:,} spans" if args.max_spans else "every span"
    if args.max_age:
        retention += f", none older than {args.max_age:g} s"
    print(f"  keeping {retention}")
    print(f"  web view: {inbox.base_url}/")
    print(f"  export here with LANGFUSE_HOST={inbox.base_url}")
    if not keys and args.bearer is None:
        print("  no keys configured: any credentials are accepted (use --key PK:SK to check them)")
    sys.stdout.flush()
    # Stop on Ctrl-C and SIGTERM even when started in the background from a script, where
    # SIGINT arrives ignored and Python would install no handler for it.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with contextlib.suppress(KeyboardInterrupt):
        inbox.serve_forever()
    return 0


def _threads(args: argparse.Namespace) -> int:
    limit = args.limit or None
    query = ThreadQuery(include_unthreaded=False, limit=limit + 1 if limit else None)
    store = SpanStore(args.db, max_spans=None)
    store.index_pending()  # what a running inbox has stored but not indexed yet
    summaries = store.threads(query)
    more = limit is not None and len(summaries) > limit
    summaries = summaries[:limit]
    if args.json:
        print(json.dumps([s.as_json() for s in summaries], indent=2))
        return 0
    if not summaries:
        print("no threads yet")
        return 0
    print(f"{'thread':28} {'user':14} {'tenant':10} {'turns':>5}  last activity (UTC)")
    for s in summaries:
        when = datetime.datetime.fromtimestamp(s.last_activity_ns / 1e9, datetime.UTC)
        print(
            f"{s.thread_id[:28]:28} {','.join(s.users)[:14]:14} {','.join(s.tenants)[:10]:10} "
            f"{s.turns:5}  {when:%Y-%m-%d %H:%M:%S}"
        )
    if more:
        print(f"(the {limit} most recently active; --limit N for more, --limit 0 for all)")
    return 0


def _show(args: argparse.Namespace) -> int:
    store = SpanStore(args.db, max_spans=None)
    store.index_pending()
    trace = store.trace(args.id)
    turns = [trace] if trace else [store.trace(t.trace_id) for t in store.turns(args.id)]
    if not turns:
        print(f"no thread or trace {args.id!r}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps([[dataclasses.asdict(s) for s in trace] for trace in turns], indent=2))
        return 0
    for number, trace in enumerate(turns, 1):
        print(f"turn {number}: trace {trace[0].trace_id}")
        for line in render_tree(trace):
            print(f"  {line}")
    return 0


def _check(args: argparse.Namespace) -> int:
    spans = SpanStore(args.db, max_spans=None).spans()
    traces = len({s.trace_id for s in spans})
    if not traces:
        print(f"no traces in {args.db}: nothing to check", file=sys.stderr)
        return 2
    violations = check_traces(spans)
    if args.json:
        print(json.dumps([dataclasses.asdict(v) for v in violations], indent=2))
    else:
        for violation in violations:
            print(violation)
        bad = len({v.trace_id for v in violations})
        verdict = "conformant" if not violations else f"{bad} with violations"
        print(f"checked {traces} traces: {verdict}")
    return 1 if violations else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lemma-middleware`` command."""
    parser = argparse.ArgumentParser(
        prog="lemma-middleware",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    db_help = f"SQLite file (env LEMMA_INBOX_DB; default {_default_db_text()})"
    parser.add_argument("--db", help=db_help)
    commands = parser.add_subparsers(dest="command", required=True)
    inbox = commands.add_parser("inbox", help="receive traces on 127.0.0.1")
    inbox.add_argument("--port", type=int, default=DEFAULT_PORT)
    inbox.add_argument(
        "--key",
        action="append",
        default=[],
        metavar="PK:SK",
        help="accepted Langfuse key pair (repeatable; default: LANGFUSE_* env)",
    )
    inbox.add_argument("--bearer", help="accepted Bearer token (as Lemma's endpoint takes)")
    inbox.add_argument(
        "--max-spans",
        type=_count,
        default=DEFAULT_MAX_SPANS,
        metavar="N",
        help=f"keep at most N spans, deleting the oldest traces (default {DEFAULT_MAX_SPANS:,}; "
        "0: no limit)",
    )
    inbox.add_argument(
        "--max-age",
        type=_age,
        default=None,
        metavar="AGE",
        help="delete traces received longer ago than AGE (seconds, or 30m, 12h, 7d)",
    )
    inbox.set_defaults(run=_inbox)
    threads = commands.add_parser("threads", help="list conversations")
    threads.add_argument(
        "--limit",
        type=_count,
        default=THREADS_SHOWN,
        metavar="N",
        help=f"the N most recently active (default {THREADS_SHOWN}; 0: all)",
    )
    threads.add_argument("--json", action="store_true")
    threads.set_defaults(run=_threads)
    show = commands.add_parser("show", help="print a thread's turns (or one trace) as trees")
    show.add_argument("id")
    show.add_argument("--json", action="store_true")
    show.set_defaults(run=_show)
    check = commands.add_parser("check", help="judge stored traces against the trace contract")
    check.add_argument("--json", action="store_true")
    check.set_defaults(run=_check)
    for command in (inbox, threads, show, check):  # --db after the command works too
        command.add_argument("--db", default=argparse.SUPPRESS, help=db_help)
    args = parser.parse_args(argv)
    args.db = str(args.db or default_db())
    result: int = args.run(args)
    return result
