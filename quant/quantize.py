"""GGUF → quantized GGUF, streaming, with llama.cpp's per-tensor rules.

The input is memory-mapped and read a slab of rows at a time (about ``SLAB_BYTES`` of float32),
so memory stays a few slabs however large the model. Metadata is copied key by key in the input's
order, then ``general.quantization_version`` and ``general.file_type`` are (re)appended, tensors
are written in llama.cpp's order — which is what ``llama-quantize`` does, so for the same input
and preset the two files are byte-identical. The output is written to ``OUT.partial``, fsynced
and renamed: an interrupted run never leaves a file under the final name, and an existing output
is only replaced with ``force``.
"""

from __future__ import annotations

import math
import mmap
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import gguf
import numpy as np

from llamashare.errors import OutputExistsError, QuantizeError
from llamashare.fsio import check_free_space, partial_output
from llamashare.quant.gguf_file import GGUFHeader, TensorInfo, aligned, encode_header, encode_kv, read_header
from llamashare.quant.presets import Model, Preset, gguf_order, plan, preset
from llamashare.quant.qtype import QuantType, by_ggml, lookup

#: float32 bytes per slab of rows: bounds memory, big enough that per-slab overhead vanishes.
SLAB_BYTES = 16 * 1024 * 1024
#: keys llama.cpp drops (a quantized model is written as one file) or rewrites at the end.
DROPPED_KEYS = ("split.no", "split.count", "split.tensors.count")
REWRITTEN_KEYS = ("general.quantization_version", "general.file_type")
V = gguf.GGUFValueType


@dataclass(frozen=True)
class TensorPlan:
    name: str
    ne: tuple[int, ...]  # GGML order: ne[0] is the row length
    src: type[QuantType]
    dst: type[QuantType]
    offset: int  # absolute offset of the input data
    nbytes_in: int

    @property
    def rows(self) -> int:
        return math.prod(self.ne[1:])

    @property
    def values(self) -> int:
        return self.rows * self.ne[0]

    @property
    def nbytes_out(self) -> int:
        return self.rows * self.dst.row_bytes(self.ne[0])


@dataclass(frozen=True)
class QuantizeReport:
    path: Path
    preset: Preset
    tensors: int
    types: dict[str, int]  # output type name → tensor count
    bytes_in: int
    bytes_out: int
    n_elements: int

    @property
    def bits_per_weight(self) -> float:
        return self.bytes_out * 8 / max(1, self.n_elements)


def _model(h: GGUFHeader) -> Model:
    arch = h.value("general.architecture")
    if not isinstance(arch, str):
        raise QuantizeError(f"{h.path}: no general.architecture key; not a model file")
    n_layer = h.value(f"{arch}.block_count")
    if not isinstance(n_layer, int) or isinstance(n_layer, bool) or n_layer < 0:
        raise QuantizeError(f"{h.path}: no {arch}.block_count key (a count of layers)")

    def count(key: str, default: int) -> int:
        v = h.value(f"{arch}.{key}", default) or 0
        if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise QuantizeError(f"{h.path}: {arch}.{key} is not a count ({v!r:.40})")
        return int(v)

    n_head = count("attention.head_count", 0)
    n_head_kv = count("attention.head_count_kv", n_head)
    return Model(n_layer, n_head, n_head_kv, count("expert_count", 0), arch)


def _plan(h: GGUFHeader, p: Preset, pure: bool, allow_requantize: bool) -> list[TensorPlan]:
    have: dict[str, tuple[tuple[int, ...], type[QuantType], int, int]] = {}
    for t in h.tensors:
        if 0 in t.ne:  # rows of nothing: nothing to quantize, and no row size to slab by
            raise QuantizeError(f"{h.path}: tensor {t.name} has shape {list(t.ne)}, a zero dimension; not a weight")
        cur = by_ggml(t.ggml_type)
        nbytes = math.prod(t.ne[1:]) * cur.row_bytes(t.ne[0])
        offset = h.data_start + t.offset
        if t.name in have:
            raise QuantizeError(f"{h.path}: tensor {t.name} appears twice")
        if offset + nbytes > len(h.data):
            raise QuantizeError(f"{h.path}: tensor {t.name} runs past the end of the file (truncated download?)")
        have[t.name] = (t.ne, cur, offset, nbytes)
    targets = plan([(n, ne, cur.name) for n, (ne, cur, _, _) in have.items()], p, _model(h), pure)
    out = []
    for name in gguf_order(list(have)):
        ne, cur, offset, nbytes = have[name]
        dst = lookup(targets[name])
        if dst is not cur and cur.is_quantized() and not allow_requantize:
            raise QuantizeError(
                f"{h.path}: tensor {name} is already {cur.name}; quantizing it again loses quality "
                "(convert from the original weights, or pass --allow-requantize)"
            )
        out.append(TensorPlan(name, ne, cur, dst, offset, nbytes))
    return out


