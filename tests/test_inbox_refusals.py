"""The inbox says why it refuses an export: one WARNING naming the refused public key (or
bearer token, or missing credentials) and the fix, never the secret, rate-limited per
credentials so a retrying client does not flood the terminal. Real HTTP requests to a
receiver on 127.0.0.1."""

from __future__ import annotations

import base64
import logging
from collections.abc import Iterator

import httpx
import pytest

from lemma_middleware.inbox.receiver import OTLPReceiver

KEYS = {"pk-inbox": "sk-inbox-secret"}

PROTOBUF = {"content-type": "application/x-protobuf"}


@pytest.fixture
def receiver() -> Iterator[OTLPReceiver]:
    with OTLPReceiver(keys=KEYS) as running:
        yield running


def export(receiver: OTLPReceiver, authorization: str | None) -> int:
    """POST an empty export batch with ``authorization``; the status code."""
    headers = dict(PROTOBUF)
    if authorization is not None:
        headers["authorization"] = authorization
    url = f"{receiver.base_url}/api/public/otel/v1/traces"
    return httpx.post(url, content=b"", headers=headers, timeout=10).status_code


def basic(public: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{public}:{secret}".encode()).decode()


def refusals(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "lemma_middleware.inbox" and record.levelno == logging.WARNING
    ]


@pytest.fixture(autouse=True)
def inbox_warnings(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="lemma_middleware.inbox")


def test_an_unknown_public_key_is_named_with_the_fix_and_its_secret_is_not_logged(
    receiver: OTLPReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    assert export(receiver, basic("pk-typo", "sk-the-apps-secret")) == 401
    [line] = refusals(caplog)
    assert "pk-typo" in line and "--key pk-typo:SK" in line
    assert "pk-inbox" in line  # the keys it does accept (public keys only)
    assert "sk-the-apps-secret" not in caplog.text
    assert KEYS["pk-inbox"] not in caplog.text


def test_a_wrong_secret_names_the_public_key_and_never_either_secret(
    receiver: OTLPReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    assert export(receiver, basic("pk-inbox", "sk-wrong-secret")) == 401
    [line] = refusals(caplog)
    assert "pk-inbox" in line and "secret key that does not match" in line
    assert "sk-wrong-secret" not in caplog.text
    assert KEYS["pk-inbox"] not in caplog.text


def test_swapped_keys_do_not_log_the_secret_sent_as_the_public_key(
    receiver: OTLPReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    assert export(receiver, basic("sk-lf-real-secret", "pk-lf-public")) == 401
    [line] = refusals(caplog)
    assert "swapped" in line
    assert "sk-lf-real-secret" not in caplog.text


def test_a_secret_without_the_sk_prefix_sent_as_the_public_key_is_not_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with OTLPReceiver(keys={"alice": "hunter2"}, bearer="lemma-token") as receiver:
        assert export(receiver, basic("hunter2", "alice")) == 401  # the pair swapped
        assert export(receiver, basic("lemma-token", "x")) == 401  # the token as a user
    assert len(refusals(caplog)) == 1  # the same refusal, once a minute
    assert "swapped" in caplog.text
    assert "hunter2" not in caplog.text and "lemma-token" not in caplog.text


def test_a_bearer_token_that_does_not_match_says_so_without_the_token(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with OTLPReceiver(bearer="lemma-right-token") as receiver:
        assert export(receiver, "Bearer lemma-wrong-token") == 401
        assert export(receiver, None) == 401
    bearer, missing = refusals(caplog)
    assert "bearer token that does not match --bearer" in bearer
    assert "no Basic or Bearer credentials" in missing and "--bearer" in missing
    assert "lemma-wrong-token" not in caplog.text and "lemma-right-token" not in caplog.text


def test_a_retrying_client_gets_one_line_per_minute_per_public_key(
    receiver: OTLPReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    now = [1000.0]
    receiver._refusals.clock = lambda: now[0]
    for _ in range(5):
        assert export(receiver, basic("pk-retrying", "sk-x")) == 401
    assert export(receiver, basic("pk-other", "sk-x")) == 401  # other credentials: a line
    assert len(refusals(caplog)) == 2
    now[0] += receiver._refusals.interval  # a minute later, still refused
    assert export(receiver, basic("pk-retrying", "sk-x")) == 401
    *_, last = refusals(caplog)
    assert "pk-retrying" in last and "4 more like it" in last


def test_accepted_credentials_log_nothing(
    receiver: OTLPReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    assert export(receiver, basic("pk-inbox", KEYS["pk-inbox"])) == 200
    assert refusals(caplog) == []
