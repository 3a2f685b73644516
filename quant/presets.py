"""File-level quantization presets (llama.cpp's ``llama_ftype``) and the per-tensor rules that
decide which type each tensor gets.

A preset such as ``Q4_K_M`` is not "every tensor in Q4_K": llama.cpp keeps norms and other 1-D
tensors as they are, gives the output matrix Q6_K, spends more bits on ``attn_v`` and on some
layers' ``ffn_down``, and falls back to a 32-value block type when a row is not a multiple of 256.
This module reproduces those rules (llama-quant.cpp: ``tensor_allows_quantization``,
``llama_tensor_get_type_impl``, ``tensor_type_fallback``) for the presets llamashare writes, so a
file quantized here has the same tensor types as one made by ``llama-quantize``. Rules that only
concern other architectures (Falcon, mixture-of-experts) or imatrix-only types are left out;
``plan`` refuses models they would apply to rather than silently differ.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import gguf

from llamashare.errors import QuantizeError
from llamashare.quant.qtype import QuantType, lookup

FT = gguf.LlamaFileType


@dataclass(frozen=True)
class Preset:
    name: str  # as llama-quantize spells it: "Q4_K_M"
    ftype: gguf.LlamaFileType  # recorded as general.file_type
    default: str  # tensor type most tensors get
    note: str


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in [
        Preset("F32", FT.ALL_F32, "f32", "no quantization"),
        Preset("F16", FT.MOSTLY_F16, "f16", "half precision"),
        Preset("BF16", FT.MOSTLY_BF16, "bf16", "bfloat16"),
        Preset("Q8_0", FT.MOSTLY_Q8_0, "q8_0", "almost lossless"),
        Preset("Q6_K", FT.MOSTLY_Q6_K, "q6_k", "very small quality loss"),
        Preset("Q5_K_M", FT.MOSTLY_Q5_K_M, "q5_k", "Q5_K, Q6_K for attn_v and half of ffn_down"),
        Preset("Q5_K_S", FT.MOSTLY_Q5_K_S, "q5_k", "Q5_K throughout"),
        Preset("Q5_1", FT.MOSTLY_Q5_1, "q5_1", "legacy 5-bit with minimum"),
        Preset("Q5_0", FT.MOSTLY_Q5_0, "q5_0", "legacy 5-bit"),
        Preset("Q4_K_M", FT.MOSTLY_Q4_K_M, "q4_k", "Q4_K, Q6_K for attn_v and half of ffn_down (the usual choice)"),
        Preset("Q4_K_S", FT.MOSTLY_Q4_K_S, "q4_k", "Q4_K, Q5_K for the first attn_v and ffn_down"),
        Preset("Q4_1", FT.MOSTLY_Q4_1, "q4_1", "legacy 4-bit with minimum"),
        Preset("Q4_0", FT.MOSTLY_Q4_0, "q4_0", "legacy 4-bit"),
        Preset("Q3_K_L", FT.MOSTLY_Q3_K_L, "q3_k", "Q3_K, Q5_K for attn_v, attn_output and ffn_down"),
        Preset("Q3_K_M", FT.MOSTLY_Q3_K_M, "q3_k", "Q3_K, Q4_K/Q5_K for attn_v, attn_output and ffn_down"),
        Preset("Q3_K_S", FT.MOSTLY_Q3_K_S, "q3_k", "Q3_K throughout: large quality loss"),
        Preset("Q2_K", FT.MOSTLY_Q2_K, "q2_k", "Q2_K, Q3_K/Q4_K for attn_v, attn_output and ffn_down: extreme loss"),
    ]
}
#: llama-quantize's short names for the recommended K presets.
ALIASES = {"Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M"}


def preset(name: str) -> Preset:
    key = name.upper()
    key = ALIASES.get(key, key)
    if key not in PRESETS:
        raise QuantizeError(f"unknown quantization {name!r}; choose one of {', '.join(PRESETS)} (see --list)")
    return PRESETS[key]


def allows_quantization(name: str, n_dims: int) -> bool:
    """Only matrices named ``*weight`` are quantized; norms, 1-D tensors and a few small
    special tensors keep their type (tensor_allows_quantization)."""
    return (
        n_dims >= 2
        and name.endswith("weight")
        and "_norm.weight" not in name
        and "ffn_gate_inp.weight" not in name
        and "position_embd" not in name
        and "token_types" not in name
    )


def category(name: str) -> str:
    if name == "output.weight":
        return "output"
    if name == "token_embd.weight":
        return "token_embd"
    for part in (
        "attn_qkv.weight",
        "attn_v.weight",
        "attn_k.weight",
        "attn_q.weight",
        "attn_output.weight",
        "ffn_up",
        "ffn_gate",
        "ffn_down",
    ):
        if part in name:
            return part.removesuffix(".weight")
    return "other"


def use_more_bits(i: int, n: int) -> bool:
    """The layers the _M presets give more bits: the first and last eighth, and every third
    layer between them."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def _layer(name: str) -> int:
    m = re.match(r"blk\.(\d+)\.", name)
    return int(m.group(1)) if m else -1