def _header(h: GGUFHeader, tensors: list[TensorPlan], p: Preset) -> bytes:
    """Every key of the input in its order, byte for byte, minus split keys; then quantization
    version and file type appended, as llama.cpp's gguf_set_val_u32 does; then the tensor table."""
    kvs = [raw for key, raw in h.raw_kv.items() if key not in DROPPED_KEYS + REWRITTEN_KEYS]
    kvs.append(encode_kv("general.quantization_version", V.UINT32, gguf.GGML_QUANT_VERSION))
    kvs.append(encode_kv("general.file_type", V.UINT32, int(p.ftype)))
    infos, offset = [], 0
    for t in tensors:
        infos.append(TensorInfo(t.name, t.ne, int(t.dst.ggml), offset))
        offset += aligned(t.nbytes_out, h.alignment)
    return encode_header(kvs, infos, h.alignment)


Progress = Callable[[int], None]


def quantize_file(
    src: Path,
    out: Path,
    quant: str,
    *,
    force: bool = False,
    allow_requantize: bool = False,
    pure: bool = False,
    threads: int | None = None,
    progress: Progress | None = None,
    on_tensor: Callable[[TensorPlan], None] | None = None,
    on_total: Callable[[int], None] | None = None,
) -> QuantizeReport:
    """Quantize the GGUF model ``src`` to ``out`` with preset ``quant`` (``Q4_K_M``, ``q8_0`` …)."""
    p = preset(quant)
    if out.resolve() == src.resolve() or (out.exists() and src.exists() and out.samefile(src)):
        raise QuantizeError(f"{out}: the output would overwrite the input; choose another name")
    if out.exists() and not force:
        raise OutputExistsError(out)
    h = read_header(src)
    tensors = _plan(h, p, pure, allow_requantize)
    header = _header(h, tensors, p)
    need = len(header) + sum(aligned(t.nbytes_out, h.alignment) for t in tensors)
    out.parent.mkdir(parents=True, exist_ok=True)
    check_free_space(out.parent, need)
    if on_total:
        on_total(sum(t.values * 4 if t.dst is not t.src else t.nbytes_in for t in tensors))
    with partial_output(out) as partial, open(partial, "wb") as fout:
        fout.write(header)
        for t in tensors:
            if on_tensor:
                on_tensor(t)
            size = _write_tensor(h, t, fout, threads, progress)
            if size != t.nbytes_out:
                raise QuantizeError(f"tensor {t.name} came out as {size} bytes, planned {t.nbytes_out}")
            fout.write(b"\0" * (aligned(size, h.alignment) - size))
    return QuantizeReport(
        out,
        p,
        len(tensors),
        dict(Counter(t.dst.name for t in tensors)),
        sum(t.nbytes_in for t in tensors),
        sum(t.nbytes_out for t in tensors),
        sum(t.values for t in tensors),
    )


def _write_tensor(h: GGUFHeader, t: TensorPlan, fout: BinaryIO, threads: int | None, progress: Progress | None) -> int:
    """Stream one tensor: copied as is when its type stays, else slab by slab through float32."""
    row_in = t.nbytes_in // t.rows
    raw = np.frombuffer(h.data, dtype=np.uint8, count=t.nbytes_in, offset=t.offset).reshape(t.rows, row_in)
    size = 0
    if t.dst is t.src:
        step = max(1, SLAB_BYTES // row_in)
        for a in range(0, t.rows, step):
            chunk = raw[a : a + step]  # whole rows of the map: contiguous, written without a copy
            fout.write(chunk.data)
            size += chunk.nbytes
            _let_go(h.data, t.offset + a * row_in, t.offset + (a + len(chunk)) * row_in)
            if progress:
                progress(chunk.nbytes)
        return size
    step = max(1, SLAB_BYTES // (t.ne[0] * 4))
    for a in range(0, t.rows, step):
        values = t.src.dequantize(raw[a : a + step], threads=threads)
        try:
            q = t.dst.quantize(values, threads=threads)
        except QuantizeError as e:
            raise QuantizeError(f"tensor {t.name}, rows {a}–{a + len(values) - 1}: {e}") from None
        fout.write(q.data)
        size += q.nbytes
        _let_go(h.data, t.offset + a * row_in, t.offset + (a + len(values)) * row_in)
        if progress:
            progress(values.nbytes)
    return size


def _let_go(data: mmap.mmap, start: int, stop: int) -> None:
    """Drop the source's pages in [start, stop) from this process once read: the file stays in
    the page cache, but not in our resident memory (SmolLM2's 271 MB F16 input was all counted
    in quantize's peak RSS, which llama.cpp, reading into buffers, does not have). Pages the next
    slab shares are simply read in again."""
    first = start - start % mmap.PAGESIZE
    if stop > first:
        data.madvise(mmap.MADV_DONTNEED, first, stop - first)
