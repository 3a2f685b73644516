"""A small, deterministic, LLaMA-shaped Hugging Face model folder, generated on the spot.

Why: tests, benchmarks and the offline demo need a release that looks like the real thing
(sharded safetensors with an index, config, tokenizer files) without downloading anything.
Shapes are consistent with ``config.json`` (grouped-query attention, untied output), so later
stages (convert, quantize, run) can consume it; the weights are seeded random numbers.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

#: A minimal chat template in the Jinja dialect Hugging Face tokenizers use.
CHAT_TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant\n{% endif %}"
)


@dataclass(frozen=True)
class SampleConfig:
    vocab_size: int = 512
    hidden_size: int = 128
    intermediate_size: int = 344
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    shards: int = 2
    seed: int = 0


def _tensors(cfg: SampleConfig) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(cfg.seed)
    h, i, v = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    kv = h // cfg.num_attention_heads * cfg.num_key_value_heads

    def w(*shape: int, scale: float = 0.02) -> np.ndarray:
        return (rng.standard_normal(shape, dtype=np.float32) * scale).astype(np.float32)

    out = {"model.embed_tokens.weight": w(v, h)}
    for n in range(cfg.num_hidden_layers):
        p = f"model.layers.{n}."
        out |= {
            p + "input_layernorm.weight": np.ones(h, np.float32),
            # Q and K large enough for peaked attention: position and rotary-layout mistakes
            # then change the logits visibly (with 0.02, attention is near uniform).
            p + "self_attn.q_proj.weight": w(h, h, scale=0.15),
            p + "self_attn.k_proj.weight": w(kv, h, scale=0.15),
            p + "self_attn.v_proj.weight": w(kv, h),
            p + "self_attn.o_proj.weight": w(h, h),
            p + "post_attention_layernorm.weight": np.ones(h, np.float32),
            p + "mlp.gate_proj.weight": w(i, h),
            p + "mlp.up_proj.weight": w(i, h),
            p + "mlp.down_proj.weight": w(h, i),
        }
    out["model.norm.weight"] = np.ones(h, np.float32)
    out["lm_head.weight"] = w(v, h)
    return out


def _byte_level_bpe(size: int) -> tuple[dict[str, int], list[str]]:
    """A small but real byte-level BPE: the 256 byte tokens (GPT-2's byte-to-unicode map), then
    merges of a space or a frequent letter with a letter, up to ``size`` - 3 (room for specials)."""
    from llamashare.infer.tokenizer import gpt2_byte_map

    mapping = gpt2_byte_map()
    vocab = {mapping[b]: b for b in range(256)}
    letters = "etaoinshrdlcumwfgypbvkjxqz"
    pairs = [(mapping[32], c) for c in letters] + [(a, b) for a in letters for b in letters]
    merges = []
    for a, b in pairs[: size - 3 - 256]:
        vocab[a + b] = len(vocab)
        merges.append(f"{a} {b}")
    return vocab, merges


def write_sample_model(root: Path, cfg: SampleConfig = SampleConfig()) -> list[Path]:
    """Write the sample release into ``root`` (created if needed); return the files written."""
    root.mkdir(parents=True, exist_ok=True)
    tensors = _tensors(cfg)
    names = list(tensors)
    per_shard = -(-len(names) // cfg.shards)
    weight_map: dict[str, str] = {}
    written: list[Path] = []
    for s in range(cfg.shards):
        shard = f"model-{s + 1:05d}-of-{cfg.shards:05d}.safetensors"
        part = {n: tensors[n] for n in names[s * per_shard : (s + 1) * per_shard]}
        save_file(part, str(root / shard), metadata={"format": "pt"})
        weight_map |= {n: shard for n in part}
        written.append(root / shard)
    total = sum(t.nbytes for t in tensors.values())
    vocab, merges = _byte_level_bpe(cfg.vocab_size)
    docs = {
        "model.safetensors.index.json": {"metadata": {"total_size": total}, "weight_map": weight_map},
        "config.json": {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_act": "silu",
            "max_position_embeddings": 256,
            "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0,
            "tie_word_embeddings": False,
            "torch_dtype": "float32",
            "bos_token_id": cfg.vocab_size - 3,
            "eos_token_id": cfg.vocab_size - 2,
            **{k: val for k, val in asdict(cfg).items() if k not in ("shards", "seed")},
        },
        "generation_config.json": {"bos_token_id": cfg.vocab_size - 3, "eos_token_id": cfg.vocab_size - 2},
        "tokenizer_config.json": {
            "bos_token": "<s>",
            "eos_token": "</s>",
            "unk_token": "<unk>",
            "model_max_length": 256,
            "add_bos_token": True,
            "chat_template": CHAT_TEMPLATE,
        },
        "tokenizer.json": {
            "version": "1.0",
            "added_tokens": [
                {
                    "id": cfg.vocab_size - 3 + k,
                    "content": t,
                    "special": True,
                    "single_word": False,
                    "lstrip": False,
                    "rstrip": False,
                    "normalized": False,
                }
                for k, t in enumerate(("<s>", "</s>", "<unk>"))
            ],
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
            "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
            "model": {"type": "BPE", "vocab": vocab, "merges": merges},
        },
    }
    for name, doc in docs.items():
        (root / name).write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
        written.append(root / name)
    return written
