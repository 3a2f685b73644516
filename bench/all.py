#!/usr/bin/env python3
"""Run every benchmark at a size that fits a few minutes; write bench/RESULTS.md and a plot.

    python bench/all.py [--out bench] [--only swarm,infer]

With ``--only``, the other sections of an existing RESULTS.md are kept as they were (each says
when and on which machine it ran), so one table can be brought up to date on its own.

Each benchmark is its own script (see its docstring for what it compares against); this one runs
them one after another in fresh processes, keeps their tables verbatim (each figure beside the
peer it is compared with in the same run), records the machine and the versions, and draws each
swarm node's progress over time (``swarm-progress.png``; needs matplotlib: ``pip install -e
'.[bench]'``). Every run is bounded by its script's own limits and by TIMEOUT here.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

BENCH = Path(__file__).resolve().parent
TIMEOUT = 1800  # seconds per benchmark
#: name → (arguments for a few-minute run, what it measures)
RUNS = {
    "hash": (["--size-gib", "0.5", "--repeats", "2"], "publishing (create) against libtorrent's own torrent creation"),
    "swarm": (["--size-mib", "1024"], "fetching over BitTorrent on 127.0.0.1 against libtorrent defaults and aria2"),
    "swarm_scale": (
        [],
        "16 daemons sharing 256 MiB: the origin's upload against a central host and plain seeding; SIGKILL churn",
    ),
    "store": (
        ["--repeats", "3"],
        "one copy of every byte: two releases sharing files, and publishing a 1 GiB Hugging Face snapshot in place",
    ),
    "channels": (
        ["--nodes", "8", "--runs", "5"],
        "fetch by address alone: resolving ed25519:<key>/<name> in a loopback DHT against a magnet link",
    ),
    "convert": (
        ["--layers", "4", "--repeats", "2"],
        "convert (streaming) against the naive whole-tensor conversion and a disk copy",
    ),
    "quantize": (["--rows", "2048", "--repeats", "2"], "quantizing against gguf-py and llama.cpp's quantizer"),
    "infer": (
        ["--prompt-tokens", "64", "--gen-tokens", "32"],
        "SmolLM2-135M prompt and generation speed against llama.cpp",
    ),
    "startup": (
        ["--repeats", "3", "--cold"],
        "whole process: `llamashare run -n 1` and `-n 256` against a fresh llama-cpp-python process",
    ),
    "serve": (
        ["--streams", "1,4,8", "--tokens", "64"],
        "llamashare serve against llama-cpp-python's OpenAI server: 1, 4 and 8 concurrent streams",
    ),
    "families": (
        ["--prompt-tokens", "64", "--gen-tokens", "32", "--layers", "12", "--repeats", "3"],
        "every supported family (SmolLM2-135M's shape, 12 layers) against llama.cpp, beside the LLaMA path",
    ),
}
PACKAGES = ("numpy", "libtorrent", "blake3", "gguf", "safetensors", "tokenizers", "llama_cpp_python")


def machine() -> str:
    cpu = "unknown CPU"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB, {platform.system()} {platform.release()}"


def versions() -> str:
    out = [f"Python {platform.python_version()}"]
    for name in PACKAGES:
        try:
            out.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            out.append(f"{name} (not installed)")
    for tool in ("aria2c", "opentracker"):
        out.append(f"{tool} {'installed' if shutil.which(tool) else 'not installed'}")
    return ", ".join(out)


def run(name: str, args: list[str]) -> tuple[str, float, int]:
    start = time.monotonic()
    try:
        p = subprocess.run(
            [sys.executable, str(BENCH / f"{name}.py"), *args], capture_output=True, text=True, timeout=TIMEOUT
        )
    except subprocess.TimeoutExpired:
        return f"(stopped after {TIMEOUT} s)", TIMEOUT, -1
    text = p.stdout if p.returncode == 0 else p.stdout + p.stderr[-2000:]
    progress = re.compile(r"(.*\.\.\.|\s*round \d+/\d+ done)\s*$")  # "running X ...", "round 1/3 done"
    lines = [line for line in text.splitlines() if not progress.fullmatch(line)]
    return "\n".join(lines).strip(), time.monotonic() - start, p.returncode


def plot(trace_file: Path, png: Path) -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "(no plot: matplotlib is not installed; pip install -e '.[bench]')"
    traces: dict[str, dict[str, list[list[float]]]] = json.loads(trace_file.read_text())
    fig, axes = plt.subplots(1, len(traces), figsize=(4.2 * len(traces), 3.4), squeeze=False)
    for ax, (label, nodes) in zip(axes[0], traces.items()):
        for node, points in nodes.items():
            ax.plot([p[0] for p in points], [100 * p[1] for p in points], label=node, linewidth=1.4)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("seconds since submit")
        ax.set_ylim(0, 101)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("% of the release downloaded")
    axes[0][-1].legend(fontsize=8, loc="lower right")
    fig.suptitle("llamashare swarm on 127.0.0.1: progress of each fetching node", fontsize=10)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    return f"![swarm progress per node]({png.name})"


def earlier_sections(text: str) -> dict[str, str]:
    """name → section of a RESULTS.md written before (its "## name: ..." heading to the next)."""
    out: dict[str, str] = {}
    for part in re.split(r"(?m)^(?=## )", text):
        m = re.match(r"## (\w+):", part)
        if m and m[1] in RUNS:
            out[m[1]] = part.rstrip("\n") + "\n"
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=BENCH, help="Folder for RESULTS.md and the plot.")
    ap.add_argument("--only", help="Comma-separated subset of: " + ", ".join(RUNS))
    args = ap.parse_args()
    chosen = args.only.split(",") if args.only else list(RUNS)
    unknown = set(chosen) - set(RUNS)
    if unknown:
        raise SystemExit(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    sections: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="llamashare-bench-") as tmp:
        trace = Path(tmp) / "swarm-trace.json"
        for name in chosen:
            extra, what = RUNS[name]
            extra = extra + (["--trace", str(trace)] if name == "swarm" else [])
            print(f"== {name}: {what}", flush=True)
            text, seconds, code = run(name, extra)
            print(text + "\n", flush=True)
            status = "" if code == 0 else f" — FAILED (exit {code})"
            section = (
                f"## {name}: {what}\n\n`python bench/{name}.py {' '.join(RUNS[name][0])}` ({seconds:.0f} s, "
                f"{datetime.date.today()}, {machine()}){status}\n\n```\n{text}\n```\n"
            )
            if name == "swarm" and trace.exists():
                section += "\n" + plot(trace, args.out / "swarm-progress.png") + "\n"
            sections[name] = section
    if args.only and (args.out / "RESULTS.md").exists():
        kept = earlier_sections((args.out / "RESULTS.md").read_text())
        sections = {name: sections.get(name) or kept[name] for name in RUNS if name in sections or name in kept}
    header = (
        f"# Benchmark results\n\nWritten by `python bench/all.py`, last on {datetime.date.today()} (a section run on "
        f"its own with --only names its date).\n\n"
        f"- Machine: {machine()} (shared and noisy: compare the ratios within one table, not absolute times)\n"
        f"- Versions: {versions()}\n\n"
    )
    (args.out / "RESULTS.md").write_text(header + "\n".join(sections.values()))
    print(f"wrote {args.out / 'RESULTS.md'}")


if __name__ == "__main__":
    main()
