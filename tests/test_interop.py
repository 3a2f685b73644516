"""Interop with other BitTorrent clients, both ways, over a real tracker on loopback.

aria2c (v1 only) goes through a release's v1 twin: aria2 1.36 cannot join the hybrid swarm (it
re-encodes the info dictionary without the v2 file tree's empty keys, so it computes another
info-hash); `create --v1-twin` pins a v1-only twin whose pieces are the hybrid's v1 pieces, and
llamashare nodes run both torrents.

qBittorrent-nox (4.5 on libtorrent 2.0) joins the hybrid torrent itself, with its default
settings, which dial peers over uTP first (docs/interop.md).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import libtorrent as lt
import pytest

from llamashare.manifests.create import ReleaseInfo, create_release
from llamashare.manifests.torrent import info_hash_v1, v1_companion
from llamashare.p2p.node import Node, ReleaseSpec
from llamashare.p2p.status import FileStatus, State
from tests.peers import QBittorrent, Tracker, free_port, require
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


#: qBittorrent's torrent states once every byte is downloaded and checked.
QBT_SEEDING = {"uploading", "stalledUP", "queuedUP", "forcedUP"}
#: libtorrent's peer_info::utp_socket flag (bit 17), which the Python binding does not name.
UTP_SOCKET = 1 << 17


@pytest.fixture
def qbittorrent(tmp_path: Path) -> Iterator[QBittorrent]:
    q = QBittorrent(tmp_path / "qbittorrent")
    try:
        yield q
    finally:
        q.close()


def qbt_torrent(q: QBittorrent, info_hash_v1: str) -> dict | None:
    return next((t for t in q.torrents() if t.get("infohash_v1") == info_hash_v1), None)


def qbt_seeding(q: QBittorrent, info_hash_v1: str) -> bool:
    """Every byte downloaded and checked; seeding (or queued to seed)."""
    t = qbt_torrent(q, info_hash_v1)
    return t is not None and t["progress"] == 1 and t["amount_left"] == 0 and t["state"] in QBT_SEEDING


@pytest.mark.slow
def test_llamashare_seeds_qbittorrent_then_qbittorrent_seeds_llamashare(
    tmp_path: Path, tracker: Tracker, qbittorrent: QBittorrent
) -> None:
    q = qbittorrent
    assert (
        int(lt.peer_info.i2p_socket) == 1 << 16 and int(lt.peer_info.rc4_encrypted) == 1 << 19
    )  # UTP_SOCKET's neighbours
    src = tmp_path / "src" / "model"
    make_payload(src, {"model-00001.safetensors": 1_500_001, "model-00002.safetensors": 700_000, "config.json": 500})
    m, hybrid = create_release(src, ReleaseInfo(name="model", license="MIT", trackers=((tracker.http,),)), 64 * 1024)
    tracker.allow(m.torrent.info_hash_v1, m.torrent.info_hash_v2)
    try:
        # 1. llamashare (the publisher) seeds; qBittorrent, given the hybrid torrent and the seed as
        #    a peer (it also finds it through the tracker), downloads it; the bytes match.
        origin = Node(tmp_path / "origin", LOCAL)
        transports: set[str] = set()  # how qBittorrent's connections reached the seed

        def qbt_done() -> bool:
            for peer in origin.releases[m.name].handle.get_peer_info():
                transports.add("uTP" if peer.flags & UTP_SOCKET else "TCP")
            return qbt_seeding(q, m.torrent.info_hash_v1)

        handle_alert = origin._on_alert

        def spy(alert: lt.alert) -> None:  # every connection qBittorrent made, however short-lived
            if isinstance(alert, lt.incoming_connection_alert):
                utp = alert.socket_type in (lt.socket_type_t.utp, lt.socket_type_t.utp_ssl)
                transports.add("uTP" if utp else "TCP")
            handle_alert(alert)

        origin._on_alert = spy  # type: ignore[method-assign]
        try:
            origin.add(m, ReleaseSpec(name=m.name, save_dir=str(src), seed_forever=True))
            run_until([origin], lambda: origin.releases[m.name].handle.status().is_seeding, timeout=10)
            q.add(hybrid, q.downloads)
            run_until([origin], lambda: qbt_torrent(q, m.torrent.info_hash_v1) is not None, timeout=10)
            t = qbt_torrent(q, m.torrent.info_hash_v1)
            assert t is not None and t["infohash_v2"] == m.torrent.info_hash_v2  # the hybrid, not a v1 view
            q.add_peer(t["hash"], origin.listen_port)
            start = time.monotonic()
            run_until([origin], qbt_done, timeout=60)
            print(f"qBittorrent downloaded {m.total_size} bytes in {time.monotonic() - start:.1f} s via {transports}")
            # It dialled over uTP (its default), and the seed answered (p2p/settings.py).
            assert "uTP" in transports
            assert same_bytes(src, q.downloads / m.name, m)
            # libtorrent adds up transfer totals once a second.
            run_until([origin], lambda: origin.status()[0].uploaded >= m.total_size, timeout=5)
        finally:
            origin.close()

        # 2. Only qBittorrent seeds now; a llamashare fetch finds it through the tracker, downloads
        #    the hybrid torrent, verifies every file against the manifest, then seeds.
        leech = Node(tmp_path / "leech", LOCAL)
        out = tmp_path / "out"
        try:
            leech.add(m, ReleaseSpec(name=m.name, save_dir=str(out), ratio=10.0))
            run_until([leech], lambda: leech.releases[m.name].state is State.SEEDING, timeout=60)
            r = leech.releases[m.name]
            assert not r.via_twin and set(r.files.values()) == {FileStatus.VERIFIED}
            assert same_bytes(src, out, m)
            assert leech.status()[0].via == "hybrid"
            run_until([leech], lambda: leech.status()[0].downloaded >= m.total_size, timeout=5)
        finally:
            leech.close()
        # qBittorrent adds up its totals (libtorrent's, once a second) with its own delay.
        run_until([], lambda: (qbt_torrent(q, m.torrent.info_hash_v1) or {}).get("uploaded", 0) >= m.total_size, 10)
    except BaseException:
        print(q.describe())
        raise
