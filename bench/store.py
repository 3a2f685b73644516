#!/usr/bin/env python3
"""Benchmark: one copy of every byte (issue 26), in one run on 127.0.0.1.

    python bench/store.py [--shared-mib 30] [--own-mib 5] [--snapshot-gib 1] [--dir /tmp/llamashare-bench-store]

1. **Two releases sharing files.** v1 and v1.1 of a release share two files of SHARED MiB and
   differ in one file of OWN MiB. One node (daemons and CLI as a user runs them) fetches v1 then
   v1.1 into its store; the peer it is compared with is the same two fetches without sharing, each
   into a node of its own. Bytes downloaded (the daemon's payload counter) and stored (the store's
   files, each inode once).
2. **Publishing a Hugging Face cache snapshot.** A SNAPSHOT GiB snapshot in huggingface_hub's
   layout (blobs named by SHA-256, relative symlinks; tests/test_hf_cache.py checks that layout
   with huggingface_hub itself). In place: ``create`` on the snapshot, then ``seed`` it where it
   is. The peer: copy it into a plain folder first (``cp -rL``), then ``create`` and ``seed`` the
   copy, as publishing a cache snapshot needed before. Page cache warm for both; median of 3.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.measure import warm_page_cache  # noqa: E402
from llamashare.daemon.client import DaemonClient, stop_daemon  # noqa: E402
from llamashare.daemon.home import Home  # noqa: E402
from llamashare.store import Store  # noqa: E402

MIB = 1 << 20
TIMEOUT = 600


def cli(home: Home, *args: str) -> str:
    p = subprocess.run(
        [sys.executable, "-m", "llamashare", "--home", str(home.root), *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd=REPO,
    )
    if p.returncode:
        raise SystemExit(f"llamashare {' '.join(args)} failed:\n{p.stderr[-3000:]}")
    return p.stdout


def write_random(path: Path, size: int, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    with open(path, "wb") as f:
        for start in range(0, size, 64 * MIB):
            f.write(rng.integers(0, 256, min(64 * MIB, size - start), dtype=np.uint8).tobytes())


def downloaded(home: Home, name: str, at_least: int) -> int:
    """The release's payload counter once it has caught up (libtorrent adds up once a second)."""
    deadline = time.monotonic() + 15
    while True:
        status = DaemonClient(home).status().release(name)
        assert status is not None
        if status.downloaded >= at_least or time.monotonic() > deadline:
            return status.downloaded
        time.sleep(0.2)


def shared_releases(root: Path, shared: int, own: int) -> list[tuple[str, str, str]]:
    homes: list[Home] = []

    def home(name: str) -> Home:
        h = Home.local_node(root / "homes" / name, "ratio = 100.0\n")
        homes.append(h)
        return h

    try:
        origin = home("origin")
        tomls = {}
        for i, name in enumerate(("family-v1", "family-v1.1")):
            folder = root / "published" / name
            write_random(folder / "model-00001.safetensors", shared, seed=1)
            write_random(folder / "model-00002.safetensors", shared, seed=2)
            write_random(folder / "config.bin", own, seed=10 + i)
            tomls[name] = root / "published" / f"{name}.toml"
            cli(origin, "create", str(folder), "--license", "MIT", "-o", str(tomls[name]), "-q")
            cli(origin, "seed", str(tomls[name]), "--dir", str(folder))
        peer = f"127.0.0.1:{DaemonClient(origin).info['listen_port']}"
        total = 2 * shared + own

        def fetch(h: Home, name: str) -> None:
            cli(h, "fetch", str(tomls[name]), "--no-convert", "--peer", peer, "-q", "--timeout", str(TIMEOUT))

        one = home("one-store")
        fetch(one, "family-v1")
        fetch(one, "family-v1.1")
        ours_down = downloaded(one, "family-v1", total) + downloaded(one, "family-v1.1", own)
        ours_stored = Store(one.models_dir).disk_usage()
        whole_down = whole_stored = 0
        for name in tomls:
            h = home(f"alone-{name}")
            fetch(h, name)
            whole_down += downloaded(h, name, total)
            whole_stored += Store(h.models_dir).disk_usage()
        return [
            ("fetched whole, each release alone (the peer)", f"{whole_down / MIB:.1f}", f"{whole_stored / MIB:.1f}"),
            ("llamashare store, v1 then v1.1", f"{ours_down / MIB:.1f}", f"{ours_stored / MIB:.1f}"),
            ("ratio (store ÷ whole)", f"{ours_down / whole_down:.2f}", f"{ours_stored / whole_stored:.2f}"),
        ]
    finally:
        for h in homes:
            stop_daemon(h)


