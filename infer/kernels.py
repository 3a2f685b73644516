"""Matrix × vector straight on GGUF blocks: the products of generation, one token at a time.

Why. Generating a token reads every weight once, so its speed is bytes read ÷ memory bandwidth.
A float32 copy costs 4 bytes per weight; the blocks cost 1.06 (Q8_0), 0.69 (Q5_0), 0.56 (Q4_K).
NumPy has no kernel that multiplies blocks without first dequantizing them into a float32 array
(a full extra pass through memory), so these are loops compiled by numba, and ``prange`` splits
the rows over the cores. Prompt processing keeps using float32 matrix × matrix (BLAS reuses every
weight across the batch; there these kernels would be slower).

Two kinds. Q8_0, Q4_0, Q5_0, Q4_1, Q5_1, Q4_K and Q6_K multiply int8 codes in integer SIMD (int_kernels.py), bit
for bit as ggml's ``vec_dot``. The other types (Q5_K, F16, BF16) are float
kernels, here: each weight is decoded in registers and multiplied at once, eight at a time
(simd.py). This module converts the activations for either (``prepare``) and multiplies
(``multiply``).

Shape of a float kernel. A row is walked block by block; eight lanes ``s`` gather the block's
code × value products, ``acc = d·s + acc`` scales them lane-wise by the block's factor, and the
lanes are added once, at the end of the row. Offsets that multiply every value of a block (the
mins of Q5_K) are applied to the block's sum of ``x`` instead, in one scalar.

Numerics of a float kernel. ``x`` is first rounded the way llama.cpp rounds activations for the
weight type (``activations.round_activations``), so each product is the sum llama.cpp computes,
in another order: ggml adds integer codes then scales each block, these add code × rounded value
in float32 lanes. Blocks are read through a uint8 view; float16 scales through a 65 536-entry
table.

Layouts are ggml's (ggml-common.h), as quant/legacy_types.py and quant/k_types.py write them.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from llamashare.infer import int_kernels
from llamashare.infer import simd as V
from llamashare.infer.activations import CODE_BLOCK, Codes, codes, rounding
from llamashare.infer.isimd import Isa, best

F32 = np.float32
#: float16 bit pattern → float32 value.
HALF = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(F32)

_inline = {"inline": "always", "fastmath": True, "cache": True}


@njit(**_inline)
def _half(row: np.ndarray, at: int, half: np.ndarray) -> np.float32:
    return half[np.int32(row[at]) | (np.int32(row[at + 1]) << 8)]


@njit(**_inline)
def _scale_min_k4(row, at, k):
    """ggml's get_scale_min_k4: sub-block k's 6-bit scale and min from the 12 bytes at ``at``."""
    if k < 4:
        return F32(row[at + k] & 63), F32(row[at + k + 4] & 63)
    sc = (row[at + k + 4] & 15) | ((row[at + k - 4] >> 6) << 4)
    m = (row[at + k + 4] >> 4) | ((row[at + k] >> 6) << 4)
    return F32(sc), F32(m)


@njit(**_inline)
def _dot_q5_k(row, at, high, qh, bit, x, j):
    """32 codes · x[j:j+32], in lanes: nibble ``high`` (0 low, 1 high) of the 32 bytes at ``at``
    plus bit ``bit`` of the 32 bytes at ``qh`` as the fifth bit."""
    s = V.zero()
    for g in range(0, 32, 8):
        q = V.fma(V.splat(16), V.field(row, qh + g, bit, 1), V.field(row, at + g, 4 * high, 15))
        s = V.fma(q, V.floats(x, j + g), s)
    return s


@njit(**_inline)
def _row_q5_k(row, x, xs, half):
    """176-byte super-blocks of 256: float16 d and dmin, 12 bytes of 6-bit scales and mins, 32
    bytes of fifth bits (bit k of byte i for sub-block k's value i), 128 bytes of nibbles (32
    bytes hold sub-block 2c low and 2c+1 high); value d·sc·q − dmin·m."""
    acc, off = V.zero(), F32(0)
    for b in range(x.shape[0] // 256):
        o, j = b * 176, b * 256
        d, dmin = _half(row, o, half), _half(row, o + 2, half)
        for k in range(8):  # sub-blocks of 32: k = 2c + high
            sc, m = _scale_min_k4(row, o + 4, k)
            s = _dot_q5_k(row, o + 48 + 32 * (k // 2), k % 2, o + 16, k, x, j + 32 * k)
            acc = V.fma(V.splat(d * sc), s, acc)
            off += dmin * m * xs[b * 8 + k]
    return V.total(acc) - off


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


# One driver per type (numba inlines a row function called by name, not one passed as an
# argument). Each takes several vectors, one per sequence of a batched decode step (a single
# token is a batch of one): a row is read from memory once and multiplied by every vector while it
# is in cache, and each (row, vector) product is the same sum whatever else is in the batch.
_parallel = {"parallel": True, "fastmath": True, "cache": True}


@njit(**_parallel)
def _mm_q5_k(w, x, xs, half, out):
    for r in prange(w.shape[0]):
        row = w[r]
        for n in range(x.shape[0]):
            out[n, r] = _row_q5_k(row, x[n], xs[n], half)


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


#: type name → (driver over float32 activations rounded as llama.cpp rounds them, values per sum
#: in ``xs``: 0 when unused).
FLOAT_KERNELS: dict[str, tuple[Callable, int]] = {
    "q5_k": (_mm_q5_k, 32),
    "f16": (_mm_f16, 0),
    "bf16": (_mm_bf16, 0),
}
#: Every type with a kernel: integer ones (int_kernels.py) where written, float ones for the rest.
KERNELS = sorted({*FLOAT_KERNELS, *int_kernels.KERNELS})


def fits(type_name: str, n_per_row: int) -> bool:
    """Whether a kernel multiplies rows of ``n_per_row`` values of this type (block types: any
    whole number of blocks; F16/BF16: a multiple of 8, the lane count)."""
    return type_name in KERNELS and (type_name not in ("f16", "bf16") or n_per_row % V.LANES == 0)


def has_integer_kernel(type_name: str, n_per_row: int) -> bool:
    """Whether rows of ``n_per_row`` values of this type go to an integer kernel."""
    return type_name in int_kernels.KERNELS and n_per_row % CODE_BLOCK[int_kernels.KERNELS[type_name][1]] == 0


@dataclass(frozen=True)
class Rounded:
    """Activation rows for a float kernel: rounded as llama.cpp rounds them (``x``), and the sums
    of every ``group`` values where the type's offsets need them (``xs``)."""

    x: np.ndarray
    xs: np.ndarray


