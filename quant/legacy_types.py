"""The 32-value block types: Q8_0, Q4_0, Q4_1, Q5_0, Q5_1.

Each block stores a float16 scale ``d`` (and for the ``_1`` types a float16 minimum ``m``) and
one small integer per value; a value decodes as ``q·d`` (``_0``, q centred on zero) or
``q·d + m`` (``_1``). Layouts and rounding follow ggml's ``quantize_row_*_ref``: values are
paired as (j, j+16) in each byte's low and high nibble, and Q5's fifth bits go to a 32-bit mask.

Block-wise extremes are found with blocks as columns — ``X`` shaped (32, n) — because NumPy
reduces across the rows of a wide array several times faster than along 32-element rows; the
element-wise steps stay in block order, so the output needs no transposing back. Extremes take
the *first* extreme value, as the C loops do: it decides the sign of ``d`` on ties and of zeros.
"""

from __future__ import annotations

import gguf
import numpy as np

from llamashare.quant.qtype import F32, QuantType, fp16_bytes, fp16_field, roundf

T = gguf.GGMLQuantizationType


def _inverse(d: np.ndarray) -> np.ndarray:
    """``d ? 1.0f/d : 0.0f``"""
    out = np.zeros_like(d)
    np.divide(F32(1), d, out=out, where=d != 0)
    return out


def _first(X: np.ndarray, value: np.ndarray, cols: np.ndarray, pick: str) -> None:
    """Replace ``value[cols]`` by the first extreme of those columns (``pick``: argmin, argmax or
    argabs), in place. Only the rare tied or all-zero columns come here."""
    if cols.size:
        sub = X[:, cols]
        idx = {"argmin": np.argmin(sub, axis=0), "argmax": np.argmax(sub, axis=0),
               "argabs": np.argmax(np.abs(sub), axis=0)}[pick]  # fmt: skip
        value[cols] = sub[idx, np.arange(cols.size)]


def _signed_absmax(X: np.ndarray) -> np.ndarray:
    """Per column, the first value with the largest magnitude; +0.0 for an all-zero column
    (C starts from ``max = 0.0f`` and never replaces it)."""
    hi, lo = X.max(axis=0), X.min(axis=0)
    out = np.where(hi >= -lo, hi, lo)
    tied = np.nonzero(hi == -lo)[0]
    _first(X, out, tied, "argabs")
    out[(hi == 0) & (lo == 0)] = F32(0)
    return out


