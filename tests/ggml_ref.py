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
