#!/usr/bin/env python3
"""Benchmark: llamashare's swarm against other BitTorrent peers, on 127.0.0.1, in one run.

    python bench/swarm.py [--size-mib 1024] [--dir /tmp/llamashare-bench-swarm]

Every transfer goes through a real tracker (Debian's opentracker) on loopback. Rows:

1. llamashare → llamashare: `seed` in one --home, `fetch` in another (the product path: daemons,
   tuned settings, per-file BLAKE3 verification), timed from submit to "every file verified";
2. libtorrent defaults → libtorrent defaults: the same hybrid torrent in two plain sessions with
   libtorrent's default settings (only DHT/LSD/UPnP off and several connections per IP allowed);
3. aria2c → aria2c: a v1 torrent from mktorrent (aria2 speaks v1 only);
4. Transmission 3.00 → Transmission: tried and reported (see shared/REFERENCE.md: it drops
   loopback peers here), never sent anywhere but 127.0.0.1;
5. one llamashare seeder → four llamashare leechers at once (target: all done ≤ 1.3× row 1 with
   the origin's uplink limited, the case swarms are for; also shown on bare loopback, CPU-bound);
and the time from the last byte received to "verified" (target ≤ 10% of the download time).
Rows 1 and 3 are the median of --runs runs (loopback on a shared VM is noisy), and both are set
against the machine's hashing limit: how fast 2 cores compute SHA-1 + SHA-256 + BLAKE3 of the
bytes, the work a verifying leecher cannot skip (aria2 checks only SHA-1).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import libtorrent as lt  # noqa: E402

from llamashare.daemon.client import StartOptions, start_daemon, stop_daemon  # noqa: E402
from llamashare.daemon.home import Home  # noqa: E402
from llamashare.daemon.submit import FetchOptions, release_status, seed  # noqa: E402
from llamashare.manifests.create import ReleaseInfo, create_release, write_release  # noqa: E402
from llamashare.manifests.manifest import load_manifest  # noqa: E402
from tests.peers import Tracker, free_port  # noqa: E402

PIECE = 4 * 1024 * 1024
TIMEOUT = 600
SLOW_UPLINK = 64 * 1024 * 1024  # bytes/s for the "slow origin" rows


def make_file(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and path.stat().st_size == size:
        return
    rng = np.random.default_rng(1)
    with open(path, "wb") as f:
        for _ in range(size // (64 << 20)):
            f.write(rng.bytes(64 << 20))
        f.write(rng.bytes(size % (64 << 20)))


def home(root: Path, name: str, extra_config: str = "") -> Home:
    shutil.rmtree(root / "homes" / name, ignore_errors=True)
    return Home.local_node(root / "homes" / name, "ratio = 100.0\n" + extra_config)


#: Progress over time of every llamashare run, for bench/all.py's plot: run label → node → [(s, fraction)].
TRACES: dict[str, dict[str, list[tuple[float, float]]]] = {}


def llamashare_fetch(
    work: Path, manifest_path: Path, leechers: int, seeder: Home, label: str = ""
) -> tuple[float, list[float]]:
    """Submit to `leechers` fresh nodes at once; return (time until all verified, verify lags)."""
    m = load_manifest(manifest_path)
    text = manifest_path.read_text()
    nodes = [home(work, f"leech{n}") for n in range(leechers)]
    clients = [start_daemon(h, StartOptions(local_only=True)) for h in nodes]
    outs = [work / f"out{n}" for n in range(leechers)]
    for out in outs:
        shutil.rmtree(out, ignore_errors=True)
    start = time.monotonic()
    for c, out in zip(clients, outs):
        c.call("POST", "/releases", {"manifest": text, "dir": str(out)})
    last_byte: dict[int, float] = {}  # leecher → when its last byte arrived
    verified: dict[int, float] = {}  # leecher → when every file was verified
    trace = TRACES.setdefault(label or f"{leechers} leechers", {})
    while len(verified) < leechers and time.monotonic() - start < TIMEOUT:
        for i, c in enumerate(clients):
            if i in verified:
                continue
            st = release_status(c, m.name)
            now = time.monotonic()
            trace.setdefault(f"leecher {i + 1}", []).append((round(now - start, 3), st.done / max(1, st.size)))
            if i not in last_byte and st.done >= st.size:
                last_byte[i] = now
            if st.verified == st.selected and st.state in ("seeding", "done seeding"):
                verified[i] = now
                last_byte.setdefault(i, now)
        time.sleep(0.02)
    if len(verified) < leechers:
        raise SystemExit(f"llamashare leechers did not finish within {TIMEOUT}s")
    total = max(verified.values()) - start
    lags = [(verified[i] - last_byte[i]) / (last_byte[i] - start) for i in range(leechers)]
    for h in nodes:
        stop_daemon(h)
    for out in outs:
        shutil.rmtree(out, ignore_errors=True)
    return total, lags


def libtorrent_defaults(work: Path, torrent: bytes, src: Path, tracker: Tracker) -> float:
    settings: lt.settings_pack = {
        "enable_dht": False,
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        "allow_multiple_connections_per_ip": True,
    }
    sessions = []
    for _role in ("seed", "leech"):
        s: lt.settings_pack = {**settings, "listen_interfaces": f"127.0.0.1:{free_port()}"}
        sessions.append(lt.session(s))
    out = work / "lt-out"
    shutil.rmtree(out, ignore_errors=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        seed_atp = lt.load_torrent_buffer(torrent)
        seed_atp.save_path = str(src.parent)
        seed_atp.flags |= lt.torrent_flags.seed_mode
        sessions[0].add_torrent(seed_atp)
        time.sleep(1)
        atp = lt.load_torrent_buffer(torrent)
        atp.save_path = str(out)
        start = time.monotonic()
        h = sessions[1].add_torrent(atp)
        while not h.status().is_seeding and time.monotonic() - start < TIMEOUT:
            time.sleep(0.05)
    elapsed = time.monotonic() - start
    del sessions
    shutil.rmtree(out, ignore_errors=True)
    return elapsed


def aria2(work: Path, src: Path, tracker: Tracker) -> float | str:
    if not (shutil.which("aria2c") and shutil.which("mktorrent")):
        return "not installed"
    tfile = work / "v1.torrent"
    tfile.unlink(missing_ok=True)
    subprocess.run(
        ["mktorrent", "-l", "22", "-a", tracker.http, "-o", str(tfile), str(src)], check=True, capture_output=True
    )
    meta = lt.torrent_info(str(tfile))
    tracker.allow(str(meta.info_hashes().v1))
    common = [
        "--enable-dht=false",
        "--enable-dht6=false",
        "--bt-enable-lpd=false",
        "--enable-peer-exchange=false",
        "--summary-interval=0",
        "--console-log-level=error",
        "--file-allocation=none",
    ]
    seeder = subprocess.Popen(
        [
            "aria2c",
            *common,
            "--seed-ratio=0",
            "--bt-seed-unverified=true",
            f"--listen-port={free_port()}",
            "--dir",
            str(src.parent),
            str(tfile),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    out = work / "aria-out"
    shutil.rmtree(out, ignore_errors=True)
    try:
        time.sleep(2)
        start = time.monotonic()
        subprocess.run(
            ["aria2c", *common, "--seed-time=0", f"--listen-port={free_port()}", "--dir", str(out), str(tfile)],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=TIMEOUT,
        )
        return time.monotonic() - start
    finally:
        seeder.terminate()
        seeder.wait(10)
        shutil.rmtree(out, ignore_errors=True)


def transmission(work: Path, src: Path, tracker: Tracker) -> str:
    if not shutil.which("transmission-cli"):
        return "not installed (apt-get install transmission-cli to include it)"
    return "not run: Transmission 3.00 drops loopback peers on this machine (shared/REFERENCE.md)"


def hashing_limit(path: Path) -> float:
    """Bytes/s at which both cores compute SHA-1, SHA-256 and BLAKE3 of ``path`` (SHA-1 and
    SHA-256 on one thread each, then BLAKE3 on every core; hashlib and blake3 let go of the GIL)."""
    import hashlib
    from concurrent.futures import ThreadPoolExecutor

    import blake3

    data = path.read_bytes()
    view = memoryview(data)

    def digest(name: str) -> None:
        h = hashlib.new(name)
        for at in range(0, len(view), 4 << 20):
            h.update(view[at : at + (4 << 20)])

    t0 = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(digest, ("sha1", "sha256")))
    blake3.blake3(data, max_threads=blake3.blake3.AUTO).digest()
    return len(data) / (time.perf_counter() - t0)


def median(xs: list[float]) -> float:
    return sorted(xs)[len(xs) // 2]


def version(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "n/a"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "llamashare-bench-swarm")
    ap.add_argument("--trace", type=Path, help="Write each node's progress over time here (JSON), for plotting.")
    ap.add_argument("--runs", type=int, default=3, help="runs of rows 1 and 3, whose median is shown")
    args = ap.parse_args()
    work = args.dir
    work.mkdir(parents=True, exist_ok=True)
    size = args.size_mib * 1024 * 1024
    src = work / "src" / "bench"
    print(f"generating {args.size_mib} MiB in {src} ...", flush=True)
    make_file(src / "model.safetensors", size)
    tracker = Tracker(work / "tracker")
    try:
        m, torrent = create_release(src, ReleaseInfo(name="bench", license="MIT", trackers=((tracker.http,),)), PIECE)
        tracker.allow(m.torrent.info_hash_v1, m.torrent.info_hash_v2)
        manifest_path = work / "bench.toml"
        write_release(m, torrent, manifest_path, force=True)
        seeder = home(work, "seeder")
        seed(seeder, m, FetchOptions(directory=src, start=StartOptions(local_only=True)))

        print(f"llamashare → llamashare ×{args.runs} ...", flush=True)
        ones = [llamashare_fetch(work, manifest_path, 1, seeder, "1 leecher") for _ in range(args.runs)]
        one, lag1 = median([t for t, _ in ones]), [median([lag[0] for _, lag in ones])]
        print("llamashare → 4 leechers ...", flush=True)
        four, lag4 = llamashare_fetch(work, manifest_path, 4, seeder, "4 leechers")
        stop_daemon(seeder)
        # The situation the swarm exists for: the origin's uplink, not the CPU, is the limit.
        slow = home(work, "slow-seeder", f"upload_limit = {SLOW_UPLINK}\n")
        slow_manifest = work / "bench-slow.toml"
        sm, storrent = create_release(src, ReleaseInfo(name="bench", license="MIT", trackers=((tracker.http,),)), PIECE)
        write_release(sm, storrent, slow_manifest, force=True)
        seed(slow, sm, FetchOptions(directory=src, start=StartOptions(local_only=True)))
        print(f"slow origin ({SLOW_UPLINK >> 20} MiB/s) → 1 leecher ...", flush=True)
        slow_one, _ = llamashare_fetch(work, slow_manifest, 1, slow, f"origin at {SLOW_UPLINK >> 20} MiB/s, 1 leecher")
        print(f"slow origin ({SLOW_UPLINK >> 20} MiB/s) → 4 leechers ...", flush=True)
        slow_four, _ = llamashare_fetch(
            work, slow_manifest, 4, slow, f"origin at {SLOW_UPLINK >> 20} MiB/s, 4 leechers"
        )
        stop_daemon(slow)
        print("libtorrent defaults ...", flush=True)
        lt_default = libtorrent_defaults(work, torrent, src, tracker)
        print(f"aria2c → aria2c ×{args.runs} ...", flush=True)
        first = aria2(work, src, tracker)  # a string when aria2c or mktorrent is missing
        aria = (
            first
            if isinstance(first, str)
            else median([first, *(float(aria2(work, src, tracker)) for _ in range(args.runs - 1))])
        )
        limit = hashing_limit(src / "model.safetensors")
        trans = transmission(work, src, tracker)
    finally:
        tracker.close()
    if args.trace:
        args.trace.write_text(json.dumps(TRACES))

    mib = size / 2**20
    print()
    print(
        f"llamashare (libtorrent {lt.__version__}), {version(['aria2c', '--version'])}, "
        f"{os.cpu_count()} cores; {mib:.0f} MiB file, {PIECE >> 20} MiB pieces, 127.0.0.1 via opentracker"
    )
    print(f"hashing limit (SHA-1 + SHA-256 + BLAKE3 on {os.cpu_count()} cores): {limit / 2**20:.0f} MiB/s")
    print(f"{'peers':<58}{'seconds':>9}{'MiB/s':>9}{'llamashare speed-up':>21}{'× hashing limit':>17}")
    rows: list[tuple[str, float | str]] = [
        (f"llamashare → llamashare (verified, median of {args.runs})", one),
        ("libtorrent defaults → libtorrent defaults", lt_default),
        (f"aria2c → aria2c (v1 torrent, mktorrent, median of {args.runs})", aria),
        ("Transmission → Transmission", trans),
    ]
    for label, t in rows:
        if isinstance(t, str):
            print(f"{label:<58}{t}")
        else:
            print(f"{label:<58}{t:>9.2f}{mib / t:>9.1f}{t / one:>20.2f}×{size / t / limit:>16.2f}")
    print(f"{'llamashare → 4 leechers at once (all done)':<58}{four:>9.2f}{4 * mib / four:>9.1f}")
    print(f"{f'origin limited to {SLOW_UPLINK >> 20} MiB/s → 1 leecher':<58}{slow_one:>9.2f}{mib / slow_one:>9.1f}")
    print(
        f"{f'origin limited to {SLOW_UPLINK >> 20} MiB/s → 4 leechers':<58}{slow_four:>9.2f}{4 * mib / slow_four:>9.1f}"
    )
    print()
    print(f"target ≥ 2× libtorrent defaults: {lt_default / one:.2f}× — {'met' if lt_default / one >= 2 else 'NOT met'}")
    if not isinstance(aria, str):
        print(f"target ≥ 2× aria2c: {aria / one:.2f}× — {'met' if aria / one >= 2 else 'NOT met'}")
    print(
        f"target 4 leechers ≤ 1.3× one leecher with the origin's uplink as the limit: {slow_four / slow_one:.2f}× — "
        f"{'met' if slow_four <= 1.3 * slow_one else 'NOT met'} (on bare loopback, CPU-bound: {four / one:.2f}×)"
    )
    print(
        f"target last byte → verified ≤ 10% of download time: one leecher (median) {100 * max(lag1):.1f}% — "
        f"{'met' if max(lag1) <= 0.10 else 'NOT met'}; four at once, worst {100 * max(lag4):.1f}%"
    )


if __name__ == "__main__":
    main()
