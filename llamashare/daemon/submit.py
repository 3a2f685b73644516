"""``fetch`` and ``seed``: hand a release to the home's daemon, then follow it to "verified".

One code path for downloading and seeding: the daemon does the work (and keeps seeding after this
process exits); these functions only start it, submit the release and watch its status.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from llamashare.daemon.client import DaemonClient, StartOptions, start_daemon
from llamashare.daemon.home import Home
from llamashare.errors import FetchError
from llamashare.manifests.channel import manifest_sha256
from llamashare.manifests.manifest import Manifest, dumps, parse_manifest
from llamashare.p2p.lan import Offer, pick_offer, search
from llamashare.p2p.status import ReleaseStatus, State

POLL = 0.2
#: Adding a release hashes what is already on disk (a publisher's whole release: BLAKE3 and
#: SHA-256 at ~0.6 GB/s), so that one call may take minutes.
ADD_TIMEOUT = 3600.0


@dataclass(frozen=True)
class FetchOptions:
    directory: Path
    ratio: float | None = 1.0
    seed_time: float | None = None
    no_seed: bool = False
    include: tuple[str, ...] = ()
    peers: tuple[str, ...] = ()
    timeout: float | None = None  # give up waiting (the daemon keeps trying)
    start: StartOptions = StartOptions()  # for a daemon this command starts
    key: str | None = None  # the release's name in the node (its store key); None: the node picks
    initial_seeding: bool = False  # seed: BEP 16 super-seeding until every piece has been seen in the swarm


def check_writable(directory: Path) -> None:
    """Fail now, with the reason, if files cannot be written into ``directory``."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".llamashare-probe-"):
            pass
    except OSError as exc:
        raise FetchError(f"cannot write to {directory}: {exc.strerror or exc}") from None


def _submit(home: Home, manifest: Manifest, opts: FetchOptions, seed_forever: bool) -> tuple[DaemonClient, str]:
    """Hand the release to the daemon; return the client and the release's key in the node."""
    if not seed_forever:
        check_writable(opts.directory)
    client = start_daemon(home, opts.start)
    body = {
        "manifest": dumps(manifest),
        "dir": str(opts.directory.resolve()),
        "ratio": opts.ratio,
        "seed_time": opts.seed_time,
        "no_seed": opts.no_seed,
        "seed_forever": seed_forever,
        "include": list(opts.include),
        "peers": list(opts.peers),
        "initial_seeding": opts.initial_seeding,
    }
    if opts.key is not None:
        body["key"] = opts.key
    reply = client.call("POST", "/releases", body, timeout=ADD_TIMEOUT)
    return client, str(reply["name"])


def release_status(client: DaemonClient, name: str) -> ReleaseStatus:
    status = client.status().release(name)
    if status is None:
        raise FetchError(f"the daemon no longer has {name!r} (stopped by another command?)")
    return status


def fetch(
    home: Home, manifest: Manifest, opts: FetchOptions, on_update: Callable[[ReleaseStatus], None] | None = None
) -> ReleaseStatus:
    """Download and verify ``manifest``'s selected files; return the final release status."""
    client, key = _submit(home, manifest, opts, seed_forever=False)
    start = time.monotonic()
    while True:
        status = release_status(client, key)
        if on_update:
            on_update(status)
        if status.state is State.ERROR:
            raise FetchError(f"{key}: {status.error}")
        if status.finished:
            return status
        if status.state is State.PAUSED:
            raise FetchError(
                f"{key}: paused by the user ({status.verified} of {status.selected} "
                "files verified); fetch it again to resume"
            )
        if opts.timeout is not None and time.monotonic() - start > opts.timeout:
            why = f" (last tracker error: {status.tracker_error})" if status.tracker_error else ""
            raise FetchError(
                f"{key}: not complete after {opts.timeout:.0f}s, "
                f"{status.verified} of {status.selected} files verified, {status.peers} peers{why}; "
                "the daemon keeps trying (llamashare status)"
            )
        time.sleep(POLL)


def seed(home: Home, manifest: Manifest, opts: FetchOptions) -> ReleaseStatus:
    """Hand the uploader's files to the daemon, which verifies them (BLAKE3 + SHA-256) before it
    seeds them until removed; a file that is not the manifest's is refused with its name."""
    client, key = _submit(home, manifest, opts, seed_forever=True)
    return release_status(client, key)


def resolve(home: Home, address: str, start: StartOptions, timeout: float = 60.0) -> tuple[Manifest, str]:
    """The manifest ``address`` (``ed25519:<key>/<name>``) names now, and the SHA-256 of its file:
    the daemon resolves it in the DHT, takes the manifest from the swarm and checks its hash and
    signature; parsed again here."""
    client = start_daemon(home, start)
    reply = client.call("POST", "/resolve", {"address": address, "timeout": timeout}, timeout=timeout + 30)
    text = reply["manifest"].encode()
    return parse_manifest(text, source=address), manifest_sha256(text)


def publish(home: Home, manifest: Manifest, key_file: Path, start: StartOptions) -> str:
    """Put ``manifest`` (signed with ``key_file``) in the DHT; return its address."""
    client = start_daemon(home, start)
    reply = client.call("POST", "/channels", {"manifest": dumps(manifest), "key_file": str(key_file.resolve())})
    return str(reply["address"])


def lan_offers(home: Home, start: StartOptions, wait: float) -> list[Offer]:
    """What daemons on the local network offer, heard within ``wait`` seconds."""
    cfg = home.config()
    group = cfg.lan(start.local_only or cfg.local_only, asked=True)
    assert group is not None
    try:
        return search(group, wait)
    except OSError as exc:
        raise FetchError(
            f"cannot search the local network on {group.interface} for {group.host}:{group.port} "
            f"({exc.strerror or exc}); set lan_interface in the config to this machine's LAN address"
        ) from None


def from_lan(home: Home, ref: str, start: StartOptions, wait: float, timeout: float) -> tuple[Manifest, list[Offer]]:
    """The manifest of the release ``ref`` (NAME or NAME@VERSION) that LAN peers offer, taken
    from them by this node's daemon and checked against the offered SHA-256; and those offers
    (the peers to download from)."""
    chosen = pick_offer(lan_offers(home, start, wait), ref)
    first = chosen[0]
    client = start_daemon(home, start)
    body = {
        "name": first.name,
        "torrent": first.torrent,
        "manifest_sha256": first.manifest_sha256,
        "peers": [f"{o.host}:{o.port}" for o in chosen],
        "timeout": timeout,
    }
    reply = client.call("POST", "/lan-manifest", body, timeout=timeout + 30)
    return parse_manifest(reply["manifest"], source=f"the LAN peer {first.host}"), chosen
