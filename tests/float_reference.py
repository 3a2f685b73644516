"""A float32 copy of a GGUF model with the same weights, decoded by ggml itself: the reference
that quantized inference (llama.cpp's and ours) is measured against.

Running the copy through llama.cpp gives the logits of the quantized weights without any
quantized kernel: no activation rounding, no repacked blocks, no CPU-specific integer paths.
The weights are decoded by libggml-base's own ``dequantize_row_*`` (tests/ggml_ref.py), not by
llamashare, so a decoding bug in the engine cannot hide in its own yardstick.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

from llamashare.quant.quantize import quantize_file
from tests import ggml_ref

T = gguf.GGMLQuantizationType
#: ggml's names of the dequantizers (``dequantize_row_<name>``) for the block types.
GGML_NAMES = {
    T.Q4_0: "q4_0",
    T.Q4_1: "q4_1",
    T.Q5_0: "q5_0",
    T.Q5_1: "q5_1",
    T.Q8_0: "q8_0",
    T.Q2_K: "q2_K",
    T.Q3_K: "q3_K",
    T.Q4_K: "q4_K",
    T.Q5_K: "q5_K",
    T.Q6_K: "q6_K",
}


def decode(t: gguf.ReaderTensor) -> np.ndarray:
    """The tensor's values as float32, flat, decoded the way ggml decodes them."""
    raw = np.ascontiguousarray(t.data).reshape(-1)
    n = int(np.prod(t.shape))
    if t.tensor_type == T.F32:
        return raw.view(np.float32)
    if t.tensor_type == T.F16:
        return raw.view(np.float16).astype(np.float32)
    if t.tensor_type == T.BF16:
        return (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    return ggml_ref.dequantize(GGML_NAMES[T(t.tensor_type)], raw.view(np.uint8), n)


def float32_copy(src: Path, out: Path) -> Path:
    """Write ``out``: ``src`` with every tensor as float32 (ggml's decoding of its blocks)."""
    # llamashare writes the file (metadata, tensor table, layout); ggml's values then replace
    # every tensor's data in place.
    quantize_file(src, out, "F32", allow_requantize=True)
    source = {t.name: t for t in gguf.GGUFReader(src).tensors}
    copy = gguf.GGUFReader(out, "r+")
    assert set(source) == {t.name for t in copy.tensors}
    for t in copy.tensors:
        assert t.tensor_type == T.F32, (t.name, t.tensor_type)
        values = decode(source[t.name])
        data = t.data.reshape(-1)
        assert data.size == values.size, t.name
        data[:] = values
    copy.data.flush()
    return out
