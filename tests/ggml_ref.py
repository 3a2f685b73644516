"""llama.cpp's own quantizers and dequantizers, called through ctypes on the ggml library that
llama-cpp-python ships (``libggml-base``). The yardstick for bit-identity tests and the peer in
bench/quantize.py; ``ggml_quantize_chunk`` without an importance matrix is exactly what
``llama-quantize`` runs per tensor.
"""

from __future__ import annotations

import ctypes
from functools import cache
from pathlib import Path

import numpy as np


@cache
def lib() -> ctypes.CDLL:
    import llama_cpp

    path = Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"
    so = ctypes.CDLL(str(path))
    so.ggml_quantize_chunk.restype = ctypes.c_size_t
    so.ggml_quantize_chunk.argtypes = [
        ctypes.c_int,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.c_void_p,
    ]
    so.ggml_row_size.restype = ctypes.c_size_t
    so.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
    return so


def quantize(ggml_type: int, rows: np.ndarray) -> np.ndarray:
    """(nrows, n_per_row) float32 → (nrows, row_bytes) uint8, by ggml_quantize_chunk."""
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    nrows, n = rows.shape
    out = np.zeros((nrows, lib().ggml_row_size(ggml_type, n)), dtype=np.uint8)
    size = lib().ggml_quantize_chunk(ggml_type, rows.ctypes.data, out.ctypes.data, 0, nrows, n, None)
    assert size == out.nbytes
    return out


def dequantize(name: str, data: np.ndarray, n: int) -> np.ndarray:
    """ggml's ``dequantize_row_<name>`` (e.g. ``q4_K``) over ``n`` values."""
    data = np.ascontiguousarray(data, dtype=np.uint8)
    out = np.zeros(n, dtype=np.float32)
    fn = getattr(lib(), f"dequantize_row_{name}")
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    fn(data.ctypes.data, out.ctypes.data, n)
    return out


class _TypeTraitsCpu(ctypes.Structure):
    _fields_ = [
        ("from_float", ctypes.c_void_p),
        ("vec_dot", ctypes.c_void_p),
        ("vec_dot_type", ctypes.c_int),
        ("nrows", ctypes.c_int64),
    ]


_FROM_FLOAT = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)
_VEC_DOT = ctypes.CFUNCTYPE(
    None, ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p,
    ctypes.c_size_t, ctypes.c_int,
)  # fmt: skip


@cache
def cpu_lib() -> ctypes.CDLL:
    """libggml-cpu: the CPU backend's own ``vec_dot`` and activation quantizers (``from_float``),
    compiled for this machine's instruction sets."""
    import llama_cpp

    lib()  # libggml-base first: libggml-cpu links against it
    so = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml-cpu.so"))
    so.ggml_get_type_traits_cpu.restype = ctypes.POINTER(_TypeTraitsCpu)
    so.ggml_get_type_traits_cpu.argtypes = [ctypes.c_int]
    so.ggml_cpu_init()
    return so


def activation_blocks(ggml_type: int, x: np.ndarray) -> tuple[int, np.ndarray]:
    """ggml-cpu's conversion of the float32 row ``x`` for a ``ggml_type`` weight: (its
    vec_dot_type, the converted row's bytes)."""
    traits = cpu_lib().ggml_get_type_traits_cpu(ggml_type).contents
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = np.zeros(lib().ggml_row_size(traits.vec_dot_type, x.shape[0]), dtype=np.uint8)
    _FROM_FLOAT(cpu_lib().ggml_get_type_traits_cpu(traits.vec_dot_type).contents.from_float)(
        x.ctypes.data, out.ctypes.data, x.shape[0]
    )
    return traits.vec_dot_type, out


def vec_dot(ggml_type: int, row: np.ndarray, x: np.ndarray) -> np.float32:
    """ggml-cpu's ``vec_dot`` of one quantized row (its bytes) with the float32 row ``x``, which
    it first converts as its matrix multiplication does (``activation_blocks``)."""
    traits = cpu_lib().ggml_get_type_traits_cpu(ggml_type).contents
    _, y = activation_blocks(ggml_type, x)
    row = np.ascontiguousarray(row, dtype=np.uint8)
    s = np.zeros(1, dtype=np.float32)
    _VEC_DOT(traits.vec_dot)(x.shape[0], s.ctypes.data, 0, row.ctypes.data, 0, y.ctypes.data, 0, 1)
    return s[0]
