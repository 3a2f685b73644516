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
import os
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import gguf
import numpy as np

from llamashare.errors import InsufficientSpaceError, OutputExistsError, QuantizeError
from llamashare.quant.presets import Model, Preset, gguf_order, plan, preset
from llamashare.quant.qtype import QuantType, by_ggml, lookup

#: float32 bytes per slab of rows: bounds memory, big enough that per-slab overhead vanishes.
SLAB_BYTES = 16 * 1024 * 1024
#: keys llama.cpp drops (a quantized model is written as one file) or rewrites at the end.
DROPPED_KEYS = ("split.no", "split.count", "split.tensors.count")
REWRITTEN_KEYS = ("general.quantization_version", "general.file_type")


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


def _open(src: Path) -> gguf.GGUFReader:
    try:
        return gguf.GGUFReader(src, "r")
    except FileNotFoundError:
        raise QuantizeError(f"{src}: no such file") from None
    except (ValueError, OSError, IndexError, KeyError, TypeError) as e:  # gguf-py's parse errors
        raise QuantizeError(f"{src}: not a readable GGUF file, truncated or damaged ({e})") from None


def _field(reader: gguf.GGUFReader, key: str, default: object = None) -> object:
    f = reader.fields.get(key)
    if f is None:
        return default
    return f.contents()


def _model(reader: gguf.GGUFReader, src: Path) -> Model:
    arch = _field(reader, "general.architecture")
    if not isinstance(arch, str):
        raise QuantizeError(f"{src}: no general.architecture key; not a model file")
    n_layer = _field(reader, f"{arch}.block_count")
    n_head = _field(reader, f"{arch}.attention.head_count", 0)
    if not isinstance(n_layer, int):
        raise QuantizeError(f"{src}: no {arch}.block_count key")
    n_head_kv = _field(reader, f"{arch}.attention.head_count_kv", n_head)
    return Model(n_layer, int(n_head or 0), int(n_head_kv or 0), int(_field(reader, f"{arch}.expert_count", 0) or 0))


def _plan(reader: gguf.GGUFReader, src: Path, p: Preset, pure: bool, allow_requantize: bool) -> list[TensorPlan]:
    file_size = reader.data.shape[0]
    have: dict[str, tuple[tuple[int, ...], type[QuantType], int, int]] = {}
    for t in reader.tensors:
        ne = tuple(int(d) for d in t.shape)
        cur = by_ggml(int(t.tensor_type))
        if t.data_offset + t.n_bytes > file_size:
            raise QuantizeError(f"{src}: tensor {t.name} runs past the end of the file (truncated download?)")
        have[t.name] = (ne, cur, int(t.data_offset), int(t.n_bytes))
    targets = plan([(n, ne, cur.name) for n, (ne, cur, _, _) in have.items()], p, _model(reader, src), pure)
    out = []
    for name in gguf_order(list(have)):
        ne, cur, offset, nbytes = have[name]
        dst = lookup(targets[name])
        if dst is not cur and cur.is_quantized() and not allow_requantize:
            raise QuantizeError(f"{src}: tensor {name} is already {cur.name}; quantizing it again loses quality "
                                "(convert from the original weights, or pass --allow-requantize)")  # fmt: skip
        out.append(TensorPlan(name, ne, cur, dst, offset, nbytes))
    return out


def _copy_metadata(reader: gguf.GGUFReader, writer: gguf.GGUFWriter, p: Preset) -> None:
    """Every key of the input in its order (raw string bytes, exact value types), minus split
    keys, then quantization version and file type last, as llama.cpp's gguf_set_val appends."""
    writer.kv_data[0].clear()  # the writer pre-adds general.architecture; the input has it in place
    for key, f in reader.fields.items():
        if key.startswith("GGUF.") or key in DROPPED_KEYS or key in REWRITTEN_KEYS:
            continue
        vtype = gguf.GGUFValueType(int(f.types[0]))
        if vtype == gguf.GGUFValueType.ARRAY:
            sub = gguf.GGUFValueType(int(f.types[-1]))
            if sub == gguf.GGUFValueType.STRING:
                value: object = [bytes(f.parts[i]) for i in f.data]
            else:
                value = [v for i in f.data for v in f.parts[i].tolist()]
            writer.add_key_value(key, value, vtype, sub_type=sub)
        elif vtype == gguf.GGUFValueType.STRING:
            writer.add_key_value(key, bytes(f.parts[f.data[0]]), vtype)
        else:
            writer.add_key_value(key, f.parts[f.data[0]].tolist()[0], vtype)
        if key == "general.alignment":
            writer.data_alignment = int(f.parts[f.data[0]][0])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_file_type(p.ftype)


