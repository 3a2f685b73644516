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
def _q8_step(isa, dw, w, q, d, fix, b, acc):
    """One 32-value block of signed weight codes ``w`` (scale ``dw``) · block b of Q8_0 codes,
    into acc (``fix``: −128 times the codes' sums of four, see ``_fix``)."""
    return I.fma_lanes(dw * d[b], I.dot_biased(isa, w, I.load32(q, 32 * b), I.lanes_at(fix, 8 * b)), acc)


@njit(**_row)
def _q8u_step(isa, dw, u, q, d, fix, b, acc):
    """A 32-value block of unsigned weight codes ``u`` standing for u − k (Q4_0: k = 8, Q5_0: 16;
    ``fix``: −k times the codes' sums of four) · block b of Q8_0 codes, into acc."""
    return I.fma_lanes(dw * d[b], I.dot_us(isa, I.lanes_at(fix, 8 * b), u, I.load32(q, 32 * b)), acc)


@njit(**_row)
def _fix(sums, k):
    """−k times each activation row's sums of four codes (int32, rows × n/4): the integer term
    that turns a product of unsigned codes u into one of u − k, exactly."""
    out = np.empty_like(sums)
    for n in range(sums.shape[0]):
        for i in range(sums.shape[1]):
            out[n, i] = -k * sums[n, i]
    return out


@njit(**_row)
def _q8_0_block(row, b):
    """34-byte blocks: float16 d, 32 int8 codes (ggml_vec_dot_q8_0_q8_0)."""
    return I.half_at(row, 34 * b), I.load32(row, 34 * b + 2)


@njit(**_row)
def _q4_0_block(row, b):
    """18-byte blocks: float16 d, 16 bytes of nibbles, value j low and j+16 high, code − 8
    (ggml_vec_dot_q4_0_q8_0; the − 8 is ``_q8u_step``'s)."""
    return I.half_at(row, 18 * b), I.nibbles32(row, 18 * b + 2)


@njit(**_row)
def _q5_0_block(row, b):
    """22-byte blocks: float16 d, 4 bytes of fifth bits (bit j for value j), 16 bytes of nibbles
    as Q4_0's; code (nibble + 16·bit) − 16 (ggml_vec_dot_q5_0_q8_0; the − 16 is ``_q8u_step``'s)."""
    o = 22 * b
    return I.half_at(row, o), I.bor(I.nibbles32(row, o + 6), I.bshl(I.bits32(row, o + 2), 4))


@njit(**_row)
def _q4_1_block(row, b):
    """20-byte blocks: float16 d and m, 16 bytes of nibbles as Q4_0's; value d·q + m
    (ggml_vec_dot_q4_1_q8_1: unsigned codes, the m term through the activations' ``s``)."""
    o = 20 * b
    return I.half_at(row, o), I.half_at(row, o + 2), I.nibbles32(row, o + 4)


@njit(**_row)
def _q5_1_block(row, b):
    """24-byte blocks: float16 d and m, 4 bytes of fifth bits, 16 bytes of nibbles; value
    d·(nibble + 16·bit) + m (ggml_vec_dot_q5_1_q8_1)."""
    o = 24 * b
    return I.half_at(row, o), I.half_at(row, o + 2), I.bor(I.nibbles32(row, o + 8), I.bshl(I.bits32(row, o + 4), 4))


@njit(**_row)
def _q81_step(isa, dw, mw, w, q, d, s, b, acc, summs):
    """A Q4_1/Q5_1 block (scale dw, offset mw, unsigned codes w) · block b of Q8_1 codes."""
    return I.fma_lanes(dw * d[b], I.dot_us(isa, I.izero(), w, I.load32(q, 32 * b)), acc), I.fma1(mw, s[b], summs)


