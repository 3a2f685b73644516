"""One copy of every byte: releases that share files share them on disk, and the swarm sends only
the rest. Real daemons over 127.0.0.1 and the real CLI; sizes as in issue 26 (two 30 MB files in
common, one 5 MB file each of their own)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from llamashare.daemon.client import DaemonClient
from llamashare.daemon.home import Home
from llamashare.daemon.submit import FetchOptions, seed
from llamashare.manifests.create import write_release
from llamashare.manifests.manifest import Manifest, load_manifest
from llamashare.p2p.status import ReleaseStatus
from llamashare.reuse import COPY_SUFFIX, reuse_stored_files
from llamashare.store import Store
from tests.helpers import Homes, cli, make_release

pytestmark = pytest.mark.slow

MB = 1 << 20
SHARED = {"model-00001.safetensors": 30 * MB, "tokenizer/model.bin": 30 * MB}


def _release(root: Path, name: str, own: dict[str, int], seed_bytes: int) -> tuple[Path, Path]:
    """A folder with the two shared files and ``own`` ones; returns (folder, manifest path)."""
    folder = root / name
    for i, (rel, size) in enumerate(sorted(SHARED.items())):
        _write(folder / rel, size, seed=i)
    for rel, size in own.items():
        _write(folder / rel, size, seed=seed_bytes)
    m, torrent = make_release(folder, piece_size=1 * MB, version="1.0")
    write_release(m, torrent, root / f"{name}.toml")
    return folder, root / f"{name}.toml"


def _write(path: Path, size: int, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes())


@pytest.fixture()
def two_releases(tmp_path: Path, homes: Homes) -> tuple[str, Path, Path]:
    """v1 and v1.1 of a release (v1.1 changes one 5 MB file), seeded by node A."""
    src = tmp_path / "published"
    v1, v1_toml = _release(src, "family-v1", {"config.bin": 5 * MB}, seed_bytes=7)
    v11, v11_toml = _release(src, "family-v1.1", {"config.bin": 5 * MB}, seed_bytes=8)
    a = homes("a")
    for toml, folder in ((v1_toml, v1), (v11_toml, v11)):
        seed(a, load_manifest(toml), FetchOptions(directory=folder))
    return f"127.0.0.1:{DaemonClient(a).info['listen_port']}", v1_toml, v11_toml


def _fetch(home: Home, toml: Path, *args: str) -> subprocess.CompletedProcess[str]:
    p = cli(home, "fetch", str(toml), "--no-convert", "--timeout", "90", *args)
    assert p.returncode == 0, p.stderr
    return p


def _counted(home: Home, name: str, at_least: int) -> ReleaseStatus:
    """The finished release's status once its download counter reaches ``at_least`` (libtorrent
    adds up its totals once a second, so right after the last piece they can lag)."""
    deadline = time.monotonic() + 10
    while True:
        status = DaemonClient(home).status().release(name)
        assert status is not None and status.finished, status
        if status.downloaded >= at_least or time.monotonic() > deadline:
            assert status.downloaded >= at_least, status
            return status
        time.sleep(0.2)


def test_second_release_downloads_and_stores_only_what_differs(
    tmp_path: Path, homes: Homes, two_releases: tuple[str, Path, Path]
) -> None:
    peer, v1_toml, v11_toml = two_releases
    b = homes("b")
    store = Store(b.models_dir)
    _fetch(b, v1_toml, "--peer", peer)
    before = store.disk_usage()
    p = _fetch(b, v11_toml, "--peer", peer)

    status = _counted(b, "family-v1.1", at_least=5 * MB)
    # Only the 5 MB that differs crossed the wire (libtorrent counts payload; a few pieces of
    # slack for requests in flight), and the store grew by about as much.
    assert status.reused == 60 * MB and status.downloaded <= 5 * MB + 2 * MB, status
    grown = store.disk_usage() - before
    assert 5 * MB <= grown <= 5 * MB + 1 * MB, grown
    assert "was already on disk" in p.stderr, p.stderr

    v1, v11 = store.get("family-v1"), store.get("family-v1.1")
    for rel in SHARED:
        assert os.path.samefile(v1.source_dir / rel, v11.source_dir / rel)
    assert not os.path.samefile(v1.source_dir / "config.bin", v11.source_dir / "config.bin")
    assert v11.shared_bytes() == 60 * MB and v1.shared_bytes() == 60 * MB
    listing = cli(b, "list").stdout
    assert "60.0 MiB" in listing and "counted once" in listing, listing

    # The new release seeds all of its files, the linked ones too: a third node gets it from B alone.
    c = homes("c")
    b_peer = f"127.0.0.1:{DaemonClient(b).info['listen_port']}"
    cli(homes("a"), "stop", "family-v1.1")
    _fetch(c, v11_toml, "--peer", b_peer)
    got = Store(c.models_dir).get("family-v1.1").source_dir
    assert cli(c, "verify", str(v11_toml), "-d", str(got)).returncode == 0

    # rm frees only what no other release uses: v1.1 stays whole and verified.
    p = cli(b, "rm", "family-v1")
    assert p.returncode == 0 and "still used by other releases" in p.stdout, p.stdout + p.stderr
    assert cli(b, "verify", str(v11_toml), "-d", str(v11.source_dir)).returncode == 0
    assert all((v11.source_dir / rel).stat().st_nlink == 1 for rel in SHARED)
    assert 65 * MB <= store.disk_usage() <= 65 * MB + 64 * 1024  # + v1.1's manifest and records


def test_a_file_changed_behind_the_stores_back_is_not_passed_on(
    tmp_path: Path, homes: Homes, two_releases: tuple[str, Path, Path]
) -> None:
    peer, v1_toml, v11_toml = two_releases
    b = homes("b")
    store = Store(b.models_dir)
    _fetch(b, v1_toml, "--peer", peer)
    tampered = store.get("family-v1").source_dir / "model-00001.safetensors"
    with open(tampered, "r+b") as f:  # same size, one byte changed
        f.seek(12345)
        f.write(bytes([f.read(1)[0] ^ 1]))
    changed = tampered.read_bytes()

    _fetch(b, v11_toml, "--peer", peer)
    status = _counted(b, "family-v1.1", at_least=35 * MB)
    assert status.reused == 30 * MB, status
    v11 = store.get("family-v1.1")
    assert not os.path.samefile(tampered, v11.source_dir / "model-00001.safetensors")
    assert tampered.read_bytes() == changed  # the user's change is theirs: never written over
    assert cli(b, "verify", str(v11_toml), "-d", str(v11.source_dir)).returncode == 0


def test_into_a_users_folder_files_are_copied_not_linked(
    tmp_path: Path, homes: Homes, two_releases: tuple[str, Path, Path]
) -> None:
    peer, v1_toml, v11_toml = two_releases
    b = homes("b")
    _fetch(b, v1_toml, "--peer", peer)
    mine = tmp_path / "my-models" / "v1.1"
    _fetch(b, v11_toml, "--peer", peer, "--dir", str(mine))
    status = DaemonClient(b).status().release("family-v1.1")
    assert status is not None and status.reused == 60 * MB, status
    for rel in SHARED:
        assert (mine / rel).stat().st_nlink == 1  # an edit in the user's folder reaches no release
    assert cli(b, "verify", str(v11_toml), "-d", str(mine)).returncode == 0


_REUSE_CHILD = """
import sys
from pathlib import Path
from llamashare.manifests.manifest import load_manifest
from llamashare.reuse import reuse_stored_files
from llamashare.store import Store
store, manifest = Store(Path(sys.argv[1])), load_manifest(Path(sys.argv[2]))
print("ready", flush=True)
reuse_stored_files(store, manifest, Path(sys.argv[3]))
print("done", flush=True)
"""


def test_kill_during_placement_leaves_each_file_whole_or_absent(tmp_path: Path) -> None:
    """kill -9 at several moments of copying files out of the store: every path is then either
    missing or the complete, verified file, and a second run finishes the tree."""
    src = tmp_path / "published"
    _, v1_toml = _release(src, "family-v1", {"config.bin": 5 * MB}, seed_bytes=7)
    _, v11_toml = _release(src, "family-v1.1", {"config.bin": 5 * MB}, seed_bytes=8)
    store = Store(tmp_path / "models")
    v1 = store.add(load_manifest(v1_toml))
    for f in load_manifest(v1_toml).files:
        (v1.source_dir / f.path).parent.mkdir(parents=True, exist_ok=True)
        os.link(src / "family-v1" / f.path, v1.source_dir / f.path)
    m = load_manifest(v11_toml)

    def start(out: Path) -> subprocess.Popen[bytes]:
        child = subprocess.Popen(
            [sys.executable, "-c", _REUSE_CHILD, str(store.root), str(v11_toml), str(out)], stdout=subprocess.PIPE
        )
        assert child.stdout is not None and child.stdout.readline() == b"ready\n"
        return child

    # How long placing takes here, uncut; then cut it at fractions of that.
    child, t0 = start(tmp_path / "whole"), time.monotonic()
    assert child.stdout is not None and child.stdout.readline() == b"done\n"
    took = time.monotonic() - t0
    child.wait(timeout=30)
    cut_short = 0
    for attempt, fraction in enumerate((0.2, 0.4, 0.6, 0.8)):
        out = tmp_path / f"out{attempt}"  # a user's folder: copies, slow enough to cut short
        child = start(out)
        time.sleep(took * fraction)
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=30) in (-signal.SIGKILL, 0)
        _assert_whole_or_absent(m, out)
        had = _present(m, out)
        cut_short += had != set(SHARED) and (bool(had) or bool(list(out.rglob(f"*{COPY_SUFFIX}"))))
        placed = reuse_stored_files(store, m, out)
        assert {r.path for r in placed} == set(SHARED) - had and all(not r.linked for r in placed)
        assert _present(m, out) == set(SHARED) and not list(out.rglob(f"*{COPY_SUFFIX}"))
        _assert_whole_or_absent(m, out)
    assert cut_short >= 1, "no kill landed while a file was being placed"


def _present(m: Manifest, folder: Path) -> set[str]:
    return {f.path for f in m.files if (folder / f.path).exists()}


def _assert_whole_or_absent(m: Manifest, folder: Path) -> None:
    from llamashare.manifests.hashing import Hasher

    with Hasher() as hasher:
        for f in m.files:
            path = folder / f.path
            if path.exists():
                d = hasher.hash_file(path, sha256=False)
                assert f.mismatch(d.size, d.blake3) is None, f.path
