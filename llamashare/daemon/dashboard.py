"""The daemon's web page (``llamashare dashboard``): one-time login links, the cookie session
they open, the live overview the page shows, and the page's own files.

Served by the same aiohttp app as the JSON API, under the same Host/Origin rules (see api.py);
every control on the page is a call to the documented API, so the page can do nothing the API
cannot. Nothing is fetched from the internet: the page, its script and its style ship in
``llamashare/daemon/web/`` and charts are drawn on a canvas by that script.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from aiohttp import web

from llamashare.daemon.served import read_served
from llamashare.errors import LlamashareError
from llamashare.manifests.manifest import Manifest
from llamashare.p2p.status import ReleaseStatus
from llamashare.store import Entry, Store

LOGIN_TTL = 300.0  # a login link works once, within five minutes of being printed
SESSION_TTL = 12 * 3600.0  # then the page asks for a new link
#: The header (or, for the event stream, the ``key`` query parameter) carrying the page key.
KEY_HEADER = "X-Llamashare-Key"
HISTORY = 600  # rate samples kept, one a second: the charts show the last ten minutes
EVERY = 1.0  # seconds between samples and between live updates
WEB = Path(__file__).with_name("web")
TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
#: The page loads only its own files and talks only to its own daemon.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
#: The daemon's states, as the page names them (``checking`` is libtorrent reading the files).
SHOWN_STATE = {
    "downloading": "fetching",
    "checking": "verifying",
    "verifying": "verifying",
    "seeding": "seeding",
    "done seeding": "done seeding",
    "paused": "paused",
    "error": "error",
    "complete": "ready",
}
STEP_STATE = {"convert": "converting", "quantize": "quantizing"}


def _digest(secret: str) -> bytes:
    """Secrets are kept hashed: a lookup compares digests, not the secret itself."""
    return hashlib.sha256(secret.encode()).digest()


class Logins:
    """One-time login links and the cookie sessions they open (in memory: a restarted daemon
    asks for a new link, as its API token changes too)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._links: dict[bytes, float] = {}
        self._sessions: dict[bytes, tuple[float, bytes]] = {}  # digest → (expiry, digest of its page key)

    def issue(self) -> str:
        token = secrets.token_urlsafe(32)
        self._links[_digest(token)] = self.clock() + LOGIN_TTL
        return token

    def redeem(self, token: str) -> tuple[str, str] | None:
        """A new session (cookie value, page key) for a link's token, once; None if unknown,
        used or expired. The cookie opens the page; the API also needs the page key, which
        reaches the page in the URL fragment and no other way, so a replayed cookie is not enough."""
        now = self.clock()
        expires = self._links.pop(_digest(token), None)
        self._prune(now)
        if expires is None or expires < now:
            return None
        session, key = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        self._sessions[_digest(session)] = (now + SESSION_TTL, _digest(key))
        return session, key

    def valid(self, session: str | None, key: str | None = None, need_key: bool = False) -> bool:
        if not session:
            return False
        found = self._sessions.get(_digest(session))
        if found is None or found[0] < self.clock():
            return False
        return not need_key or (key is not None and hmac.compare_digest(found[1], _digest(key)))

    def _prune(self, now: float) -> None:
        for key in [k for k, t in self._links.items() if t < now]:
            del self._links[key]
        for key in [k for k, (t, _) in self._sessions.items() if t < now]:
            del self._sessions[key]


class RateHistory:
    """Up/down payload rates, one sample a second: the whole daemon and each release."""

    def __init__(self, size: int = HISTORY) -> None:
        self.samples: deque[dict[str, Any]] = deque(maxlen=size)

    def add(self, now: float, releases: list[ReleaseStatus]) -> None:
        self.samples.append(
            {
                "t": round(now, 1),
                "up": sum(r.upload_rate for r in releases),
                "down": sum(r.download_rate for r in releases),
                "releases": {r.name: [r.upload_rate, r.download_rate] for r in releases},
            }
        )


class StoreView:
    """What the page shows of the model store, read from disk; a release's manifest is parsed
    again only when its file changes (a large release's manifest embeds its torrent)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._manifests: dict[str, tuple[int, dict[str, Any]]] = {}

    def entries(self) -> dict[str, dict[str, Any]]:
        out = {}
        for entry in self.store.entries():
            try:
                out[entry.key] = self._describe(entry)
            except (OSError, LlamashareError):  # being written or removed right now: next time
                continue
        return out

    def _base(self, m: Manifest) -> dict[str, Any] | None:
        """For a delta: the release it applies to, and that one's license if the store has it."""
        if m.base is None:
            return None
        return {"name": m.base.name, "manifest_sha256": m.base.manifest_sha256, "license": self.store.base_license(m)}

    def _describe(self, entry: Entry) -> dict[str, Any]:
        mtime = entry.manifest_path.stat().st_mtime_ns
        cached = self._manifests.get(entry.key)
        if cached is None or cached[0] != mtime:
            m = entry.manifest()
            described = {"version": m.version, "license": m.license_line, "size": m.total_size}
            cached = (mtime, described | {"base": self._base(m)})
            self._manifests[entry.key] = cached
        record = entry.record()
        ggufs = [{"file": p.name, "size": p.stat().st_size, "step": step} for step, p in entry.ggufs().items()]
        return {
            **cached[1],
            "ggufs": ggufs,
            "default_gguf": record.get("default"),
            "activity": entry.activity(),
            "store_dir": str(entry.root),
        }


