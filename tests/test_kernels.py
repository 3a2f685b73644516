"""The block kernels (infer/kernels.py) against dequantize-then-multiply, on random and real rows.

The kernels add in another order than NumPy's BLAS, so results agree to float32 rounding: the
bound is relative to Σ|w·x|, the size of the terms being added, not to the result (which can
cancel to near zero)."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest

from llamashare.infer import kernels
from llamashare.infer.activations import round_activations
from llamashare.infer.weights import Dense, Streamed
from llamashare.quant.qtype import lookup

TYPES = sorted(kernels.KERNELS)


def block(name: str) -> int:
    """Values per block; 32 for the float types (one value per block), so rows are whole lanes."""
    return max(lookup(name).block_size, 32)


def check(name: str, w: np.ndarray, x: np.ndarray) -> None:
    q = lookup(name)
    blocks = q.quantize(w)
    x = round_activations(q)(x)
    got = kernels.matvec(name, blocks, x)
    dense = q.dequantize(blocks)
    want = dense @ x
    scale = np.abs(dense) @ np.abs(x) + 1e-30
    # Q4_1/Q5_1 multiply their offsets by the activations' block sums as ggml stores them (Q8_1's
    # s, in float16): a float16 rounding, not float32's, on that part of the sum.
    bound = (1e-5 + (2.0**-11 if name in ("q4_1", "q5_1") else 0)) * scale
    assert got.dtype == np.float32 and got.shape == (w.shape[0],)
    assert np.all(np.abs(got - want) <= bound), f"{name}: worst {np.max(np.abs(got - want) / scale):.2e}"


@pytest.mark.parametrize("name", TYPES)
def test_random_rows(name: str) -> None:
    rng = np.random.default_rng(7)
    cols = 3 * lookup(name).block_size * (1 if lookup(name).block_size == 256 else 8)
    for rows in (1, 7, 130):  # fewer rows than threads, an odd count, several per thread
        w = rng.standard_normal((rows, cols)).astype(np.float32) * rng.uniform(0.01, 10, (rows, 1)).astype(np.float32)
        check(name, w, rng.standard_normal(cols).astype(np.float32))


@pytest.mark.parametrize("name", TYPES)
def test_zero_constant_and_one_sided_blocks(name: str) -> None:
    """Zero rows (scale 0), constant rows, all-positive rows (the _1/K types' minimum carries them)
    and activations that are zero in whole blocks."""
    cols = block(name) * 4
    w = np.stack([np.zeros(cols), np.full(cols, 0.5), np.linspace(0.1, 3, cols), -np.linspace(0.1, 3, cols)])
    x = np.linspace(-1, 1, cols)
    x[: cols // 4] = 0
    check(name, w.astype(np.float32), x.astype(np.float32))


def test_real_weights(smollm2: Path) -> None:
    """SmolLM2's FFN rows (dequantized from its Q4_1 file) through every kernel type."""
    tensors = {t.name: t for t in gguf.GGUFReader(smollm2).tensors}
    rng = np.random.default_rng(3)
    for tname in ("blk.3.ffn_down.weight", "blk.20.ffn_down.weight"):  # 576 rows of 1536
        t = tensors[tname]
        w = lookup(t.tensor_type.name).dequantize(np.asarray(t.data)[:96])
        x = rng.standard_normal(int(w.shape[1])).astype(np.float32)
        for name in TYPES:
            check(name, w, x)


def test_matrices_use_a_kernel_where_one_fits() -> None:
    rng = np.random.default_rng(5)
    for name in [*TYPES, "f32", "q2_k", "q3_k"]:
        q = lookup(name)
        raw = q.quantize(rng.standard_normal((3, 512)).astype(np.float32))
        assert Dense(raw, q).kernel == Streamed(raw, q).kernel == (name in kernels.KERNELS)
    odd = lookup("f16").quantize(np.ones((2, 36), np.float32))
    assert not Dense(odd, lookup("f16")).kernel and not kernels.fits("f16", 36) and kernels.fits("f16", 40)
    with pytest.raises(ValueError, match="no kernel"):
        kernels.matvec("f16", odd, np.ones(36, np.float32))


def test_every_kernel_reads_its_own_layout() -> None:
    """A block size or layout mix-up would show as a wrong product on a row whose blocks all
    differ: here each block holds its own ramp."""
    for name in TYPES:
        bs = block(name)
        w = (np.arange(bs * 4, dtype=np.float32) % 37 - 18) * np.repeat(np.arange(1, 5, dtype=np.float32), bs)
        check(name, w[None], np.cos(np.arange(bs * 4, dtype=np.float32)))


@pytest.mark.parametrize("name", ["f16", "bf16"])
def test_float_kernels_give_each_pair_its_own_sum(name: str) -> None:
    """Each (row, activation row) product is the same bits however the float kernels tile it: 2
    rows × 4 activations, 4 rows × 1, or one row at a matrix's end. So a batch of sequences
    decodes as each would alone, and a prompt's rows are what its tokens give one by one."""
    rng = np.random.default_rng(11)
    q = lookup(name)
    blocks = q.quantize(rng.standard_normal((11, 40)).astype(np.float32))  # 2 groups of 4, 3 left
    x = round_activations(q)(rng.standard_normal((9, 40)).astype(np.float32))  # 2 tiles of 4, 1 left
    batch = kernels.matvecs(name, blocks, x)
    for i in range(x.shape[0]):
        assert np.array_equal(kernels.matvec(name, blocks, x[i]), batch[i])
        for r in range(blocks.shape[0]):
            assert kernels.matvec(name, blocks[r : r + 1], x[i])[0] == batch[i, r]
