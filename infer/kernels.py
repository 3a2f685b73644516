"""Matrices × activation rows straight on GGUF blocks: every product of generation and prompts.

Why. Generating a token reads every weight once, so its speed is bytes read ÷ memory bandwidth.
A float32 copy costs 4 bytes per weight; the blocks cost 2 (F16), 1.06 (Q8_0), 0.56 (Q4_K).
NumPy has no kernel that multiplies blocks without first dequantizing them into a float32 array
(a full extra pass through memory, and a copy of the model to keep), so these are loops compiled
by numba, and ``prange`` splits the rows over the cores. A prompt's batch goes through the same
kernels, each weight decoded once for several activation rows, about as fast as BLAS on a
float32 copy.

Two kinds. Q8_0, Q4_0, Q5_0, Q4_1, Q5_1, Q4_K, Q5_K and Q6_K multiply int8 codes in integer
SIMD (int_kernels.py), bit for bit as ggml's ``vec_dot``. F16 and BF16 are float kernels, here:
each weight is widened in registers and multiplied at once, eight at a time (simd.py), into one
accumulator per (row, activation row). This module converts the activations for either
(``prepare``) and multiplies (``multiply``).

Numerics of a float kernel. ``x`` is first rounded the way llama.cpp rounds activations for the
weight type (to float16 or bfloat16, ``activations.round_activations``), so each product is the
sum llama.cpp computes, in another order.

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
from llamashare.infer.isimd import Isa, best, prefetch_ahead

F32 = np.float32
_inline = {"inline": "always", "fastmath": True, "cache": True}


@njit(**_inline)
def _halves(row, at, brain):
    return V.bhalves(row, at) if brain else V.halves(row, at)


# The float kernels' one sum. Row r · activation row x is, in every kernel below, one accumulator
# of eight lanes fed in order, eight values at a time, then its lanes added: however a product is
# tiled (one token, a batch of sequences, a prompt), each (row, activation) pair gets those bits,
# so a sequence's output never depends on what is multiplied beside it.


@njit(**_inline)
def _row_halves(row, x, brain):
    """F16 (``brain`` false) or BF16 row · x, 2 bytes per value."""
    acc = V.zero()
    for j in range(0, x.shape[0], 8):
        acc = V.fma(_halves(row, 2 * j, brain), V.floats(x, j), acc)
    return V.total(acc)


@njit(**_inline)
def _four_rows(w, r, x, out, n, brain):
    """Rows r..r+3 · activation row n: four sums in flight at once, where one alone waits on each
    fused multiply-add's latency, and four rows' bytes asked of memory together."""
    w0, w1, w2, w3, xn = w[r], w[r + 1], w[r + 2], w[r + 3], x[n]
    a0, a1, a2, a3 = V.zero(), V.zero(), V.zero(), V.zero()
    for j in range(0, xn.shape[0], 8):
        v = V.floats(xn, j)
        a0 = V.fma(_halves(w0, 2 * j, brain), v, a0)
        a1 = V.fma(_halves(w1, 2 * j, brain), v, a1)
        a2 = V.fma(_halves(w2, 2 * j, brain), v, a2)
        a3 = V.fma(_halves(w3, 2 * j, brain), v, a3)
    out[n, r], out[n, r + 1], out[n, r + 2], out[n, r + 3] = V.total(a0), V.total(a1), V.total(a2), V.total(a3)


@njit(**_inline)
def _two_by_four(w, r, x, out, n, brain):
    """Rows r, r+1 · activation rows n..n+3: each weight widened once for four rows and each
    activation loaded once for two, eight sums in eight registers (a prompt's batch)."""
    w0, w1, x0, x1, x2, x3 = w[r], w[r + 1], x[n], x[n + 1], x[n + 2], x[n + 3]
    a0, a1, a2, a3 = V.zero(), V.zero(), V.zero(), V.zero()
    b0, b1, b2, b3 = V.zero(), V.zero(), V.zero(), V.zero()
    for j in range(0, x0.shape[0], 8):
        h0, h1 = _halves(w0, 2 * j, brain), _halves(w1, 2 * j, brain)
        v = V.floats(x0, j)
        a0, b0 = V.fma(h0, v, a0), V.fma(h1, v, b0)
        v = V.floats(x1, j)
        a1, b1 = V.fma(h0, v, a1), V.fma(h1, v, b1)
        v = V.floats(x2, j)
        a2, b2 = V.fma(h0, v, a2), V.fma(h1, v, b2)
        v = V.floats(x3, j)
        a3, b3 = V.fma(h0, v, a3), V.fma(h1, v, b3)
    out[n, r], out[n + 1, r], out[n + 2, r], out[n + 3, r] = V.total(a0), V.total(a1), V.total(a2), V.total(a3)
    out[n, r + 1], out[n + 1, r + 1] = V.total(b0), V.total(b1)
    out[n + 2, r + 1], out[n + 3, r + 1] = V.total(b2), V.total(b3)


@njit(**_inline)
def _rows_halves(w, r, x, out, brain):
    """Rows r..r+3 (fewer at the matrix's end) · every activation row."""
    if r + 4 > w.shape[0]:
        for rr in range(r, w.shape[0]):
            for n in range(x.shape[0]):
                out[n, rr] = _row_halves(w[rr], x[n], brain)
        return
    n = 0
    while n + 4 <= x.shape[0]:
        _two_by_four(w, r, x, out, n, brain)
        _two_by_four(w, r + 2, x, out, n, brain)
        n += 4
    for m in range(n, x.shape[0]):
        _four_rows(w, r, x, out, m, brain)


# One driver per type (numba inlines a function called by name, not one passed as an argument).
# Each takes several activation rows: one per sequence of a batched decode step (a single token
# is a batch of one), or a prompt's tokens. A 2 × 4 tile keeps a prompt's 64-token F16 batch
# within 10% of OpenBLAS's float32 product (95 against 86-92 ms on the Intel Xeon here) with no
# float32 copy of the weights. The four rows lying 8 KiB ahead are asked for first
# (isimd.prefetch_ahead). A token's 211 products of SmolLM2-135M F16 on the same machine: 15.9-17.9
# ms one row at a time, 16.4-17.0 four at a time, 11.3-12.0 four at a time with the prefetch.
_parallel = {"parallel": True, "fastmath": True, "cache": True}


@njit(**_parallel)
def _mm_f16(w, x, out):
    for p in prange((w.shape[0] + 3) // 4):
        for q in range(4):
            prefetch_ahead(w, 4 * p + q)
        _rows_halves(w, 4 * p, x, out, False)


@njit(**_parallel)
def _mm_bf16(w, x, out):
    for p in prange((w.shape[0] + 3) // 4):
        for q in range(4):
            prefetch_ahead(w, 4 * p + q)
        _rows_halves(w, 4 * p, x, out, True)


#: type name → driver over float32 activations rounded as llama.cpp rounds them.
FLOAT_KERNELS: dict[str, Callable] = {"f16": _mm_f16, "bf16": _mm_bf16}
#: Every type with a kernel: integer ones (int_kernels.py) where written, float ones for the rest.
KERNELS = sorted({*FLOAT_KERNELS, *int_kernels.KERNELS})


def fits(type_name: str, n_per_row: int) -> bool:
    """Whether a kernel multiplies rows of ``n_per_row`` values of this type (block types: any
    whole number of blocks; F16/BF16: a multiple of 8, the lane count)."""
    return type_name in KERNELS and (type_name not in ("f16", "bf16") or n_per_row % V.LANES == 0)


def multiplies_batches(type_name: str, n_per_row: int) -> bool:
    """Whether a matrix of rows of ``n_per_row`` values of this type is multiplied on its blocks
    in every product, a prompt's batches included: the integer kernels (their activation codes'
    blocks must tile the row) and the float ones."""
    if type_name in int_kernels.KERNELS:
        return n_per_row % CODE_BLOCK[int_kernels.KERNELS[type_name][1]] == 0
    return fits(type_name, n_per_row)


@dataclass(frozen=True)
class Rounded:
    """Activation rows for a float kernel, rounded as llama.cpp rounds them (``x``)."""

    x: np.ndarray


Prepared = Codes | Rounded


def conversion(type_name: str) -> Hashable:
    """What ``prepare`` does for this type: matrices whose conversions are equal can share one
    prepared activation (Q, K and V; gate and up)."""
    if type_name in int_kernels.KERNELS:
        return ("codes", int_kernels.KERNELS[type_name][1])
    return rounding(type_name)


def prepare(type_name: str, x: np.ndarray) -> Prepared:
    """float32 rows (n, row length) converted as llama.cpp converts activations for this type:
    int8 codes for the integer kernels, rounded floats for the others."""
    if x.ndim != 2 or not fits(type_name, x.shape[1]):
        raise ValueError(f"no kernel for rows of {x.shape[-1]} {type_name} values")
    if type_name in int_kernels.KERNELS:
        return codes(x, int_kernels.KERNELS[type_name][1])
    return Rounded(rounding(type_name)(np.ascontiguousarray(x, dtype=F32)))


def multiply(type_name: str, blocks: np.ndarray, x: Prepared, isa: Isa | None = None) -> np.ndarray:
    """``blocks`` (rows, row bytes) uint8 of ``type_name`` times each prepared activation row:
    (n, rows). ``isa``: the integer kernels' instruction set (the CPU's best by default)."""
    if isinstance(x, Codes):
        out = np.empty((x.q.shape[0], blocks.shape[0]), dtype=F32)
        int_kernels.KERNELS[type_name][0]((isa or best_isa()).token, blocks, x.q, x.d, x.sums, out)
    else:
        out = np.empty((x.x.shape[0], blocks.shape[0]), dtype=F32)
        FLOAT_KERNELS[type_name](blocks, x.x, out)
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
