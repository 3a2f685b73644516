"""The chat page of `llamashare serve` in a real headless Chromium (Debian's chromium and
chromium-driver through selenium), against the real server and model (SmolLM2)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from llamashare.serve.models import Models
from llamashare.serve.server import Running, in_thread
from tests.test_dashboard_browser import browser, wait_for  # noqa: F401  (browser is a fixture)
from tests.test_serve import N_CTX, offer

pytestmark = pytest.mark.slow


@pytest.fixture
def served(smollm2: Path) -> Iterator[tuple[Running, Models]]:
    models = Models(offer("smollm2", smollm2), n_ctx=N_CTX, parallel=2)
    running = in_thread(models, api_key="page-key")
    yield running, models
    running.stop()


def test_chat_page_lists_models_streams_a_reply_and_shows_requests(served, browser) -> None:  # noqa: F811
    from selenium.webdriver.common.by import By

    running, models = served
    browser.get(running.url + "/")
    browser.find_element(By.ID, "key").send_keys("page-key")
    row = 'tr[data-model="smollm2"]'
    wait_for("the model listed", lambda: browser.find_elements(By.CSS_SELECTOR, row))
    assert [o.text for o in browser.find_elements(By.CSS_SELECTOR, "#model option")] == ["smollm2"]
    browser.find_element(By.ID, "message").send_keys("Name three planets.")
    browser.find_element(By.ID, "send").click()
    reply = 'li.assistant[data-done="yes"]'
    done = wait_for("the reply streamed to its end", lambda: browser.find_elements(By.CSS_SELECTOR, reply), 120)
    text = done[0].text  # type: ignore[index]
    assert len(text) > 10
    steps = wait_for(
        "decode steps counted",
        lambda: int(browser.find_elements(By.CSS_SELECTOR, f"{row} td")[4].text or 0),
    )
    assert steps and models.get("smollm2").scheduler.steps >= 5
    assert browser.find_element(By.CSS_SELECTOR, f"{row} td:nth-child(2)").text == "yes"
    assert browser.find_element(By.ID, "problem").text == ""
    # the page's first status poll runs before the key is typed: its 401 is the server being right
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE" and "(Unauthorized)" not in e["message"]]
    assert not errors, errors


def test_chat_page_says_when_the_key_is_wrong(served, browser) -> None:  # noqa: F811
    from selenium.webdriver.common.by import By

    running, _ = served
    browser.get(running.url + "/")
    browser.find_element(By.ID, "key").send_keys("wrong")
    wait_for("the refusal shown", lambda: "invalid API key" in browser.find_element(By.ID, "problem").text)
