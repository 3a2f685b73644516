"""Release addresses that need no host: ``ed25519:<public key>/<name>``.

A publisher's key names a release: the DHT holds a BEP 44 mutable item under that key with the
release name as salt, signed with the same ed25519 key the manifest is signed with. The item does
not hold the manifest (BEP 44 values are at most 1000 bytes); it points at it: the manifest's
SHA-256 and the info-hash of a small torrent whose one file is the manifest, which the
publisher's daemon (and every daemon that fetched it) seeds. So a fetcher resolves the address,
takes the manifest from the swarm by BEP 9, and checks that it hashes to the pointer's SHA-256
and is signed by the key in the address before anything else happens.

Pure formats here (the address, the pointer, libtorrent's form of the key); the DHT traffic is in
``p2p.channels``.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

import libtorrent as lt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from llamashare.errors import ManifestError
from llamashare.manifests.manifest import check_name

ADDRESS_PREFIX = "ed25519:"
_ADDRESS = re.compile(r"ed25519:([0-9a-f]{64})/([^/]+)")
#: BEP 44's limit on an item's bencoded value.
MAX_VALUE = 1000
#: What a pointer's "llamashare" key says: the pointer format's version.
POINTER_VERSION = 1


@dataclass(frozen=True)
class Address:
    """``ed25519:<public key hex>/<release name>``: where a publisher's release lives in the DHT."""

    public_key: str  # 64 lowercase hex digits
    name: str

    def __str__(self) -> str:
        return f"{ADDRESS_PREFIX}{self.public_key}/{self.name}"

    @property
    def salt(self) -> bytes:
        return self.name.encode()


def is_address(text: str) -> bool:
    """Whether ``text`` means an address rather than a manifest file (it starts ``ed25519:``)."""
    return text.startswith(ADDRESS_PREFIX)


def parse_address(text: str) -> Address:
    """An address, or a one-line ManifestError saying what form it must have."""
    found = _ADDRESS.fullmatch(text.strip().lower() if text.startswith(ADDRESS_PREFIX) else text)
    if found is None:
        raise ManifestError("address", f"{text!r} is not ed25519:<64 hex digits>/<release name>")
    return Address(found.group(1), check_name(found.group(2), "address name"))


@dataclass(frozen=True)
class Pointer:
    """The DHT item's value: which manifest is the current version, and where to get it."""

    manifest_sha256: str  # of the manifest file's bytes, as served by the manifest torrent
    torrent: str  # v1 info-hash (hex) of the torrent holding the manifest file

    def encode(self) -> bytes:
        doc: Any = {
            b"llamashare": POINTER_VERSION,
            b"manifest": bytes.fromhex(self.manifest_sha256),
            b"torrent": bytes.fromhex(self.torrent),
        }
        value = lt.bencode(doc)
        assert len(value) <= MAX_VALUE
        return bytes(value)


def decode_pointer(value: object) -> Pointer:
    """The pointer in a DHT item's value (bencoded bytes, or as libtorrent decoded it), or a
    ManifestError: an item under this key and name that is not ours is refused, not followed."""
    try:
        doc = lt.bdecode(value) if isinstance(value, bytes) else value
    except Exception:
        doc = None
    if not isinstance(doc, dict) or doc.get(b"llamashare") != POINTER_VERSION:
        raise ManifestError("DHT item", "is not a llamashare release pointer")
    sha, ih = doc.get(b"manifest"), doc.get(b"torrent")
    if not (isinstance(sha, bytes) and len(sha) == 32 and isinstance(ih, bytes) and len(ih) == 20):
        raise ManifestError("DHT item", "is a llamashare pointer with a malformed manifest hash or info-hash")
    return Pointer(sha.hex(), ih.hex())


def libtorrent_keys(key: Ed25519PrivateKey) -> tuple[bytes, bytes]:
    """(public key, secret key) as libtorrent's DHT wants them: the usual 32-byte public key, and
    the 64-byte *expanded* secret (SHA-512 of the seed, clamped as ed25519 does), which is what
    its ed25519 signs with (shared/REFERENCE.md)."""
    seed = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    secret = bytearray(hashlib.sha512(seed).digest())
    secret[0] &= 248
    secret[31] &= 63
    secret[31] |= 64
    return public, bytes(secret)


def manifest_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