def gguf_order(names: list[str]) -> list[str]:
    """llama.cpp's tensor order (its loader's map): non-layer tensors first, then by layer number,
    by name within a layer. Files are written in this order, and the per-layer rules count in it."""
    return sorted(names, key=lambda n: (_layer(n), n))


@dataclass(frozen=True)
class Model:
    """What the rules need to know about the model besides tensor names."""

    n_layer: int
    n_head: int
    n_head_kv: int
    n_expert: int = 0
    arch: str = "llama"

    @property
    def is_70b(self) -> bool:
        """llama.cpp's LLM_TYPE_70B, which its attn_v rule asks for: an 80-layer LLaMA with grouped
        keys (LLaMA-1 65B has 80 layers too, without) or an 80-layer Qwen2 (Qwen2/2.5-72B)."""
        return self.n_layer == 80 and (self.arch == "qwen2" or (self.arch == "llama" and self.n_head != self.n_head_kv))


_FALLBACK = {"q2_k": "q4_0", "q3_k": "q4_0", "q4_k": "q5_0", "q5_k": "q5_1", "q6_k": "q8_0"}


def _fallback(t: str, n_cols: int) -> str:
    """A 256-block type for a row not divisible by 256 falls back to a 32-block type, and to F16
    if even that does not fit (tensor_type_fallback)."""
    if n_cols % lookup(t).block_size == 0:
        return t
    t = _FALLBACK.get(t, t)
    return t if n_cols % lookup(t).block_size == 0 else "f16"


def plan(
    tensors: list[tuple[str, tuple[int, ...], str]], p: Preset, model: Model, pure: bool = False
) -> dict[str, str]:
    """Target type per tensor. ``tensors``: (name, shape in GGML order (ne0 = row length first),
    current type name), in any order."""
    if model.n_expert > 1:
        raise QuantizeError(
            "mixture-of-experts models have their own quantization rules, which llamashare does not implement"
        )
    default = lookup(p.default)
    by_name = {name: (shape, cur) for name, shape, cur in tensors}
    order = gguf_order(list(by_name))
    tied = "output.weight" not in by_name
    # a fused attn_qkv counts and is treated as attn_v (llama-quant.cpp's category_is_attn_v)
    n_attn_v = sum(category(n) in ("attn_v", "attn_qkv") for n in order)
    i_attn_v = i_ffn_down = 0
    ftype = p.ftype
    out: dict[str, str] = {}
    for name in order:
        shape, cur = by_name[name]
        if not allows_quantization(name, len(shape)):
            out[name] = cur
            continue
        t = default.name
        if not default.is_quantized():
            out[name] = t
            continue
        cat = category(name)
        if not pure:
            if cat == "output" or (tied and cat == "token_embd"):
                if shape[0] % default.block_size:
                    t = "q8_0"
                elif t != "q8_0":
                    t = "q6_k"
            elif cat in ("attn_v", "attn_qkv"):
                if ftype == FT.MOSTLY_Q2_K:
                    t = "q4_k" if model.n_head >= 4 * model.n_head_kv else "q3_k"
                elif ftype == FT.MOSTLY_Q3_K_M:
                    t = "q5_k" if i_attn_v < 2 else "q4_k"
                elif ftype == FT.MOSTLY_Q3_K_L:
                    t = "q5_k"
                elif ftype in (FT.MOSTLY_Q4_K_M, FT.MOSTLY_Q5_K_M) and use_more_bits(i_attn_v, n_attn_v):
                    t = "q6_k"
                elif ftype == FT.MOSTLY_Q4_K_S and i_attn_v < 4:
                    t = "q5_k"
                if model.is_70b and t in ("q3_k", "q4_k"):
                    t = "q5_k"  # LLaMA-2/3 70B: attn_v is 8× smaller than attn_q, more bits are cheap
                i_attn_v += 1
            elif cat == "ffn_down":
                i, n = i_ffn_down, model.n_layer
                if ftype == FT.MOSTLY_Q2_K:
                    t = "q3_k"
                elif ftype == FT.MOSTLY_Q3_K_M:
                    t = "q5_k" if i < n // 16 else "q4_k"
                elif ftype == FT.MOSTLY_Q3_K_L:
                    t = "q5_k"
                elif ftype in (FT.MOSTLY_Q4_K_M, FT.MOSTLY_Q5_K_M) and use_more_bits(i, n):
                    t = "q6_k"
                elif ftype == FT.MOSTLY_Q4_K_S and i < n // 8:
                    t = "q5_k"
                i_ffn_down += 1
            elif cat == "attn_output":
                t = {FT.MOSTLY_Q2_K: "q3_k", FT.MOSTLY_Q3_K_M: "q4_k", FT.MOSTLY_Q3_K_L: "q5_k"}.get(ftype, t)
        out[name] = _fallback(t, shape[0])
    return out


def describe() -> list[tuple[str, str, float, str]]:
    """(preset, default type, bits per weight of that type, note) for ``--list``."""
    rows = []
    for p in PRESETS.values():
        t: type[QuantType] = lookup(p.default)
        rows.append((p.name, t.name, t.bits_per_weight(), p.note))
    return rows
