"""Delivery to a destination that is down, hanging, refusing or rejecting: nothing lost while
the process runs, everything counted and logged, memory bounded, exit bounded."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from langfuse import Langfuse
from opentelemetry.sdk.trace import TracerProvider

from examples.demo import ROOT, free_port, wait_until_up
from lemma_middleware import build_client, export_stats
from lemma_middleware.delivery import backoff
from lemma_middleware.delivery.deadline import deadline
from lemma_middleware.delivery.exit import wait_for_backlogs
from lemma_middleware.delivery.exporter import DeliveryExporter, exporters
from lemma_middleware.delivery.http import OTLPHTTPSender
from lemma_middleware.inbox.receiver import OTLPReceiver
from lemma_middleware.sdk.client import inspect_client
from lemma_middleware.sdk.spans import langfuse_processor

from .apps.flaky_destination import FlakyDestination
from .helpers import environ_without_destinations


@pytest.fixture
def destination() -> Iterator[FlakyDestination]:
    flaky = FlakyDestination().start()
    yield flaky
    flaky.stop()


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backoff, "FIRST_BACKOFF", 0.05)
    monkeypatch.setattr(backoff, "MAX_BACKOFF", 0.3)


@dataclass
class Exporting:
    """A client built by the middleware for one destination, on a provider of its own (so
    tests don't share batch processors), and that destination's exporter."""

    client: Langfuse
    provider: TracerProvider
    exporter: DeliveryExporter

    def emit(self, names: list[str]) -> None:
        for name in names:
            self.client.start_observation(name=name).end()


def exporting_to(url: str) -> Exporting:
    provider = TracerProvider()
    client = build_client(
        otlp_endpoint=url, timeout=0.5, flush_interval=0.05, flush_at=8, tracer_provider=provider
    )
    assert client is not None
    (exporter,) = [e for e in exporters if e.sender.endpoint == url]
    return Exporting(client, provider, exporter)


def turns(prefix: str, count: int) -> list[str]:
    return [f"{prefix}-{i}" for i in range(count)]


def test_sender_classifies_answers_as_delivered_retry_or_rejected(
    destination: FlakyDestination,
) -> None:
    sender = OTLPHTTPSender(destination.url, {})
    destination.mode = 503
    destination.retry_after = "2"
    answer = sender.send(b"x", 1.0)
    assert (answer.delivered, answer.retry, answer.retry_after) == (False, True, 2.0)
    for status in (429, 500, 502, 504):
        destination.mode = status
        assert sender.send(b"x", 1.0).retry, status
    destination.retry_after = None
    for status in (400, 401, 403, 404, 413):
        destination.mode = status
        answer = sender.send(b"x", 1.0)
        assert not answer.delivered and not answer.retry and str(status) in answer.detail
    destination.mode = "hang"
    started = time.monotonic()
    answer = sender.send(b"x", 0.3)
    assert answer.retry and "no answer" in answer.detail
    assert time.monotonic() - started < 1.0
    destination.stop()
    answer = sender.send(b"x", 0.3)
    assert answer.retry and "connection" in answer.detail


@pytest.mark.parametrize("outage", ["503", "429", "hang", "refused"])
def test_an_outage_loses_no_span_while_the_process_runs(
    destination: FlakyDestination, outage: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "lemma_middleware")
    exporting = exporting_to(destination.url)
    exporting.emit(turns("before", 5))
    exporting.provider.force_flush()
    assert destination.wait_for(set(turns("before", 5)), 5)

    if outage == "refused":
        destination.stop()
    elif outage == "hang":
        destination.hang_seconds = 2.0
        destination.mode = "hang"
    else:
        destination.mode = int(outage)
    started = time.monotonic()
    during = turns("during", 40)
    for name in during:
        exporting.emit([name])
        time.sleep(0.02)
    exporting.provider.force_flush()
    assert time.monotonic() - started < 3.0  # at most one attempt's timeout was waited for
    exporter = exporting.exporter
    assert exporter.stats.down_since is not None and exporter.stats.backlog_spans > 0

    if outage == "refused":
        destination.start()
    destination.mode = "up"
    assert destination.wait_for(set(during), 10), len(during) - len(destination.distinct())
    assert exporter.force_flush(5000)
    stats = exporter.stats
    assert stats.dropped == 0 and stats.delivered_late == len(during) and stats.down_since is None
    messages = [r.getMessage() for r in caplog.records]
    assert sum(" is down (" in m for m in messages) == 1, messages
    assert sum(" recovered after " in m for m in messages) == 1, messages
    assert stats in export_stats().destinations


@pytest.mark.expect_internal_errors
def test_the_backlog_is_bounded_and_what_overflows_is_counted(
    destination: FlakyDestination, caplog: pytest.LogCaptureFixture
) -> None:
    destination.mode = 503
    sender = OTLPHTTPSender(destination.url, {})
    exporter = DeliveryExporter("bounded", sender, timeout=0.5, max_backlog_bytes=4000)
    provider = TracerProvider()
    tracer = provider.get_tracer("t")
    for i in range(60):
        span = tracer.start_span(f"s{i}")
        span.set_attribute("payload", os.urandom(400).hex())  # incompressible
        span.end()
        exporter.export([span])  # type: ignore[list-item]
        assert exporter.stats.backlog_bytes <= 4000
    stats = exporter.stats
    assert stats.dropped_backlog_full > 0
    assert stats.backlog_spans + stats.dropped_backlog_full == 60
    full = [r for r in caplog.records if "retry backlog full" in r.getMessage()]
    assert len(full) == 1
    destination.mode = "up"
    assert exporter.force_flush(5000)
    assert len(destination.distinct()) == stats.delivered == 60 - stats.dropped_backlog_full
    exporter.shutdown()


@pytest.mark.expect_internal_errors
def test_a_rejected_batch_is_dropped_counted_and_logged_once_per_status(
    destination: FlakyDestination, caplog: pytest.LogCaptureFixture
) -> None:
    destination.mode = 401
    exporting = exporting_to(destination.url)
    exporting.emit(turns("rejected", 20))
    exporting.provider.force_flush()
    exporter = exporting.exporter
    assert exporter.stats.dropped_rejected == 20
    assert exporter.stats.backlog_spans == 0 and exporter.stats.down_since is None
    rejected = [r for r in caplog.records if "rejected" in r.getMessage()]
    assert len(rejected) == 1 and "HTTP 401" in rejected[0].getMessage()


def test_a_bounded_flush_returns_by_its_deadline_with_a_hanging_destination(
    destination: FlakyDestination,
) -> None:
    destination.mode = "hang"
    destination.hang_seconds = 5.0
    exporting = exporting_to(destination.url)
    exporting.emit(turns("stuck", 30))
    started = time.monotonic()
    with deadline(0.4):
        exporting.provider.force_flush()
        assert not wait_for_backlogs()
    assert time.monotonic() - started < 1.2
    destination.mode = "up"
    assert destination.wait_for(set(turns("stuck", 30)), 10)


def serve_then_stop(command: list[str], port: int, env: dict[str, str], log: Path) -> float:
    """Serve, send 200 requests, SIGTERM; the seconds from the signal to the exit."""
    with log.open("wb") as stderr:
        process = subprocess.Popen(command, env=env, cwd=ROOT, stderr=stderr)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(f"{url}/health")
        with httpx.Client(timeout=5) as http:
            for i in range(200):
                assert http.post(f"{url}/chat", json={"message": f"m{i}"}).status_code == 200
        time.sleep(1.0)  # the first batch is in flight: the destination is now down
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
        return time.monotonic() - started
    finally:
        if process.poll() is None:
            process.kill()


@pytest.mark.parametrize("server", ["uvicorn", "gunicorn"])
def test_server_exit_is_bounded_by_flush_timeout_with_a_hanging_destination(
    destination: FlakyDestination, server: str, tmp_path: Path
) -> None:
    destination.mode = "hang"
    port = free_port()
    if server == "uvicorn":
        command = [sys.executable, "-m", "uvicorn", "tests.apps.exit_apps:asgi_app"]
        command += ["--port", str(port), "--log-level", "warning"]
    else:
        command = [sys.executable, "-m", "gunicorn", "-w", "2", "-k", "gthread"]
        command += ["--threads", "4", "-b", f"127.0.0.1:{port}", "--graceful-timeout", "60"]
        command += ["tests.apps.exit_apps:wsgi_app()"]
    env = environ_without_destinations()
    env |= {
        "LEMMA_OTLP_ENDPOINT": destination.url,
        "FLUSH_TIMEOUT": "1.5",
        "LANGFUSE_FLUSH_AT": "16",
        "LANGFUSE_FLUSH_INTERVAL": "0.2",
    }
    log = tmp_path / "server.log"
    seconds = serve_then_stop(command, port, env, log)
    # uvicorn: the lifespan flush (then uvicorn ends by re-raising SIGTERM, so no exit
    # handler runs); gunicorn: each worker's exit handler.
    assert seconds < 1.5 + 2.0, seconds
    text = log.read_text()
    expected = "within flush_timeout" if server == "uvicorn" else "at exit"
    assert f"spans not delivered {expected}" in text, text[-2000:]


def test_the_langfuse_destination_sends_what_langfuse_own_exporter_sends() -> None:
    with OTLPReceiver(keys={"pk-own": "sk-own", "pk-ours": "sk-ours"}) as receiver:
        own = Langfuse(
            public_key="pk-own",
            secret_key="sk-own",
            base_url=receiver.base_url,
            tracer_provider=TracerProvider(),
        )
        own.start_observation(name="own").end()
        own.flush()
        ours = build_client(
            langfuse_public_key="pk-ours",
            langfuse_secret_key="sk-ours",
            langfuse_host=receiver.base_url,
            tracer_provider=TracerProvider(),
        )
        assert ours is not None
        ours.start_observation(name="ours").end()
        ours.flush()
        by_span = {r.spans[0].name: r for r in receiver.requests}
    assert set(by_span) == {"own", "ours"} and not receiver.rejected
    own_request, our_request = by_span["own"], by_span["ours"]
    assert our_request.path == own_request.path
    assert our_request.content_type == own_request.content_type
    langfuse_headers = {
        name: value.replace("pk-own", "pk-ours")
        for name, value in own_request.headers.items()
        if name.startswith("x-langfuse-")
    }
    assert langfuse_headers and langfuse_headers.items() <= our_request.headers.items()


def test_a_slow_destination_never_overflows_the_batch_queue_and_flush_still_means_delivered(
    destination: FlakyDestination,
) -> None:
    """With the destination answering slower than batches are made, the batch processor
    hands batches over without waiting for each answer (its queue does not overflow: no
    span is dropped), they are delivered in order, and Langfuse's ``flush()`` returns once
    every one of them is delivered."""
    destination.delay = 0.15
    exporting = exporting_to(destination.url)  # batches of 8 spans
    names = turns("burst", 120)  # 15 batches: 2.25 s of answers
    access = inspect_client(exporting.client)
    assert access.public_key is not None
    batch_processor = langfuse_processor(exporting.provider, access.public_key)
    assert batch_processor is not None
    started = time.monotonic()
    exporting.emit(names)
    batch_processor.force_flush()  # exports every batch: hands them all over
    handed_over = time.monotonic() - started
    assert handed_over < 1.0, handed_over  # not 15 answers' worth
    exporting.client.flush()  # Langfuse's own flush: waits for delivery
    assert set(names) <= set(destination.span_names)
    assert destination.span_names == sorted(destination.span_names, key=names.index)
    stats = exporting.exporter.stats
    assert stats.dropped == 0 and stats.backlog_spans == 0 and stats.delivered >= len(names)


def test_overlapping_bounded_flushes_leave_no_passed_deadline_behind(
    destination: FlakyDestination,
) -> None:
    """Two flushes bounded at once (two threads' lifespan shutdowns, a flush inside another's
    block) that end out of order: once both ended, nothing bounds delivery any more."""
    exporting = exporting_to(destination.url)
    short, long = deadline(0.05), deadline(30.0)
    short.__enter__()
    long.__enter__()  # started while the short one runs, ends after it
    short.__exit__(None, None, None)
    time.sleep(0.1)  # the short one's deadline has passed
    long.__exit__(None, None, None)
    exporting.emit(turns("after", 3))
    exporting.provider.force_flush()
    assert destination.wait_for(set(turns("after", 3)), 5)
