"""The rounding llama.cpp applies to activations, as compiled loops.

llama.cpp never multiplies a quantized weight by a float32 activation: it first converts the
activation row to the weight type's ``vec_dot_type`` (Q8_0 blocks for Q4_0/Q5_0/Q8_0, Q8_1 for
Q4_1/Q5_1, Q8_K for the K-quants, float16 for F16, bfloat16 for BF16) and multiplies those.
``round_activations`` applies the same conversion and turns the result back into float32, so a
float32 product over dequantized weights computes the same sum up to summation order. Without
it, logits differ from llama.cpp's by the activation quantization error (~1%), enough to flip
greedy choices between near-equal tokens. The key/value cache and the attention products go
through float16 the same way (``round_half``).

Why loops. A generated token rounds ~120 short rows; as NumPy expressions each took a dozen
calls (~25 µs), 3 ms a token. Compiled, a row is one call. Every function returns new float32
values; tests/test_activations.py checks them bit for bit against NumPy's float16 casts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from llamashare.infer.simd import through_half
from llamashare.quant.qtype import QuantType

F32 = np.float32


@njit(cache=True)
def _round_half(x, out):  # type: ignore[no-untyped-def]
    for i in range(x.shape[0]):
        out[i] = through_half(x[i])


def round_half(x: np.ndarray) -> np.ndarray:
    """Each value through float16 (``GGML_FP32_TO_FP16``, nearest even) and back."""
    x = np.ascontiguousarray(x, dtype=F32)
    out = np.empty_like(x)
    _round_half(x.reshape(-1), out.reshape(-1))
    return out


@njit(cache=True)
def _round_q8_0(x, out):  # type: ignore[no-untyped-def]
    """ggml-cpu's AVX2 quantize_row_q8_0 and back: per 32 values, scale amax/127 stored as
    float16, codes rint(x·127/amax)."""
    for b in range(x.shape[0] // 32):
        amax = F32(0)
        for i in range(32 * b, 32 * b + 32):
            amax = max(amax, abs(x[i]))
        inv = F32(127) / amax if amax > 0 else F32(0)
        d = through_half(amax / F32(127))
        for i in range(32 * b, 32 * b + 32):
            out[i] = np.rint(x[i] * inv) * d


@njit(cache=True)
def _round_q8_k(x, out):  # type: ignore[no-untyped-def]
    """quantize_row_q8_K_ref and back: per 256 values, float32 scale from the signed value of
    largest magnitude (the first on ties), codes min(rint(x·−127/max), 127)."""
    for b in range(x.shape[0] // 256):
        mx, amax = F32(0), F32(0)
        for i in range(256 * b, 256 * b + 256):
            if abs(x[i]) > amax:
                amax, mx = abs(x[i]), x[i]
        if amax == 0:
            out[256 * b : 256 * b + 256] = 0
            continue
        iscale = F32(-127) / mx
        d = F32(1) / iscale
        for i in range(256 * b, 256 * b + 256):
            out[i] = min(np.rint(x[i] * iscale), F32(127)) * d


@njit(inline="always", cache=True)
def _codes_q8_0_row(x, q, d, s, fours, r):  # type: ignore[no-untyped-def]
    """``_round_q8_0``'s codes and scales themselves, for row r: ggml's ``block_q8_0`` rows. With
    a column per block in ``s``, also Q8_1's ``s`` (ggml-cpu's AVX2 quantize_row_q8_1): the block's
    code sum times the unrounded scale, through float16 (the offsets of Q4_1/Q5_1 take it). With
    a column per four codes in ``fours``, their sums (the integer kernels' offset terms)."""
    for b in range(x.shape[1] // 32):
        amax = F32(0)
        for i in range(32 * b, 32 * b + 32):
            amax = max(amax, abs(x[r, i]))
        scale = amax / F32(127)
        inv = F32(127) / amax if amax > 0 else F32(0)
        d[r, b] = through_half(scale)
        total = np.int32(0)
        for i in range(32 * b, 32 * b + 32):
            q[r, i] = np.int8(np.rint(x[r, i] * inv))
            total += q[r, i]
        if s.shape[1]:
            s[r, b] = through_half(scale * F32(total))
        if fours.shape[1]:
            for g in range(8 * b, 8 * b + 8):
                fours[r, g] = np.int32(q[r, 4 * g]) + q[r, 4 * g + 1] + q[r, 4 * g + 2] + q[r, 4 * g + 3]


@njit(inline="always", cache=True)
def _codes_q8_k_row(x, q, d, sums, r):  # type: ignore[no-untyped-def]
    """``_round_q8_k``'s codes and scales for row r, and the sum of every 16 codes
    (``block_q8_K.bsums``)."""
    for b in range(x.shape[1] // 256):
        mx, amax = F32(0), F32(0)
        for i in range(256 * b, 256 * b + 256):
            if abs(x[r, i]) > amax:
                amax, mx = abs(x[r, i]), x[r, i]
        if amax == 0:
            d[r, b] = 0
            q[r, 256 * b : 256 * b + 256] = 0
        else:
            iscale = F32(-127) / mx
            d[r, b] = F32(1) / iscale
            for i in range(256 * b, 256 * b + 256):
                q[r, i] = np.int8(min(np.rint(x[r, i] * iscale), F32(127)))
        for g in range(16 * b, 16 * b + 16):
            total = 0
            for i in range(16 * g, 16 * g + 16):
                total += q[r, i]
            sums[r, g] = total


# A prompt's rows are split over the cores (its codes took ~9% of a 128-token Q8_0 prefill on one);
# a generated token's few rows stay on one, where starting the threads would cost more than they save.
@njit(cache=True)
def _codes_q8_0(x, q, d, s, fours):  # type: ignore[no-untyped-def]
    for r in range(x.shape[0]):
        _codes_q8_0_row(x, q, d, s, fours, r)


@njit(parallel=True, cache=True)
def _codes_q8_0_parallel(x, q, d, s, fours):  # type: ignore[no-untyped-def]
    for r in prange(x.shape[0]):
        _codes_q8_0_row(x, q, d, s, fours, r)


@njit(cache=True)
def _codes_q8_k(x, q, d, sums):  # type: ignore[no-untyped-def]
    for r in range(x.shape[0]):
        _codes_q8_k_row(x, q, d, sums, r)


@njit(parallel=True, cache=True)
def _codes_q8_k_parallel(x, q, d, sums):  # type: ignore[no-untyped-def]
    for r in prange(x.shape[0]):
        _codes_q8_k_row(x, q, d, sums, r)


#: rows from which activation codes are made on every core
PARALLEL_ROWS = 16


@dataclass(frozen=True)
class Codes:
    """Activation rows as llama.cpp's ``vec_dot_type`` blocks, for the integer kernels: ``kind``
    ``q8_0``, ``q8_1`` or ``q8_k``; ``q`` the int8 codes (rows, n); ``d`` each block's scale
    (rows, n / block); ``sums``: Q8_K's int16 sum of each 16 codes (rows, n / 16), Q8_1's float
    ``s`` per block (rows, n / 32), Q8_0's int32 sum of each 4 codes (rows, n / 4; the integer
    kernels' offset terms, int_kernels._fix)."""

    kind: str
    q: np.ndarray
    d: np.ndarray
    sums: np.ndarray


#: values per block of each kind of activation codes
CODE_BLOCK = {"q8_0": 32, "q8_1": 32, "q8_k": 256}


def codes(x: np.ndarray, kind: str) -> Codes:
    """float32 rows (rows, n) → Q8_0, Q8_1 or Q8_K codes (``kind``), exactly ggml-cpu's."""
    block = CODE_BLOCK[kind]
    if x.dtype != F32 or not x.flags.c_contiguous:
        x = np.ascontiguousarray(x, dtype=F32)
    rows, n = x.shape
    if n % block:
        raise ValueError(f"rows of {n} values are not whole blocks of {block}")
    q = np.empty((rows, n), dtype=np.int8)
    d = np.empty((rows, n // block), dtype=F32)
    wide = rows >= PARALLEL_ROWS
    if kind in ("q8_0", "q8_1"):
        per_block = kind == "q8_1"
        sums = np.empty((rows, n // 32 if per_block else n // 4), dtype=F32 if per_block else np.int32)
        s, fours = (sums, np.empty((rows, 0), dtype=np.int32)) if per_block else (np.empty((rows, 0), dtype=F32), sums)
        (_codes_q8_0_parallel if wide else _codes_q8_0)(x, q, d, s, fours)
    else:
        sums = np.empty((rows, n // 16), dtype=np.int16)
        (_codes_q8_k_parallel if wide else _codes_q8_k)(x, q, d, sums)
    return Codes(kind, q, d, sums)


def _rows(kernel: Callable) -> Callable[[np.ndarray], np.ndarray]:
    def rounded(x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=F32)
        out = np.empty_like(x)
        kernel(x.reshape(-1), out.reshape(-1))  # rows are whole blocks, so blocks never straddle rows
        return out

    return rounded


def to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 → the float32 value of its bfloat16 (round to nearest even, as ggml does)."""
    u = np.ascontiguousarray(x, dtype=F32).view(np.uint32)
    rounded = (u + (np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1)))) & np.uint32(0xFFFF0000)
    return np.where(np.isnan(x), x, rounded.view(F32))


_ROUNDING: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "f32": lambda x: x,
    "f16": round_half,
    "bf16": to_bf16,
    **dict.fromkeys(("q8_0", "q4_0", "q4_1", "q5_0", "q5_1"), _rows(_round_q8_0)),
    **dict.fromkeys(("q2_k", "q3_k", "q4_k", "q5_k", "q6_k"), _rows(_round_q8_k)),
}


def round_activations(qtype: type[QuantType]) -> Callable[[np.ndarray], np.ndarray]:
    """The conversion llama.cpp applies to activations multiplied by a ``qtype`` matrix."""
    return rounding(qtype.name)


def rounding(type_name: str) -> Callable[[np.ndarray], np.ndarray]:
    """``round_activations`` by the weight type's name (``q4_k``, ``f16``…)."""
    return _ROUNDING[type_name]
