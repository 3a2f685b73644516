"""Hybrid (BitTorrent v1 + v2) torrent metadata: piece hashes, merkle trees, build and read.

Why build it here instead of ``libtorrent.create_torrent`` + ``set_piece_hashes``: that pair reads
every file again, and the Python binding cannot take precomputed v2 hashes. ``llamashare create``
reads each file once and feeds the same bytes to BLAKE3, SHA-256, the v1 SHA-1 pieces and the
v2 SHA-256 leaves; this module turns those hashes into a torrent whose bytes are identical to what
libtorrent 2.1 writes for the same files and piece size (tests/test_torrent.py checks that).

Layout rules followed (BEP 3, BEP 47, BEP 52, and libtorrent 2.1's choices):
- files are ordered by UTF-8 path components: the order of the v2 "file tree" dictionary, which
  BEP 52 requires the v1 list of a hybrid torrent to follow. (libtorrent 2.1.1 sorts its v1 list
  by the whole path string instead, so for names such as "a/b" beside "a.txt" it writes hybrid
  torrents that it then refuses to load; everywhere else our bytes equal its bytes.)
- in a torrent of two or more files, every non-empty file whose size is not a multiple of the
  piece size is followed by a pad file ``.pad/N`` (attr ``p``), the last file included, so every
  file starts on a piece boundary and a v1 piece never spans two files. A single-file torrent has
  no pad files, so its last v1 piece is hashed short;
- v2 leaves are SHA-256 of 16 KiB blocks; missing leaves are 32 zero bytes; a file of one piece
  or less has its root over its own leaves, larger files list their piece hashes in "piece layers".

Pure functions only; the one I/O-adjacent piece is :func:`read_torrent`, which asks libtorrent to
parse (and so validate) untrusted torrent bytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import libtorrent as lt

from llamashare.errors import TorrentError

BLOCK_SIZE = 16 * 1024  # BEP 52 leaf size
ZERO_HASH = bytes(32)
MIN_PIECE_SIZE = BLOCK_SIZE
MAX_PIECE_SIZE = 64 * 1024 * 1024


def is_valid_piece_size(piece_size: int) -> bool:
    """v2 requires a power of two of at least 16 KiB; we also cap it to keep pieces fetchable."""
    return MIN_PIECE_SIZE <= piece_size <= MAX_PIECE_SIZE and piece_size & (piece_size - 1) == 0


def default_piece_size(total_size: int) -> int:
    """About 1000–2000 pieces: small enough to share early, large enough for fast loopback/LAN
    transfer (bigger pieces mean fewer requests and hash checks), between 256 KiB and 16 MiB."""
    size = 256 * 1024
    while size < 16 * 1024 * 1024 and total_size // size > 2048:
        size *= 2
    return size


def _merkle_root(leaves: Sequence[bytes], width: int, pad: bytes = ZERO_HASH) -> bytes:
    """Root of a tree with ``width`` (a power of two) leaves; leaves past the end are ``pad``.

    Padding subtrees are hashed once per level rather than per node, so a mostly-empty tree
    costs O(len(leaves)) hashes.
    """
    level = list(leaves)
    pad_hash = pad
    while width > 1:
        if len(level) % 2:
            level.append(pad_hash)
        level = [hashlib.sha256(level[i] + level[i + 1]).digest() for i in range(0, len(level), 2)]
        pad_hash = hashlib.sha256(pad_hash + pad_hash).digest()
        width //= 2
    return level[0] if level else pad_hash


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def piece_hashes(piece: bytes | memoryview, piece_size: int, pad_v1: bool = True) -> tuple[bytes, bytes]:
    """(v1 SHA-1, v2 piece-layer SHA-256) of one piece of one file.

    A short final piece is padded with zero leaves for v2, and for v1 with zeros (the pad file
    that follows it is all zeros) unless ``pad_v1`` is false (single-file torrents).
    """
    view = memoryview(piece)
    size = len(view)
    if size == 0 or size > piece_size:
        raise ValueError(f"piece of {size} bytes does not fit piece size {piece_size}")
    sha1 = hashlib.sha1(view)
    if size < piece_size and pad_v1:
        sha1.update(bytes(piece_size - size))
    leaves = [hashlib.sha256(view[i : i + BLOCK_SIZE]).digest() for i in range(0, size, BLOCK_SIZE)]
    return sha1.digest(), _merkle_root(leaves, piece_size // BLOCK_SIZE)


def small_file_root(data: bytes | memoryview) -> bytes:
    """v2 pieces root of a file no larger than one piece: its leaves padded to a power of two."""
    view = memoryview(data)
    leaves = [hashlib.sha256(view[i : i + BLOCK_SIZE]).digest() for i in range(0, len(view), BLOCK_SIZE)]
    return _merkle_root(leaves, _next_pow2(len(leaves)))


def file_root(piece_layer: Sequence[bytes], piece_size: int) -> bytes:
    """v2 pieces root of a file larger than one piece, from its piece-layer hashes."""
    full_piece_pad = _merkle_root([], piece_size // BLOCK_SIZE)
    return _merkle_root(piece_layer, _next_pow2(len(piece_layer)), pad=full_piece_pad)


@dataclass(frozen=True)
class TorrentFile:
    """One file as the torrent needs it: path components, size and its piece hashes.

    ``v2_root`` is the pieces root, or empty bytes for an empty file. ``v1_pieces`` and
    ``v2_layer`` are the file's own pieces concatenated (20 and 32 bytes each).
    """

    path: tuple[str, ...]
    size: int
    v1_pieces: bytes
    v2_layer: bytes
    v2_root: bytes


def canonical_order(paths: Iterable[str]) -> list[str]:
    """Paths ("a/b.bin") in the order of the v2 file tree: by UTF-8 path components."""
    return sorted(paths, key=lambda p: tuple(c.encode() for c in p.split("/")))


def build_torrent(
    name: str,
    piece_size: int,
    files: Sequence[TorrentFile],
    trackers: Sequence[Sequence[str]] = (),
    web_seeds: Sequence[str] = (),
) -> bytes:
    """Bencoded hybrid .torrent for ``files`` (in canonical order; pieces hashed with
    ``pad_v1=len(files) > 1``).

    Deterministic: no creation date or creator, so the same files, name and piece size always
    give the same info-hashes, and independent publishers of the same release join one swarm.
    """
    if not is_valid_piece_size(piece_size):
        raise TorrentError(f"piece size {piece_size} is not a power of two between 16 KiB and 64 MiB")
    order = [f.path for f in files]
    if order != [tuple(p.split("/")) for p in canonical_order("/".join(p) for p in order)]:
        raise TorrentError("files are not in canonical (path component) order")
    v1_files: list[dict] = []
    tree: dict = {}
    layers: dict[bytes, bytes] = {}
    pieces = bytearray()
    for f in files:
        v1_files.append({b"length": f.size, b"path": [c.encode() for c in f.path]})
        node = tree
        for comp in f.path:
            node = node.setdefault(comp.encode(), {})
        leaf: dict = {b"length": f.size}
        if f.size:
            leaf[b"pieces root"] = f.v2_root
            tail = f.size % piece_size
            if tail and len(files) > 1:
                pad = piece_size - tail
                v1_files.append({b"attr": b"p", b"length": pad, b"path": [b".pad", str(pad).encode()]})
            if f.size > piece_size:
                layers[f.v2_root] = f.v2_layer
        node[b""] = leaf
        pieces += f.v1_pieces
    info = {
        b"file tree": tree,
        b"files": v1_files,
        b"meta version": 2,
        b"name": name.encode(),
        b"piece length": piece_size,
        b"pieces": bytes(pieces),
    }
    top: dict = {b"info": info, b"piece layers": layers}
    tiers = [list(t) for t in trackers if t]
    if tiers:
        top[b"announce"] = tiers[0][0].encode()
        top[b"announce-list"] = [[u.encode() for u in t] for t in tiers]
    if web_seeds:
        top[b"url-list"] = [u.encode() for u in web_seeds]
    return lt.bencode(top)


@dataclass(frozen=True)
class TorrentMeta:
    """What a manifest checks a torrent against (pad files left out)."""

    name: str
    info_hash_v1: str
    info_hash_v2: str
    piece_size: int
    files: tuple[tuple[str, int], ...]  # (path relative to the torrent's root folder, size)


def read_torrent(data: bytes) -> TorrentMeta:
    """Parse untrusted .torrent bytes with libtorrent; raise :class:`TorrentError` if invalid."""
    try:
        ti = lt.torrent_info(data)
    except RuntimeError as exc:
        raise TorrentError(f"invalid torrent: {exc}") from None
    hashes = ti.info_hashes()
    if not hashes.has_v1() or not hashes.has_v2():
        raise TorrentError("torrent is not a hybrid v1+v2 torrent")
    fs = ti.layout()
    files = []
    prefix = ti.name() + "/"
    for i in range(fs.num_files()):
        if fs.file_flags(i) & lt.file_storage.flag_pad_file:
            continue
        path = fs.file_path(i).replace("\\", "/")
        if not path.startswith(prefix):
            raise TorrentError(f"torrent file {path!r} is outside its root folder {ti.name()!r}")
        files.append((path[len(prefix) :], fs.file_size(i)))
    return TorrentMeta(
        name=ti.name(),
        info_hash_v1=str(hashes.v1),
        info_hash_v2=str(hashes.v2),
        piece_size=ti.piece_length(),
        files=tuple(files),
    )


def v1_companion(hybrid: bytes) -> bytes:
    """The v1-only twin of a hybrid torrent, for clients that speak only BitTorrent v1.

    Why a twin and not the hybrid: aria2 1.36 drops the empty-string keys of the v2 "file tree"
    when it re-encodes the info dictionary, so it computes a wrong info-hash for any hybrid
    torrent. The twin's info dictionary is the hybrid's minus its v2 keys ("file tree",
    "meta version"): the same files, pad files (BEP 47), piece size and SHA-1 pieces. So a piece
    index means the same bytes in both swarms, it costs no extra hashing, and anyone can derive
    it from the hybrid (the manifest only pins its info-hash). Clients that ignore BEP 47 store
    the pad files as zero-filled files under ``.pad/``. Trackers and web seeds are kept.
    """
    try:
        top = _bdict(lt.bdecode(hybrid))
        info = _bdict(top[b"info"])
        twin_info = {k: info[k] for k in (b"files", b"name", b"piece length", b"pieces")}
    except (TypeError, KeyError, RuntimeError):
        raise TorrentError("not a hybrid torrent: cannot derive its v1 twin") from None
    twin: dict[bytes, Any] = {b"info": twin_info}
    for key in (b"announce", b"announce-list", b"url-list"):
        if key in top:
            twin[key] = top[key]
    return lt.bencode(twin)


def _bdict(value: object) -> dict[bytes, Any]:
    """A bdecoded dictionary (libtorrent decodes keys as bytes); TypeError for any other value,
    as indexing it would raise."""
    if not isinstance(value, dict):
        raise TypeError(f"not a bencoded dictionary: {type(value).__name__}")
    return value


def info_hash_v1(torrent: bytes) -> str:
    """The v1 info-hash of .torrent bytes, as libtorrent computes it."""
    try:
        return str(lt.torrent_info(torrent).info_hashes().v1)
    except RuntimeError as exc:
        raise TorrentError(f"invalid torrent: {exc}") from None