def _check_space(out: Path, reader: gguf.GGUFReader, tensors: list[TensorPlan], alignment: int) -> int:
    need = reader.data_offset + 4096 + sum(-(-t.nbytes_out // alignment) * alignment for t in tensors)
    free = shutil.disk_usage(out.parent).free
    if free < need:
        raise InsufficientSpaceError(out.parent, need, free)
    return need


Progress = Callable[[int], None]


def quantize_file(src: Path, out: Path, quant: str, *, force: bool = False, allow_requantize: bool = False,
                  pure: bool = False, threads: int | None = None, progress: Progress | None = None,
                  on_tensor: Callable[[TensorPlan], None] | None = None,
                  on_total: Callable[[int], None] | None = None) -> QuantizeReport:  # fmt: skip
    """Quantize the GGUF model ``src`` to ``out`` with preset ``quant`` (``Q4_K_M``, ``q8_0`` …)."""
    p = preset(quant)
    if out.resolve() == src.resolve() or (out.exists() and src.exists() and out.samefile(src)):
        raise QuantizeError(f"{out}: the output would overwrite the input; choose another name")
    if out.exists() and not force:
        raise OutputExistsError(out)
    reader = _open(src)
    tensors = _plan(reader, src, p, pure, allow_requantize)
    if on_total:
        on_total(sum(t.rows * t.ne[0] * 4 for t in tensors if t.dst is not t.src) + sum(t.nbytes_in for t in tensors if t.dst is t.src))
    partial = out.with_name(out.name + ".partial")
    writer = gguf.GGUFWriter(partial, None)
    try:
        _copy_metadata(reader, writer, p)
        _check_space(out, reader, tensors, writer.data_alignment)
        for t in tensors:
            writer.add_tensor_info(t.name, tuple(reversed(t.ne)), np.dtype(np.float32), t.nbytes_out, raw_dtype=t.dst.ggml)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        fout = writer.fout[0]
        for t in tensors:
            if on_tensor:
                on_tensor(t)
            writer.write_padding(fout, fout.tell())
            size = _write_tensor(reader, t, fout, threads, progress)
            if size != t.nbytes_out:
                raise QuantizeError(f"tensor {t.name} came out as {size} bytes, planned {t.nbytes_out}")
            writer.write_padding(fout, size)
        fout.flush()
        os.fsync(fout.fileno())
        writer.close()
    except BaseException:
        writer.close()
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, out)
    return QuantizeReport(out, p, len(tensors), dict(Counter(t.dst.name for t in tensors)),
                          sum(t.nbytes_in for t in tensors), sum(t.nbytes_out for t in tensors),
                          sum(t.rows * t.ne[0] for t in tensors))  # fmt: skip


def _write_tensor(reader: gguf.GGUFReader, t: TensorPlan, fout, threads: int | None, progress: Progress | None) -> int:
    """Stream one tensor: copied as is when its type stays, else slab by slab through float32."""
    row_in = t.nbytes_in // t.rows
    raw = reader.data[t.offset:t.offset + t.nbytes_in].reshape(t.rows, row_in)
    size = 0
    if t.dst is t.src:
        step = max(1, SLAB_BYTES // row_in)
        for a in range(0, t.rows, step):
            chunk = np.asarray(raw[a:a + step])
            fout.write(chunk.tobytes())
            size += chunk.nbytes
            if progress:
                progress(chunk.nbytes)
        return size
    step = max(1, SLAB_BYTES // (t.ne[0] * 4))
    for a in range(0, t.rows, step):
        values = t.src.dequantize(raw[a:a + step], threads=threads)
        try:
            q = t.dst.quantize(values, threads=threads)
        except QuantizeError as e:
            raise QuantizeError(f"tensor {t.name}, rows {a}–{a + len(values) - 1}: {e}") from None
        fout.write(q.tobytes())
        size += q.nbytes
        if progress:
            progress(values.nbytes)
    return size
