"""Our one-pass hybrid torrents must be byte-identical to libtorrent's own, for any layout."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llamashare.errors import TorrentError
from llamashare.manifests import torrent as T
from tests.helpers import libtorrent_reference, make_release

KiB = 1024


def _write(root: Path, files: dict[str, int], seed: int = 1) -> None:
    rnd = __import__("random").Random(seed)
    for rel, size in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(rnd.randbytes(size))


LAYOUTS = {
    "mixed": {"a.bin": 100_000, "c.bin": 70_000, "empty": 0, "sub/b.bin": 40_000},
    "exact-multiples": {"x": 64 * KiB, "y": 128 * KiB},
    "single-file": {"model.safetensors": 300_001},
    "one-byte-and-nested": {"z/y/x/1": 1, "z/y.txt": 5, "z.txt": 17_000},
    "path-byte-order": {"sub/b": 10, "sub.txt": 10, "sub-a": 10, "Zub": 10, "a b/z": 3, "a/c/d": 3, "a/c.d": 3},
    "unicode": {"modèle/权重.bin": 50_000, "ü.json": 3},
}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("piece_size", [16 * KiB, 32 * KiB, 256 * KiB])
def test_byte_identical_to_libtorrent(tmp_path: Path, layout: str, piece_size: int) -> None:
    folder = tmp_path / "rel"
    _write(folder, LAYOUTS[layout])
    _, ours = make_release(folder, piece_size)
    _same_as_libtorrent_where_valid(ours, libtorrent_reference(folder, piece_size))


def _same_as_libtorrent_where_valid(ours: bytes, theirs: bytes) -> None:
    """Equal bytes, except where libtorrent's own hybrid torrent is one it cannot load (it sorts
    v1 files by path string, e.g. "a.b" before "a/b", against its v2 file tree); ours must load."""
    T.read_torrent(ours)
    try:
        T.read_torrent(theirs)
    except TorrentError as exc:
        assert "v1 and v2 file metadata does not match" in str(exc)
        assert ours != theirs
        return
    assert ours == theirs


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sizes=st.lists(st.integers(0, 200_000), min_size=1, max_size=5), shift=st.integers(0, 3))
def test_random_sizes_match_libtorrent(tmp_path_factory: pytest.TempPathFactory, sizes: list[int], shift: int) -> None:
    folder = tmp_path_factory.mktemp("h") / "rel"
    _write(folder, {f"d{i % 2}/f{i}.bin" if i % 3 else f"f{i}": s for i, s in enumerate(sizes)}, seed=sum(sizes))
    if all(s == 0 for s in sizes):
        return  # libtorrent refuses a torrent of only empty files, and so does create (no pieces)
    piece_size = (16 * KiB) << shift
    _, ours = make_release(folder, piece_size)
    _same_as_libtorrent_where_valid(ours, libtorrent_reference(folder, piece_size))


def test_libtorrent_path_order_quirk_is_real(tmp_path: Path) -> None:
    """Guard for the exception above: if a libtorrent upgrade fixes its order, we want to know."""
    folder = tmp_path / "rel"
    _write(folder, LAYOUTS["path-byte-order"])
    with pytest.raises(TorrentError, match="v1 and v2"):
        T.read_torrent(libtorrent_reference(folder, 16 * KiB))


def test_piece_hashes_pad_short_pieces() -> None:
    data = os.urandom(20_000)
    v1, v2 = T.piece_hashes(data, 32 * KiB)
    assert v1 == hashlib.sha1(data + bytes(32 * KiB - 20_000)).digest()
    leaves = [hashlib.sha256(data[: 16 * KiB]).digest(), hashlib.sha256(data[16 * KiB :]).digest()]
    assert v2 == hashlib.sha256(leaves[0] + leaves[1]).digest()


def test_single_file_torrent_last_piece_is_not_padded() -> None:
    data = os.urandom(20_000)
    assert T.piece_hashes(data, 32 * KiB, pad_v1=False)[0] == hashlib.sha1(data).digest()


def test_piece_hashes_refuse_oversized_piece() -> None:
    with pytest.raises(ValueError):
        T.piece_hashes(bytes(40 * KiB), 32 * KiB)


def test_small_file_root_is_not_padded_to_piece() -> None:
    data = os.urandom(3 * 16 * KiB)  # three leaves → tree of four
    leaves = [hashlib.sha256(data[i : i + 16 * KiB]).digest() for i in range(0, len(data), 16 * KiB)] + [bytes(32)]
    top = hashlib.sha256(
        hashlib.sha256(leaves[0] + leaves[1]).digest() + hashlib.sha256(leaves[2] + leaves[3]).digest()
    )
    assert T.small_file_root(data) == top.digest()


@pytest.mark.parametrize(
    "size,ok",
    [(16 * KiB, True), (4 * 1024 * KiB, True), (8 * KiB, False), (48 * KiB, False), (128 * 1024 * KiB, False)],
)
def test_piece_size_rules(size: int, ok: bool) -> None:
    assert T.is_valid_piece_size(size) is ok


def test_default_piece_size_scales_with_release() -> None:
    assert T.default_piece_size(10 * 1024 * KiB) == 256 * KiB
    assert T.default_piece_size(13 * 1024**3) == 8 * 1024 * KiB
    assert T.default_piece_size(500 * 1024**3) == 16 * 1024 * KiB
    for total in (1, 10**9, 10**11):
        assert T.is_valid_piece_size(T.default_piece_size(total))


def test_build_refuses_unordered_files() -> None:
    f = lambda p: T.TorrentFile((p,), 1, bytes(20), bytes(32), bytes(32))  # noqa: E731
    with pytest.raises(TorrentError, match="canonical"):
        T.build_torrent("x", 16 * KiB, [f("b"), f("a")])


def test_trackers_and_web_seeds_are_written(tmp_path: Path) -> None:
    folder = tmp_path / "rel"
    _write(folder, {"a": 1000})
    m, data = make_release(
        folder,
        trackers=(("udp://127.0.0.1:1/announce",), ("http://127.0.0.1:2/announce",)),
        web_seeds=("http://127.0.0.1:3/rel/",),
    )
    import libtorrent as lt

    ti = lt.torrent_info(data)
    assert [t.url for t in ti.trackers()] == ["udp://127.0.0.1:1/announce", "http://127.0.0.1:2/announce"]
    assert [t.tier for t in ti.trackers()] == [0, 1]
    assert [w["url"] for w in ti.web_seeds()] == ["http://127.0.0.1:3/rel/"]
    # Trackers live outside the info dict: the info-hashes do not depend on them.
    m2, _ = make_release(folder)
    assert (m.torrent.info_hash_v1, m.torrent.info_hash_v2) == (m2.torrent.info_hash_v1, m2.torrent.info_hash_v2)


@pytest.mark.parametrize(
    "data,needle", [(b"garbage", "invalid torrent"), (b"d4:infoi3ee", "invalid torrent"), (b"", "invalid torrent")]
)
def test_read_torrent_rejects_junk(data: bytes, needle: str) -> None:
    with pytest.raises(TorrentError, match=needle):
        T.read_torrent(data)


def test_read_torrent_rejects_v1_only(tmp_path: Path) -> None:
    import warnings

    import libtorrent as lt

    folder = tmp_path / "rel"
    _write(folder, {"a": 1000, "b": 10})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        fs = lt.file_storage()
        lt.add_files(fs, str(folder))
        ct = lt.create_torrent(fs, 16 * KiB, lt.create_torrent.v1_only)
        lt.set_piece_hashes(ct, str(tmp_path))
    with pytest.raises(TorrentError, match="hybrid"):
        T.read_torrent(lt.bencode(ct.generate()))
