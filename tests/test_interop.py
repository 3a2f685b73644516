"""Interop with a v1-only client (aria2c) through a release's v1 twin torrent, over a real tracker.

aria2 1.36 cannot join the hybrid swarm (it re-encodes the info dictionary without the v2 file
tree's empty keys, so it computes another info-hash); `create --v1-twin` pins a v1-only twin
whose pieces are the hybrid's v1 pieces, and llamashare nodes run both torrents.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from llamashare.manifests.create import ReleaseInfo, create_release
from llamashare.manifests.torrent import info_hash_v1, v1_companion
from llamashare.p2p.node import Node, ReleaseSpec
from llamashare.p2p.status import FileStatus, State
from tests.peers import Tracker, free_port, require
from tests.test_swarm import LOCAL, make_payload, run_until, same_bytes

ARIA2 = [
    "--enable-dht=false",
    "--enable-dht6=false",
    "--bt-enable-lpd=false",
    "--enable-peer-exchange=false",
    "--summary-interval=0",
    "--console-log-level=error",
    "--file-allocation=none",
    "--bt-stop-timeout=60",
]


@pytest.fixture
def tracker(tmp_path: Path) -> Iterator[Tracker]:
    t = Tracker(tmp_path / "tracker")
    yield t
    t.close()


@pytest.mark.slow
def test_llamashare_seeds_aria2_then_aria2_seeds_llamashare(tmp_path: Path, tracker: Tracker) -> None:
    aria2c = require("aria2c")
    src = tmp_path / "src" / "model"
    make_payload(src, {"model-00001.safetensors": 700_001, "model-00002.safetensors": 300_000, "config.json": 500})
    m, hybrid = create_release(
        src, ReleaseInfo(name="model", license="MIT", trackers=((tracker.http,),)), 64 * 1024, v1_twin=True
    )
    twin_file = tmp_path / "model.v1.torrent"
    twin_file.write_bytes(v1_companion(hybrid))
    assert m.torrent.v1_twin == info_hash_v1(twin_file.read_bytes())
    tracker.allow(m.torrent.info_hash_v1, m.torrent.info_hash_v2)
    tracker.allow(m.torrent.v1_twin)

    # 1. llamashare (the publisher) seeds; aria2c downloads the twin and the bytes match.
    origin = Node(tmp_path / "origin", LOCAL)
    aria_dir = tmp_path / "aria"
    try:
        origin.add(m, ReleaseSpec(name=m.name, save_dir=str(src), seed_forever=True))
        twin = origin.releases[m.name].twin
        assert twin is not None  # the manifest pins a v1 twin
        run_until([origin], lambda: twin.status().is_seeding, timeout=10)
        aria = subprocess.Popen(
            [aria2c, *ARIA2, "--seed-time=0", f"--listen-port={free_port()}", "--dir", str(aria_dir), str(twin_file)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        run_until([origin], lambda: aria.poll() is not None, timeout=60)
        assert aria.stdout is not None  # stdout=PIPE
        assert aria.returncode == 0, aria.stdout.read().decode(errors="replace")[-2000:]
        assert same_bytes(src, aria_dir / m.name, m)
        assert origin.status()[0].uploaded >= m.total_size
    finally:
        origin.close()

    # 2. Only aria2c seeds now; a llamashare fetch finds no hybrid peer, downloads through the
    #    twin, verifies every file against the manifest, then seeds both torrents.
    seeder = subprocess.Popen(
        [
            aria2c,
            *ARIA2,
            "--seed-ratio=0",
            "--bt-seed-unverified=true",
            f"--listen-port={free_port()}",
            "--dir",
            str(aria_dir),
            str(twin_file),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    leech = Node(tmp_path / "leech", LOCAL)
    out = tmp_path / "out"
    try:
        leech.add(m, ReleaseSpec(name=m.name, save_dir=str(out), ratio=10.0))
        run_until([leech], lambda: leech.releases[m.name].state is State.SEEDING, timeout=90)
        r = leech.releases[m.name]
        assert r.via_twin and set(r.files.values()) == {FileStatus.VERIFIED}
        assert same_bytes(src, out, m)
        # The hybrid torrent, which downloaded nothing, now has every piece too.
        run_until([leech], lambda: all(h.status().is_seeding for h in r.handles), timeout=10)
        assert leech.status()[0].via == "v1 twin"
    finally:
        leech.close()
        seeder.terminate()
        seeder.wait(10)
