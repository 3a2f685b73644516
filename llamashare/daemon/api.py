"""The daemon's JSON control API (aiohttp), served on 127.0.0.1 only, and its web page.

Every request needs ``Authorization: Bearer <token>`` (the token is in the home's
``daemon.token``, mode 0600) or the dashboard's session cookie (HttpOnly, SameSite=Strict, opened
by a one-time link from ``llamashare dashboard``) with its page key (``X-Llamashare-Key``: cookies
reach every port of 127.0.0.1, the key only the page; see dashboard.Logins); none → 401, a
wrong token → 403. ``Host`` must
name the loopback address and port we listen on, and an ``Origin``, when sent, must be that same
origin: a web page the user visits can neither read the API through DNS rebinding nor drive it
cross-site. A cookie-authenticated change (POST/PATCH/DELETE) must also carry that ``Origin``.
Endpoints (all JSON):

    GET    /api/v1/status                   node info and every release's state
    POST   /api/v1/releases                 add: {"manifest": TOML text, "dir", "ratio", "seed_time",
                                             "seed_forever", "no_seed", "initial_seeding", "include": [...],
                                             "peers": [...], "key"}; without "dir" the files go to the
                                             model store (MODELS_DIR/KEY/source); "key" names it in
                                             the node (default: NAME, NAME@VERSION for a further
                                             version; the reply's "name"); files another
                                             release of the store holds are placed from there
                                             (llamashare.reuse), listed in the reply's "reused";
                                             again for a release in error or paused: retry / resume it
    PATCH  /api/v1/releases/{name}          change it: {"ratio", "seed_time", "paused"}
    DELETE /api/v1/releases/{name}          stop and forget a release (its files stay)
    POST   /api/v1/shutdown                 save resume data and exit
    POST   /api/v1/channels                 publish: {"manifest": signed TOML text, "key_file": its
                                             signer's private key file}; puts the pointer in the DHT
                                             and seeds the manifest; answers the release's address
    POST   /api/v1/resolve                  {"address": "ed25519:<key>/<name>", "timeout"}: the
                                             manifest the DHT item points at, from the swarm, checked
    POST   /api/v1/lan-manifest             {"name", "torrent", "manifest_sha256", "peers", "timeout"}:
                                             a manifest a LAN peer offered (p2p.lan), from it, checked
    POST   /api/v1/follows                  {"address", "manifest_sha256" (what the caller fetched),
                                             "version", "quant", "convert", "ratio", "seed_time",
                                             "include"}: fetch each new version (daemon.follow)
    GET    /api/v1/follows                  every followed channel, what was last fetched, errors
    DELETE /api/v1/follows?address=…        stop following (fetched versions stay)
    POST   /api/v1/login-links              a one-time dashboard link (token holders only)
    GET    /api/v1/overview                 the dashboard's view: releases in the daemon and the
                                             store, GGUF files, running steps, rate history
    GET    /api/v1/events                   the same as server-sent events, once a second

The page itself: ``GET /`` (signed in), ``GET /login?token=…`` (the one-time link),
``GET /static/…`` (its script and style; public, they are the package's files).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import math
import re
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from pathlib import Path

from aiohttp import web

from llamashare.daemon.dashboard import DASHBOARD_KEY, Dashboard, message_page
from llamashare.daemon.follow import Follower, FollowOptions
from llamashare.daemon.home import MAX_TARGET  # finite, so every status stays valid JSON for the page
from llamashare.errors import LlamashareError, ManifestError, ReleaseConflict
from llamashare.manifests.channel import Address, Pointer, parse_address
from llamashare.manifests.manifest import Manifest, check_name, choose_key, parse_manifest, split_key
from llamashare.manifests.signing import verify_signature
from llamashare.p2p.address import parse_peer
from llamashare.p2p.node import Node, ReleaseSpec, check_files, key_pair
from llamashare.reuse import Reused, reuse_stored_files
from llamashare.store import Store

MAX_BODY = 64 * 1024 * 1024  # a manifest with an embedded torrent for a very large release
NO_DHT = "the DHT is off in this node's daemon (local_only, and no dht_bootstrap nodes in its config)"
RESOLVE_TIMEOUT = 60.0  # seconds a resolution waits for the DHT and the swarm, by default
MAX_RESOLVE_TIMEOUT = 600.0

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _bad_request(message: str) -> web.HTTPBadRequest:
    """For helpers deep in a handler: raise it, and the client gets ``{"error": message}``."""
    return web.HTTPBadRequest(text=json.dumps({"error": message}), content_type="application/json")


def make_app(
    node: Node,
    token: str,
    port: int,
    on_shutdown: Callable[[], None],
    info: dict,
    store: Store | None = None,
    follower: Follower | None = None,
) -> web.Application:
    """The API for ``node``; ``port`` is the loopback port it is served on (for Host checks);
    ``store`` is where releases added without a folder go (and what the dashboard lists);
    ``follower`` keeps the followed channels (none: ``follow`` is refused)."""
    dashboard = Dashboard(node.status, store, info, port)

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        allowed_hosts = {f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"}
        if request.host not in allowed_hosts:
            return _error(403, f"Host {request.host!r} refused: the API answers only to 127.0.0.1:{port}")
        origin = request.headers.get("Origin")
        if origin is not None and origin not in {f"http://{h}" for h in allowed_hosts}:
            return _error(403, f"Origin {origin!r} refused")
        sent = request.headers.get("Authorization")
        by_token = sent is not None and hmac.compare_digest(sent.encode(), f"Bearer {token}".encode())
        by_cookie = not by_token and dashboard.signed_in(request)
        public = request.path == "/login" or request.path.startswith("/static/")
        if not (by_token or by_cookie or public):
            if request.path == "/":
                return message_page(
                    401, "Not signed in", "Open the link that <code>llamashare dashboard</code> prints."
                )
            if sent is None:
                return _error(401, "no credentials: send the token in daemon.token as 'Authorization: Bearer …'")
            return _error(403, "wrong token (see daemon.token in the llamashare home)")
        if by_cookie and request.method not in ("GET", "HEAD") and origin is None:
            return _error(403, "a change from the dashboard must come with its Origin")
        if by_cookie and request.path == "/api/v1/login-links":
            return _error(403, "login links are for token holders (llamashare dashboard)")
        try:
            return await handler(request)
        except ReleaseConflict as exc:
            return _error(409, str(exc))
        except LlamashareError as exc:
            return _error(400, str(exc))
        except OSError as exc:  # e.g. the release folder cannot be created
            where = f"{exc.filename}: " if exc.filename else ""
            return _error(400, f"{where}{exc.strerror or exc}")
        except web.HTTPException as exc:  # unknown route, wrong method, body too large: JSON like the rest
            if exc.content_type == "application/json":
                raise
            return _error(exc.status, exc.reason)

    async def body(request: web.Request) -> dict:
        try:
            data = json.loads(await request.text(), parse_constant=_no_constant)
        except (ValueError, RecursionError):  # bad JSON, bad UTF-8, NaN/Infinity, nesting too deep
            raise _bad_request("body is not JSON") from None
        if not isinstance(data, dict):
            raise _bad_request("body must be a JSON object")
        return data

    async def status(request: web.Request) -> web.Response:
        return web.json_response({"node": info, "releases": [r.to_json() for r in node.status()]})

    def prepare(manifest: Manifest, spec: ReleaseSpec) -> tuple[list[Reused], frozenset[str]]:
        """Place what the store already holds, then check what is on disk (worker thread)."""
        reused = []
        if store is not None and not spec.seed_forever:
            reused = reuse_stored_files(store, manifest, Path(spec.save_dir), spec.include)
        return reused, check_files(manifest, spec, known={r.path for r in reused})

    async def add(request: web.Request) -> web.Response:
        data = await body(request)
        if not isinstance(data.get("manifest"), str) or not isinstance(data.get("dir", ""), str):
            return _error(400, "'manifest' (TOML text) is required and 'dir', if given, is an absolute path")
        manifest = parse_manifest(data["manifest"], source="request")
        key = data.get("key")
        if key is not None and (not isinstance(key, str) or split_key(key)[0] != manifest.name):
            return _error(400, f"'key' must be {manifest.name} or {manifest.name}@VERSION")
        if "dir" in data:
            save_dir = data["dir"]
        elif store is not None:
            entry = store.add(manifest)
            save_dir, key = str(entry.source_dir), entry.key
        else:
            return _error(400, "'dir' is required (this daemon has no model store)")
        existing = node.key_of(manifest)
        if existing is not None and key is not None and key != existing:
            return _error(
                409,
                f"{key} has the very files of {existing}, which this node has (the same torrent, "
                f"{manifest.torrent.info_hash_v1[:12]}…), and a node holds a torrent once; "
                f"llamashare stop {existing} first",
            )
        if existing is not None:  # asking again for a release in error means: try again
            node.retry(existing)
            return web.json_response({"name": existing, "added": False})
        if key is None:  # a key no other release in this node has
            others = [(k, r.manifest.version) for k, r in node.releases.items() if r.manifest.name == manifest.name]
            key = choose_key(manifest, others + [(k, "") for k in node.broken])
        elif key in node.releases:
            return _error(409, f"another release named {key!r} is already in this node")
        spec = ReleaseSpec(
            name=key,
            save_dir=save_dir,
            seed_forever=bool(data.get("seed_forever", False)),
            ratio=_number(data, "ratio", 1.0),
            seed_time=_number(data, "seed_time", None),
            include=tuple(_strings(data, "include")),
            peers=tuple(_strings(data, "peers")),
            no_seed=bool(data.get("no_seed", False)),
            initial_seeding=bool(data.get("initial_seeding", False)),
        )
        if not spec.save_dir.startswith("/") or "\x00" in spec.save_dir:
            return _error(400, "'dir' must be an absolute path (with no NUL character)")
        # Hash what is on disk on a worker thread: gigabytes must not hold up the event loop
        # (status, the page, other requests). Then add on the loop, checking the key again.
        reused, present = await asyncio.get_running_loop().run_in_executor(None, prepare, manifest, spec)
        if key in node.releases:
            return _error(409, f"release {key!r} was added meanwhile")
        node.add(manifest, spec, present=present)
        return web.json_response({"name": key, "added": True, "reused": [asdict(r) for r in reused]}, status=201)

    async def patch(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        data = await body(request)
        if name not in node.releases:
            return _error(404, f"no release named {name!r}")
        spec = node.releases[name].spec
        paused = data.get("paused", spec.paused)
        if not isinstance(paused, bool):
            return _error(400, "'paused' must be true or false")
        ratio, seed_time = _number(data, "ratio", spec.ratio), _number(data, "seed_time", spec.seed_time)
        if "ratio" in data or "seed_time" in data:
            node.set_targets(name, ratio, seed_time)
        node.set_paused(name, paused)
        return web.json_response({"name": name})

    async def delete(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in node.releases and name not in node.broken:
            return _error(404, f"no release named {name!r}")
        node.remove(name)
        return web.json_response({"name": name, "removed": True})

    async def publish(request: web.Request) -> web.Response:
        """Put a signed manifest's pointer in the DHT under its signer's key (see p2p.channels)."""
        data = await body(request)
        if not isinstance(data.get("manifest"), str) or not isinstance(data.get("key_file"), str):
            return _error(400, "'manifest' (TOML text) and 'key_file' (an absolute path) are required")
        if not data["key_file"].startswith("/") or "\x00" in data["key_file"]:
            return _error(400, "'key_file' must be an absolute path (with no NUL character)")
        if not node.session.is_dht_running():
            return _error(409, NO_DHT)
        text = data["manifest"].encode()
        manifest = parse_manifest(text, source="request")
        if manifest.torrent.data is None or manifest.torrent.file is not None:
            return _error(400, "the manifest's torrent must be embedded to publish it in the DHT")
        public, secret = key_pair(Path(data["key_file"]))
        verify_signature(manifest, pinned_key=public.hex())  # signed, by exactly this key
        address = Address(public.hex(), manifest.name)
        pointer = node.channels.publish(address, text, data["key_file"], public, secret)
        return web.json_response(
            {"address": str(address), "manifest_sha256": pointer.manifest_sha256, "torrent": pointer.torrent}
        )

    async def resolve(request: web.Request) -> web.Response:
        """Resolve ``ed25519:<key>/<name>`` in the DHT and return the manifest it points at, taken
        from the swarm and checked: its SHA-256 is the item's, its signature is that key's."""
        data = await body(request)
        if not isinstance(data.get("address"), str):
            return _error(400, "'address' (ed25519:<key hex>/<name>) is required")
        address = parse_address(data["address"])
        if not node.session.is_dht_running():
            return _error(409, NO_DHT)
        timeout = _number(data, "timeout", RESOLVE_TIMEOUT) or RESOLVE_TIMEOUT
        r = node.channels.resolve(address)
        deadline = asyncio.get_running_loop().time() + min(timeout, MAX_RESOLVE_TIMEOUT)
        while not r.done and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.1)
        node.channels.drop(r)
        if not r.done:
            stage = "no DHT node had a usable item for it" if not r.final else "no peer sent the manifest it names"
            why = f"; {r.refused}" if r.refused else ""
            return _error(504, f"{address}: {stage} within {timeout:g}s{why}")
        if r.error is not None:
            return _error(502, f"{address}: {r.error}")
        assert r.manifest is not None  # parsed, hash and signature checked (p2p.channels)
        return web.json_response({"manifest": r.manifest.decode(), "seq": r.seq})

    async def lan_manifest(request: web.Request) -> web.Response:
        """Take a manifest a LAN peer offered from that peer (BEP 9), checked against the offer's
        SHA-256 and name; the manifest is seeded on like every manifest this node took."""
        data = await body(request)
        torrent = _hex(data, "torrent", 40, "the manifest torrent's info-hash (40 lowercase hex digits)")
        sha256, name = _hex(data, "manifest_sha256", 64), data.get("name")
        if not isinstance(name, str):
            return _error(400, "'name' (the release name offered) is required")
        check_name(name, "name")
        peers = tuple(parse_peer(p) for p in _strings(data, "peers"))
        timeout = min(_number(data, "timeout", RESOLVE_TIMEOUT) or RESOLVE_TIMEOUT, MAX_RESOLVE_TIMEOUT)
        pointer = Pointer(sha256, torrent)
        handle = node.channels.fetch_manifest(name, pointer, peers)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not handle.status().is_seeding and loop.time() < deadline:
            await asyncio.sleep(0.1)
        if not handle.status().is_seeding:
            node.channels.forget_manifest(pointer)
            return _error(504, f"no LAN peer sent the manifest of {name} within {timeout:g}s")
        try:
            text = node.channels.read_manifest(handle, pointer, "the LAN offer names")
            manifest = parse_manifest(text, source="a LAN peer")
            if manifest.name != name:
                raise ManifestError("name", f"is {manifest.name!r}, but the LAN offer names {name!r}")
        except LlamashareError as exc:
            node.channels.forget_manifest(pointer)
            return _error(502, f"refused the manifest from the LAN: {exc}")
        return web.json_response({"manifest": text.decode()})

    async def follow(request: web.Request) -> web.Response:
        """Follow a channel: the daemon fetches each new version itself (see daemon.follow)."""
        data = await body(request)
        if not isinstance(data.get("address"), str):
            return _error(400, "'address' (ed25519:<key hex>/<name>) is required")
        address = parse_address(data["address"])
        if follower is None:
            return _error(409, "this daemon cannot follow channels (it has no model store)")
        if not node.session.is_dht_running():
            return _error(409, NO_DHT)
        sha256 = _hex(data, "manifest_sha256", 64) if data.get("manifest_sha256") is not None else None
        version = data.get("version")
        if version is not None and not isinstance(version, str):
            return _error(400, "'version' must be a string")
        quant = data.get("quant")
        if quant is not None and (not isinstance(quant, str) or not re.fullmatch(r"[A-Za-z0-9_]{1,16}", quant)):
            return _error(400, "'quant' must be a type name such as Q4_K_M")
        options = FollowOptions(
            quant=quant,
            convert=bool(data.get("convert", True)),
            ratio=_number(data, "ratio", None),
            seed_time=_number(data, "seed_time", None),
            include=tuple(_strings(data, "include")),
        )
        f = follower.add(address, options, sha256, version)
        return web.json_response(f.to_json(), status=201)

    async def follows(request: web.Request) -> web.Response:
        return web.json_response({"follows": [f.to_json() for f in follower.follows.values()] if follower else []})

    async def unfollow(request: web.Request) -> web.Response:
        address = request.query.get("address", "")
        if follower is None or not follower.remove(str(parse_address(address))):
            return _error(404, f"{address!r} is not followed")
        return web.json_response({"address": address, "followed": False})

    async def shutdown(request: web.Request) -> web.Response:
        on_shutdown()
        return web.json_response({"stopping": True})

    app = web.Application(middlewares=[guard], client_max_size=MAX_BODY)
    app[DASHBOARD_KEY] = dashboard
    app.add_routes(dashboard.routes())
    app.add_routes(
        [
            web.get("/api/v1/status", status),
            web.post("/api/v1/releases", add),
            web.patch("/api/v1/releases/{name}", patch),
            web.delete("/api/v1/releases/{name}", delete),
            web.post("/api/v1/shutdown", shutdown),
            web.post("/api/v1/channels", publish),
            web.post("/api/v1/resolve", resolve),
            web.post("/api/v1/lan-manifest", lan_manifest),
            web.post("/api/v1/follows", follow),
            web.get("/api/v1/follows", follows),
            web.delete("/api/v1/follows", unfollow),
        ]
    )
    return app


def _number(data: dict, key: str, default: float | None) -> float | None:
    value = data.get(key, default)
    if value is None:
        return None
    try:
        number = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan
    except OverflowError:  # an integer of hundreds of digits
        number = math.inf
    if not math.isfinite(number) or number < 0 or number > MAX_TARGET:
        raise _bad_request(f"'{key}' must be a finite number from 0 to {MAX_TARGET:g}, or null")
    return number


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def _hex(data: dict, key: str, digits: int, what: str | None = None) -> str:
    """``data[key]``, which must be ``digits`` lowercase hex digits (a hash, an info-hash)."""
    value = data.get(key)
    if not (isinstance(value, str) and len(value) == digits and re.fullmatch(r"[0-9a-f]+", value)):
        raise _bad_request(f"'{key}' must be {what or f'{digits} lowercase hex digits'}")
    return value


def _strings(data: dict, key: str) -> list[str]:
    value = data.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _bad_request(f"'{key}' must be a list of strings")
    return value
