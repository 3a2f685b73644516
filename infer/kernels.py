"""Matrix × vector straight on GGUF blocks: the products of generation, one token at a time.

Why. Generating a token reads every weight once, so its speed is bytes read ÷ memory bandwidth.
A float32 copy costs 4 bytes per weight; the blocks cost 1.06 (Q8_0), 0.69 (Q5_0), 0.56 (Q4_K).
NumPy has no kernel that multiplies blocks without first dequantizing them into a float32 array
(a full extra pass through memory), so these are plain loops compiled by numba: each weight is
decoded in registers and multiplied at once; LLVM vectorizes the inner loops and ``prange``
splits the rows over the cores. Prompt processing keeps using float32 matrix × matrix (BLAS
reuses every weight across the batch; there these kernels would be slower).

Numerics. ``x`` arrives already rounded the way llama.cpp rounds activations for the weight type
(``weights.round_activations``), so each product is the sum llama.cpp computes, in another
order: ggml adds integer codes then scales each block, these add code × rounded value per block
in float32 (``fastmath`` lets LLVM reorder that sum into SIMD lanes) and scale each block.
Blocks are read through a uint8 view; float16 scales through a 65 536-entry table.

Layouts are ggml's (ggml-common.h), as quant/legacy_types.py and quant/k_types.py write them.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from numba import njit, prange

F32 = np.float32
#: float16 bit pattern → float32 value.
HALF = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(F32)

_inline = {"inline": "always", "fastmath": True, "cache": True}


@njit(**_inline)
def _half(row: np.ndarray, at: int, half: np.ndarray) -> np.float32:
    return half[np.int32(row[at]) | (np.int32(row[at + 1]) << 8)]


@njit(**_inline)
def _dot(q, x):  # type: ignore[no-untyped-def]
    """Integer codes · float32 values, over two slices (slices let LLVM vectorize)."""
    s = F32(0)
    for i in range(q.shape[0]):
        s += F32(q[i]) * x[i]
    return s


@njit(**_inline)
def _dot_nibbles(q, x):  # type: ignore[no-untyped-def]
    """16 bytes of nibbles (value i low, value i+16 high) · 32 float32 values."""
    s = F32(0)
    for i in range(16):
        s += F32(q[i] & 15) * x[i] + F32(q[i] >> 4) * x[16 + i]
    return s


@njit(**_inline)
def _row_q8_0(row, x, xs, half):  # type: ignore[no-untyped-def]
    """34-byte blocks: float16 d, 32 int8 codes; value = d·q."""
    acc = F32(0)
    for b in range(x.shape[0] // 32):
        o, j = b * 34, b * 32
        acc += _half(row, o, half) * _dot(row[o + 2:o + 34].view(np.int8), x[j:j + 32])
    return acc


@njit(**_inline)
def _row_q4_0(row, x, xs, half):  # type: ignore[no-untyped-def]
    """18-byte blocks: float16 d, 16 bytes of nibbles (value i low, i+16 high); value = d·(q-8)."""
    acc = F32(0)
    for b in range(x.shape[0] // 32):
        o, j = b * 18, b * 32
        s = _dot_nibbles(row[o + 2:o + 18], x[j:j + 32])
        acc += _half(row, o, half) * (s - F32(8) * xs[b])
    return acc


@njit(**_inline)
def _row_q4_1(row, x, xs, half):  # type: ignore[no-untyped-def]
    """20-byte blocks: float16 d and m, 16 bytes of nibbles; value = d·q + m."""
    acc = F32(0)
    for b in range(x.shape[0] // 32):
        o, j = b * 20, b * 32
        s = _dot_nibbles(row[o + 4:o + 20], x[j:j + 32])
        acc += _half(row, o, half) * s + _half(row, o + 2, half) * xs[b]
    return acc


@njit(**_inline)
def _fifth_bits(row, at):  # type: ignore[no-untyped-def]
    """The little-endian uint32 of Q5 fifth bits (bit i belongs to value i)."""
    return (np.uint32(row[at]) | (np.uint32(row[at + 1]) << 8) | (np.uint32(row[at + 2]) << 16)
            | (np.uint32(row[at + 3]) << 24))  # fmt: skip


@njit(**_inline)
def _dot_q5(q, qh, x):  # type: ignore[no-untyped-def]
    """16 bytes of nibbles plus the 32 fifth bits in ``qh`` · 32 float32 values."""
    s = F32(0)
    for i in range(16):
        lo = (q[i] & 15) | (((qh >> i) & 1) << 4)
        hi = (q[i] >> 4) | (((qh >> (i + 16)) & 1) << 4)
        s += F32(lo) * x[i] + F32(hi) * x[16 + i]
    return s


@njit(**_inline)
def _row_q5_0(row, x, xs, half):  # type: ignore[no-untyped-def]
    """22-byte blocks: float16 d, 4 bytes of fifth bits, 16 bytes of nibbles; value = d·(q-16)."""
    acc = F32(0)
    for b in range(x.shape[0] // 32):
        o = b * 22
        s = _dot_q5(row[o + 6:o + 22], _fifth_bits(row, o + 2), x[b * 32:b * 32 + 32])
        acc += _half(row, o, half) * (s - F32(16) * xs[b])
    return acc


@njit(**_inline)
def _row_q5_1(row, x, xs, half):  # type: ignore[no-untyped-def]
    """24-byte blocks: float16 d and m, fifth bits, nibbles; value = d·q + m."""
    acc = F32(0)
    for b in range(x.shape[0] // 32):
        o = b * 24
        s = _dot_q5(row[o + 8:o + 24], _fifth_bits(row, o + 4), x[b * 32:b * 32 + 32])
        acc += _half(row, o, half) * s + _half(row, o + 2, half) * xs[b]
    return acc


@njit(**_inline)
def _scale_min_k4(row, at, k):  # type: ignore[no-untyped-def]
    """ggml's get_scale_min_k4: sub-block k's 6-bit scale and min from the 12 bytes at ``at``."""
    if k < 4:
        return F32(row[at + k] & 63), F32(row[at + k + 4] & 63)
    sc = (row[at + k + 4] & 15) | ((row[at + k - 4] >> 6) << 4)
    m = (row[at + k + 4] >> 4) | ((row[at + k] >> 6) << 4)
    return F32(sc), F32(m)


@njit(**_inline)
def _dot_k4(q, x):  # type: ignore[no-untyped-def]
    """32 bytes of nibbles · 64 values: (low nibbles · first 32, high nibbles · last 32)."""
    lo = F32(0)
    hi = F32(0)
    for i in range(32):
        lo += F32(q[i] & 15) * x[i]
        hi += F32(q[i] >> 4) * x[32 + i]
    return lo, hi


@njit(**_inline)
def _dot_k5(q, qh, shift, x):  # type: ignore[no-untyped-def]
    """As ``_dot_k4``, the fifth bits taken from bits ``shift`` and ``shift+1`` of ``qh``."""
    lo = F32(0)
    hi = F32(0)
    for i in range(32):
        h = qh[i] >> shift
        lo += F32((q[i] & 15) | ((h & 1) << 4)) * x[i]
        hi += F32((q[i] >> 4) | ((h & 2) << 3)) * x[32 + i]
    return lo, hi


@njit(**_inline)
def _row_q4_k(row, x, xs, half):  # type: ignore[no-untyped-def]
    """144-byte super-blocks of 256: float16 d and dmin, 12 bytes of 6-bit scales and mins, 128
    bytes of nibbles (each 32 bytes: sub-block 2c low, 2c+1 high); value = d·sc·q - dmin·m."""
    acc = F32(0)
    for b in range(x.shape[0] // 256):
        o, j = b * 144, b * 256
        d, dmin = _half(row, o, half), _half(row, o + 2, half)
        for c in range(4):
            lo, hi = _dot_k4(row[o + 16 + 32 * c:o + 48 + 32 * c], x[j + 64 * c:j + 64 * c + 64])
            sc, m = _scale_min_k4(row, o + 4, 2 * c)
            acc += d * sc * lo - dmin * m * xs[b * 8 + 2 * c]
            sc, m = _scale_min_k4(row, o + 4, 2 * c + 1)
            acc += d * sc * hi - dmin * m * xs[b * 8 + 2 * c + 1]
    return acc


@njit(**_inline)
def _row_q5_k(row, x, xs, half):  # type: ignore[no-untyped-def]
    """176-byte super-blocks: as Q4_K with 32 bytes of fifth bits (bit 2c of byte i: sub-block
    2c's value i, bit 2c+1: sub-block 2c+1's) between the scales and the nibbles."""
    acc = F32(0)
    for b in range(x.shape[0] // 256):
        o, j = b * 176, b * 256
        d, dmin = _half(row, o, half), _half(row, o + 2, half)
        for c in range(4):
            lo, hi = _dot_k5(row[o + 48 + 32 * c:o + 80 + 32 * c], row[o + 16:o + 48], 2 * c,
                             x[j + 64 * c:j + 64 * c + 64])
            sc, m = _scale_min_k4(row, o + 4, 2 * c)
            acc += d * sc * lo - dmin * m * xs[b * 8 + 2 * c]
            sc, m = _scale_min_k4(row, o + 4, 2 * c + 1)
            acc += d * sc * hi - dmin * m * xs[b * 8 + 2 * c + 1]
    return acc


@njit(**_inline)
def _dot_k6(ql, low_shift, qh, high_shift, x):  # type: ignore[no-untyped-def]
    """16 six-bit codes (4 bits of ``ql``, 2 of ``qh``, centred on 32) · 16 values."""
    s = F32(0)
    for i in range(16):
        q = ((ql[i] >> low_shift) & 15) | (((qh[i] >> high_shift) & 3) << 4)
        s += (F32(q) - F32(32)) * x[i]
    return s


@njit(**_inline)
def _row_q6_k(row, x, xs, half):  # type: ignore[no-untyped-def]
    """210-byte super-blocks: 128 bytes of low nibbles, 64 of 2-bit highs, 16 int8 scales (one per
    16 values), float16 d; value = d·scale·(q-32). Each half of 128 values is four quarters of
    32: quarter k takes nibble k//2 of ql[k%2·32 + i] and bits 2k..2k+1 of qh[i]."""
    acc = F32(0)
    for b in range(x.shape[0] // 256):
        o, j = b * 210, b * 256
        d = _half(row, o + 208, half)
        for n in range(2):
            ql, qh, sc = o + 64 * n, o + 128 + 32 * n, o + 192 + 8 * n
            for k in range(4):
                for g in range(2):  # two scales per quarter
                    at, v = ql + 32 * (k % 2) + 16 * g, j + 128 * n + 32 * k + 16 * g
                    s = _dot_k6(row[at:at + 16], 4 * (k // 2), row[qh + 16 * g:qh + 16 * g + 16], 2 * k, x[v:v + 16])
                    acc += d * F32(np.int8(row[sc + 2 * k + g])) * s
    return acc


# One driver per type: numba inlines a row function called by name, not one passed as an argument.
_parallel = {"parallel": True, "fastmath": True, "cache": True}


@njit(**_parallel)
def _mv_q8_0(w, x, xs, half, out):  # type: ignore[no-untyped-def]
    for r in prange(w.shape[0]):
        out[r] = _row_q8_0(w[r], x, xs, half)


@njit(**_parallel)
def _mv_q4_0(w, x, xs, half, out):  # type: ignore[no-untyped-def]
    for r in prange(w.shape[0]):
        out[r] = _row_q4_0(w[r], x, xs, half)


@njit(**_parallel)
def _mv_q4_1(w, x, xs, half, out):  # type: ignore[no-untyped-def]
    for r in prange(w.shape[0]):
        out[r] = _row_q4_1(w[r], x, xs, half)


@njit(**_parallel)
def _mv_q5_0(w, x, xs, half, out):  # type: ignore[no-untyped-def]
    for r in prange(w.shape[0]):
        out[r] = _row_q5_0(w[r], x, xs, half)


@njit(**_parallel)
def _mv_q5_1(w, x, xs, half, out):  # type: ignore[no-untyped-def]
    for r in prange(w.shape[0]):
        out[r] = _row_q5_1(w[r], x, xs, half)


@njit(**_parallel)
def _mv_q4_k(w, x, xs, half, out):  # type: ignore[no-untyped-def]
    for r in prange(w.shape[0]):
        out[r] = _row_q4_k(w[r], x, xs, half)


@njit(**_parallel)
def _mv_q5_k(w, x, xs, half, out):  # type: ignore[no-untyped-def]
    for r in prange(w.shape[0]):
        out[r] = _row_q5_k(w[r], x, xs, half)


@njit(**_parallel)
def _mv_q6_k(w, x, xs, half, out):  # type: ignore[no-untyped-def]
    for r in prange(w.shape[0]):
        out[r] = _row_q6_k(w[r], x, xs, half)


#: type name → (matrix × vector, values per sum in ``xs``: 0 when unused).
KERNELS: dict[str, tuple[Callable, int]] = {
    "q8_0": (_mv_q8_0, 0), "q4_0": (_mv_q4_0, 32), "q4_1": (_mv_q4_1, 32), "q5_0": (_mv_q5_0, 32),
    "q5_1": (_mv_q5_1, 32), "q4_k": (_mv_q4_k, 32), "q5_k": (_mv_q5_k, 32), "q6_k": (_mv_q6_k, 0),
}  # fmt: skip


def matvec(type_name: str, blocks: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``blocks`` (rows, row bytes) uint8 of ``type_name`` times the float32 vector ``x``."""
    kernel, group = KERNELS[type_name]
    x = np.ascontiguousarray(x, dtype=F32)
    xs = x.reshape(-1, group).sum(axis=1, dtype=F32) if group else x[:1]
    out = np.empty(blocks.shape[0], dtype=F32)
    kernel(blocks, x, xs, HALF, out)
    return out
