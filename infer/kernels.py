"""Matrix × vector straight on GGUF blocks: the products of generation, one token at a time.

Why. Generating a token reads every weight once, so its speed is bytes read ÷ memory bandwidth.
A float32 copy costs 4 bytes per weight; the blocks cost 1.06 (Q8_0), 0.69 (Q5_0), 0.56 (Q4_K).
NumPy has no kernel that multiplies blocks without first dequantizing them into a float32 array
(a full extra pass through memory), so these are loops compiled by numba: each weight is decoded
in registers and multiplied at once, eight at a time (simd.py), and ``prange`` splits the rows
over the cores. Prompt processing keeps using float32 matrix × matrix (BLAS reuses every weight
across the batch; there these kernels would be slower).

Shape of a kernel. A row is walked block by block; eight lanes ``s`` gather the block's code ×
value products, ``acc = d·s + acc`` scales them lane-wise by the block's factor, and the lanes are
added once, at the end of the row. Offsets that multiply every value of a block (Q4_0's −8, the
mins of Q4_1 and the K-quants) are applied to the block's sum of ``x`` instead, in one scalar.

Numerics. ``x`` arrives already rounded the way llama.cpp rounds activations for the weight type
(``activations.round_activations``), so each product is the sum llama.cpp computes, in another
order: ggml adds integer codes then scales each block, these add code × rounded value in float32
lanes. Blocks are read through a uint8 view; float16 scales through a 65 536-entry table.

Layouts are ggml's (ggml-common.h), as quant/legacy_types.py and quant/k_types.py write them.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numba import njit, prange

from llamashare.infer import simd as V

F32 = np.float32
#: float16 bit pattern → float32 value.
HALF = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(F32)

_inline = {"inline": "always", "fastmath": True, "cache": True}


@njit(**_inline)
def _half(row: np.ndarray, at: int, half: np.ndarray) -> np.float32:
    return half[np.int32(row[at]) | (np.int32(row[at + 1]) << 8)]


@njit(**_inline)
def _row_q8_0(row, x, xs, half):
    """34-byte blocks: float16 d, 32 int8 codes; value = d·q."""
    acc = V.zero()
    for b in range(x.shape[0] // 32):
        o, j = b * 34, b * 32
        s = V.mul(V.int8s(row, o + 2), V.floats(x, j))
        for g in range(8, 32, 8):
            s = V.fma(V.int8s(row, o + 2 + g), V.floats(x, j + g), s)
        acc = V.fma(V.splat(_half(row, o, half)), s, acc)
    return V.total(acc)


@njit(**_inline)
def _dot_nibbles(row, at, x, j):
    """16 bytes of nibbles at ``at`` (value i low, value i+16 high) · x[j:j+32], in lanes."""
    s = V.mul(V.field(row, at, 0, 15), V.floats(x, j))
    s = V.fma(V.field(row, at + 8, 0, 15), V.floats(x, j + 8), s)
    s = V.fma(V.field(row, at, 4, 15), V.floats(x, j + 16), s)
    return V.fma(V.field(row, at + 8, 4, 15), V.floats(x, j + 24), s)


@njit(**_inline)
def _row_q4_0(row, x, xs, half):
    """18-byte blocks: float16 d, 16 bytes of nibbles (value i low, i+16 high); value = d·(q-8)."""
    acc, off = V.zero(), F32(0)
    for b in range(x.shape[0] // 32):
        o = b * 18
        d = _half(row, o, half)
        acc = V.fma(V.splat(d), _dot_nibbles(row, o + 2, x, b * 32), acc)
        off += d * xs[b]
    return V.total(acc) - F32(8) * off


@njit(**_inline)
def _row_q4_1(row, x, xs, half):
    """20-byte blocks: float16 d and m, 16 bytes of nibbles; value = d·q + m."""
    acc, off = V.zero(), F32(0)
    for b in range(x.shape[0] // 32):
        o = b * 20
        acc = V.fma(V.splat(_half(row, o, half)), _dot_nibbles(row, o + 4, x, b * 32), acc)
        off += _half(row, o + 2, half) * xs[b]
    return V.total(acc) + off


@njit(**_inline)
def _fifth_bits(row, at):
    """The little-endian uint32 of Q5 fifth bits (bit i belongs to value i)."""
    return (
        np.uint32(row[at])
        | (np.uint32(row[at + 1]) << 8)
        | (np.uint32(row[at + 2]) << 16)
        | (np.uint32(row[at + 3]) << 24)
    )


@njit(**_inline)
def _dot_q5(row, at, qh, x, j):
    """16 bytes of nibbles at ``at`` plus the 32 fifth bits in ``qh`` · x[j:j+32], in lanes."""
    sixteen = V.splat(16)
    s = V.zero()
    for g in range(4):  # values 8g..8g+7: nibble 4·(g//2) of bytes 8·(g%2).., fifth bits 8g..
        q = V.fma(sixteen, V.lane_bits(qh, 8 * g), V.field(row, at + 8 * (g % 2), 4 * (g // 2), 15))
        s = V.fma(q, V.floats(x, j + 8 * g), s)
    return s


@njit(**_inline)
def _row_q5_0(row, x, xs, half):
    """22-byte blocks: float16 d, 4 bytes of fifth bits, 16 bytes of nibbles; value = d·(q-16)."""
    acc, off = V.zero(), F32(0)
    for b in range(x.shape[0] // 32):
        o = b * 22
        d = _half(row, o, half)
        acc = V.fma(V.splat(d), _dot_q5(row, o + 6, _fifth_bits(row, o + 2), x, b * 32), acc)
        off += d * xs[b]
    return V.total(acc) - F32(16) * off


@njit(**_inline)
def _row_q5_1(row, x, xs, half):
    """24-byte blocks: float16 d and m, fifth bits, nibbles; value = d·q + m."""
    acc, off = V.zero(), F32(0)
    for b in range(x.shape[0] // 32):
        o = b * 24
        acc = V.fma(V.splat(_half(row, o, half)), _dot_q5(row, o + 8, _fifth_bits(row, o + 4), x, b * 32), acc)
        off += _half(row, o + 2, half) * xs[b]
    return V.total(acc) + off


@njit(**_inline)
def _scale_min_k4(row, at, k):
    """ggml's get_scale_min_k4: sub-block k's 6-bit scale and min from the 12 bytes at ``at``."""
    if k < 4:
        return F32(row[at + k] & 63), F32(row[at + k + 4] & 63)
    sc = (row[at + k + 4] & 15) | ((row[at + k - 4] >> 6) << 4)
    m = (row[at + k + 4] >> 4) | ((row[at + k] >> 6) << 4)
    return F32(sc), F32(m)


@njit(**_inline)
def _dot_k(row, at, high, qh, bit, x, j):
    """32 codes · x[j:j+32], in lanes: nibble ``high`` (0 low, 1 high) of the 32 bytes at ``at``,
    plus (when ``qh`` ≥ 0) bit ``bit`` of the 32 bytes at ``qh`` as the fifth bit (Q5_K)."""
    s = V.zero()
    for g in range(0, 32, 8):
        q = V.field(row, at + g, 4 * high, 15)
        if qh >= 0:
            q = V.fma(V.splat(16), V.field(row, qh + g, bit, 1), q)
        s = V.fma(q, V.floats(x, j + g), s)
    return s


@njit(**_inline)
def _row_q45_k(row, x, xs, half, size, qh, qs):
    """Q4_K (144-byte super-blocks of 256: float16 d and dmin, 12 bytes of 6-bit scales and mins,
    128 bytes of nibbles, each 32 bytes holding sub-block 2c low and 2c+1 high; value =
    d·sc·q - dmin·m) and Q5_K (176 bytes: the same with 32 bytes of fifth bits at ``qh`` — bit
    2c of byte i for sub-block 2c's value i, bit 2c+1 for 2c+1's)."""
    acc, off = V.zero(), F32(0)
    for b in range(x.shape[0] // 256):
        o, j = b * size, b * 256
        d, dmin = _half(row, o, half), _half(row, o + 2, half)
        for k in range(8):  # sub-blocks of 32: k = 2c + high
            c, high = k // 2, k % 2
            sc, m = _scale_min_k4(row, o + 4, k)
            s = _dot_k(row, o + qs + 32 * c, high, o + qh if qh >= 0 else -1, k, x, j + 32 * k)
            acc = V.fma(V.splat(d * sc), s, acc)
            off += dmin * m * xs[b * 8 + k]
    return V.total(acc) - off


@njit(**_inline)
def _row_q4_k(row, x, xs, half):
    return _row_q45_k(row, x, xs, half, 144, -1, 16)


@njit(**_inline)
def _row_q5_k(row, x, xs, half):
    return _row_q45_k(row, x, xs, half, 176, 16, 48)


@njit(**_inline)
def _row_q6_k(row, x, xs, half):
    """210-byte super-blocks: 128 bytes of low nibbles, 64 of 2-bit highs, 16 int8 scales (one per
    16 values), float16 d; value = d·scale·(q-32). Each half of 128 values is four quarters of
    32: quarter k takes nibble k//2 of ql[k%2·32 + i] and bits 2k..2k+1 of qh[i]."""
    acc = V.zero()
    sixteen, centre = V.splat(16), V.splat(32)
    for b in range(x.shape[0] // 256):
        o, j = b * 210, b * 256
        d = _half(row, o + 208, half)
        for n in range(2):
            ql, qh, sc = o + 64 * n, o + 128 + 32 * n, o + 192 + 8 * n
            for k in range(4):
                for g in range(2):  # two scales per quarter, one per 16 values
                    at, v = ql + 32 * (k % 2) + 16 * g, j + 128 * n + 32 * k + 16 * g
                    s = V.zero()
                    for h in range(0, 16, 8):
                        q = V.fma(
                            sixteen, V.field(row, qh + 16 * g + h, 2 * k, 3), V.field(row, at + h, 4 * (k // 2), 15)
                        )
                        s = V.fma(V.sub(q, centre), V.floats(x, v + h), s)
                    acc = V.fma(V.splat(d * F32(np.int8(row[sc + 2 * k + g]))), s, acc)
    return V.total(acc)


@njit(**_inline)
def _halves(row, at, brain):
    return V.bhalves(row, at) if brain else V.halves(row, at)


@njit(**_inline)
def _row_halves(row, x, brain):
    """F16 (``brain`` false) and BF16 rows, 2 bytes per value. Each 32 values sum in their own
    lanes before joining ``acc``, so additions to it do not wait on one another."""
    acc = V.zero()
    n = x.shape[0] // 32 * 32
    for j in range(0, n, 32):
        s = V.mul(_halves(row, 2 * j, brain), V.floats(x, j))
        for g in range(8, 32, 8):
            s = V.fma(_halves(row, 2 * (j + g), brain), V.floats(x, j + g), s)
        acc = V.add(s, acc)
    for j in range(n, x.shape[0], 8):  # rows are a whole number of 8 values (see ``fits``)
        acc = V.fma(_halves(row, 2 * j, brain), V.floats(x, j), acc)
    return V.total(acc)


@njit(**_inline)
def _row_f16(row, x, xs, half):
    return _row_halves(row, x, False)


@njit(**_inline)
def _row_bf16(row, x, xs, half):
    return _row_halves(row, x, True)


# One driver per type: numba inlines a row function called by name, not one passed as an argument.
_parallel = {"parallel": True, "fastmath": True, "cache": True}


@njit(**_parallel)
def _mv_q8_0(w, x, xs, half, out):
    for r in prange(w.shape[0]):
        out[r] = _row_q8_0(w[r], x, xs, half)


@njit(**_parallel)
def _mv_q4_0(w, x, xs, half, out):
    for r in prange(w.shape[0]):
        out[r] = _row_q4_0(w[r], x, xs, half)


@njit(**_parallel)
def _mv_q4_1(w, x, xs, half, out):
    for r in prange(w.shape[0]):
        out[r] = _row_q4_1(w[r], x, xs, half)


@njit(**_parallel)
def _mv_q5_0(w, x, xs, half, out):
    for r in prange(w.shape[0]):
        out[r] = _row_q5_0(w[r], x, xs, half)


@njit(**_parallel)
def _mv_q5_1(w, x, xs, half, out):
    for r in prange(w.shape[0]):
        out[r] = _row_q5_1(w[r], x, xs, half)


@njit(**_parallel)
def _mv_q4_k(w, x, xs, half, out):
    for r in prange(w.shape[0]):
        out[r] = _row_q4_k(w[r], x, xs, half)


@njit(**_parallel)
def _mv_q5_k(w, x, xs, half, out):
    for r in prange(w.shape[0]):
        out[r] = _row_q5_k(w[r], x, xs, half)


@njit(**_parallel)
def _mv_q6_k(w, x, xs, half, out):
    for r in prange(w.shape[0]):
        out[r] = _row_q6_k(w[r], x, xs, half)


@njit(**_parallel)
def _mv_f16(w, x, xs, half, out):
    for r in prange(w.shape[0]):
        out[r] = _row_f16(w[r], x, xs, half)


@njit(**_parallel)
def _mv_bf16(w, x, xs, half, out):
    for r in prange(w.shape[0]):
        out[r] = _row_bf16(w[r], x, xs, half)


# Matrix × several vectors (one per sequence of a batched decode step): each row is read from
# memory once and multiplied by every vector while it is in cache; each (row, vector) product is
# the very sum the matrix × vector driver computes, so a sequence's numbers do not depend on what
# else is decoded beside it.


@njit(**_parallel)
def _mm_q8_0(w, x, xs, half, out):
    for r in prange(w.shape[0]):
        row = w[r]
        for n in range(x.shape[0]):
            out[n, r] = _row_q8_0(row, x[n], xs[n], half)


@njit(**_parallel)
def _mm_q4_0(w, x, xs, half, out):
    for r in prange(w.shape[0]):
        row = w[r]
        for n in range(x.shape[0]):
            out[n, r] = _row_q4_0(row, x[n], xs[n], half)


@njit(**_parallel)
def _mm_q4_1(w, x, xs, half, out):
    for r in prange(w.shape[0]):
        row = w[r]
        for n in range(x.shape[0]):
            out[n, r] = _row_q4_1(row, x[n], xs[n], half)


@njit(**_parallel)
def _mm_q5_0(w, x, xs, half, out):
    for r in prange(w.shape[0]):
        row = w[r]
        for n in range(x.shape[0]):
            out[n, r] = _row_q5_0(row, x[n], xs[n], half)


@njit(**_parallel)
def _mm_q5_1(w, x, xs, half, out):
    for r in prange(w.shape[0]):
        row = w[r]
        for n in range(x.shape[0]):
            out[n, r] = _row_q5_1(row, x[n], xs[n], half)


@njit(**_parallel)
def _mm_q4_k(w, x, xs, half, out):
    for r in prange(w.shape[0]):
        row = w[r]
        for n in range(x.shape[0]):
            out[n, r] = _row_q4_k(row, x[n], xs[n], half)


@njit(**_parallel)
def _mm_q5_k(w, x, xs, half, out):
    for r in prange(w.shape[0]):
        row = w[r]
        for n in range(x.shape[0]):
            out[n, r] = _row_q5_k(row, x[n], xs[n], half)


@njit(**_parallel)
def _mm_q6_k(w, x, xs, half, out):
    for r in prange(w.shape[0]):
        row = w[r]
        for n in range(x.shape[0]):
            out[n, r] = _row_q6_k(row, x[n], xs[n], half)


@njit(**_parallel)
def _mm_f16(w, x, xs, half, out):
    for r in prange(w.shape[0]):
        row = w[r]
        for n in range(x.shape[0]):
            out[n, r] = _row_f16(row, x[n], xs[n], half)


@njit(**_parallel)
def _mm_bf16(w, x, xs, half, out):
    for r in prange(w.shape[0]):
        row = w[r]
        for n in range(x.shape[0]):
            out[n, r] = _row_bf16(row, x[n], xs[n], half)


#: type name → (matrix × vector, values per sum in ``xs``: 0 when unused).
KERNELS: dict[str, tuple[Callable, int]] = {
    "q8_0": (_mv_q8_0, 0),
    "q4_0": (_mv_q4_0, 32),
    "q4_1": (_mv_q4_1, 32),
    "q5_0": (_mv_q5_0, 32),
    "q5_1": (_mv_q5_1, 32),
    "q4_k": (_mv_q4_k, 32),
    "q5_k": (_mv_q5_k, 32),
    "q6_k": (_mv_q6_k, 0),
    "f16": (_mv_f16, 0),
    "bf16": (_mv_bf16, 0),
}
#: type name → matrix × several vectors (the same sums as KERNELS', vector by vector).
BATCH_KERNELS: dict[str, Callable] = {
    "q8_0": _mm_q8_0,
    "q4_0": _mm_q4_0,
    "q4_1": _mm_q4_1,
    "q5_0": _mm_q5_0,
    "q5_1": _mm_q5_1,
    "q4_k": _mm_q4_k,
    "q5_k": _mm_q5_k,
    "q6_k": _mm_q6_k,
    "f16": _mm_f16,
    "bf16": _mm_bf16,
}


def fits(type_name: str, n_per_row: int) -> bool:
    """Whether a kernel multiplies rows of ``n_per_row`` values of this type (block types: any
    whole number of blocks; F16/BF16: a multiple of 8, the lane count)."""
    return type_name in KERNELS and (type_name not in ("f16", "bf16") or n_per_row % V.LANES == 0)


def matvec(type_name: str, blocks: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``blocks`` (rows, row bytes) uint8 of ``type_name`` times the float32 vector ``x``."""
    if not fits(type_name, x.shape[0]):
        raise ValueError(f"no kernel for rows of {x.shape[0]} {type_name} values")
    kernel, group = KERNELS[type_name]
    x = np.ascontiguousarray(x, dtype=F32)
    xs = x.reshape(-1, group).sum(axis=1, dtype=F32) if group else x[:1]
    out = np.empty(blocks.shape[0], dtype=F32)
    kernel(blocks, x, xs, HALF, out)
    return out


def matvecs(type_name: str, blocks: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``blocks`` times each row of ``x`` (n, row length): (n, rows), row i exactly
    ``matvec(type_name, blocks, x[i])`` — the weights are read once for all n."""
    if not fits(type_name, x.shape[1]):
        raise ValueError(f"no kernel for rows of {x.shape[1]} {type_name} values")
    group = KERNELS[type_name][1]
    x = np.ascontiguousarray(x, dtype=F32)
    xs = x.reshape(x.shape[0], -1, group).sum(axis=2, dtype=F32) if group else x[:, :1]
    out = np.empty((x.shape[0], blocks.shape[0]), dtype=F32)
    BATCH_KERNELS[type_name](blocks, x, np.ascontiguousarray(xs), HALF, out)
    return out
