"""Weight matrices for the forward pass: which representation multiplies what.

Every matrix keeps its GGUF blocks (the memory map). Where a kernel exists (kernels.py: every
type but F32, Q2_K and Q3_K) the blocks themselves are multiplied, reading 0.5–2 bytes per
weight, for a generated token and for a prompt's batch alike: ``Blocks``.

For the other types a prompt's batch wants BLAS's float32 matrix × matrix. ``Dense`` keeps a
float32 copy for that (4 bytes per weight, made once at load; also used for single tokens of
types without a kernel). When the copies would not fit in memory ``Streamed`` dequantizes a
slab of rows at a time instead: slower prompts, same generation.

Either way the activations are first converted as llama.cpp converts them (activations.py):
to int8 codes for the integer kernels, whose products are then ggml's to the bit, or rounded
floats for BLAS and the float kernels, whose products are llama.cpp's sums up to their order.
"""

from __future__ import annotations

from collections.abc import Hashable

import numpy as np

from llamashare.infer import kernels
from llamashare.infer.activations import round_activations
from llamashare.quant.qtype import QuantType

F32 = np.float32
#: Rows dequantized at a time by a streamed matrix (bounds its scratch memory to ~16 MiB).
STREAM_BYTES = 16 << 20


def _per_row(raw: np.ndarray, qtype: type[QuantType]) -> int:
    """Values per row of a matrix of ``qtype`` blocks."""
    return raw.shape[1] // qtype.type_size * qtype.block_size


class _Matrix:
    """x times the matrix: ``prepare`` converts x as llama.cpp would, ``multiply`` multiplies. A
    single token multiplies the GGUF blocks themselves where a kernel exists (``kernel``); a batch
    goes to ``batch_product``, which each representation does its own way."""

    def __init__(self, raw: np.ndarray, qtype: type[QuantType]) -> None:
        self.raw, self.qtype = raw, qtype
        self.feed = round_activations(qtype)
        self.kernel = kernels.fits(qtype.name, _per_row(raw, qtype))

    def __call__(self, x: np.ndarray, apart: bool = False) -> np.ndarray:
        return self.multiply(self.prepare(x, apart), apart)

    def _on_blocks(self, x: np.ndarray, apart: bool) -> bool:
        return self.kernel and x.ndim == 2 and (x.shape[0] == 1 or apart)

    def conversion(self, x: np.ndarray, apart: bool) -> Hashable:
        """What ``prepare`` does to ``x``: matrices with equal conversions share its result."""
        return ("blocks", kernels.conversion(self.qtype.name)) if self._on_blocks(x, apart) else self.feed

    def prepare(self, x: np.ndarray, apart: bool = False) -> np.ndarray | kernels.Prepared:
        """x converted for ``multiply``: for the kernels (one row, or ``apart`` rows) as they
        convert it, else rounded for a float32 product."""
        return kernels.prepare(self.qtype.name, x) if self._on_blocks(x, apart) else self.feed(x)

    def multiply(self, x: np.ndarray | kernels.Prepared, apart: bool = False) -> np.ndarray:
        """x (through ``prepare``) times the matrix. ``apart``: the rows are tokens of different
        sequences (a batched decode step), each multiplied exactly as it would be alone: on the
        blocks, the weights read once for all rows (kernels.multiply), or, for types without a
        kernel, row by row."""
        if not isinstance(x, np.ndarray):
            return kernels.multiply(self.qtype.name, self.raw, x)
        if apart and x.shape[0] > 1:
            return np.concatenate([self.batch_product(x[i : i + 1]) for i in range(x.shape[0])])
        return self.batch_product(x)

    def batch_product(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    @property
    def token_bytes(self) -> int:
        """Bytes of weights one generated token reads through this matrix."""
        return self.raw.nbytes if self.kernel else self.batch_bytes

    @property
    def batch_bytes(self) -> int:
        """Bytes of weights a batch reads through this matrix."""
        raise NotImplementedError

    @property
    def nbytes(self) -> int:
        """Memory the matrix holds besides the file's pages."""
        raise NotImplementedError


class Dense(_Matrix):
    """A float32 copy of the matrix beside its blocks: 4 bytes per weight, multiplied by BLAS when
    a prompt's batch reuses each weight many times."""

    def __init__(self, raw: np.ndarray, qtype: type[QuantType]) -> None:
        super().__init__(raw, qtype)
        self.w = qtype.dequantize(raw)  # (out, in)

    def batch_product(self, x: np.ndarray) -> np.ndarray:
        return x @ self.w.T

    @property
    def batch_bytes(self) -> int:
        return self.w.nbytes

    @property
    def nbytes(self) -> int:
        return self.w.nbytes


class Streamed(_Matrix):
    """The matrix left as GGUF blocks in the memory map: a batch dequantizes a slab of rows at a
    time (or every token does, for types without a kernel)."""

    def __init__(self, raw: np.ndarray, qtype: type[QuantType]) -> None:
        super().__init__(raw, qtype)
        self.step = max(1, STREAM_BYTES // (4 * raw.shape[1] * qtype.block_size // qtype.type_size))

    def batch_product(self, x: np.ndarray) -> np.ndarray:
        out = np.empty((*x.shape[:-1], self.raw.shape[0]), dtype=F32)
        for r in range(0, self.raw.shape[0], self.step):
            out[..., r : r + self.step] = x @ self.qtype.dequantize(self.raw[r : r + self.step]).T
        return out

    @property
    def batch_bytes(self) -> int:
        return self.raw.nbytes

    @property
    def nbytes(self) -> int:
        return 0  # it lives in the page cache, shared with the file


class Blocks(Streamed):
    """A type with a kernel for batches (every integer one, F16, BF16): left in the memory map
    like a streamed matrix, but a prompt's batch is multiplied on the blocks too, several tokens
    per pass over each row (kernels.py), about as fast as BLAS on a float32 copy; each product
    is what the same row alone gives, whatever the batch."""

    def _on_blocks(self, x: np.ndarray, apart: bool) -> bool:
        return x.ndim == 2

    def batch_product(self, x: np.ndarray) -> np.ndarray:
        return kernels.matvecs(self.qtype.name, self.raw, x)


def block_kernel(raw: np.ndarray, qtype: type[QuantType]) -> bool:
    """Whether every product of a matrix goes to a kernel on its blocks (so it needs no float32
    copy, and is a ``Blocks``)."""
    return kernels.multiplies_batches(qtype.name, _per_row(raw, qtype))


Matrix = Dense | Streamed | Blocks


def project(x: np.ndarray, *mats: Matrix, apart: bool = False) -> list[np.ndarray]:
    """``x`` times each matrix, converting ``x`` once per distinct conversion (``apart``: see
    ``_Matrix.multiply``)."""
    fed: dict[Hashable, np.ndarray | kernels.Prepared] = {}
    out = []
    for m in mats:
        key = m.conversion(x, apart)
        if key not in fed:
            fed[key] = m.prepare(x, apart)
        out.append(m.multiply(fed[key], apart))
    return out
