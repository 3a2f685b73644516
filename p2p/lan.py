"""Discovery on the local network: daemons offer their releases on a multicast group, the way
BEP 14 (local service discovery) announces torrents.

BEP 14 sends ``BT-SEARCH`` datagrams to 239.192.152.143:6771 naming info-hashes. A llamashare
daemon sends ``LLAMASHARE-OFFER`` datagrams in the same shape (a request line, then headers) to
the same group on the next port (6772), so libtorrent's own LSD traffic and ours never mix, one
per release it has complete: name, version, size, license, signer, the SHA-256 of its manifest,
and the info-hash of a one-file torrent of that manifest, which it seeds (see
:meth:`Channels.seed_manifest`). It offers at start, whenever its set of releases changes, every
``OFFER_EVERY`` seconds, and in answer to a ``LLAMASHARE-SEARCH`` (at most once per
``ANSWER_GAP``, so a burst of searches cannot make it flood the group).

A searcher takes the manifest by BEP 9 from the offering peer and accepts it only if it hashes
to the offered SHA-256; the publisher pins (``[publishers]``) apply as for any fetch. Everything
received is hostile until parsed: one datagram at most ``MAX_DATAGRAM`` bytes, every field checked,
anything else ignored.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from llamashare.errors import ManifestError, ReleaseError
from llamashare.manifests.channel import Pointer
from llamashare.manifests.manifest import Manifest, check_name, dumps

log = logging.getLogger("llamashare.lan")

#: BEP 14's group; its port plus one (6771 is libtorrent's LSD).
GROUP = "239.192.152.143"
PORT = 6772
MAX_DATAGRAM = 1400
OFFER_EVERY = 300.0  # BEP 14 re-announces every 5 minutes
ANSWER_GAP = 1.0
_HEX = re.compile(r"[0-9a-f]+")
_TEXT = re.compile(r"[^\x00-\x1f\x7f]{1,128}")  # one line of printable text
#: What LanOffers needs from the node's channels: seed a manifest file, stop seeding one.
SeedManifest = Callable[[Path, str, bytes], Pointer]
ForgetManifest = Callable[[Pointer], None]


@dataclass(frozen=True)
class LanGroup:
    """Where offers go: the multicast group and port, and the interface (an IPv4 address) to
    join it on and send from (127.0.0.1 keeps it on this machine: tests, ``local_only``)."""

    host: str = GROUP
    port: int = PORT
    interface: str = "0.0.0.0"


@dataclass(frozen=True)
class Offer:
    """One release a node on the LAN offers; ``host`` is the address it came from."""

    name: str
    version: str
    size: int
    license: str
    signer: str | None  # ed25519 public key hex, or None for an unsigned release
    manifest_sha256: str
    torrent: str  # info-hash (v1, hex) of the one-file torrent holding the manifest
    port: int  # the node's BitTorrent port
    node: str  # a random id per daemon run: several offers from one node count once
    host: str = ""

    @property
    def peer(self) -> tuple[str, int]:
        return self.host, self.port

    @property
    def pointer(self) -> Pointer:
        return Pointer(self.manifest_sha256, self.torrent)


@dataclass(frozen=True)
class Search:
    node: str


def encode_offer(offer: Offer, group: LanGroup) -> bytes:
    """The datagram for ``offer``; the license is shortened until it fits ``MAX_DATAGRAM``."""
    license_text = offer.license
    while True:
        lines = [
            "LLAMASHARE-OFFER * HTTP/1.1",
            f"Host: {group.host}:{group.port}",
            f"Port: {offer.port}",
            f"Name: {offer.name}",
            f"Version: {offer.version}",
            f"Size: {offer.size}",
            f"License: {license_text}",
            f"Signer: {offer.signer or '-'}",
            f"Manifest: {offer.manifest_sha256}",
            f"Torrent: {offer.torrent}",
            f"cookie: {offer.node}",
        ]
        data = ("\r\n".join(lines) + "\r\n\r\n").encode()
        if len(data) <= MAX_DATAGRAM or not license_text:
            return data
        license_text = license_text[: len(license_text) // 2]


def encode_search(node: str, group: LanGroup) -> bytes:
    return f"LLAMASHARE-SEARCH * HTTP/1.1\r\nHost: {group.host}:{group.port}\r\ncookie: {node}\r\n\r\n".encode()


def decode(data: bytes, sender: str) -> Offer | Search | None:
    """An offer or a search from ``sender``'s datagram; None for anything else (BEP 14's own
    messages, other programs' traffic, anything malformed)."""
    if len(data) > MAX_DATAGRAM:
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    head, _, _ = text.partition("\r\n\r\n")
    first, *rest = head.split("\r\n")
    fields: dict[str, str] = {}
    for line in rest:
        key, sep, value = line.partition(":")
        if not sep:
            return None
        fields[key.strip().lower()] = value.strip()
    node = fields.get("cookie", "")
    if not (0 < len(node) <= 32 and _HEX.fullmatch(node)):
        return None
    if first == "LLAMASHARE-SEARCH * HTTP/1.1":
        return Search(node)
    if first != "LLAMASHARE-OFFER * HTTP/1.1":
        return None
    try:
        port, size = int(fields["port"]), int(fields["size"])
        signer = fields["signer"]
        offer = Offer(
            name=check_name(fields["name"], "name"),
            version=fields["version"],
            size=size,
            license=fields["license"],
            signer=None if signer == "-" else signer,
            manifest_sha256=fields["manifest"],
            torrent=fields["torrent"],
            port=port,
            node=node,
            host=sender,
        )
    except (KeyError, ValueError, ManifestError):
        return None
    ok = (
        0 < port < 65536
        and 0 <= size < 1 << 62
        and all(_TEXT.fullmatch(v) for v in (offer.version, offer.license))
        and (offer.signer is None or (len(offer.signer) == 64 and _HEX.fullmatch(offer.signer)))
        and len(offer.manifest_sha256) == 64
        and _HEX.fullmatch(offer.manifest_sha256)
        and len(offer.torrent) == 40
        and _HEX.fullmatch(offer.torrent)
    )
    return offer if ok else None


