"""The inbox's web view in a real headless browser (Debian's chromium through Selenium): the
threads, a thread's turns, a trace's waterfall with its contract violation, a span's
attributes on click, and a new trace arriving without a reload. Screenshots are kept in
``test-artifacts/web/``."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider

from lemma_middleware import build_client
from lemma_middleware.inbox.store import Inbox

from .apps.asgi_apps import make_app
from .helpers import post

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="Debian's chromium and chromium-driver are not installed (.ci/run installs them)",
)
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "web"
KEYS = {"pk-web": "sk-web", "pk-web-filter": "sk-web"}  # a key per test: Langfuse keeps
# the first client of a key, with its exporter pointing at that test's inbox


@pytest.fixture
def inbox(tmp_path: Path) -> Iterator[Inbox]:
    with Inbox(tmp_path / "inbox.sqlite3", port=0, keys=KEYS, announce=None) as running:
        yield running


@pytest.fixture
def browser() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.add_argument("--window-size=1400,1000")
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.implicitly_wait(5)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        yield driver
    finally:
        driver.quit()


def client_for(inbox: Inbox, public_key: str) -> Any:
    """A client built by the middleware, exporting to ``inbox`` with ``public_key``."""
    client = build_client(
        langfuse_public_key=public_key,
        langfuse_secret_key=KEYS[public_key],
        langfuse_host=inbox.base_url,
        tracer_provider=TracerProvider(),
    )
    assert client is not None
    return client


def turn(client: Any, thread: str, message: str, user: str | None) -> None:
    """One request through the middleware, exported by the real SDK to the inbox."""
    headers = {"x-conversation-id": thread, "x-tenant-id": "acme"}
    if user:
        headers["x-user-id"] = user
    response = asyncio.run(
        post(make_app(client), f"/chat/{thread}", json={"message": message}, headers=headers)
    )
    assert response.status_code == 200
    client.flush()


def test_threads_to_trace_with_its_violation_and_a_new_trace_arriving(
    inbox: Inbox, browser: Any
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    client = client_for(inbox, "pk-web")
    turn(client, "thread-web", "where is my parcel?", "alice")
    turn(client, "thread-web", "and my refund?", None)  # no user: a contract violation

    browser.get(f"{inbox.base_url}/")
    row = browser.find_element(By.XPATH, "//tr[td/a[text()='thread-web']]")
    cells = [cell.text for cell in row.find_elements(By.TAG_NAME, "td")]
    assert cells[1:5] == ["alice", "acme", "support-agent", "2"], cells
    assert cells[6] == "1", cells  # one violation in the thread
    browser.save_screenshot(str(ARTIFACTS / "1-threads.png"))

    row.find_element(By.LINK_TEXT, "thread-web").click()
    turns = browser.find_elements(By.CSS_SELECTOR, "a.turn")
    assert len(turns) == 2
    assert "where is my parcel?" in browser.page_source
    browser.save_screenshot(str(ARTIFACTS / "2-thread.png"))

    turns[1].click()
    violations = [v.text for v in browser.find_elements(By.CSS_SELECTOR, ".violation")]
    assert any("user" in v and "user.id" in v for v in violations), violations
    spans = browser.find_elements(By.CSS_SELECTOR, "details.span")
    assert spans[0].find_element(By.CSS_SELECTOR, ".name").text == "support-agent"
    assert len(spans) >= 2  # the root and the LLM call under it
    spans[0].find_element(By.TAG_NAME, "summary").click()
    assert "session.id" in spans[0].find_element(By.TAG_NAME, "table").text
    browser.save_screenshot(str(ARTIFACTS / "3-trace.png"))

    browser.get(f"{inbox.base_url}/")
    browser.execute_script("window.notReloaded = true")
    turn(client, "thread-new", "a new conversation", "bob")
    WebDriverWait(browser, 10).until(
        lambda driver: driver.find_elements(By.LINK_TEXT, "thread-new")
    )
    assert browser.execute_script("return window.notReloaded") is True
    browser.save_screenshot(str(ARTIFACTS / "4-new-trace.png"))


def test_threads_filter_by_user(inbox: Inbox, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    client = client_for(inbox, "pk-web-filter")
    turn(client, "thread-alice", "hi", "alice")
    turn(client, "thread-bob", "hi", "bob")
    browser.get(f"{inbox.base_url}/?user=bob")
    links = [a.text for a in browser.find_elements(By.CSS_SELECTOR, "a.thread")]
    assert links == ["thread-bob"]
