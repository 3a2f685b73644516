"""The compiled activation rounding (infer/activations.py) against NumPy spellings of the same
conversions: NumPy's own float16 cast, and ggml's Q8_0 / Q8_K quantizers written as array
expressions. Equal value for value, not merely close."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from llamashare.infer.activations import round_activations, round_half
from llamashare.quant.qtype import first_absmax, lookup

F32 = np.float32


def numpy_half(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return x.astype(np.float16).astype(F32)


def numpy_q8_0(x: np.ndarray) -> np.ndarray:
    b = x.reshape(-1, 32)
    amax = np.abs(b).max(axis=1, keepdims=True)
    inv = np.where(amax == 0, F32(0), F32(127) / np.where(amax == 0, F32(1), amax))
    return (np.rint(b * inv) * numpy_half(amax / F32(127))).reshape(x.shape)


def numpy_q8_k(x: np.ndarray) -> np.ndarray:
    b = x.reshape(-1, 256)
    mx = first_absmax(b, axis=1)[:, None]
    iscale = F32(-127) / np.where(mx == 0, F32(1), mx)
    d = np.where(mx == 0, F32(0), F32(1) / iscale)
    return (np.minimum(np.rint(b * iscale), F32(127)) * d).reshape(x.shape)


def hard_values(n: int) -> np.ndarray:
    """Normals over many magnitudes, float16 subnormals, exact float16 ties, the overflow edge."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal(n).astype(F32) * F32(10.0) ** rng.integers(-9, 6, n).astype(F32)
    halves = np.arange(1, 2049, dtype=np.uint16).view(np.float16).astype(F32)  # subnormals and the first normals
    ties = (halves[:-1] + halves[1:]) / 2  # exactly between two float16 values
    edge = np.array([65504, 65519.99, 65520, 65536, -65520, 2.0**-14, 2.0**-25, 2.0**-26, 0, -0.0], F32)
    return np.concatenate([x, halves, ties, -ties, edge])


def test_round_half_is_numpys_float16_cast() -> None:
    x = hard_values(20000)
    np.testing.assert_array_equal(round_half(x), numpy_half(x))
    assert np.isnan(round_half(np.array([np.nan], F32))[0])
    assert round_half(x.reshape(-1, 1)).shape == (x.size, 1)


@pytest.mark.parametrize(("qtype", "reference", "block"), [("q8_0", numpy_q8_0, 32), ("q4_k", numpy_q8_k, 256)])
def test_block_rounding_is_ggmls_quantizer(
    qtype: str, reference: Callable[[np.ndarray], np.ndarray], block: int
) -> None:
    x = hard_values(30000)
    x = x[: x.size // block * block].reshape(-1, block)
    x[3] = 0  # a zero block: scale 0, no division by it
    x[5] = x[5, 0]  # a constant block
    x[7, :] = np.linspace(-1, 1, block, dtype=F32)  # the largest magnitude with both signs
    got = round_activations(lookup(qtype))(x)
    np.testing.assert_array_equal(got, reference(x.reshape(-1)).reshape(x.shape))
    assert got.dtype == F32


def test_geglu_lookup_is_ggmls_gelu_of_the_float16_input() -> None:
    """ggml builds its GELU table once per float16 value with C's tanhf in float32 (ggml-cpu.c:
    ggml_table_gelu_f16) and vec_geglu_f32 looks the float16 of each input up in it (0 at or
    below -10, x at or above 10). The engine's table must be that one, value for value, computed
    here with the C library's own tanhf; and geglu the lookup times up, bit for bit."""
    import ctypes
    import ctypes.util

    from llamashare.infer.model import geglu, gelu_table

    libm = ctypes.CDLL(ctypes.util.find_library("m"))
    libm.tanhf.restype, libm.tanhf.argtypes = ctypes.c_float, [ctypes.c_float]
    f = np.float32
    halves = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(f)
    finite = np.isfinite(halves)
    want = np.empty_like(halves)
    for i, h in enumerate(halves):
        if finite[i]:
            inner = f(0.79788456080286535587989211986876) * h * (f(1) + f(0.044715) * h * h)
            want[i] = np.float16(f(0.5) * h * (f(1) + f(libm.tanhf(float(inner)))))
    table = gelu_table()
    assert np.array_equal(table[finite], want[finite])

    rng = np.random.default_rng(3)
    edges = np.array([-10, -9.999, 10, 9.999, 0, -0.0, 1e-8, -1e-8, 65504, 70000, -70000, 3.0e-5], f)
    x = np.concatenate([rng.standard_normal(50_000).astype(f) * 4, edges])
    up = rng.standard_normal(x.size).astype(f)
    with np.errstate(over="ignore"):
        looked_up = table[x.astype(np.float16).view(np.uint16)]
    expect = np.where(x <= -10, f(0), np.where(x >= 10, x, looked_up)) * up
    assert np.array_equal(geglu(x, up), expect)


@pytest.mark.parametrize("kind", ["q8_0", "q8_1", "q8_k"])
def test_codes_of_many_rows_are_each_rows_codes(kind: str) -> None:
    """From PARALLEL_ROWS rows on, codes are made on every core: the same bytes as one row at a
    time."""
    from llamashare.infer.activations import PARALLEL_ROWS, codes

    x = np.random.default_rng(3).standard_normal((PARALLEL_ROWS + 5, 512)).astype(np.float32)
    x[4] = 0
    many = codes(x, kind)
    for i in range(x.shape[0]):
        one = codes(x[i : i + 1], kind)
        for a, b in ((many.q, one.q), (many.d, one.d), (many.sums, one.sums)):
            assert np.array_equal(a[i : i + 1].view(np.uint8), b.view(np.uint8))
