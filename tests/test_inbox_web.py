"""The inbox's web view in a real headless browser (Debian's chromium through Selenium): the
threads, a thread's turns, a trace's waterfall with its contract violation, a span's
attributes on click, and a new trace arriving without a reload. Screenshots are kept in
``test-artifacts/web/``."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from opentelemetry.sdk.trace import TracerProvider

from lemma_middleware import LemmaMiddleware, build_client
from lemma_middleware.inbox.server import Inbox

from .apps.asgi_apps import make_app

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
if not (CHROMIUM and CHROMEDRIVER):  # a missing browser fails these tests, never skips them
    if os.environ.get("LEMMA_SKIP_BROWSER_TESTS") != "1":
        pytest.fail(
            "the web-view tests need Debian's chromium and chromium-driver (apt-get install "
            "chromium chromium-driver; .ci/run does), or LEMMA_SKIP_BROWSER_TESTS=1 to skip them",
            pytrace=False,
        )
    pytest.skip("LEMMA_SKIP_BROWSER_TESTS=1", allow_module_level=True)
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "web"
KEYS = {
    "pk-web": "sk-web",
    "pk-web-filter": "sk-web",
    "pk-web-generation": "sk-web",
}  # a key per test: Langfuse keeps
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


def turn(
    client: Any,
    thread: str,
    message: str,
    user: str | None,
    *,
    path: str = "/chat/{thread}",
    app: Any = None,
) -> int:
    """One request through the middleware, exported by the real SDK to the inbox."""
    headers = {"x-conversation-id": thread, "x-tenant-id": "acme"}
    if user:
        headers["x-user-id"] = user

    async def send() -> int:
        transport = httpx.ASGITransport(app=app or make_app(client), raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            response = await http.post(
                path.format(thread=thread), json={"message": message}, headers=headers
            )
        return response.status_code

    status = asyncio.run(send())
    client.flush()
    return status


def generation_app(client: Any) -> FastAPI:
    """An agent whose LLM call is a generation with a model and token usage."""
    app = FastAPI()

    @app.post("/chat/{thread_id}")
    async def chat(thread_id: str, body: dict[str, Any]) -> dict[str, Any]:
        messages = [{"role": "user", "content": body["message"]}]
        with client.start_as_current_observation(
            name="openai-chat", as_type="generation", model="gpt-4o-mini", input=messages
        ) as generation:
            generation.update(output="It ships today.", usage_details={"input": 12, "output": 5})
        return {"answer": "It ships today."}

    app.add_middleware(LemmaMiddleware, langfuse=client, agent_name="support-agent")
    return app


def boxes(browser: Any, selector: str) -> list[dict[str, float]]:
    """The page rectangles of the elements ``selector`` finds."""
    found: list[dict[str, float]] = browser.execute_script(
        "return [...document.querySelectorAll(arguments[0])].map(e => {"
        "const r = e.getBoundingClientRect(); return {x: r.x, width: r.width}; })",
        selector,
    )
    return found


def test_threads_conversation_and_trace_pages_with_a_new_trace_arriving(
    inbox: Inbox, browser: Any
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    client = client_for(inbox, "pk-web")
    assert turn(client, "thread-web", "where is my parcel?", "alice") == 200
    assert turn(client, "thread-web", "and my refund?", None) == 200  # no user: a violation
    assert turn(client, "thread-web", "hurry", "alice", path="/boom") == 500

    browser.get(f"{inbox.base_url}/")
    row = browser.find_element(By.XPATH, "//tr[td/a[text()='thread-web']]")
    cells = [cell.text for cell in row.find_elements(By.TAG_NAME, "td")]
    assert cells[1:6] == ["alice", "acme", "support-agent", "3", "1"], cells
    assert cells[6] == "1", cells  # one contract violation in the thread
    assert cells[7] == "hurry", cells  # what was said last
    browser.save_screenshot(str(ARTIFACTS / "1-threads.png"))

    row.find_element(By.LINK_TEXT, "thread-web").click()
    cards = browser.find_elements(By.CSS_SELECTOR, ".turn-card")
    assert len(cards) == 3
    first, _, failed = cards
    assert first.find_element(By.CSS_SELECTOR, ".said.user").text.endswith("where is my parcel?")
    assert first.find_element(By.CSS_SELECTOR, ".said.agent").text.endswith("WHERE IS MY PARCEL?")
    assert first.find_element(By.CSS_SELECTOR, ".status").text == "200"
    assert first.find_element(By.CSS_SELECTOR, ".duration").text.endswith("ms")
    assert failed.find_element(By.CSS_SELECTOR, ".status").text == "ERROR"  # no response sent
    assert (
        "ValueError: model exploded" in failed.find_element(By.CSS_SELECTOR, ".error-message").text
    )
    assert "contract violation" in cards[1].text
    browser.save_screenshot(str(ARTIFACTS / "2-thread.png"))

    first.find_element(By.CSS_SELECTOR, "a.turn").click()
    summary = {
        name: browser.find_element(By.CSS_SELECTOR, f".summary dd.{name}").text
        for name in ("agent", "thread", "user", "tenant", "status", "duration")
    }
    assert summary["agent"] == "support-agent" and summary["thread"] == "thread-web"
    assert (summary["user"], summary["tenant"], summary["status"]) == ("alice", "acme", "200")
    recorded_input = browser.find_element(By.CSS_SELECTOR, "pre.trace-input").text
    assert recorded_input == '{\n  "message": "where is my parcel?"\n}'  # pretty JSON
    assert "WHERE IS MY PARCEL?" in browser.find_element(By.CSS_SELECTOR, "pre.trace-output").text
    assert browser.find_element(By.CSS_SELECTOR, "h2 + p.muted").text == "conformant"

    tracks = boxes(browser, ".wf-row .track")  # the ruler's and every span's
    assert len(tracks) >= 3
    assert {round(t["x"]) for t in tracks} == {round(tracks[0]["x"])}  # one shared axis
    assert {round(t["width"]) for t in tracks} == {round(tracks[0]["width"])}
    bars = boxes(browser, ".wf-row.span .bar")
    root_bar, child_bar = bars[0], bars[1]
    assert abs(root_bar["x"] - tracks[0]["x"]) < 1 and root_bar["width"] > 0.99 * tracks[0]["width"]
    assert child_bar["x"] >= root_bar["x"] and child_bar["width"] < root_bar["width"]
    ticks = [t.text for t in browser.find_elements(By.CSS_SELECTOR, ".ruler .tick")]
    assert ticks[0] == "0.0 ms" and len(ticks) == 5 and all(t.endswith("ms") for t in ticks)

    rows = browser.find_elements(By.CSS_SELECTOR, ".wf-row.span")
    assert rows[0].find_element(By.CSS_SELECTOR, ".name").text == "support-agent"
    rows[1].click()
    panel = browser.find_element(By.ID, "panel")
    headings = [h.text for h in panel.find_elements(By.TAG_NAME, "h4")]
    assert headings[0] == "Input" and "Output" in headings and headings[-1] == "Attributes"
    assert "langfuse.observation.type" in panel.find_element(By.CSS_SELECTOR, "pre.attributes").text
    browser.save_screenshot(str(ARTIFACTS / "3-trace.png"))

    browser.get(f"{inbox.base_url}/")
    browser.execute_script("window.notReloaded = true")
    assert turn(client, "thread-new", "a new conversation", "bob") == 200
    WebDriverWait(browser, 10).until(
        lambda driver: driver.find_elements(By.LINK_TEXT, "thread-new")
    )
    assert browser.execute_script("return window.notReloaded") is True
    browser.save_screenshot(str(ARTIFACTS / "4-new-trace.png"))


def test_a_generation_shows_its_model_and_token_usage(inbox: Inbox, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    client = client_for(inbox, "pk-web-generation")
    app = generation_app(client)
    assert turn(client, "thread-gen", "when does it ship?", "carol", app=app) == 200
    inbox.store.index_pending()  # as the indexer thread does moments later
    (thread,) = inbox.store.threads()
    (row,) = inbox.store.turns(thread.thread_id)
    browser.get(f"{inbox.base_url}/traces/{row.trace_id}")
    generation = browser.find_element(
        By.XPATH, "//div[contains(@class, 'wf-row')][.//span[text()='openai-chat']]"
    )
    generation.click()
    panel = browser.find_element(By.ID, "panel")
    model = panel.find_element(By.CSS_SELECTOR, ".model").text
    assert "gpt-4o-mini" in model and "12" in model and "5" in model, model
    assert '"role": "user"' in panel.find_element(By.CSS_SELECTOR, "pre.input").text
    browser.save_screenshot(str(ARTIFACTS / "5-generation.png"))


def test_threads_search_and_filters(inbox: Inbox, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    client = client_for(inbox, "pk-web-filter")
    assert turn(client, "thread-alice", "my parcel is late", "alice") == 200
    assert turn(client, "thread-bob", "hi", "bob") == 200
    assert turn(client, "thread-bob", "now", "bob", path="/boom") == 500

    def shown() -> list[str]:
        return [a.text for a in browser.find_elements(By.CSS_SELECTOR, "a.thread")]

    browser.get(f"{inbox.base_url}/?user=bob")
    assert shown() == ["thread-bob"]
    browser.get(f"{inbox.base_url}/")
    search = browser.find_element(By.NAME, "q")
    search.send_keys("PARCEL")
    search.submit()
    assert shown() == ["thread-alice"]
    browser.get(f"{inbox.base_url}/?errors=1")
    assert shown() == ["thread-bob"]
    browser.save_screenshot(str(ARTIFACTS / "6-filtered.png"))