def open_socket(group: LanGroup) -> socket.socket:
    """A non-blocking UDP socket that hears the group (with every other listener on this host:
    SO_REUSEADDR) and sends to it on ``group.interface``, one hop only."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("", group.port))
        membership = socket.inet_aton(group.host) + socket.inet_aton(group.interface)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(group.interface))
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)  # other nodes on this host hear it
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)  # never past the local network
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def received(sock: socket.socket, limit: int = 256) -> list[Offer | Search]:
    """What arrived since the last call (at most ``limit`` datagrams), decoded; junk dropped."""
    out: list[Offer | Search] = []
    for _ in range(limit):
        try:
            data, (host, _port) = sock.recvfrom(MAX_DATAGRAM + 1)
        except (BlockingIOError, InterruptedError):
            break
        except OSError:
            break
        msg = decode(data, host)
        if msg is not None:
            out.append(msg)
    return out


def search(group: LanGroup, wait: float) -> list[Offer]:
    """Ask the group and collect the offers heard within ``wait`` seconds (each node's offer of
    a manifest once). OSError when the group cannot be joined (no multicast route)."""
    me = secrets.token_hex(8)
    with open_socket(group) as sock:
        sock.sendto(encode_search(me, group), (group.host, group.port))
        found: dict[tuple[str, str], Offer] = {}
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            for msg in received(sock):
                if isinstance(msg, Offer):
                    found[msg.node, msg.manifest_sha256] = msg
            time.sleep(0.05)
    return sorted(found.values(), key=lambda o: (o.name, o.version, o.host, o.port))


class LanOffers:
    """A daemon's side: offer every complete release on the group, answer searches.

    Manifests are seeded from ``folder/KEY/`` through ``seed`` (the node's
    :meth:`Channels.seed_manifest`) and ``forget`` stops seeding one no longer offered."""

    def __init__(
        self,
        group: LanGroup,
        folder: Path,
        listen_port: int,
        seed: SeedManifest,
        forget: ForgetManifest,
    ) -> None:
        self.group = group
        self.folder = folder
        self.listen_port = listen_port
        self.node = secrets.token_hex(8)
        self._seed, self._forget = seed, forget
        self.sock = open_socket(group)
        self.offers: dict[str, tuple[Manifest, Offer]] = {}  # key → (the manifest it was made from, offer)
        self._offered_at = 0.0
        self._answered_at = 0.0
        self._asked = False  # a search is waiting for its answer

    def _offer(self, key: str, manifest: Manifest) -> Offer:
        cached = self.offers.get(key)
        if cached is not None and cached[0] is manifest:  # the node's own object: no hashing per tick
            return cached[1]
        pointer = self._seed(self.folder / key, manifest.name, dumps(manifest).encode())
        offer = Offer(
            name=manifest.name,
            version=_line(manifest.version),
            size=manifest.total_size,
            license=_line(manifest.license_line),
            signer=manifest.signature.public_key if manifest.signature else None,
            manifest_sha256=pointer.manifest_sha256,
            torrent=pointer.torrent,
            port=self.listen_port,
            node=self.node,
        )
        self.offers[key] = (manifest, offer)
        return offer

    def tick(self, complete: dict[str, Manifest]) -> None:
        """``complete``: key → manifest of every release this node has whole (and not paused)."""
        now = time.monotonic()
        changed = set(complete) != set(self.offers) or any(
            m is not self.offers[k][0] for k, m in complete.items() if k in self.offers
        )
        for key in [k for k in self.offers if k not in complete]:
            self._forget(self.offers.pop(key)[1].pointer)
        try:
            offers = [self._offer(k, m) for k, m in sorted(complete.items())]
        except (OSError, ReleaseError) as exc:
            log.error("cannot offer releases on the LAN: %s", exc)
            return
        if any(isinstance(m, Search) and m.node != self.node for m in received(self.sock)):
            self._asked = True  # answered within ANSWER_GAP: a burst of searches gets one answer
        due = now - self._offered_at >= OFFER_EVERY
        answer = self._asked and now - self._answered_at >= ANSWER_GAP
        if offers and (changed or due or answer):
            self._offered_at = now
            if answer:
                self._answered_at, self._asked = now, False
            for offer in offers:
                try:
                    self.sock.sendto(encode_offer(offer, self.group), (self.group.host, self.group.port))
                except OSError as exc:  # the network went away: try again at the next offer
                    log.warning("LAN offer of %s not sent: %s", offer.name, exc)
                    break

    def close(self) -> None:
        self.sock.close()


def _line(text: str) -> str:
    """One printable line of at most 128 characters (what ``decode`` accepts)."""
    clean = "".join(ch if ch.isprintable() else " " for ch in text).strip()
    return clean[:128] or "-"


def parse_group(text: str) -> tuple[str, int]:
    """``lan_group``: an IPv4 multicast address and a port (``239.192.152.143:6772``)."""
    host, sep, port = text.rpartition(":")
    try:
        ok = bool(sep) and ipaddress.IPv4Address(host).is_multicast and port.isdigit() and 0 < int(port) < 65536
    except ValueError:
        ok = False
    if not ok:
        raise ReleaseError(f"LAN group {text!r} is not MULTICAST-IPV4:PORT (e.g. {GROUP}:{PORT})")
    return host, int(port)


def parse_interface(text: str) -> str:
    """``lan_interface``: the IPv4 address of the interface to use (0.0.0.0: the default one)."""
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        raise ReleaseError(f"LAN interface {text!r} is not an IPv4 address (e.g. 192.168.1.20)") from None


def pick_offer(offers: list[Offer], ref: str) -> list[Offer]:
    """The offers of the one release ``ref`` (NAME or NAME@VERSION) names: every node offering
    that same manifest (each a peer to download from). ReleaseError if none or several differ."""
    name, _, version = ref.partition("@")
    matches = [o for o in offers if o.name == name and (not version or o.version == version)]
    if not matches:
        heard = ", ".join(sorted({f"{o.name}@{o.version}" for o in offers})) or "no offers at all"
        raise ReleaseError(f"no daemon on the local network offers {ref} (heard: {heard})")
    releases = {o.manifest_sha256: o for o in matches}
    if len(releases) > 1:
        listed = "; ".join(
            f"{o.version} (manifest {sha[:12]}…, from {o.host})"
            for sha, o in sorted(releases.items(), key=lambda kv: (kv[1].version, kv[0]))
        )
        raise ReleaseError(
            f"the local network offers {len(releases)} different releases named {name}: {listed}; "
            "name one as NAME@VERSION (or pin its publisher in [publishers])"
        )
    return matches
