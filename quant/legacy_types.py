"""The 32-value block types: Q8_0, Q4_0, Q4_1, Q5_0, Q5_1.

Each block stores a float16 scale ``d`` (and for the ``_1`` types a float16 minimum ``m``) and
one small integer per value; a value decodes as ``q·d`` (``_0``, q centred on zero) or
``q·d + m`` (``_1``). Layouts and rounding follow ggml's ``quantize_row_*_ref``: values are
paired as (j, j+16) in each byte's low and high nibble, and Q5's fifth bits go to a 32-bit mask.

Quantizing runs those loops compiled (legacy_kernels.py); dequantizing is NumPy over whole
arrays of blocks.
"""

from __future__ import annotations

import gguf
import numpy as np

from llamashare.quant.qtype import F32, QuantType, fp16_bytes, fp16_field

T = gguf.GGMLQuantizationType


def _unpack_nibbles(qs: np.ndarray) -> np.ndarray:
    return np.concatenate([qs & 0x0F, qs >> 4], axis=1)


def _unpack_fifth_bits(qh: np.ndarray) -> np.ndarray:
    return np.unpackbits(qh, axis=1, bitorder="little") << 4


def _compiled(cls: type[QuantType], b: np.ndarray) -> np.ndarray:
    """Run the type's compiled kernel over the blocks ``b``; it fills the codes and the float32
    scale (and minimum) per block, which go into the float16 fields at the front of each block.
    Imported here, not at the top: numba costs ~0.4 s and ~120 MiB to load, which reading and
    dequantizing never need."""
    from llamashare.quant import legacy_kernels

    kernel = getattr(legacy_kernels, cls.name)
    out = np.empty((b.shape[0], cls.type_size), dtype=np.uint8)
    fields = [np.empty(b.shape[0], dtype=F32) for _ in cls.fp16_fields]
    kernel(np.ascontiguousarray(b, dtype=F32), out, *fields)
    for offset, values in zip(cls.fp16_fields, fields):
        out[:, offset : offset + 2] = fp16_bytes(values)
    return out


class Q8_0(QuantType, ggml=T.Q8_0):
    """d = max|x|/127, q = roundf(x/d) in int8. 8.5 bits per weight; near-lossless."""

    fp16_fields = (0,)

    @classmethod
    def _quantize(cls, b: np.ndarray) -> np.ndarray:
        return _compiled(cls, b)

    @classmethod
    def _dequantize(cls, blocks: np.ndarray) -> np.ndarray:
        d = fp16_field(blocks, 0)
        return blocks[:, 2:].view(np.int8).astype(F32) * d


class Q4_0(QuantType, ggml=T.Q4_0):
    """d = (signed absmax)/-8, q = x/d + 8 truncated to 0..15."""

    fp16_fields = (0,)

    @classmethod
    def _quantize(cls, b: np.ndarray) -> np.ndarray:
        return _compiled(cls, b)

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
        return _compiled(cls, b)

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
        return _compiled(cls, b)

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
        return _compiled(cls, b)

    @classmethod
    def _dequantize(cls, blocks: np.ndarray) -> np.ndarray:
        d = fp16_field(blocks, 0)
        m = fp16_field(blocks, 2)
        q = _unpack_nibbles(blocks[:, 8:]) | _unpack_fifth_bits(blocks[:, 4:8])
        return q.astype(F32) * d + m