def make_snapshot(hub: Path, size: int) -> Path:
    """A snapshot in huggingface_hub's layout: two shards (LFS: blobs named by SHA-256) and a config."""
    repo = hub / "models--bench--one-gib"
    commit = "1" * 40
    snap = repo / "snapshots" / commit
    files = {"model-00001-of-00002.safetensors": size // 2, "model-00002-of-00002.safetensors": size - size // 2}
    for i, (rel, n) in enumerate(files.items()):
        tmp = repo / "blobs" / f"tmp{i}"
        write_random(tmp, n, seed=100 + i)
        sha = hashlib.sha256()
        with open(tmp, "rb") as f:
            while chunk := f.read(16 * MIB):
                sha.update(chunk)
        blob = tmp.with_name(sha.hexdigest())
        tmp.rename(blob)
        (snap / rel).parent.mkdir(parents=True, exist_ok=True)
        (snap / rel).symlink_to(os.path.relpath(blob, snap))
    config = b'{"architectures": ["LlamaForCausalLM"]}\n'
    git = hashlib.sha1(b"blob %d\0" % len(config) + config).hexdigest()
    (repo / "blobs" / git).write_bytes(config)
    (snap / "config.json").symlink_to(f"../../blobs/{git}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return snap


def publish_snapshot(root: Path, size: int, repeats: int) -> list[tuple[str, str, str]]:
    snap = make_snapshot(root / "hub", size)
    blobs = sorted((snap.parent.parent / "blobs").iterdir())
    in_place: list[float] = []
    copied: list[float] = []
    for r in range(repeats):
        for way in ("in place", "copy first"):
            warm_page_cache(blobs)
            home = Home.local_node(root / "homes" / f"{way.replace(' ', '-')}-{r}")
            start = time.monotonic()
            folder = snap
            if way == "copy first":
                folder = root / f"copy-{r}" / "one-gib"
                folder.parent.mkdir(parents=True)
                subprocess.run(["cp", "-rL", str(snap), str(folder)], check=True, timeout=TIMEOUT)
            toml = root / "manifests" / f"{way.replace(' ', '-')}-{r}" / "one-gib.toml"
            toml.parent.mkdir(parents=True)
            cli(home, "create", str(folder), "--name", "one-gib", "--license", "MIT", "-o", str(toml), "-q")
            cli(home, "seed", str(toml), "--dir", str(folder))
            (in_place if way == "in place" else copied).append(time.monotonic() - start)
            stop_daemon(home)
            if way == "copy first":
                shutil.rmtree(folder.parent)
    a, b = statistics.median(in_place), statistics.median(copied)
    return [
        ("copy first (`cp -rL`), then create + seed (the peer)", f"{b:.2f}", f"{size / MIB:.0f}"),
        ("llamashare, in place: create + seed", f"{a:.2f}", "0"),
        ("ratio (in place ÷ copy first)", f"{a / b:.2f}", ""),
    ]


def table(head: tuple[str, str, str], rows: list[tuple[str, str, str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|---|---|---|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared-mib", type=int, default=30)
    ap.add_argument("--own-mib", type=int, default=5)
    ap.add_argument("--snapshot-gib", type=float, default=1.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/llamashare-bench-store"))
    args = ap.parse_args()
    shutil.rmtree(args.dir, ignore_errors=True)
    args.dir.mkdir(parents=True)
    try:
        rows = shared_releases(args.dir / "shared", args.shared_mib * MIB, args.own_mib * MIB)
        print(
            f"Two releases sharing two {args.shared_mib} MiB files, each with one {args.own_mib} MiB file of its own:\n"
        )
        print(table(("", "downloaded MiB", "stored MiB"), rows))
        print()
        size = int(args.snapshot_gib * (1 << 30))
        rows = publish_snapshot(args.dir / "hf", size, args.repeats)
        print(f"Publishing a {args.snapshot_gib:g} GiB Hugging Face cache snapshot, median of {args.repeats}:\n")
        print(table(("", "seconds", "extra MiB on disk"), rows))
    finally:
        shutil.rmtree(args.dir, ignore_errors=True)


if __name__ == "__main__":
    main()
