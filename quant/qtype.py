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

from typing import ClassVar

import gguf
import numpy as np

from llamashare.errors import QuantizeError

F32 = np.float32
#: Elements handled per NumPy pass: big enough to amortise call overhead, small enough that a
#: handful of float32 temporaries stay in a 1–2 MiB L2 cache.
CHUNK_ELEMENTS = 1 << 16

_REGISTRY: dict[str, type[QuantType]] = {}


class QuantType:
    """One GGUF tensor type. Never instantiated; the class is the type."""

    name: ClassVar[str]  # lower case, as users type it: "q4_k"
    ggml: ClassVar[gguf.GGMLQuantizationType]
    block_size: ClassVar[int]
    type_size: ClassVar[int]
    #: Byte offsets of float16 fields in a block (scales); checked for inf after quantizing.
    fp16_fields: ClassVar[tuple[int, ...]] = ()
    chunk_elements: ClassVar[int] = CHUNK_ELEMENTS

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
            raise QuantizeError(f"a row of {n_per_row} values is not a whole number of {cls.name} blocks "
                                f"({cls.block_size} values each)")  # fmt: skip
        return n_per_row // cls.block_size * cls.type_size

    # -- whole arrays ------------------------------------------------------------------------

    @classmethod
    def quantize(cls, values: np.ndarray) -> np.ndarray:
        """float32 values (any shape, last axis a multiple of the block size) → uint8 blocks,
        shaped (..., row_bytes). Refuses inf/nan and results whose float16 scales overflow."""
        values = np.asarray(values, dtype=F32)
        row = cls.row_bytes(values.shape[-1]) if values.ndim else cls.row_bytes(1)
        flat = values.reshape(-1, cls.block_size)
        out = np.empty((flat.shape[0], cls.type_size), dtype=np.uint8)
        step = max(1, cls.chunk_elements // cls.block_size)
        for start in range(0, flat.shape[0], step):
            chunk = flat[start:start + step]
            if not np.isfinite(chunk).all():
                bad = start + int(np.argmin(np.isfinite(chunk).all(axis=1)))
                raise QuantizeError(f"value {chunk[bad - start][~np.isfinite(chunk[bad - start])][0]} in block {bad} "
                                    "is not finite; the source weights are damaged")  # fmt: skip
            out[start:start + step] = cls._quantize(chunk)
        cls._check_scales(out)
        return out.reshape(*values.shape[:-1], row)

    @classmethod
    def dequantize(cls, data: np.ndarray, n_per_row: int | None = None) -> np.ndarray:
        """uint8 blocks (..., row_bytes) → float32 values (..., n_per_row), as ggml's
        ``dequantize_row_*`` computes them."""
        data = np.asarray(data)
        if data.dtype != np.uint8:
            data = data.view(np.uint8)
        if data.shape[-1] % cls.type_size:
            raise QuantizeError(f"{data.shape[-1]} bytes per row is not a whole number of {cls.name} blocks")
        blocks = data.reshape(-1, cls.type_size)
        out = np.empty((blocks.shape[0], cls.block_size), dtype=F32)
        step = max(1, cls.chunk_elements // cls.block_size)
        for start in range(0, blocks.shape[0], step):
            out[start:start + step] = cls._dequantize(blocks[start:start + step])
        n = data.shape[-1] // cls.type_size * cls.block_size
        assert n_per_row is None or n_per_row == n
        return out.reshape(*data.shape[:-1], n)

    @classmethod
    def _check_scales(cls, blocks: np.ndarray) -> None:
        for offset in cls.fp16_fields:
            d = blocks[:, offset:offset + 2].copy().view(np.float16)
            if not np.isfinite(d).all():
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


def registered() -> list[type[QuantType]]:
    from llamashare.quant import types  # noqa: F401

    return list(_REGISTRY.values())


# -- C arithmetic, reproduced ----------------------------------------------------------------


def fp16(x: np.ndarray) -> np.ndarray:
    """The float32 value a float16 field holds after ``GGML_FP32_TO_FP16`` (nearest even)."""
    with np.errstate(over="ignore"):
        return np.asarray(x, dtype=F32).astype(np.float16).astype(F32)


def fp16_bytes(x: np.ndarray) -> np.ndarray:
    """(n,) float32 → (n, 2) uint8, little-endian float16."""
    with np.errstate(over="ignore"):
        return np.asarray(x, dtype=F32).astype("<f2").view(np.uint8).reshape(-1, 2)


def nearest_int(x: np.ndarray) -> np.ndarray:
    """ggml's ``nearest_int``: round half to even, as int32 (out-of-range values only ever
    reach a clamp, as in C)."""
    with np.errstate(invalid="ignore"):
        return np.rint(x).astype(np.int32)


def roundf(x: np.ndarray) -> np.ndarray:
    """C ``roundf``: round half away from zero (``np.rint`` rounds half to even)."""
    r = np.rint(x)
    tie = (x - r) == np.copysign(F32(0.5), x)
    r[tie] += np.copysign(F32(1), x[tie])
    return r


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
