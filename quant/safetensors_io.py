"""safetensors files, memory-mapped: a tensor is a view of the file, read only when used.

Why not ``safetensors.safe_open``: its NumPy backend copies every tensor into memory and cannot
represent bfloat16 (NumPy has no such dtype), and most LLaMA-family checkpoints are bf16. The
format is simple (8-byte little-endian header length, a JSON header of name -> dtype, shape and
byte offsets, then the data), so we parse the header strictly and ``np.memmap`` the data: peak
memory stays at the tensors being converted, not the model. bf16 tensors come back as
``uint16`` arrays tagged with dtype ``"BF16"``; :func:`to_float32` widens them exactly.
The ``safetensors`` package still writes the files in tests and the sample model.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llamashare.errors import CheckpointError

#: safetensors dtype name -> NumPy storage dtype (BF16 is stored as its raw 16-bit pattern).
DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": np.uint16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}
MAX_HEADER = 100 * 1024 * 1024
#: Bytes a tensor's dimensions may span, zeros aside (NumPy refuses larger shapes, even empty).
MAX_SPAN = 2**62


@dataclass(frozen=True)
class TensorRef:
    """Where one tensor lives: enough to map it, check it and plan the output before reading it."""

    name: str
    dtype: str  # safetensors name: F32, F16, BF16, ...
    shape: tuple[int, ...]
    path: Path
    offset: int  # absolute byte offset in the file

    @property
    def nbytes(self) -> int:
        # Python integers: NumPy's int64 product would wrap ([2**32, 2**32] is 0 there).
        return math.prod(self.shape) * np.dtype(DTYPES[self.dtype]).itemsize


def read_header(path: Path) -> dict[str, TensorRef]:
    """Parse and check a safetensors header: every tensor must lie inside the file, without
    overlaps, and its byte range must match its dtype and shape (a truncated download fails here)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise CheckpointError("too short to be a safetensors file", path)
            (n,) = struct.unpack("<Q", raw)
            if n > min(MAX_HEADER, size - 8):
                raise CheckpointError(
                    f"header length {n} does not fit the file ({size} bytes): truncated or not safetensors", path
                )
            header = json.loads(f.read(n))
    except CheckpointError:
        raise
    except ValueError:  # not UTF-8, not JSON, or a number of more digits than Python converts
        raise CheckpointError("header is not valid JSON: not a safetensors file", path) from None
    except RecursionError:  # a header nested thousands deep: json's parser recurses per level
        raise CheckpointError("header nests too deep to be a safetensors header", path) from None
    except OSError as exc:
        raise CheckpointError(f"cannot read: {exc.strerror or exc}", path) from None
    if not isinstance(header, dict):
        raise CheckpointError("header is not a JSON object", path)
    base = 8 + n
    refs: dict[str, TensorRef] = {}
    spans = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (start, end) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
            ok = (
                isinstance(dtype, str)
                and all(_is_count(d) for d in shape)
                and _is_count(start)
                and _is_count(end)
                and start <= end
            )
        except (TypeError, KeyError, ValueError):
            ok = False
        if not ok:
            raise CheckpointError(f"tensor {name!r} has a malformed header entry", path)
        if dtype not in DTYPES:
            raise CheckpointError(
                f"tensor {name!r} has dtype {dtype!r}, which llamashare cannot read (known: {', '.join(DTYPES)})", path
            )
        if math.prod(max(d, 1) for d in shape) * np.dtype(DTYPES[dtype]).itemsize > MAX_SPAN:
            raise CheckpointError(f"tensor {name!r} has dimensions no array can have", path)
        ref = TensorRef(name, dtype, shape, path, base + start)
        if end - start != ref.nbytes:
            raise CheckpointError(f"tensor {name!r}: {end - start} bytes for shape {list(shape)} {dtype}", path)
        if base + end > size:
            raise CheckpointError(f"tensor {name!r} ends at byte {base + end} but the file has {size}: truncated", path)
        spans.append((start, end, name))
        refs[name] = ref
    spans.sort()
    for (_, end_a, a), (start_b, _, b) in zip(spans, spans[1:]):
        if start_b < end_a:
            raise CheckpointError(f"tensors {a!r} and {b!r} overlap", path)
    return refs


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def load(ref: TensorRef) -> np.ndarray:
    """A read-only memory map of the tensor (no bytes read until used)."""
    dtype = DTYPES[ref.dtype]
    if ref.nbytes == 0:
        return np.zeros(ref.shape, dtype)
    return np.memmap(ref.path, dtype=dtype, mode="r", offset=ref.offset, shape=ref.shape)


def to_float32(array: np.ndarray, dtype: str) -> np.ndarray:
    """Exact widening to float32 (bf16 is the top half of a float32)."""
    if dtype == "BF16":
        return (np.asarray(array, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
    return np.asarray(array, dtype=np.float32)


def float32_to_bf16(array: np.ndarray) -> np.ndarray:
    """Round to nearest even bf16, as raw uint16 (NaNs stay NaN)."""
    bits = np.ascontiguousarray(array, dtype=np.float32).view(np.uint32)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    return np.where(np.isnan(array), np.uint16(0x7FC0), rounded)


Producer = Callable[[], np.ndarray]


def write(
    path: Path,
    tensors: Iterable[tuple[str, str, tuple[int, ...], np.ndarray | Producer]],
    metadata: dict[str, str] | None = None,
) -> None:
    """Write a safetensors file tensor by tensor. ``tensors`` gives (name, dtype, shape, data)
    with data an array or a callable producing it, so only one tensor is in memory at a time."""
    items = list(tensors)
    header: dict = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name, dtype, shape, _ in items:
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(DTYPES[dtype]).itemsize
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # keep the data 8-byte aligned, as the reference writer does
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        for name, dtype, shape, data in items:
            array: np.ndarray = np.asarray(data() if callable(data) else data, dtype=DTYPES[dtype])
            if not array.flags.c_contiguous:
                array = np.ascontiguousarray(array)  # (which would also turn a 0-d array into 1-d)
            if array.shape != tuple(shape):
                raise CheckpointError(f"tensor {name!r} has shape {array.shape}, expected {tuple(shape)}", path)
            if array.size:  # an empty tensor has no bytes (and a memoryview of it cannot be cast)
                f.write(array.reshape(-1).view(np.uint8).data)
