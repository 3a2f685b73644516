#!/usr/bin/env python3
"""Benchmark: `llamashare convert` (streaming) against the naive conversion and a disk copy, in one run.

    python bench/convert.py [--layers 16] [--repeats 3] [--dir /tmp/llamashare-bench-convert]

Generates a LLaMA-shaped Hugging Face checkpoint (float32 safetensors, 4 shards; ~1.1 GB with
the defaults: hidden 1024, 16 layers, vocabulary 32000, GQA 16/4 heads), warms the page cache,
then times each contender in its own subprocess (own peak RSS, read from VmHWM), interleaved:

- disk copy: the shards copied to new files and fsynced (the speed limit of any conversion);
- llamashare convert → f16 GGUF: memory-mapped input, one tensor at a time, fsynced;
- naive → the same f16 GGUF: load every tensor (safetensors.numpy.load_file), convert them all,
  then write (gguf-py add_tensor + write_tensors_to_file), fsynced.

Targets (issue 5): convert ≥ 0.5× the disk copy's MB/s; convert's peak RSS < 10% of the model.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.measure import measure, warm_page_cache  # noqa: E402

CONTENDERS = {
    "copy": """
import os, shutil
out = work / "copy"; out.mkdir(exist_ok=True)
for p in sorted(src.glob("*.safetensors")):
    shutil.copyfile(p, out / p.name)
    fd = os.open(out / p.name, os.O_RDONLY); os.fsync(fd); os.close(fd)
shutil.rmtree(out)
""",
    "llamashare": """
from llamashare.quant.convert import convert
convert(src, work / "stream.gguf", "f16", force=True)
(work / "stream.gguf").unlink()
""",
    "naive": """
import os, gguf, numpy as np
from safetensors.numpy import load_file
from llamashare.quant.checkpoint import open_checkpoint
from llamashare.quant.convert import permute_rotary, write_metadata
from llamashare.quant.vocab import add_vocab, read_vocab
weights = {}
for p in sorted(src.glob("*.safetensors")):
    weights |= load_file(str(p))                       # everything in memory
with open_checkpoint(src) as ckpt:
    params = ckpt.params
names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, params.n_layer)
converted = {}
for name, w in weights.items():
    gname = names.get_name(name, try_suffixes=(".weight",))
    if gname.endswith("attn_q.weight"): w = permute_rotary(w, params.n_head)
    if gname.endswith("attn_k.weight"): w = permute_rotary(w, params.n_head_kv)
    converted[gname] = w.astype(np.float16) if w.ndim > 1 else w.astype(np.float32)
writer = gguf.GGUFWriter(work / "naive.gguf", "llama")
write_metadata(writer, "naive", params, "f16")
add_vocab(writer, src, read_vocab(src, params.n_vocab))
for gname, w in converted.items():
    writer.add_tensor(gname, w)
writer.write_header_to_file(); writer.write_kv_data_to_file(); writer.write_tensors_to_file()
writer.fout[0].flush(); os.fsync(writer.fout[0].fileno()); writer.close()
(work / "naive.gguf").unlink()
""",
}


def run(name: str, src: Path, work: Path) -> dict:
    return measure(name, CONTENDERS[name], {"src": src, "work": work})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/llamashare-bench-convert"))
    args = ap.parse_args()

    from llamashare.sample import SampleConfig, write_sample_model

    cfg = SampleConfig(
        vocab_size=32000,
        hidden_size=1024,
        intermediate_size=2816,
        num_hidden_layers=args.layers,
        num_attention_heads=16,
        num_key_value_heads=4,
        shards=4,
    )
    src, work = args.dir / f"model-{args.layers}L", args.dir / "work"
    work.mkdir(parents=True, exist_ok=True)
    if not (src / "config.json").exists():
        print(f"generating the checkpoint in {src} ...", flush=True)
        write_sample_model(src, cfg)
    size = sum(p.stat().st_size for p in src.glob("*.safetensors"))
    warm_page_cache(sorted(src.glob("*.safetensors")))
    results: dict[str, list[dict]] = {k: [] for k in CONTENDERS}
    for r in range(args.repeats):
        for name in CONTENDERS:
            results[name].append(run(name, src, work))
        print(f"  round {r + 1}/{args.repeats} done", flush=True)

    from importlib import metadata

    import numpy

    from llamashare import __version__

    med = {k: statistics.median(x["seconds"] for x in v) for k, v in results.items()}
    rss = {k: max(x["max_rss_kib"] for x in v) / 1024 for k, v in results.items()}
    mb = size / 1e6
    print()
    print(
        f"llamashare {__version__}, gguf-py {metadata.version('gguf')}, "
        f"numpy {numpy.__version__}, Python {platform.python_version()}, {os.cpu_count()} cores; "
        f"{mb:.0f} MB float32 checkpoint → f16 GGUF; warm page cache; median of {args.repeats}"
    )
    print(f"{'contender':<36}{'seconds':>9}{'MB/s':>8}{'× copy speed':>14}{'peak RSS MiB':>14}{'% of model':>12}")
    for name, label in (
        ("copy", "disk copy of the shards (fsync)"),
        ("llamashare", "llamashare convert (streaming)"),
        ("naive", "naive: load all, convert, write"),
    ):
        print(
            f"{label:<36}{med[name]:>9.2f}{mb / med[name]:>8.0f}{med['copy'] / med[name]:>14.2f}"
            f"{rss[name]:>14.0f}{rss[name] * 1.048576 / mb * 100:>11.1f}%"
        )
    speed = med["copy"] / med["llamashare"]
    share = rss["llamashare"] * 1.048576 / mb
    print(f"\ntarget convert ≥ 0.5× disk copy speed: {speed:.2f}× — {'met' if speed >= 0.5 else 'NOT met'}")
    print(f"target peak RSS < 10% of the model: {share * 100:.1f}% — {'met' if share < 0.1 else 'NOT met'}")
    print(
        f"streaming vs naive: {med['naive'] / med['llamashare']:.2f}× faster, {rss['naive'] / rss['llamashare']:.1f}× less memory"
    )


if __name__ == "__main__":
    main()
