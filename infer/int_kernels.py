"""Quantized matrix × int8 activation codes, the way ggml's ``vec_dot`` multiplies them.

Why. Generation multiplies every weight by one activation row per sequence. ggml quantizes that
row once (``activations.codes``: Q8_0 blocks against Q8_0/Q4_0 weights, Q8_K against K-quants) and
multiplies codes by codes in integer SIMD (isimd.py), converting to float once per block (Q8_0,
Q4_0) or once per 256 values (K-quants). These kernels do the same, in the same order, so a
product equals ggml's ``ggml_vec_dot_*`` bit for bit on every instruction set
(tests/test_int_kernels.py).

Shape of a kernel. ``_row_*`` is one row · one activation row; every driver takes several
activation rows (one per sequence of a batched decode step; a single token is a batch of one),
reads each weight row from memory once and multiplies it by each of them while it is in cache.
A row's result does not depend on the other rows beside it: batched decoding is decoding alone.

No fast-math anywhere here: the float steps must happen in ggml's order for the bits to match.
Layouts are ggml's (ggml-common.h), as quant/legacy_types.py and quant/k_types.py write them.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numba import njit, prange

from llamashare.infer import isimd as I

F32 = np.float32
_row = {"inline": "always", "cache": True}
_driver = {"parallel": True, "cache": True}


@njit(**_row)
def _half(row: np.ndarray, at: int, half: np.ndarray) -> np.float32:
    return half[np.int32(row[at]) | (np.int32(row[at + 1]) << 8)]


@njit(**_row)
def _row_q8_0(isa, row, q, d, sums, half):
    """34-byte blocks: float16 d, 32 int8 codes (ggml_vec_dot_q8_0_q8_0)."""
    acc = I.fzero()
    for b in range(q.shape[0] // 32):
        o = b * 34
        acc = I.fma_lanes(_half(row, o, half) * d[b], I.dot_ss(isa, I.load32(row, o + 2), I.load32(q, 32 * b)), acc)
    return I.hsum(acc)


@njit(**_row)
def _row_q4_0(isa, row, q, d, sums, half):
    """18-byte blocks: float16 d, 16 bytes of nibbles, value j low and j+16 high, code − 8
    (ggml_vec_dot_q4_0_q8_0)."""
    acc = I.fzero()
    for b in range(q.shape[0] // 32):
        o = b * 18
        codes = I.bsub(I.nibbles32(row, o + 2), 8)
        acc = I.fma_lanes(_half(row, o, half) * d[b], I.dot_ss(isa, codes, I.load32(q, 32 * b)), acc)
    return I.hsum(acc)


@njit(**_row)
def _scale_min_k4(row, at, k):
    """ggml's get_scale_min_k4: sub-block k's 6-bit scale and min from the 12 bytes at ``at``."""
    if k < 4:
        return np.int32(row[at + k] & 63), np.int32(row[at + k + 4] & 63)
    sc = (row[at + k + 4] & 15) | ((row[at + k - 4] >> 6) << 4)
    m = (row[at + k + 4] >> 4) | ((row[at + k] >> 6) << 4)
    return np.int32(sc), np.int32(m)


@njit(**_row)
def _min_pair(row, o, sums, s, k):
    """Q4_K's min term for sub-blocks 2k and 2k+1: Σ min · (sum of that sub-block's 32 codes)."""
    _, m0 = _scale_min_k4(row, o + 4, 2 * k)
    _, m1 = _scale_min_k4(row, o + 4, 2 * k + 1)
    s0 = np.int32(sums[s + 4 * k]) + np.int32(sums[s + 4 * k + 1])
    s1 = np.int32(sums[s + 4 * k + 2]) + np.int32(sums[s + 4 * k + 3])
    return F32(m0 * s0 + m1 * s1)


@njit(**_row)
def _row_q4_k(isa, row, q, d, sums, half):
    """144-byte super-blocks of 256: float16 d and dmin, 12 bytes of 6-bit scales and mins, 128
    bytes of nibbles (32 bytes per 64 values: sub-block 2j low, 2j+1 high); value d·sc·q −
    dmin·m (ggml_vec_dot_q4_K_q8_K: int32 lanes per super-block, the mins through the code sums
    in four float lanes of their own)."""
    acc = I.fzero()
    m0, m1, m2, m3 = F32(0), F32(0), F32(0), F32(0)
    for b in range(q.shape[0] // 256):
        o, j0, s = b * 144, b * 256, b * 16
        dd = d[b] * _half(row, o, half)
        dmin = -d[b] * _half(row, o + 2, half)
        m0 = I.fma1(dmin, _min_pair(row, o, sums, s, 0), m0)
        m1 = I.fma1(dmin, _min_pair(row, o, sums, s, 1), m1)
        m2 = I.fma1(dmin, _min_pair(row, o, sums, s, 2), m2)
        m3 = I.fma1(dmin, _min_pair(row, o, sums, s, 3), m3)
        sumi = I.izero()
        for j in range(4):
            bits = I.load32(row, o + 16 + 32 * j)
            lo, _ = _scale_min_k4(row, o + 4, 2 * j)
            hi, _ = _scale_min_k4(row, o + 4, 2 * j + 1)
            pl = I.dot_us_scaled(isa, I.band(bits, 15), I.load32(q, j0 + 64 * j), lo, lo)
            ph = I.dot_us_scaled(isa, I.bshr(bits, 4), I.load32(q, j0 + 64 * j + 32), hi, hi)
            sumi = I.iadd(sumi, I.iadd(pl, ph))
        acc = I.fma_lanes(dd, sumi, acc)
    return I.hsum(acc) + ((m0 + m2) + (m1 + m3))


@njit(**_row)
def _row_q6_k(isa, row, q, d, sums, half):
    """210-byte super-blocks: 128 bytes of low nibbles, 64 of 2-bit highs, 16 int8 scales (one
    per 16 values), float16 d; value d·scale·(q − 32). Codes are taken unsigned and the −32
    applied through the activations' 16-value sums (ggml_vec_dot_q6_K_q8_K)."""
    acc = I.fzero()
    for b in range(q.shape[0] // 256):
        o, j0 = b * 210, b * 256
        offset = I.ishl(I.madd_sums(sums, b * 16, row, o + 192), 5)
        sumi = I.izero()
        for j in range(2):
            b1, b2 = I.load32(row, o + 64 * j), I.load32(row, o + 64 * j + 32)
            h = I.load32(row, o + 128 + 32 * j)
            c0 = I.bor(I.band(b1, 15), I.bshl(I.band(h, 3), 4))
            c1 = I.bor(I.band(b2, 15), I.bshl(I.band(h, 12), 2))
            c2 = I.bor(I.bshr(b1, 4), I.band(h, 48))
            c3 = I.bor(I.bshr(b2, 4), I.bshr(I.band(h, 192), 2))
            v, sc = j0 + 128 * j, o + 192 + 8 * j
            p0 = I.dot_us_scaled(isa, c0, I.load32(q, v), np.int8(row[sc]), np.int8(row[sc + 1]))
            p1 = I.dot_us_scaled(isa, c1, I.load32(q, v + 32), np.int8(row[sc + 2]), np.int8(row[sc + 3]))
            p2 = I.dot_us_scaled(isa, c2, I.load32(q, v + 64), np.int8(row[sc + 4]), np.int8(row[sc + 5]))
            p3 = I.dot_us_scaled(isa, c3, I.load32(q, v + 96), np.int8(row[sc + 6]), np.int8(row[sc + 7]))
            sumi = I.iadd(sumi, I.iadd(p0, p1))
            sumi = I.iadd(sumi, I.iadd(p2, p3))
        acc = I.fma_lanes(d[b] * _half(row, o + 208, half), I.isub(sumi, offset), acc)
    return I.hsum(acc)


# One driver per type: numba inlines a row function called by name, not one passed as an argument.


@njit(**_driver)
def _mm_q8_0(isa, w, q, d, sums, half, out):
    for r in prange(w.shape[0]):
        row = w[r]
        for n in range(q.shape[0]):
            out[n, r] = _row_q8_0(isa, row, q[n], d[n], sums[n], half)


@njit(**_driver)
def _mm_q4_0(isa, w, q, d, sums, half, out):
    for r in prange(w.shape[0]):
        row = w[r]
        for n in range(q.shape[0]):
            out[n, r] = _row_q4_0(isa, row, q[n], d[n], sums[n], half)


@njit(**_driver)
def _mm_q4_k(isa, w, q, d, sums, half, out):
    for r in prange(w.shape[0]):
        row = w[r]
        for n in range(q.shape[0]):
            out[n, r] = _row_q4_k(isa, row, q[n], d[n], sums[n], half)


@njit(**_driver)
def _mm_q6_k(isa, w, q, d, sums, half, out):
    for r in prange(w.shape[0]):
        row = w[r]
        for n in range(q.shape[0]):
            out[n, r] = _row_q6_k(isa, row, q[n], d[n], sums[n], half)


#: type name → (driver, values per activation block: 32 for Q8_0 codes, 256 for Q8_K).
KERNELS: dict[str, tuple[Callable, int]] = {
    "q8_0": (_mm_q8_0, 32),
    "q4_0": (_mm_q4_0, 32),
    "q4_k": (_mm_q4_k, 256),
    "q6_k": (_mm_q6_k, 256),
}
