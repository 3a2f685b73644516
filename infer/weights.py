"""Weight matrices for the forward pass, and the activation rounding that makes their products
equal llama.cpp's.

Representation. Each matrix is dequantized once, at load, to float32 (``Dense``): NumPy's BLAS
multiplies float32 at memory speed, while NumPy has no fast kernel for float16 or for integer
blocks — a matrix kept quantized has to be dequantized again on every use. When the float32 copy
would not fit in memory (7B and up on a small machine), matrices stay as their GGUF blocks in the
memory map (``Streamed``): a single token's product runs on the blocks themselves (kernels.py,
reading 0.5–1 byte per weight instead of dequantizing), a prompt's batch dequantizes a slab of
rows at a time. Slower than float32 copies, but it runs.

Rounding. llama.cpp never multiplies a quantized weight by a float32 activation: it first
converts the activation row to the weight type's ``vec_dot_type`` (Q8_0 blocks for Q4_0/Q5_0/Q8_0,
Q8_1 for Q4_1/Q5_1, Q8_K for the K-quants, float16 for F16, bfloat16 for BF16) and multiplies
those. ``round_activations`` applies the same conversion and turns the result back into
float32, so a float32 product over dequantized weights computes the same sum up to summation
order. Without it, logits differ from llama.cpp's by the activation quantization error (~1%),
enough to flip greedy choices between near-equal tokens.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from llamashare.quant.qtype import QuantType, first_absmax, fp16

F32 = np.float32
#: Rows dequantized at a time by a streamed matrix (bounds its scratch memory to ~16 MiB).
STREAM_BYTES = 16 << 20


def to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 → the float32 value of its bfloat16 (round to nearest even, as ggml does)."""
    u = np.ascontiguousarray(x, dtype=F32).view(np.uint32)
    rounded = (u + (np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1)))) & np.uint32(0xFFFF0000)
    return np.where(np.isnan(x), x, rounded.view(F32))


def _q8_blocks(x: np.ndarray) -> np.ndarray:
    """Through Q8_0/Q8_1 (ggml-cpu's AVX2 quantize_row_q8_0: scale stored as float16, the row
    multiplied by 127/amax and rounded to nearest even)."""
    b = x.reshape(-1, 32)
    amax = np.abs(b).max(axis=1, keepdims=True)
    zero = amax == 0
    inv = F32(127) / np.where(zero, F32(1), amax)
    inv[zero] = 0
    d = (amax / F32(127)).astype(np.float16).astype(F32)  # fp16() minus its errstate: this runs per product
    return (np.rint(b * inv) * d).reshape(x.shape)


def _q8_k_blocks(x: np.ndarray) -> np.ndarray:
    """Through Q8_K (quantize_row_q8_K_ref: float32 scale −max/127 of the signed largest value)."""
    b = x.reshape(-1, 256)
    mx = first_absmax(b, axis=1)[:, None]
    zero = mx == 0
    iscale = F32(-127) / np.where(zero, F32(1), mx)
    d = F32(1) / iscale
    d[zero] = 0
    return (np.minimum(np.rint(b * iscale), F32(127)) * d).reshape(x.shape)


_ROUNDING: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "f32": lambda x: x,
    "f16": fp16,
    "bf16": to_bf16,
    **dict.fromkeys(("q8_0", "q4_0", "q4_1", "q5_0", "q5_1"), _q8_blocks),
    **dict.fromkeys(("q2_k", "q3_k", "q4_k", "q5_k", "q6_k"), _q8_k_blocks),
}


def round_activations(qtype: type[QuantType]) -> Callable[[np.ndarray], np.ndarray]:
    """The conversion llama.cpp applies to activations multiplied by a ``qtype`` matrix."""
    return _ROUNDING[qtype.name]


class _Matrix:
    """x times the matrix: ``feed`` rounds x as llama.cpp would, ``product`` multiplies."""

    def __init__(self, raw: np.ndarray, qtype: type[QuantType]) -> None:
        self.raw, self.qtype = raw, qtype
        self.feed = round_activations(qtype)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.product(self.feed(x))

    def product(self, x: np.ndarray) -> np.ndarray:
        """x (already through ``feed``) times the matrix."""
        raise NotImplementedError

    @property
    def token_bytes(self) -> int:
        """Bytes of weights one generated token reads through this matrix."""
        raise NotImplementedError

    @property
    def nbytes(self) -> int:
        """Memory the matrix holds besides the file's pages."""
        raise NotImplementedError


class Dense(_Matrix):
    """A float32 copy of the matrix: 4 bytes per weight, multiplied by BLAS. Its single tokens
    stay on BLAS too: alternating BLAS's threads with the kernels' (numba's) made both wait for
    each other (generation 3× slower where a Q4_K_M file mixes float32 and Q8_0 products)."""

    def __init__(self, raw: np.ndarray, qtype: type[QuantType]) -> None:
        super().__init__(raw, qtype)
        self.w = qtype.dequantize(raw)  # (out, in)

    def product(self, x: np.ndarray) -> np.ndarray:
        return x @ self.w.T

    @property
    def token_bytes(self) -> int:
        return self.w.nbytes

    @property
    def nbytes(self) -> int:
        return self.w.nbytes


class Streamed(_Matrix):
    """The matrix left as GGUF blocks in the memory map: a single token of a type in
    ``on_blocks`` multiplies the blocks (kernels.py), anything else dequantizes a slab of rows at
    a time."""

    on_blocks = frozenset({"q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q4_k", "q5_k", "q6_k"})  # kernels.KERNELS

    def __init__(self, raw: np.ndarray, qtype: type[QuantType]) -> None:
        super().__init__(raw, qtype)
        self.step = max(1, STREAM_BYTES // (4 * raw.shape[1] * qtype.block_size // qtype.type_size))

    def product(self, x: np.ndarray) -> np.ndarray:
        if x.ndim == 2 and x.shape[0] == 1 and self.qtype.name in self.on_blocks:
            from llamashare.infer import kernels  # numba loads only when a kernel runs

            return kernels.matvec(self.qtype.name, self.raw, x[0])[None]
        out = np.empty((*x.shape[:-1], self.raw.shape[0]), dtype=F32)
        for r in range(0, self.raw.shape[0], self.step):
            out[..., r:r + self.step] = x @ self.qtype.dequantize(self.raw[r:r + self.step]).T
        return out

    @property
    def token_bytes(self) -> int:
        return self.raw.nbytes

    @property
    def nbytes(self) -> int:
        return 0  # it lives in the page cache, shared with the file


Matrix = Dense | Streamed


def project(x: np.ndarray, *mats: Matrix) -> list[np.ndarray]:
    """``x`` times each matrix, rounding ``x`` once per distinct activation type."""
    fed: dict[object, np.ndarray] = {}
    out = []
    for m in mats:
        if m.feed not in fed:
            fed[m.feed] = m.feed(x)
        out.append(m.product(fed[m.feed]))
    return out
