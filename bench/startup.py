#!/usr/bin/env python3
"""Whole-process cost of `llamashare run` against llama.cpp: start-up and first token, and 256 tokens.

    python bench/startup.py [--repeats 3] [--dir /tmp/llamashare-bench-infer]

What a user waits for: a fresh process that loads SmolLM2-135M, reads a short prompt and prints
``-n`` greedy tokens (``llamashare run -q --temp 0 --ignore-eos``), against a fresh Python process
doing the same through llama-cpp-python (import, load, evaluate, sample). Each is run
``--repeats`` times after one warm-up run (the page cache holds the file and numba's compiled
kernels are cached, as on a user's second run); the table gives the median wall time and peak RSS
(``wait4``'s ru_maxrss) and their ratios. The first run on a fresh install also compiles the
kernels: ``--cold`` times one run with an empty numba cache directory.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.infer import cpu_model  # noqa: E402
from bench.measure import smollm2, warm_page_cache  # noqa: E402

PRESETS = ["Q8_0", "Q4_K_M"]
PROMPT = "The capital of France is"
# Greedy tokens through llama-cpp-python's own generation loop, exactly n of them (past an
# end-of-generation token, as ``--ignore-eos`` does on our side).
LLAMA_CPP = """
import sys
from llama_cpp import Llama
m = Llama(model_path=sys.argv[1], n_ctx=512, n_threads=2, n_threads_batch=2, verbose=False)
out = []
for t in m.generate(m.tokenize(sys.argv[2].encode()), temp=0.0):
    out.append(t)
    if len(out) == int(sys.argv[3]):
        break
print(m.detokenize(out).decode(errors="replace"))
"""
TIMEOUT = 300


def run(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one process."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + TIMEOUT
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(f"{cmd[:4]} ran past {TIMEOUT} s")
        time.sleep(0.005)
    seconds = time.perf_counter() - t
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd[:5])} failed: {proc.stderr.read().decode()[-500:] if proc.stderr else ''}")
    return seconds, usage.ru_maxrss / 1024


def commands(model: Path, n: int) -> dict[str, list[str]]:
    ours = [sys.executable, "-m", "llamashare", "run", str(model), "-p", PROMPT, "-n", str(n)]
    ours += ["--temp", "0", "--ignore-eos", "-q", "-c", "512"]
    return {"llamashare": ours, "llama.cpp": [sys.executable, "-c", LLAMA_CPP, str(model), PROMPT, str(n)]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/llamashare-bench-infer"))
    ap.add_argument("--cold", action="store_true", help="also time one llamashare run compiling every kernel")
    args = ap.parse_args()
    from llamashare.quant.quantize import quantize_file

    args.dir.mkdir(parents=True, exist_ok=True)
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores; median of {args.repeats} runs after a warm-up\n")
    head = f"{'type':<7} {'-n':>4} {'contender':<11} {'seconds':>8} {'peak RSS':>9}"
    print(head)
    print("-" * len(head))
    ratios = []
    for preset in PRESETS:
        path = args.dir / f"smollm2.{preset}.gguf"
        if not path.exists():
            quantize_file(smollm2(), path, preset, allow_requantize=True)
        warm_page_cache([path])
        for n in (1, 256):
            got = {}
            for name, cmd in commands(path, n).items():
                run(cmd)  # warm-up: page cache, compiled kernels
                runs = [run(cmd) for _ in range(args.repeats)]
                got[name] = (statistics.median(s for s, _ in runs), statistics.median(r for _, r in runs))
                print(f"{preset:<7} {n:>4} {name:<11} {got[name][0]:>8.2f} {got[name][1]:>6.0f} MiB")
            ratios.append(
                (preset, n, got["llamashare"][0] / got["llama.cpp"][0], got["llamashare"][1] / got["llama.cpp"][1])
            )
    if args.cold:
        with tempfile.TemporaryDirectory() as cache:
            path = args.dir / f"smollm2.{PRESETS[0]}.gguf"
            seconds, rss = run(commands(path, 1)["llamashare"], env={**os.environ, "NUMBA_CACHE_DIR": cache})
            print(f"\nfirst run with an empty kernel cache ({PRESETS[0]}, -n 1): {seconds:.1f} s, {rss:.0f} MiB")
    print("\nllamashare ÷ llama.cpp, whole process (targets at -n 1: time ≤ 1.5, peak RSS ≤ 1.5):")
    for preset, n, t, r in ratios:
        print(f"  {preset:<7} -n {n:<4} time {t:.2f}×   peak RSS {r:.2f}×")


if __name__ == "__main__":
    main()
