"""What every GGUF tensor type has in common, and the registry that finds one by name.

A type packs ``block_size`` float32 values into ``type_size`` bytes. Subclasses implement two
pure functions over whole arrays of blocks, ``_quantize`` and ``_dequantize``; this base class
checks shapes and input, and cuts large inputs into cache-sized chunks (NumPy is fastest when its
temporaries stay in L2, and every block is independent, so chunking changes no bit).

The numeric helpers here reproduce the C arithmetic of ggml's reference quantizers (ggml-quants.c,
compiled without FMA contraction and without reassociation) so results are bit-identical:
``nearest_int`` is its ``x + 1.5·2²³`` trick (round half to even), ``fp16`` is
``GGML_FP32_TO_FP16`` (round to nearest even), and ``seq_sum`` adds in C's loop order, because
NumPy's own ``sum`` along a row is pairwise and rounds differently.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ClassVar

import gguf
import numpy as np

from llamashare.errors import QuantizeError

F32 = np.float32
#: Elements handled per NumPy pass (1 MiB of float32): big enough to amortise Python's call
#: overhead and let two threads run without fighting over the GIL, small enough for the cache.
CHUNK_ELEMENTS = 1 << 18

_REGISTRY: dict[str, type[QuantType]] = {}


class QuantType:
    """One GGUF tensor type. Never instantiated; the class is the type."""

    name: ClassVar[str]  # lower case, as users type it: "q4_k"
    ggml: ClassVar[gguf.GGMLQuantizationType]
    block_size: ClassVar[int]
    type_size: ClassVar[int]
    #: Byte offsets of float16 fields in a block (scales); checked for inf after quantizing.
    fp16_fields: ClassVar[tuple[int, ...]] = ()

    def __init_subclass__(cls, *, ggml: gguf.GGMLQuantizationType) -> None:
        cls.ggml = ggml
        cls.name = ggml.name.lower()
        cls.block_size, cls.type_size = gguf.GGML_QUANT_SIZES[ggml]
        assert cls.name not in _REGISTRY, cls.name
        _REGISTRY[cls.name] = cls

    def __new__(cls, *args: object, **kwargs: object) -> QuantType:
        raise TypeError("quantization types are used as classes, not instances")

    @classmethod
    def bits_per_weight(cls) -> float:
        return cls.type_size * 8 / cls.block_size

    @classmethod
    def is_quantized(cls) -> bool:
        return cls.block_size > 1

    @classmethod
    def row_bytes(cls, n_per_row: int) -> int:
        if n_per_row % cls.block_size:
            raise QuantizeError(
                f"a row of {n_per_row} values is not a whole number of {cls.name} blocks ({cls.block_size} values each)"
            )
        return n_per_row // cls.block_size * cls.type_size

    # -- whole arrays ------------------------------------------------------------------------

    @classmethod
    def quantize(cls, values: np.ndarray, threads: int | None = None) -> np.ndarray:
        """float values (any shape, last axis a multiple of the block size) → uint8 blocks,
        shaped (..., row_bytes). Refuses inf/nan and results whose float16 scales overflow.

        Chunks are converted to float32 one at a time (a float16 input is never widened whole)
        and spread over ``threads`` threads (default: every core); NumPy releases the GIL
        inside its loops, and chunks are independent, so the bytes do not depend on it."""
        values = np.asarray(values)
        row = cls.row_bytes(values.shape[-1] if values.ndim else 1)
        flat = values.reshape(-1, cls.block_size)
        out = np.empty((flat.shape[0], cls.type_size), dtype=np.uint8)

        def work(start: int, stop: int) -> None:
            chunk = np.asarray(flat[start:stop], dtype=F32)
            if not np.isfinite(np.add.reduce(chunk, axis=None)):  # one cheap pass; inf/nan propagate
                _refuse_non_finite(chunk, start)
            out[start:stop] = cls._quantize(chunk)

        _in_chunks(work, flat.shape[0], cls.block_size, threads)
        cls._check_scales(out)
        return out.reshape(*values.shape[:-1], row)

    @classmethod
    def dequantize(cls, data: np.ndarray, threads: int | None = None) -> np.ndarray:
        """uint8 blocks (..., row_bytes) → float32 values (..., values per row), as ggml's
        ``dequantize_row_*`` computes them."""
        data = np.asarray(data)
        if data.dtype != np.uint8:
            data = data.view(np.uint8)
        if data.shape[-1] % cls.type_size:
            raise QuantizeError(f"{data.shape[-1]} bytes per row is not a whole number of {cls.name} blocks")
        blocks = data.reshape(-1, cls.type_size)
        out = np.empty((blocks.shape[0], cls.block_size), dtype=F32)

        def work(start: int, stop: int) -> None:
            out[start:stop] = cls._dequantize(blocks[start:stop])

        _in_chunks(work, blocks.shape[0], cls.block_size, threads)
        return out.reshape(*data.shape[:-1], data.shape[-1] // cls.type_size * cls.block_size)

    @classmethod
    def _check_scales(cls, blocks: np.ndarray) -> None:
        for offset in cls.fp16_fields:
            if not np.isfinite(fp16_field(blocks, offset)).all():
                raise QuantizeError(f"values too large for {cls.name}: a block scale overflows float16")

    # -- per type ----------------------------------------------------------------------------

    @classmethod
    def _quantize(cls, blocks: np.ndarray) -> np.ndarray:
        """(n, block_size) float32, all finite → (n, type_size) uint8."""
        raise NotImplementedError

    @classmethod
    def _dequantize(cls, blocks: np.ndarray) -> np.ndarray:
        """(n, type_size) uint8 → (n, block_size) float32."""
        raise NotImplementedError


def _refuse_non_finite(chunk: np.ndarray, first_block: int) -> None:
    bad = ~np.isfinite(chunk)
    if bad.any():
        block = int(np.argmax(bad.any(axis=1)))
        value = chunk[block][bad[block]][0]
        raise QuantizeError(
            f"value {value} in block {first_block + block} is not finite; the source weights are damaged"
        )


_POOL: ThreadPoolExecutor | None = None


def _in_chunks(work: Callable[[int, int], None], n: int, block_size: int, threads: int | None) -> None:
    """Run ``work(start, stop)`` over [0, n) blocks, CHUNK_ELEMENTS values at a time, on up to
    ``threads`` threads."""
    global _POOL
    step = max(1, CHUNK_ELEMENTS // block_size)
    spans = [(a, min(a + step, n)) for a in range(0, n, step)]
    threads = min(threads or os.cpu_count() or 1, len(spans))
    if threads <= 1:
        for a, b in spans:
            work(a, b)
        return
    if _POOL is None or _POOL._max_workers < threads:  # noqa: SLF001 - sizing a private pool
        _POOL = ThreadPoolExecutor(max_workers=max(threads, os.cpu_count() or 1), thread_name_prefix="quant")

    def every_nth(k: int) -> None:
        for a, b in spans[k::threads]:
            work(a, b)

    # one task per thread, each taking every threads-th chunk: few futures, balanced work
    tasks = [_POOL.submit(every_nth, k) for k in range(threads)]
    for t in tasks:
        t.result()


def lookup(name: str) -> type[QuantType]:
    """The type called ``name`` (case-insensitive: ``Q4_K``, ``q4_k``)."""
    from llamashare.quant import types  # noqa: F401  (defines and registers every type)

    try:
        return _REGISTRY[name.lower()]
    except KeyError:
        raise QuantizeError(f"unknown tensor type {name!r}; known: {', '.join(sorted(_REGISTRY))}") from None


def by_ggml(ggml: int) -> type[QuantType]:
    """The type with GGML id ``ggml``, or a clear error for one llamashare cannot handle."""
    from llamashare.quant import types  # noqa: F401

    for cls in _REGISTRY.values():
        if cls.ggml == ggml:
            return cls
    try:
        label = gguf.GGMLQuantizationType(ggml).name
    except ValueError:
        label = f"#{ggml}"
    raise QuantizeError(f"tensor type {label} is not supported; supported: {', '.join(sorted(_REGISTRY))}")


# -- C arithmetic, reproduced ----------------------------------------------------------------


def fp16(x: np.ndarray) -> np.ndarray:
    """The float32 value a float16 field holds after ``GGML_FP32_TO_FP16`` (nearest even)."""
    with np.errstate(over="ignore"):
        return np.asarray(x, dtype=F32).astype(np.float16).astype(F32)


def fp16_bytes(x: np.ndarray) -> np.ndarray:
    """(n,) float32 → (n, 2) uint8, little-endian float16."""
    with np.errstate(over="ignore"):
        return np.asarray(x, dtype=F32).astype("<f2").view(np.uint8).reshape(-1, 2)


def fp16_field(blocks: np.ndarray, offset: int) -> np.ndarray:
    """The float16 at byte ``offset`` of every block, as an (n, 1) float32 column."""
    return blocks[:, offset : offset + 2].copy().view(np.float16).astype(F32)


def nearest_int(x: np.ndarray) -> np.ndarray:
    """ggml's ``nearest_int``: round half to even, as int32 (out-of-range values only ever
    reach a clamp, as in C)."""
    with np.errstate(invalid="ignore"):
        return np.rint(x).astype(np.int32)


def seq_sum(terms: np.ndarray) -> np.ndarray:
    """Sum over axis 0, in index order, starting from +0.0 — C's ``float s = 0; for (...) s += t[i]``.

    Reducing over the outer axis of a C-contiguous array adds whole rows in turn, so the order
    per column is the loop's; ``initial`` reproduces the +0.0 start (it decides the sign of an
    all-zero sum).
    """
    if terms.ndim == 2 and terms.shape[1] == 1:  # one column: NumPy would reduce it pairwise
        out = np.zeros(1, dtype=terms.dtype)
        for row in terms:
            out += row
        return out
    assert terms.flags.c_contiguous
    return np.add.reduce(terms, axis=0, initial=F32(0))


def first_absmax(x: np.ndarray, axis: int = 0) -> np.ndarray:
    """The value with the largest magnitude along ``axis``, the first one on ties — the C loops'
    ``if (fabsf(v) > amax) { amax = fabsf(v); max = v; }``."""
    idx = np.expand_dims(np.argmax(np.abs(x), axis=axis), axis)
    return np.take_along_axis(x, idx, axis=axis).squeeze(axis)
