"""The dashboard in a real headless Chromium (Debian's chromium + chromium-driver, driven by
selenium): a real local swarm (opentracker, three daemons), the real CLI's one-time link."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from llamashare.daemon.client import DaemonClient, start_daemon
from llamashare.daemon.served import read_served
from llamashare.daemon.submit import release_status
from llamashare.manifests.create import ReleaseInfo, create_release, write_release
from llamashare.manifests.manifest import BaseRef, manifest_id
from llamashare.store import Store
from tests.helpers import cli
from tests.peers import Tracker, require

pytestmark = pytest.mark.slow

DOCS = Path(__file__).resolve().parent.parent / "docs"
UPLOAD_LIMIT = 256 * 1024  # node a's uplink: slow enough to watch its ratio climb


@pytest.fixture
def browser(tmp_path: Path) -> Iterator:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = require("chromium")
    # No sandbox (tests run as root); no background traffic: this machine's network is closed.
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium'}",
        "--window-size=1000,1100",
        "--force-device-scale-factor=1",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # to check the page logs no error
    driver = webdriver.Chrome(service=Service(require("chromedriver")), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def wait_for(what: str, check: Callable[[], object], timeout: float = 30.0) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"not seen within {timeout:.0f}s: {what}")


def card_text(driver, name: str, field: str) -> str:
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

    try:
        return driver.find_element("css selector", f'article[data-name="{name}"] .{field}').text
    except (NoSuchElementException, StaleElementReferenceException):
        return ""


def _served_models_are_listed(browser, home) -> None:
    """`llamashare serve` of the same home shows on the page: its models, a request's work, the
    link to its own page; and it is gone once the server stops."""
    served = subprocess.Popen(
        [sys.executable, "-m", "llamashare", "--home", str(home.root), "serve", "sample-llama", "--port", "0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        row = 'li.served-model[data-id="sample-llama"]'

        def text() -> str:
            from selenium.common.exceptions import StaleElementReferenceException

            try:  # the list is redrawn each second: an element found may be gone when read
                found = browser.find_elements("css selector", row)
                return found[0].text if found else ""
            except StaleElementReferenceException:
                return ""

        wait_for(
            "the served model", lambda: text() == "sample-llama · not loaded · 0 running · 0 waiting · 0 decode steps"
        )
        (server,) = read_served(home.root)
        assert server.pid == served.pid and server.url.startswith("http://127.0.0.1:")

        def href() -> str:
            from selenium.common.exceptions import StaleElementReferenceException

            try:
                return browser.find_element("css selector", "#served a").get_attribute("href") or ""
            except StaleElementReferenceException:
                return ""

        wait_for("the link to the server's page", lambda: href() == server.url + "/")
        body = json.dumps({"model": "sample-llama", "prompt": "Hello", "max_tokens": 4, "temperature": 0}).encode()
        request = urllib.request.Request(server.url + "/v1/completions", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as answer:
            assert json.loads(answer.read())["usage"]["completion_tokens"] >= 1
        wait_for(
            "its work",
            lambda: text().startswith("sample-llama · loaded · 0 running · 0 waiting · ") and " 0 decode" not in text(),
        )
    finally:
        served.send_signal(signal.SIGINT)
        served.wait(30)
    wait_for(
        "the server gone from the page", lambda: browser.find_element("css selector", "#served").get_attribute("hidden")
    )
    assert read_served(home.root) == []


def test_dashboard_shows_a_seeding_release_and_its_controls_work(
    tmp_path: Path, homes, sample_model: Path, browser
) -> None:
    from selenium.webdriver.common.by import By

    tracker = Tracker(tmp_path / "tracker")
    try:
        m, torrent = create_release(
            sample_model, ReleaseInfo(name="sample-llama", license="Apache-2.0", trackers=((tracker.http,),)), 64 * 1024
        )
        tracker.allow(m.torrent.info_hash_v1, m.torrent.info_hash_v2)
        manifest = tmp_path / "sample-llama.toml"
        write_release(m, torrent, manifest)
        publisher, node_a, node_b = homes("publisher"), homes("a", f"upload_limit = {UPLOAD_LIMIT}\n"), homes("b")
        assert cli(publisher, "seed", str(manifest), "--dir", str(sample_model)).returncode == 0
        # a: fetch into its store through the tracker, convert + quantize, keep seeding (target 5).
        p = cli(node_a, "fetch", str(manifest), "--ratio", "5", "--timeout", "60", "-q", timeout=300)
        assert p.returncode == 0, p.stderr
        assert cli(publisher, "stop", "sample-llama").returncode == 0  # from now on only a has it
        # A delta on it, in a's store only (not fetched): its card names the base.
        delta_src = tmp_path / "delta"
        delta_src.mkdir()
        (delta_src / "weights.bin").write_bytes(b"d" * 1000)
        base_id = manifest_id(Store(node_a.models_dir).get("sample-llama").manifest())
        delta, _ = create_release(
            delta_src, ReleaseInfo(name="sample-delta", license="MIT", base=BaseRef("sample-llama", base_id))
        )
        Store(node_a.models_dir).add(delta)

        # The one-time link from the real CLI signs the browser in; a second use is refused.
        link = cli(node_a, "dashboard").stdout.strip()
        assert link.startswith("http://127.0.0.1:") and "/login?token=" in link
        browser.get(link)
        wait_for("the release card", lambda: card_text(browser, "sample-llama", "state") == "seeding")
        cookie = next(c for c in browser.get_cookies() if c["name"].startswith("llamashare-"))
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        assert "Q4_K_M.gguf" in card_text(browser, "sample-llama", "ggufs")  # what fetch built is listed
        assert "Apache-2.0" in card_text(browser, "sample-llama", "meta")
        base = wait_for("the delta's base", lambda: card_text(browser, "sample-delta", "base"))
        assert base == f"delta on sample-llama · base license Apache-2.0 · base manifest {base_id[:12]}…", base
        assert card_text(browser, "sample-llama", "base") == ""  # not a delta: no line
        assert card_text(browser, "sample-delta", "controls") == ""  # not in the daemon: nothing to control
        _served_models_are_listed(browser, node_a)

        # b downloads from a alone: a's ratio climbs on the page, second by second.
        client_b = start_daemon(node_b)
        client_b.call("POST", "/releases", {"manifest": manifest.read_text(), "dir": str(tmp_path / "b"), "ratio": 0})
        ratios: list[float] = []

        def climbed() -> bool:
            text = card_text(browser, "sample-llama", "ratio").split(" / ")[0]
            if text and (not ratios or float(text) > ratios[-1]):
                ratios.append(float(text))
            return len(ratios) >= 4

        wait_for("a's ratio climbing on the page", climbed)
        assert ratios == sorted(ratios) and ratios[-1] > ratios[0] and ratios[-1] < 0.9, ratios
        wait_for(
            "the rate chart drawn",
            lambda: browser.execute_script("return document.querySelector('#total-chart').toDataURL().length > 3000"),
        )
        DOCS.mkdir(exist_ok=True)
        browser.save_screenshot(str(DOCS / "dashboard.png"))

        # A new ratio target typed into the page stops a's seeding once reached.
        target = round(ratios[-1] + 0.2, 2)
        box = browser.find_element(By.CSS_SELECTOR, 'article[data-name="sample-llama"] .ratio-input')
        box.clear()
        box.send_keys(str(target))
        browser.find_element(By.CSS_SELECTOR, 'article[data-name="sample-llama"] .apply').click()
        wait_for("done seeding on the page", lambda: card_text(browser, "sample-llama", "state") == "done seeding", 60)
        st = release_status(DaemonClient(node_a), "sample-llama")
        assert st.state == "done seeding" and st.ratio_target == target
        assert target <= st.ratio < target + 0.25, st.ratio  # it stopped at the target, not at b's end
        assert release_status(client_b, "sample-llama").progress < 1  # b is left waiting: a stopped

        # Pause and resume through the page.
        pause = browser.find_element(By.CSS_SELECTOR, 'article[data-name="sample-llama"] .pause')
        pause.click()
        wait_for("paused", lambda: card_text(browser, "sample-llama", "state") == "paused")
        assert release_status(DaemonClient(node_a), "sample-llama").paused is True
        pause.click()
        wait_for("resumed", lambda: card_text(browser, "sample-llama", "state") == "done seeding")

        # Remove (confirmed in the browser's dialog): the daemon forgets it, the store keeps it.
        browser.find_element(By.CSS_SELECTOR, 'article[data-name="sample-llama"] .remove').click()
        browser.switch_to.alert.accept()
        wait_for("removed from the daemon", lambda: "not in the daemon" in card_text(browser, "sample-llama", "step"))
        assert DaemonClient(node_a).status().releases == []

        # Add it back by pasting its manifest: the files are there, so it is verified and seeds.
        browser.find_element(By.CSS_SELECTOR, "#add summary").click()
        browser.find_element(By.ID, "add-text").send_keys(manifest.read_text())
        browser.find_element(By.CSS_SELECTOR, "#add-form button[type=submit]").click()
        wait_for("added back", lambda: card_text(browser, "sample-llama", "state") in ("seeding", "done seeding"))

        # Phone width: nothing sticks out sideways.
        browser.set_window_size(390, 844)
        time.sleep(0.5)
        assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
        browser.save_screenshot(str(tmp_path / "phone.png"))
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == [], errors  # no script error, no refused request, no missing file
    finally:
        tracker.close()


def test_the_page_without_signing_in(homes, browser) -> None:
    home = homes("n")
    client = start_daemon(home)
    base = client.base.removesuffix("/api/v1")
    browser.get(base + "/")
    assert "Not signed in" in browser.find_element("tag name", "h1").text
    link = cli(home, "dashboard").stdout.strip()
    browser.get(link)
    # Signed in: the page reaches this daemon's event stream and renders its (empty) state.
    pid = client.status().node["pid"]
    wait_for("the page live on this daemon", lambda: f"pid {pid}" in browser.find_element("id", "node").text)
    assert browser.find_element("tag name", "h1").text == "llamashare"
    wait_for("the live badge", lambda: browser.find_element("id", "live").text == "live")
    empty = browser.find_element("id", "empty")
    assert empty.is_displayed() and "No releases yet" in empty.text
    assert browser.find_element("id", "count").text == "0 releases"
    assert browser.find_elements("css selector", "#releases article") == []
    browser.get(link)  # a login link works once
    assert "used already" in browser.find_element("tag name", "h1").text
