"""The 32-value block types: Q8_0, Q4_0, Q4_1, Q5_0, Q5_1.

Each block stores a float16 scale ``d`` (and for the ``_1`` types a float16 minimum ``m``) and
one small integer per value; a value decodes as ``q·d`` (``_0``, q centred on zero) or
``q·d + m`` (``_1``). Layouts and rounding follow ggml's ``quantize_row_*_ref``: values are
paired as (j, j+16) in each byte's low and high nibble, and Q5's fifth bits go to a 32-bit mask.
Block-wise maxima/minima take the *first* extreme value, as the C loops do, because that
decides the sign of ``d`` (and of ``-0.0`` against ``0.0``).
"""

from __future__ import annotations

import gguf
import numpy as np

from llamashare.quant.qtype import F32, QuantType, first_absmax, fp16_bytes, roundf

T = gguf.GGMLQuantizationType


def _inverse(d: np.ndarray) -> np.ndarray:
    """``d ? 1.0f/d : 0.0f``"""
    out = np.zeros_like(d)
    np.divide(F32(1), d, out=out, where=d != 0)
    return out


def _pack_nibbles(q: np.ndarray) -> np.ndarray:
    """(n, 32) values < 16 → (n, 16) bytes: value j low nibble, value j+16 high nibble."""
    return (q[:, :16] | (q[:, 16:] << 4)).astype(np.uint8)


def _unpack_nibbles(qs: np.ndarray) -> np.ndarray:
    return np.concatenate([qs & 0x0F, qs >> 4], axis=1)


def _fifth_bits(q: np.ndarray) -> np.ndarray:
    """(n, 32) 5-bit values → (n, 4) bytes: bit j of the little-endian u32 is value j's bit 4."""
    return np.packbits((q >> 4).astype(np.uint8), axis=1, bitorder="little")


def _unpack_fifth_bits(qh: np.ndarray) -> np.ndarray:
    return np.unpackbits(qh, axis=1, bitorder="little") << 4


def _first_min(b: np.ndarray) -> np.ndarray:
    return np.take_along_axis(b, np.argmin(b, axis=1)[:, None], axis=1)[:, 0]


def _first_max(b: np.ndarray) -> np.ndarray:
    return np.take_along_axis(b, np.argmax(b, axis=1)[:, None], axis=1)[:, 0]


class Q8_0(QuantType, ggml=T.Q8_0):
    """d = max|x|/127, q = roundf(x/d) in int8. 8.5 bits per weight; near-lossless."""

    fp16_fields = (0,)

    @classmethod
    def _quantize(cls, b: np.ndarray) -> np.ndarray:
        d = np.abs(b).max(axis=1) / F32(127)
        q = roundf(b * _inverse(d)[:, None]).astype(np.int8)
        return np.concatenate([fp16_bytes(d), q.view(np.uint8)], axis=1)

    @classmethod
    def _dequantize(cls, blocks: np.ndarray) -> np.ndarray:
        d = blocks[:, :2].copy().view(np.float16).astype(F32)
        return blocks[:, 2:].view(np.int8).astype(F32) * d


class Q4_0(QuantType, ggml=T.Q4_0):
    """d = (signed absmax)/-8, q = x/d + 8 truncated to 0..15."""

    fp16_fields = (0,)

    @classmethod
    def _quantize(cls, b: np.ndarray) -> np.ndarray:
        d = first_absmax(b, axis=1) / F32(-8)
        x = b * _inverse(d)[:, None] + F32(8.5)
        q = np.minimum(x.astype(np.int8), 15).astype(np.uint8)
        return np.concatenate([fp16_bytes(d), _pack_nibbles(q)], axis=1)

    @classmethod
    def _dequantize(cls, blocks: np.ndarray) -> np.ndarray:
        d = blocks[:, :2].copy().view(np.float16).astype(F32)
        q = _unpack_nibbles(blocks[:, 2:]).astype(np.int8) - np.int8(8)
        return q.astype(F32) * d


class Q4_1(QuantType, ggml=T.Q4_1):
    """d = (max-min)/15, m = min, q = (x-m)/d rounded to 0..15."""

    fp16_fields = (0, 2)

    @classmethod
    def _quantize(cls, b: np.ndarray) -> np.ndarray:
        lo, hi = _first_min(b), _first_max(b)
        d = (hi - lo) / F32(15)
        x = (b - lo[:, None]) * _inverse(d)[:, None] + F32(0.5)
        q = np.minimum(x.astype(np.int8), 15).astype(np.uint8)
        return np.concatenate([fp16_bytes(d), fp16_bytes(lo), _pack_nibbles(q)], axis=1)

    @classmethod
    def _dequantize(cls, blocks: np.ndarray) -> np.ndarray:
        d = blocks[:, 0:2].copy().view(np.float16).astype(F32)
        m = blocks[:, 2:4].copy().view(np.float16).astype(F32)
        return _unpack_nibbles(blocks[:, 4:]).astype(F32) * d + m


class Q5_0(QuantType, ggml=T.Q5_0):
    """As Q4_0 with 5 bits: d = (signed absmax)/-16, q in 0..31, fifth bits in ``qh``."""

    fp16_fields = (0,)

    @classmethod
    def _quantize(cls, b: np.ndarray) -> np.ndarray:
        d = first_absmax(b, axis=1) / F32(-16)
        x = b * _inverse(d)[:, None] + F32(16.5)
        q = np.minimum(x.astype(np.int8), 31).astype(np.uint8)
        return np.concatenate([fp16_bytes(d), _fifth_bits(q), _pack_nibbles(q & 0x0F)], axis=1)

    @classmethod
    def _dequantize(cls, blocks: np.ndarray) -> np.ndarray:
        d = blocks[:, :2].copy().view(np.float16).astype(F32)
        q = _unpack_nibbles(blocks[:, 6:]) | _unpack_fifth_bits(blocks[:, 2:6])
        return (q.astype(np.int8) - np.int8(16)).astype(F32) * d


class Q5_1(QuantType, ggml=T.Q5_1):
    """As Q4_1 with 5 bits: d = (max-min)/31, q in 0..31, fifth bits in ``qh``."""

    fp16_fields = (0, 2)

    @classmethod
    def _quantize(cls, b: np.ndarray) -> np.ndarray:
        lo, hi = _first_min(b), _first_max(b)
        d = (hi - lo) / F32(31)
        x = (b - lo[:, None]) * _inverse(d)[:, None] + F32(0.5)
        q = x.astype(np.uint8)  # the C code has no clamp here: (x-min)/d + 0.5 stays below 32
        return np.concatenate([fp16_bytes(d), fp16_bytes(lo), _fifth_bits(q), _pack_nibbles(q & 0x0F)], axis=1)

    @classmethod
    def _dequantize(cls, blocks: np.ndarray) -> np.ndarray:
        d = blocks[:, 0:2].copy().view(np.float16).astype(F32)
        m = blocks[:, 2:4].copy().view(np.float16).astype(F32)
        q = _unpack_nibbles(blocks[:, 8:]) | _unpack_fifth_bits(blocks[:, 4:8])
        return q.astype(F32) * d + m

