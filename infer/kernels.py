"""Matrix × vector straight on GGUF blocks: the products of generation, one token at a time.

Why. Generating a token reads every weight once, so its speed is bytes read ÷ memory bandwidth.
A float32 copy costs 4 bytes per weight; the blocks cost 1.06 (Q8_0), 0.69 (Q5_0), 0.56 (Q4_K).
NumPy has no kernel that multiplies blocks without first dequantizing them into a float32 array
(a full extra pass through memory), so these are loops compiled by numba, and ``prange`` splits
the rows over the cores. Prompt processing keeps using float32 matrix × matrix (BLAS reuses every
weight across the batch; there these kernels would be slower).

Two kinds. Q8_0, Q4_0, Q5_0, Q4_1, Q5_1, Q4_K, Q5_K and Q6_K multiply int8 codes in integer
SIMD (int_kernels.py), bit for bit as ggml's ``vec_dot``. F16 and BF16 are float kernels, here:
each weight is widened in registers and multiplied at once, eight at a time (simd.py), 32 values
summing in their own lanes before joining the row's, and the lanes added once at the end. This
module converts the activations for either (``prepare``) and multiplies (``multiply``).

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
def _row_f16(row, x):
    return _row_halves(row, x, False)


@njit(**_inline)
def _row_bf16(row, x):
    return _row_halves(row, x, True)


# One driver per type (numba inlines a row function called by name, not one passed as an
# argument). Each takes several vectors, one per sequence of a batched decode step (a single
# token is a batch of one): a row is read from memory once and multiplied by every vector while it
# is in cache, and each (row, vector) product is the same sum whatever else is in the batch.
_parallel = {"parallel": True, "fastmath": True, "cache": True}


@njit(**_parallel)
def _mm_f16(w, x, out):
    for r in prange(w.shape[0]):
        prefetch_ahead(w, r)
        row = w[r]
        for n in range(x.shape[0]):
            out[n, r] = _row_f16(row, x[n])


@njit(**_parallel)
def _mm_bf16(w, x, out):
    for r in prange(w.shape[0]):
        prefetch_ahead(w, r)
        row = w[r]
        for n in range(x.shape[0]):
            out[n, r] = _row_bf16(row, x[n])


#: type name → driver over float32 activations rounded as llama.cpp rounds them.
FLOAT_KERNELS: dict[str, Callable] = {"f16": _mm_f16, "bf16": _mm_bf16}
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