Prepared = Codes | Rounded


def conversion(type_name: str) -> Hashable:
    """What ``prepare`` does for this type: matrices whose conversions are equal can share one
    prepared activation (Q, K and V; gate and up)."""
    if type_name in int_kernels.KERNELS:
        return ("codes", int_kernels.KERNELS[type_name][1])
    return (rounding(type_name), FLOAT_KERNELS[type_name][1])


def prepare(type_name: str, x: np.ndarray) -> Prepared:
    """float32 rows (n, row length) converted as llama.cpp converts activations for this type:
    int8 codes for the integer kernels, rounded floats for the others."""
    if x.ndim != 2 or not fits(type_name, x.shape[1]):
        raise ValueError(f"no kernel for rows of {x.shape[-1]} {type_name} values")
    if type_name in int_kernels.KERNELS:
        return codes(x, int_kernels.KERNELS[type_name][1])
    group = FLOAT_KERNELS[type_name][1]
    r = rounding(type_name)(np.ascontiguousarray(x, dtype=F32))
    xs = r.reshape(r.shape[0], -1, group).sum(axis=2, dtype=F32) if group else r[:, :1]
    return Rounded(r, np.ascontiguousarray(xs))


def multiply(type_name: str, blocks: np.ndarray, x: Prepared, isa: Isa | None = None) -> np.ndarray:
    """``blocks`` (rows, row bytes) uint8 of ``type_name`` times each prepared activation row:
    (n, rows). ``isa``: the integer kernels' instruction set (the CPU's best by default)."""
    if isinstance(x, Codes):
        out = np.empty((x.q.shape[0], blocks.shape[0]), dtype=F32)
        int_kernels.KERNELS[type_name][0]((isa or best_isa()).token, blocks, x.q, x.d, x.sums, out)
    else:
        out = np.empty((x.x.shape[0], blocks.shape[0]), dtype=F32)
        FLOAT_KERNELS[type_name][0](blocks, x.x, x.xs, HALF, out)
    return out


def matvec(type_name: str, blocks: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``blocks`` (rows, row bytes) uint8 of ``type_name`` times the float32 vector ``x``."""
    return matvecs(type_name, blocks, x[None])[0]


def matvecs(type_name: str, blocks: np.ndarray, x: np.ndarray, isa: Isa | None = None) -> np.ndarray:
    """``blocks`` times each float32 row of ``x`` (n, row length): (n, rows), row i exactly
    ``matvec(type_name, blocks, x[i])`` — the weights are read once for all n."""
    return multiply(type_name, blocks, prepare(type_name, x), isa)


_BEST: list[Isa] = []


def best_isa() -> Isa:
    """The instruction set the integer kernels use by default: the CPU's best (isimd.best),
    looked up once."""
    if not _BEST:
        _BEST.append(best())
    return _BEST[0]