def _min_max(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per column the first minimum and the first maximum (they differ from NumPy's only in the
    sign of a zero)."""
    lo, hi = X.min(axis=0), X.max(axis=0)
    _first(X, lo, np.nonzero(lo == 0)[0], "argmin")
    _first(X, hi, np.nonzero(hi == 0)[0], "argmax")
    return lo, hi


def _nibbles(q: np.ndarray) -> np.ndarray:
    """(n, 32) values < 16 → (n, 16) bytes: value j low nibble, value j+16 high nibble."""
    return q[:, :16] | (q[:, 16:] << 4)


def _unpack_nibbles(qs: np.ndarray) -> np.ndarray:
    return np.concatenate([qs & 0x0F, qs >> 4], axis=1)


def _fifth_bits(q: np.ndarray) -> np.ndarray:
    """(n, 32) 5-bit values → (n, 4) bytes: bit j of the little-endian u32 is value j's bit 4."""
    return np.packbits(q >> 4, axis=1, bitorder="little")


def _unpack_fifth_bits(qh: np.ndarray) -> np.ndarray:
    return np.unpackbits(qh, axis=1, bitorder="little") << 4


def _assemble(n: int, size: int, *fields: np.ndarray) -> np.ndarray:
    out = np.empty((n, size), dtype=np.uint8)
    at = 0
    for f in fields:
        out[:, at:at + f.shape[1]] = f
        at += f.shape[1]
    assert at == size
    return out


def _symmetric(b: np.ndarray, levels: int) -> tuple[np.ndarray, np.ndarray]:
    """The _0 types: d = (first absmax)/-levels, and x/d + levels + 0.5 ready to truncate."""
    d = _signed_absmax(np.ascontiguousarray(b.T)) / F32(-levels)
    x = b * _inverse(d)[:, None]
    x += F32(levels + 0.5)
    return d, x


def _affine(b: np.ndarray, top: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The _1 types: d = (max-min)/top, m = min, and (x-m)/d + 0.5 ready to truncate."""
    lo, hi = _min_max(np.ascontiguousarray(b.T))
    d = (hi - lo) / F32(top)
    x = b - lo[:, None]
    x *= _inverse(d)[:, None]
    x += F32(0.5)
    return d, lo, x


def _truncate_below(x: np.ndarray, top: int) -> np.ndarray:
    """C's ``MIN(top, (int8_t)x)`` for 0 <= x < 128, as uint8."""
    q = x.astype(np.int8)
    np.minimum(q, top, out=q)
    return q.view(np.uint8)


class Q8_0(QuantType, ggml=T.Q8_0):
    """d = max|x|/127, q = roundf(x/d) in int8. 8.5 bits per weight; near-lossless."""

    fp16_fields = (0,)

    @classmethod
    def _quantize(cls, b: np.ndarray) -> np.ndarray:
        X = np.ascontiguousarray(b.T)
        amax = np.maximum(X.max(axis=0), -X.min(axis=0))
        amax[amax == 0] = F32(0)  # +0.0, never -0.0, like C's fabsf
        d = amax / F32(127)
        q = roundf(b * _inverse(d)[:, None]).astype(np.int8)
        return _assemble(b.shape[0], cls.type_size, fp16_bytes(d), q.view(np.uint8))

    @classmethod
    def _dequantize(cls, blocks: np.ndarray) -> np.ndarray:
        d = fp16_field(blocks, 0)
        return blocks[:, 2:].view(np.int8).astype(F32) * d


class Q4_0(QuantType, ggml=T.Q4_0):
    """d = (signed absmax)/-8, q = x/d + 8 truncated to 0..15."""

    fp16_fields = (0,)

    @classmethod
    def _quantize(cls, b: np.ndarray) -> np.ndarray:
        d, x = _symmetric(b, 8)
        return _assemble(b.shape[0], cls.type_size, fp16_bytes(d), _nibbles(_truncate_below(x, 15)))

    @classmethod
    def _dequantize(cls, blocks: np.ndarray) -> np.ndarray:
        d = fp16_field(blocks, 0)
        q = _unpack_nibbles(blocks[:, 2:]).astype(np.int8) - np.int8(8)
        return q.astype(F32) * d


class Q4_1(QuantType, ggml=T.Q4_1):
    """d = (max-min)/15, m = min, q = (x-m)/d rounded to 0..15."""

    fp16_fields = (0, 2)

    @classmethod
    def _quantize(cls, b: np.ndarray) -> np.ndarray:
        d, lo, x = _affine(b, 15)
        return _assemble(b.shape[0], cls.type_size, fp16_bytes(d), fp16_bytes(lo), _nibbles(_truncate_below(x, 15)))

    @classmethod
    def _dequantize(cls, blocks: np.ndarray) -> np.ndarray:
        d = fp16_field(blocks, 0)
        m = fp16_field(blocks, 2)
        return _unpack_nibbles(blocks[:, 4:]).astype(F32) * d + m


class Q5_0(QuantType, ggml=T.Q5_0):
    """As Q4_0 with 5 bits: d = (signed absmax)/-16, q in 0..31, fifth bits in ``qh``."""

    fp16_fields = (0,)

    @classmethod
    def _quantize(cls, b: np.ndarray) -> np.ndarray:
        d, x = _symmetric(b, 16)
        q = _truncate_below(x, 31)
        return _assemble(b.shape[0], cls.type_size, fp16_bytes(d), _fifth_bits(q), _nibbles(q & 0x0F))

    @classmethod
    def _dequantize(cls, blocks: np.ndarray) -> np.ndarray:
        d = fp16_field(blocks, 0)
        q = _unpack_nibbles(blocks[:, 6:]) | _unpack_fifth_bits(blocks[:, 2:6])
        return (q.astype(np.int8) - np.int8(16)).astype(F32) * d


class Q5_1(QuantType, ggml=T.Q5_1):
    """As Q4_1 with 5 bits: d = (max-min)/31, q in 0..31, fifth bits in ``qh``."""

    fp16_fields = (0, 2)

    @classmethod
    def _quantize(cls, b: np.ndarray) -> np.ndarray:
        d, lo, x = _affine(b, 31)
        q = x.astype(np.uint8)  # the C code has no clamp here: (x-min)/d + 0.5 stays below 32
        return _assemble(b.shape[0], cls.type_size, fp16_bytes(d), fp16_bytes(lo), _fifth_bits(q), _nibbles(q & 0x0F))

    @classmethod
    def _dequantize(cls, blocks: np.ndarray) -> np.ndarray:
        d = fp16_field(blocks, 0)
        m = fp16_field(blocks, 2)
        q = _unpack_nibbles(blocks[:, 8:]) | _unpack_fifth_bits(blocks[:, 4:8])
        return q.astype(F32) * d + m
