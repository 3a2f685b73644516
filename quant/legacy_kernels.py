"""The 32-value block quantizers as compiled loops: ggml's ``quantize_row_*_ref``, line for line.

Why compiled: NumPy needs a pass through memory per operation (a transpose for the per-block
extremes, then scale, offset, truncate, clamp, pack), each with its own temporary; a loop over a
block does all of it while the 32 values sit in registers. numba compiles these without
``fastmath``, so every float32 operation is the one C performs, in C's order (no FMA
contraction, no reassociation): the bytes are ggml's. ``nogil`` lets QuantType.quantize run one
chunk per core.

Each kernel fills the code bytes of ``out`` (n, type_size) and returns nothing; the float16
fields are written by the caller from the float32 ``d`` (and ``m``) arrays, with NumPy's
float16 conversion (round to nearest even, as GGML_FP32_TO_FP16).

Constants are spelled ``F32(...)``: numba, like NumPy, widens float32 with a Python float to
float64, which would change the roundings.
"""

from __future__ import annotations

import numpy as np
from numba import njit

F32 = np.float32
_jit = {"nogil": True, "cache": True, "error_model": "numpy"}


@njit(inline="always")
def _inverse(d):
    """``d ? 1.0f/d : 0.0f``"""
    return F32(1) / d if d != F32(0) else F32(0)


@njit(inline="always")
def _roundf(x):
    """C ``roundf`` (half away from zero) for |x| < 2³¹: trunc(x) + trunc(2·(x - trunc(x))),
    every step exact in float32."""
    t = np.int32(x)
    return t + np.int32((x - F32(t)) * F32(2))


@njit(inline="always")
def _signed_absmax(b):
    """The first value of largest magnitude (0.0 if all are zero), as the C loop finds it."""
    amax = F32(0)
    mx = F32(0)
    for v in b:
        if amax < abs(v):
            amax = abs(v)
            mx = v
    return mx


@njit(inline="always")
def _min_max(b):
    lo = F32(np.inf)  # C starts from ±FLT_MAX; the first finite value replaces either alike
    hi = F32(-np.inf)
    for v in b:
        if v < lo:
            lo = v
        if v > hi:
            hi = v
    return lo, hi


@njit(**_jit)
def q8_0(x, out, d):
    """34-byte blocks: d = max|x|/127, q = roundf(x/d) (codes at bytes 2..33)."""
    for n in range(x.shape[0]):
        b = x[n]
        amax = F32(0)
        for v in b:
            a = abs(v)
            amax = a if a > amax else amax
        d[n] = amax / F32(127)
        inv = _inverse(d[n])
        for j in range(32):
            out[n, 2 + j] = np.uint8(np.int8(_roundf(b[j] * inv)))


@njit(**_jit)
def q4_0(x, out, d):
    """18-byte blocks: d = (signed absmax)/-8, q = min(15, (int8)(x/d + 8.5))."""
    for n in range(x.shape[0]):
        b = x[n]
        d[n] = _signed_absmax(b) / F32(-8)
        inv = _inverse(d[n])
        for j in range(16):
            lo = min(np.int32(15), np.int32(b[j] * inv + F32(8.5)))
            hi = min(np.int32(15), np.int32(b[j + 16] * inv + F32(8.5)))
            out[n, 2 + j] = np.uint8(lo | (hi << 4))


@njit(**_jit)
def q4_1(x, out, d, m):
    """20-byte blocks: d = (max-min)/15, m = min, q = min(15, (int8)((x-m)/d + 0.5))."""
    for n in range(x.shape[0]):
        b = x[n]
        lo, hi = _min_max(b)
        d[n] = (hi - lo) / F32(15)
        m[n] = lo
        inv = _inverse(d[n])
        for j in range(16):
            a = min(np.int32(15), np.int32((b[j] - lo) * inv + F32(0.5)))
            c = min(np.int32(15), np.int32((b[j + 16] - lo) * inv + F32(0.5)))
            out[n, 4 + j] = np.uint8(a | (c << 4))


@njit(inline="always")
def _put_q5(out, n, at, codes):
    """Five-bit codes → fifth bits (little-endian uint32 at ``at``) and nibbles after them."""
    qh = np.uint32(0)
    for j in range(16):
        lo, hi = codes[j], codes[j + 16]
        out[n, at + 4 + j] = np.uint8((lo & 15) | ((hi & 15) << 4))
        qh |= np.uint32((lo >> 4) & 1) << np.uint32(j)
        qh |= np.uint32((hi >> 4) & 1) << np.uint32(j + 16)
    for k in range(4):
        out[n, at + k] = np.uint8((qh >> np.uint32(8 * k)) & np.uint32(255))


@njit(**_jit)
def q5_0(x, out, d):
    """22-byte blocks: d = (signed absmax)/-16, q = min(31, (int8)(x/d + 16.5))."""
    codes = np.empty(32, np.int32)
    for n in range(x.shape[0]):
        b = x[n]
        d[n] = _signed_absmax(b) / F32(-16)
        inv = _inverse(d[n])
        for j in range(32):
            codes[j] = min(np.int32(31), np.int32(b[j] * inv + F32(16.5)))
        _put_q5(out, n, 2, codes)


@njit(**_jit)
def q5_1(x, out, d, m):
    """24-byte blocks: d = (max-min)/31, m = min, q = (uint8)((x-m)/d + 0.5) (no clamp in C)."""
    codes = np.empty(32, np.int32)
    for n in range(x.shape[0]):
        b = x[n]
        lo, hi = _min_max(b)
        d[n] = (hi - lo) / F32(31)
        m[n] = lo
        inv = _inverse(d[n])
        for j in range(32):
            codes[j] = np.int32((b[j] - lo) * inv + F32(0.5))
        _put_q5(out, n, 4, codes)
