"""The dashboard's API: login links and cookie sessions, Host/Origin rules, the overview and its
live stream, pause/resume, adding into the store. Real daemons, plain HTTP (urllib)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest

from llamashare.daemon.client import DaemonClient, start_daemon, stop_daemon
from llamashare.daemon.dashboard import KEY_HEADER, LOGIN_TTL, SESSION_TTL, Logins, RateHistory, overview
from llamashare.daemon.submit import FetchOptions, fetch, release_status, seed
from llamashare.manifests.create import ReleaseInfo, create_release, write_release
from llamashare.p2p.status import ReleaseStatus, State
from llamashare.store import Store
from tests.helpers import Homes, cli
from tests.test_swarm import make_payload

# ------------------------------------------------------------------ pure parts


def test_a_login_link_works_once_and_expires() -> None:
    now = [1000.0]
    logins = Logins(clock=lambda: now[0])
    token = logins.issue()
    redeemed = logins.redeem(token)
    assert redeemed is not None
    session, key = redeemed
    assert logins.valid(session) and logins.valid(session, key, need_key=True)
    assert not logins.valid(session, None, need_key=True) and not logins.valid(session, "guess", need_key=True)
    assert logins.redeem(token) is None  # once
    late = logins.issue()
    now[0] += LOGIN_TTL + 1
    assert logins.redeem(late) is None  # expired
    assert logins.redeem("made-up") is None and not logins.valid("made-up") and not logins.valid(None)
    now[0] += SESSION_TTL
    assert not logins.valid(session)  # sessions end too


def test_rate_history_keeps_the_last_samples() -> None:
    history = RateHistory(size=3)
    for t in range(5):
        history.add(
            float(t),
            [
                _daemon_row("a", "seeding", up=t, down=2 * t),
                _daemon_row("b", "seeding", up=1, down=0),
            ],
        )
    assert [s["t"] for s in history.samples] == [2.0, 3.0, 4.0]
    assert history.samples[-1]["up"] == 5 and history.samples[-1]["down"] == 8
    assert history.samples[-1]["releases"]["a"] == [4, 8]


def _daemon_row(name: str, state: str, up: int = 0, down: int = 0) -> ReleaseStatus:
    """A release as the node reports it, with only what the test varies set."""
    blank = ReleaseStatus.unrestorable(name, "")
    return replace(blank, state=State(state), error=None, upload_rate=up, download_rate=down)


def test_overview_merges_daemon_and_store_and_names_one_state() -> None:
    gguf = [{"file": "x.Q4_K_M.gguf", "size": 10, "step": "quantize:Q4_K_M"}]
    stored = {
        "converting": {
            "version": "1",
            "license": "MIT",
            "size": 5,
            "ggufs": [],
            "default_gguf": None,
            "activity": {"step": "convert", "done": 1, "total": 2},
        },
        "seeding": {"version": "1", "license": "MIT", "size": 5, "ggufs": gguf, "default_gguf": None, "activity": None},
        "only-stored": {
            "version": "2",
            "license": "MIT",
            "size": 5,
            "ggufs": gguf,
            "default_gguf": None,
            "activity": None,
        },
        "nothing-built": {
            "version": "2",
            "license": "MIT",
            "size": 5,
            "ggufs": [],
            "default_gguf": None,
            "activity": None,
        },
    }
    daemon = [
        _daemon_row("converting", "seeding"),
        _daemon_row("seeding", "seeding"),
        _daemon_row("fetching", "downloading"),
        _daemon_row("no-seed", "complete"),
    ]
    rows = {r["name"]: r for r in overview(daemon, stored)}
    assert {n: r["state"] for n, r in rows.items()} == {
        "converting": "converting",  # the pipeline's step is the headline; seeding shows in its rates
        "seeding": "seeding",
        "fetching": "fetching",
        "no-seed": "verified",
        "only-stored": "ready",
        "nothing-built": "stored",
    }
    assert rows["converting"]["daemon_state"] == "seeding" and rows["seeding"]["ggufs"] == gguf
    assert rows["only-stored"]["in_daemon"] is False and rows["only-stored"]["daemon_state"] is None


# ------------------------------------------------------------------ a real daemon


def request(url: str, method: str = "GET", body: object = None, headers: dict | None = None) -> tuple[int, dict, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        url,
        data=data,
        method=method,
        headers={**({"Content-Type": "application/json"} if data is not None else {}), **(headers or {})},
    )
    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def sign_in(client: DaemonClient) -> tuple[str, str, str]:
    """The daemon's root URL, a session cookie ("name=value") and the page key, the way a
    browser gets them: the cookie from the link's answer, the key from the URL fragment it
    redirects to (which a browser never sends to any server)."""
    link = client.call("POST", "/login-links")["url"]
    status, headers, _ = request(link)
    assert status == 303 and headers["Location"].startswith("/#key="), headers["Location"]
    cookie = headers["Set-Cookie"]
    for attribute in ("HttpOnly", "SameSite=Strict", "Path=/"):
        assert attribute in cookie, cookie
    return link.split("/login")[0], cookie.split(";")[0], headers["Location"].removeprefix("/#key=")


@pytest.mark.slow
def test_sign_in_and_what_a_cookie_may_do(homes: Homes) -> None:
    home = homes("n")
    client = start_daemon(home)
    root = client.base.removesuffix("/api/v1")
    origin = {"Origin": root}

    status, headers, body = request(root + "/")
    assert status == 401 and b"llamashare dashboard" in body  # the page says how to sign in
    assert cli(home, "dashboard").stdout.startswith(root + "/login?token=")  # the CLI prints a link

    link = client.call("POST", "/login-links")["url"]
    assert request(link)[0] == 303
    assert request(link)[0] == 403  # used
    assert request(root + "/login?token=guess")[0] == 403

    root, cookie, key = sign_in(client)
    assert cookie.startswith(f"llamashare-{client.info['api_port']}=")  # one cookie per daemon port
    status, headers, body = request(root + "/", headers={"Cookie": cookie})
    assert status == 200 and b"/static/dashboard.js" in body
    assert "default-src 'none'" in headers["Content-Security-Policy"] and headers["X-Content-Type-Options"] == "nosniff"
    status, _, body = request(root + "/api/v1/overview", headers={"Cookie": cookie, KEY_HEADER: key})
    assert status == 200 and json.loads(body)["releases"] == []
    assert request(root + "/static/dashboard.js")[0] == 200  # the package's own files are public
    assert request(root + "/static/..%2fapi.py")[0] == 404
    assert request(root + "/static/nothing.js")[0] == 404

    # The cookie alone opens the page but not the API: cookies go to every port of 127.0.0.1,
    # so another local server may receive it; without the page key it is worth nothing.
    assert request(root + "/api/v1/overview", headers={"Cookie": cookie})[0] == 401
    assert request(root + "/api/v1/overview", headers={"Cookie": cookie, KEY_HEADER: "guess"})[0] == 401
    assert request(root + "/api/v1/events", headers={"Cookie": cookie})[0] == 401
    stolen = {"Cookie": cookie, "Origin": root, "Content-Type": "application/json"}
    assert request(root + "/api/v1/releases", "POST", {"manifest": "x", "seed_forever": True}, stolen)[0] == 401

    # A cookie reads; a change needs the page's own Origin (a cross-site form cannot send it).
    assert request(root + "/api/v1/releases/x", "PATCH", {}, {"Cookie": cookie, KEY_HEADER: key})[0] == 403
    assert (
        request(
            root + "/api/v1/releases/x",
            "PATCH",
            {},
            {"Cookie": cookie, KEY_HEADER: key, "Origin": "http://evil.example"},
        )[0]
        == 403
    )
    assert (
        request(root + "/api/v1/releases/x", "PATCH", {}, {"Cookie": cookie, KEY_HEADER: key, **origin})[0] == 404
    )  # unknown
    assert (
        request(root + "/api/v1/login-links", "POST", {}, {"Cookie": cookie, KEY_HEADER: key, **origin})[0] == 403
    )  # token only
    assert (
        request(root + "/api/v1/overview", headers={"Cookie": cookie, KEY_HEADER: key, "Host": "evil.example"})[0]
        == 403
    )  # rebinding
    assert request(root + "/api/v1/overview", headers={"Cookie": "llamashare-1=forged"})[0] == 401
    bad = request(
        root + "/api/v1/releases",
        "POST",
        None,
        {"Cookie": cookie, KEY_HEADER: key, **origin, "Content-Type": "application/json"},
    )
    assert bad[0] == 400

    # Sessions live in the daemon: a restarted daemon asks for a new link.
    stop_daemon(home)
    client = start_daemon(home)
    root = client.base.removesuffix("/api/v1")
    assert request(root + "/api/v1/overview", headers={"Cookie": cookie, KEY_HEADER: key})[0] == 401


@pytest.mark.slow
def test_pause_resume_and_add_into_the_store(tmp_path: Path, homes: Homes) -> None:
    src = tmp_path / "publisher" / "rel"
    make_payload(src, {"w.bin": 1_500_000, "config.json": 300})
    m, torrent = create_release(src, ReleaseInfo(name="rel", license="MIT"), 64 * 1024)
    write_release(m, torrent, tmp_path / "rel.toml")
    publisher, node = homes("publisher"), homes("node")
    seed(publisher, m, FetchOptions(directory=src))
    peer = f"127.0.0.1:{DaemonClient(publisher).info['listen_port']}"
    client = start_daemon(node)
    root, cookie, key = sign_in(client)
    auth = {"Cookie": cookie, KEY_HEADER: key, "Origin": root}

    # Added from the page: no folder given, so the files go to the store, and it is listed there.
    text = (tmp_path / "rel.toml").read_text()
    status, _, body = request(root + "/api/v1/releases", "POST", {"manifest": text, "peers": [peer], "ratio": 3}, auth)
    assert status == 201, body
    entry = Store(node.models_dir).get("rel")
    deadline = time.monotonic() + 60
    while release_status(client, "rel").state != "seeding" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert (entry.source_dir / "w.bin").read_bytes() == (src / "w.bin").read_bytes()
    row = json.loads(request(root + "/api/v1/overview", headers=auth)[2])["releases"][0]
    assert row["state"] == "seeding" and row["in_daemon"] and row["ratio_target"] == 3

    # Pause: saved, so a restarted daemon keeps it paused; resume hands it back to seeding.
    assert request(root + "/api/v1/releases/rel", "PATCH", {"paused": "yes"}, auth)[0] == 400
    assert request(root + "/api/v1/releases/rel", "PATCH", {"paused": True}, auth)[0] == 200
    assert release_status(client, "rel").state == "paused"
    stop_daemon(node)
    client = start_daemon(node)
    time.sleep(0.5)
    assert release_status(client, "rel").state == "paused" and release_status(client, "rel").paused
    client.call("PATCH", "/releases/rel", {"paused": False})
    deadline = time.monotonic() + 30
    while release_status(client, "rel").state != "seeding" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert release_status(client, "rel").state == "seeding"

    # A fetch that meets a paused release says so; fetching again resumes it.
    client.call("PATCH", "/releases/rel", {"paused": True})
    st = fetch(node, m, FetchOptions(directory=entry.source_dir, timeout=30))  # asking again = resume
    assert st.state in ("seeding", "done seeding") and not st.paused


@pytest.mark.slow
def test_events_stream_history_then_updates_and_shows_running_steps(tmp_path: Path, homes: Homes) -> None:
    src = tmp_path / "rel"
    make_payload(src, {"w.bin": 100_000})
    m, torrent = create_release(src, ReleaseInfo(name="rel", license="MIT"), 16 * 1024)
    home = homes("n")
    client = start_daemon(home)
    entry = Store(home.models_dir).add(m)
    entry.set_activity("quantize", "quantize to Q4_K_M", 25, 100)  # this test's pid: a live step
    time.sleep(1.5)  # at least one history sample
    root, cookie, key = sign_in(client)
    req = urllib.request.Request(root + f"/api/v1/events?key={key}", headers={"Cookie": cookie})
    events = []
    with urllib.request.urlopen(req, timeout=10) as stream:
        assert stream.headers["Content-Type"].startswith("text/event-stream")
        start = time.monotonic()
        for line in stream:
            if line.startswith(b"data: "):
                events.append(json.loads(line[6:]))
            if len(events) == 3:
                break
        elapsed = time.monotonic() - start
    assert "history" in events[0] and len(events[0]["history"]) >= 1
    assert all("history" not in e for e in events[1:])  # later events carry only the present
    assert 1.5 <= elapsed < 6, elapsed  # one a second, not a busy loop
    row = events[-1]["releases"][0]
    assert row["name"] == "rel" and row["state"] == "quantizing" and row["activity"]["done"] == 25
    assert not row["in_daemon"]

    # A step whose command died (pid gone) is not shown as running.
    doc = json.loads(entry.activity_path.read_text())
    doc["pid"] = 2**22 + 12345  # above pid_max's default: no such process
    entry.activity_path.write_text(json.dumps(doc))
    assert entry.activity() is None
    assert (
        json.loads(request(root + "/api/v1/overview", headers={"Cookie": cookie, KEY_HEADER: key})[2])["releases"][0][
            "state"
        ]
        == "stored"
    )
