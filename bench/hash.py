#!/usr/bin/env python3
"""Benchmark: `llamashare create` against libtorrent's own torrent creation, in the same run.

    python bench/hash.py [--size-gib 2] [--repeats 3] [--dir /tmp/llamashare-bench-hash]

Generates a directory of model-like shards (random bytes, four files), warms the page cache, then
times each contender in its own subprocess (so each has its own peak RSS), interleaved, and
prints medians and ratios:

- llamashare create: hybrid torrent + BLAKE3 + SHA-256 + the validated manifest, one read per file;
- libtorrent alone: create_torrent (hybrid v1+v2) + set_piece_hashes on the same files;
- BLAKE3 alone: the blake3 package over the same files, 8 MiB reads.

Target (issue 3): create ≤ 1.5× libtorrent alone; create's peak memory does not grow with size
(the table also runs create on a quarter of the data to show that).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.measure import measure, warm_page_cache  # noqa: E402

PIECE = 4 * 1024 * 1024

CONTENDERS = {
    "create": """
from llamashare.manifests.create import ReleaseInfo, create_release
create_release(root, ReleaseInfo(name="bench", license="MIT"), piece_size=PIECE)
""",
    "libtorrent": """
import warnings, libtorrent as lt
warnings.simplefilter("ignore", DeprecationWarning)
fs = lt.file_storage(); lt.add_files(fs, str(root))
ct = lt.create_torrent(fs, PIECE); lt.set_piece_hashes(ct, str(root.parent)); lt.bencode(ct.generate())
""",
    "blake3": """
import blake3
for p in sorted(root.iterdir()):
    h = blake3.blake3(max_threads=blake3.blake3.AUTO)
    with open(p, "rb", buffering=0) as f:
        while chunk := f.read(8 << 20):
            h.update(chunk)
    h.hexdigest()
""",
}


def make_shards(root: Path, total: int, files: int = 4) -> None:
    root.mkdir(parents=True, exist_ok=True)
    each = total // files
    rng = np.random.default_rng(0)
    for i in range(files):
        path = root / f"model-{i + 1:05d}-of-{files:05d}.safetensors"
        if path.exists() and path.stat().st_size == each:
            continue
        with open(path, "wb") as f:
            for _ in range(each // (64 << 20)):
                f.write(rng.bytes(64 << 20))
            f.write(rng.bytes(each % (64 << 20)))


def run(contender: str, root: Path) -> dict:
    return measure(contender, CONTENDERS[contender], {"root": root, "PIECE": PIECE}, timeout=600)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-gib", type=float, default=2.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/llamashare-bench-hash"))
    args = ap.parse_args()
    total = int(args.size_gib * 1024**3)
    big, small = args.dir / "big", args.dir / "small"
    print(f"generating {args.size_gib} GiB in {big} (and a quarter of it in {small}) ...", flush=True)
    make_shards(big, total)
    make_shards(small, total // 4)
    warm_page_cache([p for root in (big, small) for p in root.iterdir()])
    results: dict[str, list[dict]] = {"create": [], "libtorrent": [], "blake3": [], "create (¼ size)": []}
    for r in range(args.repeats):
        for name in ("create", "libtorrent", "blake3"):
            results[name].append(run(name, big))
        results["create (¼ size)"].append(run("create", small))
        print(f"  round {r + 1}/{args.repeats} done", flush=True)

    import blake3
    import libtorrent

    from llamashare import __version__

    med = {k: statistics.median(x["seconds"] for x in v) for k, v in results.items()}
    rss = {k: max(x["max_rss_kib"] for x in v) / 1024 for k, v in results.items()}
    print()
    print(
        f"llamashare {__version__}, libtorrent {libtorrent.__version__}, blake3 {blake3.__version__}, "
        f"Python {platform.python_version()}, {os.cpu_count()} cores; piece size {PIECE >> 20} MiB, "
        f"median of {args.repeats}"
    )
    print(f"{'contender':<34}{'data':>9}{'seconds':>9}{'GiB/s':>8}{'× libtorrent':>14}{'peak RSS MiB':>14}")
    sizes = {"create (¼ size)": total / 4}
    for name, label in (
        ("create", "llamashare create (all hashes)"),
        ("libtorrent", "libtorrent create_torrent alone"),
        ("blake3", "BLAKE3 alone"),
        ("create (¼ size)", "llamashare create, ¼ of the data"),
    ):
        size = sizes.get(name, total)
        ratio = med[name] / med["libtorrent"] * (total / size)
        print(
            f"{label:<34}{size / 1024**3:>8.2f}G{med[name]:>9.2f}{size / 1024**3 / med[name]:>8.2f}{ratio:>14.2f}{rss[name]:>14.0f}"
        )
    verdict = "met" if med["create"] <= 1.5 * med["libtorrent"] else "NOT met"
    print(f"\ntarget create ≤ 1.5× libtorrent alone: {med['create'] / med['libtorrent']:.2f}× — {verdict}")
    growth = rss["create"] - rss["create (¼ size)"]
    print(
        f"create peak RSS at full vs ¼ size: {rss['create']:.0f} vs {rss['create (¼ size)']:.0f} MiB "
        f"({growth:+.0f} MiB for +{0.75 * total / 1024**3:.1f} GiB of data)"
    )


if __name__ == "__main__":
    main()
