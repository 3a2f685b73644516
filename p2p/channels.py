"""Signed channels in the DHT: publish a release's pointer under a key, resolve an address, and
carry the manifest itself in the swarm (see ``manifests.channel`` for the formats).

One :class:`Channels` per node, on the node's libtorrent session and its thread (the node hands it
every alert). What it keeps:

- **published** channels: the manifest file and a one-file torrent of it, seeded, and the BEP 44
  item re-put every ``REPUT_EVERY`` seconds while the daemon runs (DHT nodes drop items after a
  couple of hours). The key is read again from the publisher's key file at each re-put, so the
  daemon's state holds where the key is, never the key.
- **resolutions**: a get for ``(key, name)``; every answer libtorrent reports has passed its own
  signature check (BEP 44), and the highest seq wins: the one the search ends with, or one no
  higher seq has displaced for ``SETTLE`` seconds. Then the manifest torrent is added by
  info-hash (BEP 9 metadata from whichever peers the DHT names) and, once its one file is
  complete, that file must hash to the item's SHA-256. A seq lower than or equal to one this node
  has already accepted for the channel is refused (a replay).
- every manifest torrent a node resolved stays seeded, so a late fetcher gets the manifest from
  any node that has it, with the publisher gone.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import libtorrent as lt

from llamashare.errors import LlamashareError, ManifestError, ReleaseError
from llamashare.fsio import atomic_write
from llamashare.manifests.channel import Address, Pointer, decode_pointer, manifest_sha256
from llamashare.manifests.manifest import parse_manifest
from llamashare.manifests.signing import verify_signature

log = logging.getLogger("llamashare.channels")

#: Seconds between re-puts of a published item (BEP 44 items live about two hours in the DHT).
REPUT_EVERY = 30 * 60.0
#: Seconds between gets while a resolution has no answer yet (a get sent before the put spread
#: answers an empty item with seq 0).
RETRY_GET = 2.0
#: Seconds a pointer must stay the highest seq heard before it is taken without waiting for the
#: search to end: a search ends only when every node asked has answered or timed out, and one
#: dead node in the path costs libtorrent's full request timeout (~15 s, measured on loopback by
#: bench/channels.py). Nodes that hold the item answer within round trips; an authoritative end
#: is still taken at once, and a lower seq than one taken before is still refused as a replay.
SETTLE = 2.0
PIECE = 16 * 1024
#: Reads a publisher's key file: (public key, libtorrent's expanded secret key).
KeyLoader = Callable[[Path], tuple[bytes, bytes]]


@dataclass
class Resolution:
    """One address being resolved; ``done`` once ``manifest`` (the file's bytes) or ``error``."""

    address: Address
    started: float = field(default_factory=time.monotonic)
    last_get: float = 0.0
    seq: int = 0  # the highest seq seen in the searches so far
    pointer: Pointer | None = None  # that item's pointer, if it is one
    best_at: float = 0.0  # when that seq was first heard
    final: bool = False  # a search ended with a pointer: fetch the manifest it names
    handle: lt.torrent_handle | None = None
    manifest: bytes | None = None
    error: str | None = None
    refused: str | None = None  # the last item seen that could not be taken, and why

    @property
    def done(self) -> bool:
        return self.manifest is not None or self.error is not None


class Channels:
    def __init__(self, session: lt.session, folder: Path) -> None:
        self.session = session
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.resolutions: dict[tuple[str, str], Resolution] = {}
        self.published: dict[str, dict] = {}  # name → {"address", "key_file", "sha256", "torrent", "put_at"}
        #: channel → (the highest seq taken from it, the manifest SHA-256 that seq named; "" when
        #: an older llamashare recorded the seq alone)
        self.seen: dict[str, tuple[int, str]] = {}
        for channel, value in self._load("seen.json").items():
            seq, sha = (value, "") if isinstance(value, int) else (value.get("seq"), value.get("sha256", ""))
            if isinstance(seq, int) and isinstance(sha, str):
                self.seen[channel] = (seq, sha)
        self._handles: dict[str, lt.torrent_handle] = {}  # manifest torrents by info-hash
        self._load_key: KeyLoader | None = None

    # ------------------------------------------------------------------ state

    def _load(self, name: str) -> dict:
        try:
            doc = json.loads((self.folder / name).read_text())
        except (OSError, ValueError):
            return {}
        return doc if isinstance(doc, dict) else {}

    def _save_seen(self) -> None:
        doc = {c: {"seq": seq, "sha256": sha} for c, (seq, sha) in self.seen.items()}
        atomic_write(self.folder / "seen.json", json.dumps(doc, indent=1).encode())

    def restore(self, load_key: KeyLoader) -> None:
        """Seed every manifest torrent this node has, and re-publish its own channels."""
        for torrent in sorted(self.folder.glob("*/manifest.torrent")):
            try:
                self._seed_manifest(torrent.parent, lt.torrent_info(str(torrent)))
            except Exception as exc:  # one bad folder must not keep the others down
                log.error("cannot seed %s: %s", torrent, exc)
        for name, doc in self._load("published.json").items():
            self.published[name] = doc
            doc["put_at"] = 0.0  # re-put on the next tick
        self._load_key = load_key

    # ------------------------------------------------------------------ publish

    def publish(self, address: Address, manifest_text: bytes, key_file: str, public: bytes, secret: bytes) -> Pointer:
        """Seed ``manifest_text`` as a one-file torrent and put the pointer to it under the key."""
        pointer = self.seed_manifest(self.folder / address.name, address.name, manifest_text)
        self.published[address.name] = {
            "address": str(address),
            "key_file": key_file,
            "sha256": pointer.manifest_sha256,
            "torrent": pointer.torrent,
            "put_at": time.monotonic(),
        }
        self._save_published()
        self.session.dht_put_mutable_item(secret, public, pointer.encode(), address.salt)
        return pointer

    def _save_published(self) -> None:
        doc = {n: {k: v for k, v in d.items() if k != "put_at"} for n, d in self.published.items()}
        atomic_write(self.folder / "published.json", json.dumps(doc, indent=1).encode())

    def seed_manifest(self, folder: Path, name: str, manifest_text: bytes) -> Pointer:
        """Write ``manifest_text`` to ``folder/NAME.toml`` and seed it as a one-file torrent (what
        a fetcher takes by BEP 9 with nothing but the info-hash); the pointer to it."""
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(folder / f"{name}.toml", manifest_text)
        with warnings.catch_warnings():  # the file_storage API, deprecated in libtorrent 2.1 but kept
            warnings.simplefilter("ignore", DeprecationWarning)
            fs = lt.file_storage()
            lt.add_files(fs, str(folder / f"{name}.toml"))
            ct = lt.create_torrent(fs, PIECE)
            lt.set_piece_hashes(ct, str(folder))
            data = lt.bencode(ct.generate())
        atomic_write(folder / "manifest.torrent", data)
        ti = lt.torrent_info(data)
        self._seed_manifest(folder, ti)
        return Pointer(manifest_sha256(manifest_text), str(ti.info_hashes().v1))

    def _seed_manifest(self, folder: Path, ti: lt.torrent_info) -> lt.torrent_handle:
        key = str(ti.info_hashes().v1)
        if key in self._handles:
            return self._handles[key]
        atp = lt.add_torrent_params()
        atp.ti = ti
        atp.save_path = str(folder)
        atp.flags &= ~(lt.torrent_flags.auto_managed | lt.torrent_flags.paused)
        atp.flags |= lt.torrent_flags.seed_mode
        handle = self.session.add_torrent(atp)
        handle.force_dht_announce()
        self._handles[key] = handle
        return handle

    # ------------------------------------------------------------------ resolve

    def resolve(self, address: Address) -> Resolution:
        """Start (or return) the resolution of ``address``; :meth:`tick` moves it along."""
        key = (address.public_key, address.name)
        current = self.resolutions.get(key)
        if current is None or current.done:
            current = self.resolutions[key] = Resolution(address)
        return current

    def on_alert(self, alert: lt.alert) -> None:
        if isinstance(alert, lt.dht_mutable_item_alert):
            self._on_item(alert)
        elif isinstance(alert, lt.dht_put_alert):
            log.info("DHT put of %s stored at %d nodes", bytes(alert.salt).decode(errors="replace"), alert.num_success)

    def _on_item(self, alert: lt.dht_mutable_item_alert) -> None:
        """Keep the highest-seq item of a search; decide when the search is over (authoritative).
        The highest seq is the current version: if it is not ours, no older pointer is taken."""
        key = (bytes(alert.key).hex(), bytes(alert.salt).decode(errors="replace"))
        r = self.resolutions.get(key)
        if r is None or r.done or r.final:
            return
        seen, known = self.seen.get(str(r.address), (0, ""))
        if 0 < alert.seq < seen:
            r.refused = f"seq {alert.seq} is older than seq {seen}, already taken from this channel (a replay)"
        elif alert.seq > r.seq:
            r.seq, r.best_at = alert.seq, time.monotonic()
            try:
                r.pointer, r.refused = decode_pointer(alert.item), None
            except ManifestError as exc:
                r.pointer, r.refused = None, exc.problem
            if r.pointer is not None and alert.seq == seen and known and r.pointer.manifest_sha256 != known:
                r.pointer, r.refused = None, f"seq {seen} named another manifest when this node took it (a forgery)"
        if alert.authoritative and r.pointer is not None:
            r.final = True  # else: nothing usable yet (a get before the put spread): tick asks again

    def tick(self) -> None:
        """Move resolutions along and re-put published items when due (call often)."""
        now = time.monotonic()
        for r in self.resolutions.values():
            if r.done:
                continue
            if not r.final and r.pointer is not None and now - r.best_at >= SETTLE:
                r.final = True  # the highest seq for SETTLE seconds: the rest of the search is dead nodes
            if not r.final:
                if r.pointer is None and now - r.last_get >= RETRY_GET:
                    r.last_get = now
                    self.session.dht_get_mutable_item(bytes.fromhex(r.address.public_key), r.address.salt)
                continue
            assert r.pointer is not None
            if r.handle is None:
                r.handle = self.fetch_manifest(r.address.name, r.pointer)
            st = r.handle.status()
            if st.is_seeding:
                self._finish(r)
            elif st.num_peers == 0 and now - r.last_get >= RETRY_GET:
                r.last_get = now  # no peer for the manifest yet: ask the DHT again for some
                r.handle.force_dht_announce()
        for name, doc in self.published.items():
            if now - doc["put_at"] >= REPUT_EVERY:
                doc["put_at"] = now
                self._reput(name, doc)

    def _reput(self, name: str, doc: dict) -> None:
        if self._load_key is None:
            return
        try:
            public, secret = self._load_key(Path(doc["key_file"]))
        except Exception as exc:
            log.error("cannot re-publish %s: %s", name, exc)
            return
        pointer = Pointer(doc["sha256"], doc["torrent"])
        self.session.dht_put_mutable_item(secret, public, pointer.encode(), name.encode())

    def fetch_manifest(self, name: str, pointer: Pointer, peers: tuple[tuple[str, int], ...] = ()) -> lt.torrent_handle:
        """Start taking the manifest ``pointer`` names from the swarm (BEP 9: peers from the DHT,
        and ``peers`` dialled directly); :meth:`read_manifest` once the handle is seeding."""
        existing = self._handles.get(pointer.torrent)
        if existing is not None:
            for peer in peers:
                existing.connect_peer(peer)
            return existing
        folder = self.folder / f"{name}.{pointer.torrent[:12]}"
        folder.mkdir(parents=True, exist_ok=True)
        atp = lt.parse_magnet_uri(f"magnet:?xt=urn:btih:{pointer.torrent}")
        atp.save_path = str(folder)
        atp.flags &= ~(lt.torrent_flags.auto_managed | lt.torrent_flags.paused)
        handle = self.session.add_torrent(atp)
        if self.session.is_dht_running():
            handle.force_dht_announce()
        for peer in peers:
            handle.connect_peer(peer)
        self._handles[pointer.torrent] = handle
        return handle

    def read_manifest(self, handle: lt.torrent_handle, pointer: Pointer, named_by: str) -> bytes:
        """The manifest file of a complete manifest torrent, if it is one file that hashes to the
        pointer's SHA-256 (ReleaseError otherwise, saying what ``named_by`` it); its torrent is kept
        beside it for restarts."""
        ti = handle.torrent_file()
        files = ti.layout() if ti is not None else None
        if ti is None or files is None or files.num_files() != 1 or files.file_size(0) > 16 << 20:
            raise ReleaseError("the manifest torrent does not hold one manifest file")
        path = Path(handle.status().save_path) / files.file_path(0)
        data = path.read_bytes()
        if manifest_sha256(data) != pointer.manifest_sha256:
            raise ReleaseError(
                f"the manifest from the swarm hashes to {manifest_sha256(data)[:16]}…, "
                f"not the {pointer.manifest_sha256[:16]}… {named_by}"
            )
        torrent = path.parent / "manifest.torrent"
        if not torrent.exists():
            atomic_write(torrent, lt.bencode({b"info": lt.bdecode(ti.info_section())}))
        return data

    def forget_manifest(self, pointer: Pointer) -> None:
        """Stop seeding a manifest that was refused (its bytes are not passed on)."""
        handle = self._handles.pop(pointer.torrent, None)
        if handle is not None:
            self.session.remove_torrent(handle)

    def _finish(self, r: Resolution) -> None:
        assert r.handle is not None and r.pointer is not None
        try:
            data = self.read_manifest(r.handle, r.pointer, "the DHT item names")
        except ReleaseError as exc:
            r.error = str(exc)
            return
        try:
            manifest = parse_manifest(data, source=str(r.address))
            verify_signature(manifest, pinned_key=r.address.public_key)
            if manifest.name != r.address.name:
                raise ManifestError("name", f"is {manifest.name!r}, but the address names {r.address.name!r}")
        except LlamashareError as exc:
            r.error = f"refused the manifest from the swarm: {exc}"
            return
        channel = str(r.address)
        seq, sha = self.seen.get(channel, (0, ""))
        if r.seq > seq or not sha:
            self.seen[channel] = (r.seq, r.pointer.manifest_sha256)
            self._save_seen()
        r.manifest = data

    def drop(self, r: Resolution) -> None:
        """Forget a resolution (done, failed or given up); a refused manifest's torrent goes too."""
        if r.error is not None and r.pointer is not None:
            self.forget_manifest(r.pointer)
        self.resolutions.pop((r.address.public_key, r.address.name), None)
