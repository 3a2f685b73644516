"""The unquantized types a GGUF tensor can have: F32, F16, BF16 (one value per "block")."""

from __future__ import annotations

import gguf
import numpy as np

from llamashare.quant.qtype import F32 as NP_F32
from llamashare.quant.qtype import QuantType
from llamashare.quant.safetensors_io import float32_to_bf16

T = gguf.GGMLQuantizationType


class F32(QuantType, ggml=T.F32):
    @classmethod
    def _quantize(cls, b: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(b, dtype="<f4").view(np.uint8)

    @classmethod
    def _dequantize(cls, blocks: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(blocks).view("<f4").astype(NP_F32)


class F16(QuantType, ggml=T.F16):
    fp16_fields = (0,)

    @classmethod
    def _quantize(cls, b: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):
            return b.astype("<f2").view(np.uint8)

    @classmethod
    def _dequantize(cls, blocks: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(blocks).view("<f2").astype(NP_F32)


class BF16(QuantType, ggml=T.BF16):
    @classmethod
    def _quantize(cls, b: np.ndarray) -> np.ndarray:
        return float32_to_bf16(b).astype("<u2").view(np.uint8)

    @classmethod
    def _dequantize(cls, blocks: np.ndarray) -> np.ndarray:
        bits = np.ascontiguousarray(blocks).view("<u2").astype(np.uint32) << 16
        return bits.view(NP_F32)