@njit(**_row)
def _row_q8_0(isa, row, q, d, sums):
    acc = I.fzero()
    for b in range(q.shape[0] // 32):
        dw, w = _q8_0_block(row, b)
        acc = _q8_step(isa, dw, w, q, d, sums, b, acc)
    return I.hsum(acc)


@njit(**_row)
def _row4_q8_0(isa, row, q, d, sums, n):
    a0, a1, a2, a3 = I.fzero(), I.fzero(), I.fzero(), I.fzero()
    for b in range(q.shape[1] // 32):
        dw, w = _q8_0_block(row, b)
        a0 = _q8_step(isa, dw, w, q[n], d[n], sums[n], b, a0)
        a1 = _q8_step(isa, dw, w, q[n + 1], d[n + 1], sums[n + 1], b, a1)
        a2 = _q8_step(isa, dw, w, q[n + 2], d[n + 2], sums[n + 2], b, a2)
        a3 = _q8_step(isa, dw, w, q[n + 3], d[n + 3], sums[n + 3], b, a3)
    return I.hsum(a0), I.hsum(a1), I.hsum(a2), I.hsum(a3)


@njit(**_row)
def _row_q4_0(isa, row, q, d, sums):
    acc = I.fzero()
    for b in range(q.shape[0] // 32):
        dw, w = _q4_0_block(row, b)
        acc = _q8u_step(isa, dw, w, q, d, sums, b, acc)
    return I.hsum(acc)


@njit(**_row)
def _row4_q4_0(isa, row, q, d, sums, n):
    a0, a1, a2, a3 = I.fzero(), I.fzero(), I.fzero(), I.fzero()
    for b in range(q.shape[1] // 32):
        dw, w = _q4_0_block(row, b)
        a0 = _q8u_step(isa, dw, w, q[n], d[n], sums[n], b, a0)
        a1 = _q8u_step(isa, dw, w, q[n + 1], d[n + 1], sums[n + 1], b, a1)
        a2 = _q8u_step(isa, dw, w, q[n + 2], d[n + 2], sums[n + 2], b, a2)
        a3 = _q8u_step(isa, dw, w, q[n + 3], d[n + 3], sums[n + 3], b, a3)
    return I.hsum(a0), I.hsum(a1), I.hsum(a2), I.hsum(a3)


@njit(**_row)
def _row_q5_0(isa, row, q, d, sums):
    acc = I.fzero()
    for b in range(q.shape[0] // 32):
        dw, w = _q5_0_block(row, b)
        acc = _q8u_step(isa, dw, w, q, d, sums, b, acc)
    return I.hsum(acc)


@njit(**_row)
def _row4_q5_0(isa, row, q, d, sums, n):
    a0, a1, a2, a3 = I.fzero(), I.fzero(), I.fzero(), I.fzero()
    for b in range(q.shape[1] // 32):
        dw, w = _q5_0_block(row, b)
        a0 = _q8u_step(isa, dw, w, q[n], d[n], sums[n], b, a0)
        a1 = _q8u_step(isa, dw, w, q[n + 1], d[n + 1], sums[n + 1], b, a1)
        a2 = _q8u_step(isa, dw, w, q[n + 2], d[n + 2], sums[n + 2], b, a2)
        a3 = _q8u_step(isa, dw, w, q[n + 3], d[n + 3], sums[n + 3], b, a3)
    return I.hsum(a0), I.hsum(a1), I.hsum(a2), I.hsum(a3)


@njit(**_row)
def _row_q4_1(isa, row, q, d, sums):
    acc, summs = I.fzero(), F32(0)
    for b in range(q.shape[0] // 32):
        dw, mw, w = _q4_1_block(row, b)
        acc, summs = _q81_step(isa, dw, mw, w, q, d, sums, b, acc, summs)
    return I.hsum(acc) + summs


@njit(**_row)
def _row4_q4_1(isa, row, q, d, sums, n):
    a0, a1, a2, a3 = I.fzero(), I.fzero(), I.fzero(), I.fzero()
    s0, s1, s2, s3 = F32(0), F32(0), F32(0), F32(0)
    for b in range(q.shape[1] // 32):
        dw, mw, w = _q4_1_block(row, b)
        a0, s0 = _q81_step(isa, dw, mw, w, q[n], d[n], sums[n], b, a0, s0)
        a1, s1 = _q81_step(isa, dw, mw, w, q[n + 1], d[n + 1], sums[n + 1], b, a1, s1)
        a2, s2 = _q81_step(isa, dw, mw, w, q[n + 2], d[n + 2], sums[n + 2], b, a2, s2)
        a3, s3 = _q81_step(isa, dw, mw, w, q[n + 3], d[n + 3], sums[n + 3], b, a3, s3)
    return I.hsum(a0) + s0, I.hsum(a1) + s1, I.hsum(a2) + s2, I.hsum(a3) + s3


@njit(**_row)
def _row_q5_1(isa, row, q, d, sums):
    acc, summs = I.fzero(), F32(0)
    for b in range(q.shape[0] // 32):
        dw, mw, w = _q5_1_block(row, b)
        acc, summs = _q81_step(isa, dw, mw, w, q, d, sums, b, acc, summs)
    return I.hsum(acc) + summs


@njit(**_row)
def _row4_q5_1(isa, row, q, d, sums, n):
    a0, a1, a2, a3 = I.fzero(), I.fzero(), I.fzero(), I.fzero()
    s0, s1, s2, s3 = F32(0), F32(0), F32(0), F32(0)
    for b in range(q.shape[1] // 32):
        dw, mw, w = _q5_1_block(row, b)
        a0, s0 = _q81_step(isa, dw, mw, w, q[n], d[n], sums[n], b, a0, s0)
        a1, s1 = _q81_step(isa, dw, mw, w, q[n + 1], d[n + 1], sums[n + 1], b, a1, s1)
        a2, s2 = _q81_step(isa, dw, mw, w, q[n + 2], d[n + 2], sums[n + 2], b, a2, s2)
        a3, s3 = _q81_step(isa, dw, mw, w, q[n + 3], d[n + 3], sums[n + 3], b, a3, s3)
    return I.hsum(a0) + s0, I.hsum(a1) + s1, I.hsum(a2) + s2, I.hsum(a3) + s3


@njit(**_row)
def _scale_min_k4(row, at, k):
    """ggml's get_scale_min_k4: sub-block k's 6-bit scale and min from the 12 bytes at ``at``."""
    if k < 4:
        return np.int32(row[at + k] & 63), np.int32(row[at + k + 4] & 63)
    sc = (row[at + k + 4] & 15) | ((row[at + k - 4] >> 6) << 4)
    m = (row[at + k + 4] >> 4) | ((row[at + k] >> 6) << 4)
    return np.int32(sc), np.int32(m)


@njit(**_row)
def _q4_k_minimums(row, o):
    """The eight 6-bit mins of the Q4_K super-block at ``o``, in int32 lanes."""
    return I.ints8(
        _scale_min_k4(row, o + 4, 0)[1],
        _scale_min_k4(row, o + 4, 1)[1],
        _scale_min_k4(row, o + 4, 2)[1],
        _scale_min_k4(row, o + 4, 3)[1],
        _scale_min_k4(row, o + 4, 4)[1],
        _scale_min_k4(row, o + 4, 5)[1],
        _scale_min_k4(row, o + 4, 6)[1],
        _scale_min_k4(row, o + 4, 7)[1],
    )


@njit(**_row)
def _q4_k_codes(row, o, j):
    """Sub-blocks 2j (low nibbles) and 2j+1 (high) of the Q4_K super-block at ``o``: their codes
    and 6-bit scales."""
    bits = I.load32(row, o + 16 + 32 * j)
    lo, _ = _scale_min_k4(row, o + 4, 2 * j)
    hi, _ = _scale_min_k4(row, o + 4, 2 * j + 1)
    return I.band(bits, 15), I.bshr(bits, 4), lo, hi


@njit(**_row)
def _q4_k_dot(isa, acc, c_lo, c_hi, lo, hi, q, at):
    """acc + two sub-blocks' codes, each times its scale, · the 64 activation codes at ``at``."""
    acc = I.dot_us_scaled(isa, acc, c_lo, I.load32(q, at), lo, lo)
    return I.dot_us_scaled(isa, acc, c_hi, I.load32(q, at + 32), hi, hi)


@njit(**_row)
def _row_q4_k(isa, row, q, d, sums):
    """144-byte super-blocks of 256: float16 d and dmin, 12 bytes of 6-bit scales and mins, 128
    bytes of nibbles (32 bytes per 64 values: sub-block 2j low, 2j+1 high); value d·sc·q −
    dmin·m (ggml_vec_dot_q4_K_q8_K: int32 lanes per super-block, the mins through the code sums
    in four float lanes of their own)."""
    acc, m = I.fzero(), I.fzero()
    for b in range(q.shape[0] // 256):
        o = 144 * b
        m = I.fma_splat(-d[b] * I.half_at(row, o + 2), I.min_products(_q4_k_minimums(row, o), sums, 16 * b), m)
        sumi = I.izero()
        for j in range(4):
            c_lo, c_hi, lo, hi = _q4_k_codes(row, o, j)
            sumi = _q4_k_dot(isa, sumi, c_lo, c_hi, lo, hi, q, 256 * b + 64 * j)
        acc = I.fma_lanes(d[b] * I.half_at(row, o), sumi, acc)
    return I.hsum(acc) + I.hsum4(m)


@njit(**_row)
def _row4_q4_k(isa, row, q, d, sums, n):
    """``_row_q4_k`` for activation rows n..n+3, each super-block decoded once for all four."""
    a0, a1, a2, a3 = I.fzero(), I.fzero(), I.fzero(), I.fzero()
    m0, m1, m2, m3 = I.fzero(), I.fzero(), I.fzero(), I.fzero()
    for b in range(q.shape[1] // 256):
        o = 144 * b
        dw, dmw, mins = I.half_at(row, o), I.half_at(row, o + 2), _q4_k_minimums(row, o)
        m0 = I.fma_splat(-d[n, b] * dmw, I.min_products(mins, sums[n], 16 * b), m0)
        m1 = I.fma_splat(-d[n + 1, b] * dmw, I.min_products(mins, sums[n + 1], 16 * b), m1)
        m2 = I.fma_splat(-d[n + 2, b] * dmw, I.min_products(mins, sums[n + 2], 16 * b), m2)
        m3 = I.fma_splat(-d[n + 3, b] * dmw, I.min_products(mins, sums[n + 3], 16 * b), m3)
        s0, s1, s2, s3 = I.izero(), I.izero(), I.izero(), I.izero()
        for j in range(4):
            c_lo, c_hi, lo, hi = _q4_k_codes(row, o, j)
            at = 256 * b + 64 * j
            s0 = _q4_k_dot(isa, s0, c_lo, c_hi, lo, hi, q[n], at)
            s1 = _q4_k_dot(isa, s1, c_lo, c_hi, lo, hi, q[n + 1], at)
            s2 = _q4_k_dot(isa, s2, c_lo, c_hi, lo, hi, q[n + 2], at)
            s3 = _q4_k_dot(isa, s3, c_lo, c_hi, lo, hi, q[n + 3], at)
        a0 = I.fma_lanes(d[n, b] * dw, s0, a0)
        a1 = I.fma_lanes(d[n + 1, b] * dw, s1, a1)
        a2 = I.fma_lanes(d[n + 2, b] * dw, s2, a2)
        a3 = I.fma_lanes(d[n + 3, b] * dw, s3, a3)
    return I.hsum(a0) + I.hsum4(m0), I.hsum(a1) + I.hsum4(m1), I.hsum(a2) + I.hsum4(m2), I.hsum(a3) + I.hsum4(m3)


@njit(**_row)
def _q5_k_codes(row, o, h, j):
    """Sub-blocks 2j and 2j+1 of the Q5_K super-block at ``o`` (176 bytes: float16 d and dmin,
    12 bytes of scales and mins, 32 bytes ``h`` of fifth bits, bit k of byte i for sub-block k's
    value i, 128 bytes of nibbles as Q4_K's): their 5-bit codes and 6-bit scales."""
    bits = I.load32(row, o + 48 + 32 * j)
    lo, _ = _scale_min_k4(row, o + 4, 2 * j)
    hi, _ = _scale_min_k4(row, o + 4, 2 * j + 1)
    c_lo = I.badd(I.band(bits, 15), I.bit_at(h, 2 * j, 4))
    return c_lo, I.badd(I.bshr(bits, 4), I.bit_at(h, 2 * j + 1, 4)), lo, hi


@njit(**_row)
def _q5_k_min(row, o, sums, b):
    """Σ min · (sum of the sub-block's 32 activation codes) over a Q5_K super-block, exactly."""
    total = np.int32(0)
    for k in range(8):
        _, m = _scale_min_k4(row, o + 4, k)
        total += m * (np.int32(sums[16 * b + 2 * k]) + np.int32(sums[16 * b + 2 * k + 1]))
    return F32(total)


@njit(**_row)
def _row_q5_k(isa, row, q, d, sums):
    """ggml_vec_dot_q5_K_q8_K: Q4_K's int32 lanes with a fifth bit per code; the mins as one
    exact integer per super-block, into a scalar."""
    acc, summs = I.fzero(), F32(0)
    for b in range(q.shape[0] // 256):
        o = 176 * b
        summs = I.fma1(-d[b] * I.half_at(row, o + 2), _q5_k_min(row, o, sums, b), summs)
        h, sumi = I.load32(row, o + 16), I.izero()
        for j in range(4):
            c_lo, c_hi, lo, hi = _q5_k_codes(row, o, h, j)
            sumi = _q4_k_dot(isa, sumi, c_lo, c_hi, lo, hi, q, 256 * b + 64 * j)
        acc = I.fma_lanes(d[b] * I.half_at(row, o), sumi, acc)
    return I.hsum(acc) + summs


@njit(**_row)
def _row4_q5_k(isa, row, q, d, sums, n):
    """``_row_q5_k`` for activation rows n..n+3, each super-block decoded once for all four."""
    a0, a1, a2, a3 = I.fzero(), I.fzero(), I.fzero(), I.fzero()
    m0, m1, m2, m3 = F32(0), F32(0), F32(0), F32(0)
    for b in range(q.shape[1] // 256):
        o = 176 * b
        dw, dmw = I.half_at(row, o), I.half_at(row, o + 2)
        m0 = I.fma1(-d[n, b] * dmw, _q5_k_min(row, o, sums[n], b), m0)
        m1 = I.fma1(-d[n + 1, b] * dmw, _q5_k_min(row, o, sums[n + 1], b), m1)
        m2 = I.fma1(-d[n + 2, b] * dmw, _q5_k_min(row, o, sums[n + 2], b), m2)
        m3 = I.fma1(-d[n + 3, b] * dmw, _q5_k_min(row, o, sums[n + 3], b), m3)
        h = I.load32(row, o + 16)
        s0, s1, s2, s3 = I.izero(), I.izero(), I.izero(), I.izero()
        for j in range(4):
            c_lo, c_hi, lo, hi = _q5_k_codes(row, o, h, j)
            at = 256 * b + 64 * j
            s0 = _q4_k_dot(isa, s0, c_lo, c_hi, lo, hi, q[n], at)
            s1 = _q4_k_dot(isa, s1, c_lo, c_hi, lo, hi, q[n + 1], at)
            s2 = _q4_k_dot(isa, s2, c_lo, c_hi, lo, hi, q[n + 2], at)
            s3 = _q4_k_dot(isa, s3, c_lo, c_hi, lo, hi, q[n + 3], at)
        a0 = I.fma_lanes(d[n, b] * dw, s0, a0)
        a1 = I.fma_lanes(d[n + 1, b] * dw, s1, a1)
        a2 = I.fma_lanes(d[n + 2, b] * dw, s2, a2)
        a3 = I.fma_lanes(d[n + 3, b] * dw, s3, a3)
    return I.hsum(a0) + m0, I.hsum(a1) + m1, I.hsum(a2) + m2, I.hsum(a3) + m3


@njit(**_row)
def _q6_k_half(isa, acc, row, o, j, q, at):
    """acc + values 128j..128j+127 of a Q6_K super-block at ``o`` (unsigned 6-bit codes, each 16
    times its int8 scale) · the activation codes at ``at``, in int32 lanes."""
    b1, b2 = I.load32(row, o + 64 * j), I.load32(row, o + 64 * j + 32)
    h = I.load32(row, o + 128 + 32 * j)
    c0 = I.bor(I.band(b1, 15), I.bshl(I.band(h, 3), 4))
    c1 = I.bor(I.band(b2, 15), I.bshl(I.band(h, 12), 2))
    c2 = I.bor(I.bshr(b1, 4), I.band(h, 48))
    c3 = I.bor(I.bshr(b2, 4), I.bshr(I.band(h, 192), 2))
    sc = o + 192 + 8 * j
    s = I.dot_us_scaled(isa, acc, c0, I.load32(q, at), np.int8(row[sc]), np.int8(row[sc + 1]))
    s = I.dot_us_scaled(isa, s, c1, I.load32(q, at + 32), np.int8(row[sc + 2]), np.int8(row[sc + 3]))
    s = I.dot_us_scaled(isa, s, c2, I.load32(q, at + 64), np.int8(row[sc + 4]), np.int8(row[sc + 5]))
    return I.dot_us_scaled(isa, s, c3, I.load32(q, at + 96), np.int8(row[sc + 6]), np.int8(row[sc + 7]))


@njit(**_row)
def _q6_k_sum(isa, row, o, q, sums, b):
    """Super-block b · its activation codes in int32 lanes, the −32 offset taken through the
    codes' 16-value sums (ggml: ``vpmaddwd`` of ``bsums`` and the scales, times 32)."""
    s = _q6_k_half(isa, _q6_k_half(isa, I.izero(), row, o, 0, q, 256 * b), row, o, 1, q, 256 * b + 128)
    return I.isub(s, I.ishl(I.madd_sums(sums, 16 * b, row, o + 192), 5))


@njit(**_row)
def _row_q6_k(isa, row, q, d, sums):
    """210-byte super-blocks: 128 bytes of low nibbles, 64 of 2-bit highs, 16 int8 scales (one
    per 16 values), float16 d; value d·scale·(q − 32) (ggml_vec_dot_q6_K_q8_K)."""
    acc = I.fzero()
    for b in range(q.shape[0] // 256):
        o = 210 * b
        acc = I.fma_lanes(d[b] * I.half_at(row, o + 208), _q6_k_sum(isa, row, o, q, sums, b), acc)
    return I.hsum(acc)


@njit(**_row)
def _row4_q6_k(isa, row, q, d, sums, n):
    """``_row_q6_k`` for activation rows n..n+3 (the bytes come from cache after the first)."""
    a0, a1, a2, a3 = I.fzero(), I.fzero(), I.fzero(), I.fzero()
    for b in range(q.shape[1] // 256):
        o = 210 * b
        dw = I.half_at(row, o + 208)
        a0 = I.fma_lanes(d[n, b] * dw, _q6_k_sum(isa, row, o, q[n], sums[n], b), a0)
        a1 = I.fma_lanes(d[n + 1, b] * dw, _q6_k_sum(isa, row, o, q[n + 1], sums[n + 1], b), a1)
        a2 = I.fma_lanes(d[n + 2, b] * dw, _q6_k_sum(isa, row, o, q[n + 2], sums[n + 2], b), a2)
        a3 = I.fma_lanes(d[n + 3, b] * dw, _q6_k_sum(isa, row, o, q[n + 3], sums[n + 3], b), a3)
    return I.hsum(a0), I.hsum(a1), I.hsum(a2), I.hsum(a3)


# One driver per type: numba inlines a row function called by name, not one passed as an
# argument. Activation rows go four at a time through ``_row4_*`` (the weights decoded once for
# the four), the rest one at a time; both compute each row's sum in the same steps.


@njit(**_driver)
def _mm_q8_0(isa, w, q, d, sums, out):
    fix = _fix(sums, 128)
    for r in prange(w.shape[0]):
        I.prefetch_ahead(w, r)
        row, n = w[r], 0
        while n + 4 <= q.shape[0]:
            out[n, r], out[n + 1, r], out[n + 2, r], out[n + 3, r] = _row4_q8_0(isa, row, q, d, fix, n)
            n += 4
        for m in range(n, q.shape[0]):
            out[m, r] = _row_q8_0(isa, row, q[m], d[m], fix[m])


@njit(**_driver)
def _mm_q4_0(isa, w, q, d, sums, out):
    fix = _fix(sums, 8)
    for r in prange(w.shape[0]):
        I.prefetch_ahead(w, r)
        row, n = w[r], 0
        while n + 4 <= q.shape[0]:
            out[n, r], out[n + 1, r], out[n + 2, r], out[n + 3, r] = _row4_q4_0(isa, row, q, d, fix, n)
            n += 4
        for m in range(n, q.shape[0]):
            out[m, r] = _row_q4_0(isa, row, q[m], d[m], fix[m])


@njit(**_driver)
def _mm_q5_0(isa, w, q, d, sums, out):
    fix = _fix(sums, 16)
    for r in prange(w.shape[0]):
        I.prefetch_ahead(w, r)
        row, n = w[r], 0
        while n + 4 <= q.shape[0]:
            out[n, r], out[n + 1, r], out[n + 2, r], out[n + 3, r] = _row4_q5_0(isa, row, q, d, fix, n)
            n += 4
        for m in range(n, q.shape[0]):
            out[m, r] = _row_q5_0(isa, row, q[m], d[m], fix[m])


@njit(**_driver)
def _mm_q4_1(isa, w, q, d, sums, out):
    for r in prange(w.shape[0]):
        I.prefetch_ahead(w, r)
        row, n = w[r], 0
        while n + 4 <= q.shape[0]:
            out[n, r], out[n + 1, r], out[n + 2, r], out[n + 3, r] = _row4_q4_1(isa, row, q, d, sums, n)
            n += 4
        for m in range(n, q.shape[0]):
            out[m, r] = _row_q4_1(isa, row, q[m], d[m], sums[m])


@njit(**_driver)
def _mm_q5_1(isa, w, q, d, sums, out):
    for r in prange(w.shape[0]):
        I.prefetch_ahead(w, r)
        row, n = w[r], 0
        while n + 4 <= q.shape[0]:
            out[n, r], out[n + 1, r], out[n + 2, r], out[n + 3, r] = _row4_q5_1(isa, row, q, d, sums, n)
            n += 4
        for m in range(n, q.shape[0]):
            out[m, r] = _row_q5_1(isa, row, q[m], d[m], sums[m])


@njit(**_driver)
def _mm_q4_k(isa, w, q, d, sums, out):
    for r in prange(w.shape[0]):
        I.prefetch_ahead(w, r)
        row, n = w[r], 0
        while n + 4 <= q.shape[0]:
            out[n, r], out[n + 1, r], out[n + 2, r], out[n + 3, r] = _row4_q4_k(isa, row, q, d, sums, n)
            n += 4
        for m in range(n, q.shape[0]):
            out[m, r] = _row_q4_k(isa, row, q[m], d[m], sums[m])


@njit(**_driver)
def _mm_q5_k(isa, w, q, d, sums, out):
    for r in prange(w.shape[0]):
        I.prefetch_ahead(w, r)
        row, n = w[r], 0
        while n + 4 <= q.shape[0]:
            out[n, r], out[n + 1, r], out[n + 2, r], out[n + 3, r] = _row4_q5_k(isa, row, q, d, sums, n)
            n += 4
        for m in range(n, q.shape[0]):
            out[m, r] = _row_q5_k(isa, row, q[m], d[m], sums[m])


@njit(**_driver)
def _mm_q6_k(isa, w, q, d, sums, out):
    for r in prange(w.shape[0]):
        I.prefetch_ahead(w, r)
        row, n = w[r], 0
        while n + 4 <= q.shape[0]:
            out[n, r], out[n + 1, r], out[n + 2, r], out[n + 3, r] = _row4_q6_k(isa, row, q, d, sums, n)
            n += 4
        for m in range(n, q.shape[0]):
            out[m, r] = _row_q6_k(isa, row, q[m], d[m], sums[m])


#: type name → (driver, the activation codes it takes: activations.codes' kind).
KERNELS: dict[str, tuple[Callable, str]] = {
    "q8_0": (_mm_q8_0, "q8_0"),
    "q4_0": (_mm_q4_0, "q8_0"),
    "q5_0": (_mm_q5_0, "q8_0"),
    "q4_1": (_mm_q4_1, "q8_1"),
    "q5_1": (_mm_q5_1, "q8_1"),
    "q4_k": (_mm_q4_k, "q8_k"),
    "q5_k": (_mm_q5_k, "q8_k"),
    "q6_k": (_mm_q6_k, "q8_k"),
}
