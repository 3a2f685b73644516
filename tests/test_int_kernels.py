"""The integer kernels (infer/int_kernels.py) against ggml-cpu's own ``vec_dot``, bit for bit, on
every instruction set this CPU executes.

Integer sums are exact and the float steps follow ggml's order, so nothing is left to a
tolerance: each product must equal libggml-cpu's (llama-cpp-python's build for this machine)
to the last bit, and so must every instruction set's, and the activation codes must be the very
bytes ggml's ``from_float`` writes.
"""

from __future__ import annotations

import numpy as np
import pytest

from llamashare.errors import InferenceError
from llamashare.infer import int_kernels, isimd, kernels
from llamashare.infer.activations import codes
from llamashare.quant.qtype import lookup
from tests import ggml_ref

GGML_TYPE = {"q4_0": 2, "q4_1": 3, "q5_0": 6, "q5_1": 7, "q8_0": 8, "q4_k": 12, "q5_k": 13, "q6_k": 14}
ISAS = isimd.available()
#: where each type keeps its float16 scales, as (offset in a block, count)
SCALES = {
    "q8_0": [(0, 1)],
    "q4_0": [(0, 1)],
    "q5_0": [(0, 1)],
    "q4_1": [(0, 2)],
    "q5_1": [(0, 2)],
    "q4_k": [(0, 2)],
    "q5_k": [(0, 2)],
    "q6_k": [(208, 1)],
}


def random_blocks(name: str, rows: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """Rows of random block bytes, so every code, sub-block scale and min occurs, with sane
    float16 block scales (random bytes there would make inf and NaN)."""
    q = lookup(name)
    raw = rng.integers(0, 256, (rows, n // q.block_size, q.type_size), dtype=np.uint8)
    for at, count in SCALES[name]:
        d = rng.uniform(1e-4, 0.05, (rows, n // q.block_size, count)).astype(np.float16)
        raw[:, :, at : at + 2 * count] = d.view(np.uint8).reshape(rows, n // q.block_size, 2 * count)
    return raw.reshape(rows, -1)


def activations(n: int, rng: np.random.Generator) -> np.ndarray:
    """Four activation rows: normal, large, with a zero block, and with one huge outlier."""
    x = rng.standard_normal((4, n)).astype(np.float32)
    x[1] *= 300
    x[2, :256] = 0
    x[3, 7] = 1e4
    return x


def ggml_products(name: str, blocks: np.ndarray, x: np.ndarray) -> np.ndarray:
    return np.array([[ggml_ref.vec_dot(GGML_TYPE[name], row, v) for row in blocks] for v in x], dtype=np.float32)


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool(np.all(a.view(np.uint32) == b.view(np.uint32)))


@pytest.mark.parametrize("isa", ISAS, ids=lambda i: i.name)
@pytest.mark.parametrize("name", sorted(int_kernels.KERNELS))
def test_products_are_ggml_vec_dot_bit_for_bit(name: str, isa: isimd.Isa) -> None:
    rng = np.random.default_rng(11)
    n = 1024
    for blocks in (
        random_blocks(name, 24, n, rng),
        lookup(name).quantize(rng.standard_normal((24, n)).astype(np.float32)),
    ):
        x = activations(n, rng)
        want = ggml_products(name, blocks, x)
        got = kernels.matvecs(name, blocks, x, isa)
        assert same_bits(got, want), f"{name}/{isa.name}: {np.sum(got != want)} of {got.size} differ"


def test_q8_0_weight_code_minus_128() -> None:
    """Q8_0 weights may hold −128 (llama.cpp's quantizer never writes it; other tools may): the
    sign trick takes |−128| = 128 as an unsigned byte, and the product stays exact."""
    rng = np.random.default_rng(2)
    per_block = random_blocks("q8_0", 4, 256, rng).reshape(4, 8, 34)
    per_block[:, :, 2:6] = 0x80  # codes −128
    blocks = per_block.reshape(4, -1)
    x = activations(256, rng)
    want = ggml_products("q8_0", blocks, x)
    for isa in ISAS:
        assert same_bits(kernels.matvecs("q8_0", blocks, x, isa), want)


@pytest.mark.parametrize("name", sorted(int_kernels.KERNELS))
def test_activation_codes_are_ggml_from_float(name: str) -> None:
    rng = np.random.default_rng(5)
    x = activations(512, rng)
    c = codes(x, int_kernels.KERNELS[name][1])
    for i, row in enumerate(x):
        vec_type, want = ggml_ref.activation_blocks(GGML_TYPE[name], row)
        half = c.d[i].astype(np.float16)[:, None].view(np.uint8)
        if c.kind == "q8_0":  # float16 d, 32 codes
            assert vec_type == 8
            ours = np.concatenate([half, c.q[i].reshape(-1, 32).view(np.uint8)], axis=1)
        elif c.kind == "q8_1":  # float16 d and s, 32 codes
            assert vec_type == 9
            s16 = c.sums[i].astype(np.float16)[:, None].view(np.uint8)
            ours = np.concatenate([half, s16, c.q[i].reshape(-1, 32).view(np.uint8)], axis=1)
        else:  # Q8_K: float32 d, 256 codes, 16 int16 sums
            assert vec_type == 15
            parts = [c.d[i][:, None].view(np.uint8), c.q[i].reshape(-1, 256).view(np.uint8)]
            ours = np.concatenate([*parts, c.sums[i].reshape(-1, 16).view(np.uint8)], axis=1)
            zero = c.d[i] == 0  # ggml leaves an all-zero block's sums unwritten (its scale 0 cancels them)
            ours, want = ours[~zero], want.reshape(-1, 292)[~zero]
        assert np.array_equal(ours.reshape(-1), want.reshape(-1))


@pytest.mark.parametrize("name", sorted(int_kernels.KERNELS))
def test_a_row_is_the_same_alone_and_in_a_batch(name: str) -> None:
    rng = np.random.default_rng(8)
    blocks = random_blocks(name, 40, 512, rng)
    x = activations(512, rng)
    batch = kernels.matvecs(name, blocks, x)
    for i in range(x.shape[0]):
        assert same_bits(kernels.matvec(name, blocks, x[i]), batch[i])


def test_instruction_set_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    assert isimd.PORTABLE in ISAS and ISAS[0] is isimd.best()
    monkeypatch.setenv("LLAMASHARE_ISA", "portable")
    assert isimd.best() is isimd.PORTABLE
    monkeypatch.setenv("LLAMASHARE_ISA", "mmx")
    with pytest.raises(InferenceError, match="LLAMASHARE_ISA=mmx: this CPU has"):
        isimd.best()
