"""The pipelined hasher must give exactly what hashlib / blake3 / naive piece hashing give."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import blake3
import pytest

from llamashare.manifests import hashing
from llamashare.manifests.hashing import Hasher
from llamashare.manifests.torrent import BLOCK_SIZE, file_root, piece_hashes, small_file_root

MiB = 1024 * 1024


@pytest.mark.parametrize("size", [0, 1, BLOCK_SIZE - 1, BLOCK_SIZE, 3 * MiB + 7])
@pytest.mark.parametrize("piece_size", [None, 16 * 1024, 1 * MiB])
def test_matches_reference_hashes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: int, piece_size: int | None
) -> None:
    monkeypatch.setattr(hashing, "CHUNK_SIZE", 1 * MiB)  # several chunks in flight even for small files
    data = os.urandom(size)
    path = tmp_path / "f"
    path.write_bytes(data)
    seen: list[int] = []
    with Hasher() as h:
        d = h.hash_file(path, piece_size, seen.append)
    assert (d.size, d.sha256, d.blake3) == (size, hashlib.sha256(data).hexdigest(), blake3.blake3(data).hexdigest())
    assert sum(seen) == size
    if piece_size is None:
        assert d.v1_pieces == d.v2_layer == d.v2_root == b""
        return
    pieces = [data[i : i + piece_size] for i in range(0, size, piece_size)]
    expected = [piece_hashes(p, piece_size) for p in pieces]
    assert d.v1_pieces == b"".join(e[0] for e in expected)
    assert d.v2_layer == b"".join(e[1] for e in expected)
    if size == 0:
        assert d.v2_root == b""
    elif size <= piece_size:
        assert d.v2_root == small_file_root(data)
    else:
        assert d.v2_root == file_root([e[1] for e in expected], piece_size)


def test_memory_is_bounded_by_in_flight_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The reader never runs more than MAX_IN_FLIGHT chunks ahead of the hashers."""
    monkeypatch.setattr(hashing, "CHUNK_SIZE", 64 * 1024)
    path = tmp_path / "f"
    path.write_bytes(os.urandom(64 * 1024 * 40))
    live = {"now": 0, "peak": 0}
    real_sha256 = hashlib.sha256

    class CountingSha:
        """Counts chunks read but not yet hashed."""

        def __init__(self) -> None:
            self._h = real_sha256()

        def update(self, b: bytes) -> None:
            live["now"] -= 1
            self._h.update(b)

        def hexdigest(self) -> str:
            return self._h.hexdigest()

    monkeypatch.setattr(hashing.hashlib, "sha256", CountingSha)

    def progress(n: int) -> None:
        live["now"] += 1
        live["peak"] = max(live["peak"], live["now"])

    with Hasher() as h:
        d = h.hash_file(path, None, progress)
    assert d.size == 64 * 1024 * 40
    assert d.sha256 == real_sha256(path.read_bytes()).hexdigest()
    assert 1 <= live["peak"] <= hashing.MAX_IN_FLIGHT + 1


def test_unreadable_file_raises_oserror(tmp_path: Path) -> None:
    with Hasher() as h, pytest.raises(OSError):
        h.hash_file(tmp_path / "missing")