def overview(releases: list[ReleaseStatus], stored: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per release, whether the daemon has it, the store has it, or both: what it is,
    what the daemon is doing with it, and what the pipeline has made of it."""
    rows = []
    for r in releases:
        s = stored.get(r.name, {})
        rows.append(
            {
                **r.to_json(),
                "ggufs": s.get("ggufs", []),
                "default_gguf": s.get("default_gguf"),
                "activity": s.get("activity"),
                "base": s.get("base"),
                "daemon_state": r.state,
                "in_daemon": True,
                "state": _headline(r.state, s),
            }
        )
    for name, s in sorted(stored.items()):
        if any(r.name == name for r in releases):
            continue
        rows.append(
            {
                "name": name,
                "version": s["version"],
                "license": s["license"],
                "size": s["size"],
                "ggufs": s["ggufs"],
                "default_gguf": s["default_gguf"],
                "activity": s["activity"],
                "base": s.get("base"),
                "daemon_state": None,
                "in_daemon": False,
                "state": _headline(None, s),
            }
        )
    return rows


def _headline(daemon_state: str | None, stored: dict[str, Any]) -> str:
    """The one state a row is known by: a running convert/quantize step first, then transfers,
    then whether a GGUF is there to run."""
    activity = stored.get("activity")
    if activity and activity.get("step") in STEP_STATE:
        return STEP_STATE[activity["step"]]
    shown = SHOWN_STATE.get(daemon_state or "")
    if shown and shown != "ready":
        return shown
    return "ready" if stored.get("ggufs") else ("verified" if shown == "ready" else "stored")


class Dashboard:
    """The page's routes and the state behind them (logins, rate history)."""

    def __init__(self, status: Callable[[], list[ReleaseStatus]], store: Store | None, info: dict, port: int) -> None:
        self.status, self.info, self.port = status, info, port
        self.store = StoreView(store) if store is not None else None
        self.logins = Logins()
        self.history = RateHistory()
        self.cookie = f"llamashare-{port}"  # cookies ignore ports: one name per daemon
        self.closing = asyncio.Event()

    # --------------------------------------------------------------- used by the daemon loop

    def sample(self) -> None:
        self.history.add(time.time(), self.status())

    def close(self) -> None:
        """End the live streams (the daemon is stopping)."""
        self.closing.set()

    def signed_in(self, request: web.Request) -> bool:
        """The cookie opens the page; an API call needs the page key with it as well."""
        key = request.headers.get(KEY_HEADER) or request.query.get("key")
        return self.logins.valid(request.cookies.get(self.cookie), key, need_key=request.path.startswith("/api/"))

    # --------------------------------------------------------------- data

    def snapshot(self, history: bool) -> dict[str, Any]:
        releases = self.status()
        stored = self.store.entries() if self.store is not None else {}
        doc: dict[str, Any] = {
            "node": self.info,
            "time": time.time(),
            "releases": overview(releases, stored),
            "up": sum(r.upload_rate for r in releases),
            "down": sum(r.download_rate for r in releases),
            # what `llamashare serve` processes of this home serve now (daemon.served)
            "served": [asdict(x) for x in read_served(Path(self.info["home"]))] if "home" in self.info else [],
        }
        if history:
            doc["history"] = list(self.history.samples)
        return doc

    # --------------------------------------------------------------- routes

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/", self.page),
            web.get("/login", self.login),
            web.get("/static/{file}", self.static),
            web.post("/api/v1/login-links", self.login_link),
            web.get("/api/v1/overview", self.overview),
            web.get("/api/v1/events", self.events),
        ]

    async def page(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(WEB / "index.html", headers=PAGE_HEADERS)

    async def static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["file"]
        if name not in {p.name for p in WEB.iterdir()} or Path(name).suffix not in TYPES:
            raise web.HTTPNotFound()
        return web.FileResponse(WEB / name, headers={**PAGE_HEADERS, "Content-Type": TYPES[Path(name).suffix]})

    async def login(self, request: web.Request) -> web.Response:
        redeemed = self.logins.redeem(request.query.get("token", ""))
        if redeemed is None:
            return message_page(
                403,
                "This login link was used already or has expired",
                "Run <code>llamashare dashboard</code> for a new one.",
            )
        session, key = redeemed
        response = web.HTTPSeeOther(
            f"/#key={key}", headers={"Referrer-Policy": "no-referrer", "Cache-Control": "no-store"}
        )
        response.set_cookie(self.cookie, session, max_age=int(SESSION_TTL), path="/", httponly=True, samesite="Strict")
        return response

    async def login_link(self, request: web.Request) -> web.Response:
        token = self.logins.issue()
        url = f"http://127.0.0.1:{self.port}/login?token={token}"
        return web.json_response({"url": url, "expires_in": LOGIN_TTL})

    async def overview(self, request: web.Request) -> web.Response:
        return web.json_response(self.snapshot(history=True))

    async def events(self, request: web.Request) -> web.StreamResponse:
        """Server-sent events: the overview once a second (the first one with the history)."""
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"})
        await response.prepare(request)
        first = True
        try:
            while not self.closing.is_set():
                await response.write(f"data: {json.dumps(self.snapshot(history=first))}\n\n".encode())
                first = False
                try:
                    await asyncio.wait_for(self.closing.wait(), EVERY)
                except TimeoutError:
                    pass
        except ConnectionResetError:  # the page was closed
            pass
        return response


DASHBOARD_KEY = web.AppKey("dashboard", Dashboard)


def message_page(status: int, title: str, body_html: str) -> web.Response:
    """A small HTML page for the browser (not signed in, used link); ``body_html`` is ours, not input."""
    html = (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>llamashare · {title}</title>'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<link rel="stylesheet" href="/static/dashboard.css"></head><body class="message"><main><h1>{title}</h1>'
        f"<p>{body_html}</p></main></body></html>"
    )
    return web.Response(status=status, text=html, content_type="text/html", headers=PAGE_HEADERS)
