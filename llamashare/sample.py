"""A small, deterministic Hugging Face model folder of any supported family, generated on the spot.

Why: tests, benchmarks and the offline demo need a release that looks like the real thing
(sharded safetensors with an index, config, tokenizer files) without downloading anything.
Shapes are consistent with ``config.json`` (grouped-query attention, untied output for LLaMA),
so later stages (convert, quantize, run) can consume it; the weights are seeded random numbers.
``architecture`` picks the family: its tensor names (Phi-3's fused projections, Gemma's four
norms, Qwen's biases and Q/K norms) and config keys (soft-caps, sliding window) are the ones
Hugging Face's own classes use, with values chosen so every family difference shows in the
logits (a sliding window shorter than a test's sequence, Gemma 3's global layer among local ones).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file

from llamashare.quant.vocab import QWEN2_SPLIT

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
    architecture: str = "LlamaForCausalLM"
    head_dim: int | None = None  # None: hidden_size / num_attention_heads
    sliding_window: int = 8  # Gemma 2/3 and Phi-3; short, so a 32-step test crosses it

    @property
    def head_size(self) -> int:
        return self.head_dim or self.hidden_size // self.num_attention_heads


#: Hugging Face architecture → its model_type, and what else its config.json says.
FAMILY_CONFIG: dict[str, dict[str, object]] = {
    "LlamaForCausalLM": {"model_type": "llama", "hidden_act": "silu", "rope_theta": 10000.0},
    "Qwen2ForCausalLM": {"model_type": "qwen2", "hidden_act": "silu", "rope_theta": 1000000.0},
    "Qwen3ForCausalLM": {"model_type": "qwen3", "hidden_act": "silu", "rope_theta": 1000000.0},
    "Gemma2ForCausalLM": {
        "model_type": "gemma2",
        "hidden_activation": "gelu_pytorch_tanh",
        "rope_theta": 10000.0,
        "attn_logit_softcapping": 10.0,  # low, so the caps bite on these small weights
        "final_logit_softcapping": 3.0,
    },
    "Gemma3ForCausalLM": {
        "model_type": "gemma3_text",
        "hidden_activation": "gelu_pytorch_tanh",
        "rope_theta": 1000000.0,
        "rope_local_base_freq": 10000.0,
        "sliding_window_pattern": 6,
        "rope_scaling": {"rope_type": "linear", "factor": 2.0},  # global layers only, as Gemma 3 4B+
    },
    "Phi3ForCausalLM": {"model_type": "phi3", "hidden_act": "silu", "rope_theta": 10000.0},
}


def _tensors(cfg: SampleConfig) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(cfg.seed)
    arch = cfg.architecture
    h, i, v, hd = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size, cfg.head_size
    q, kv = hd * cfg.num_attention_heads, hd * cfg.num_key_value_heads
    gemma = arch.startswith("Gemma")

    def w(*shape: int, scale: float = 0.02) -> np.ndarray:
        return (rng.standard_normal(shape, dtype=np.float32) * scale).astype(np.float32)

    def norm(n: int) -> np.ndarray:
        if arch == "LlamaForCausalLM":
            return np.ones(n, np.float32)
        # Gemma stores w for a scale of (1 + w), so its "ones" are zeros; small noise either
        # way, so a norm applied to the wrong tensor (or without Gemma's +1) shows in the logits
        return w(n, scale=0.1) + np.float32(0.0 if gemma else 1.0)

    out = {"model.embed_tokens.weight": w(v, h, scale=0.05 if gemma else 0.02)}  # Gemma multiplies it by sqrt(h)
    for n in range(cfg.num_hidden_layers):
        p = f"model.layers.{n}."
        attn_norm = norm(h)
        # Q and K large enough for peaked attention: position and rotary-layout mistakes
        # then change the logits visibly (with 0.02, attention is near uniform).
        wq, wk, wv, wo = w(q, h, scale=0.15), w(kv, h, scale=0.15), w(kv, h), w(h, q)
        ffn_norm = norm(h)
        gate, up, down = w(i, h), w(i, h), w(h, i)
        out[p + "input_layernorm.weight"] = attn_norm
        if arch == "Phi3ForCausalLM":
            out[p + "self_attn.qkv_proj.weight"] = np.concatenate([wq, wk, wv])
        else:
            out |= {p + "self_attn.q_proj.weight": wq, p + "self_attn.k_proj.weight": wk}
            out[p + "self_attn.v_proj.weight"] = wv
        if arch == "Qwen2ForCausalLM":
            out |= {f"{p}self_attn.{x}_proj.bias": w(size, scale=0.5) for x, size in (("q", q), ("k", kv), ("v", kv))}
        if arch in ("Qwen3ForCausalLM", "Gemma3ForCausalLM"):
            out |= {p + "self_attn.q_norm.weight": norm(hd), p + "self_attn.k_norm.weight": norm(hd)}
        out[p + "self_attn.o_proj.weight"] = wo
        # Gemma's post_attention_layernorm follows attention; LLaMA's is the one before the MLP
        out[p + "post_attention_layernorm.weight"] = ffn_norm
        if gemma:
            out |= {p + "pre_feedforward_layernorm.weight": norm(h), p + "post_feedforward_layernorm.weight": norm(h)}
        if arch == "Phi3ForCausalLM":
            out[p + "mlp.gate_up_proj.weight"] = np.concatenate([gate, up])
        else:
            out |= {p + "mlp.gate_proj.weight": gate, p + "mlp.up_proj.weight": up}
        out[p + "mlp.down_proj.weight"] = down
    out["model.norm.weight"] = norm(h)
    if not gemma:
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


def _pre_tokenizer(arch: str) -> dict[str, object]:
    """GPT-2's byte-level split, or Qwen's (a regex, then bytes) for the Qwen families."""
    if arch.startswith("Qwen"):
        return {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": QWEN2_SPLIT}, "behavior": "Isolated", "invert": False},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
            ],
        }
    return {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}


def _config(cfg: SampleConfig) -> dict[str, object]:
    arch = cfg.architecture
    if arch not in FAMILY_CONFIG:
        raise ValueError(f"no sample for {arch}; known: {', '.join(FAMILY_CONFIG)}")
    own = {k: val for k, val in asdict(cfg).items() if k not in ("shards", "seed", "architecture", "sliding_window")}
    config: dict[str, object] = {
        "architectures": [arch],
        **FAMILY_CONFIG[arch],
        "max_position_embeddings": 256,
        "rms_norm_eps": 1e-6 if arch.startswith("Gemma") else 1e-5,
        "tie_word_embeddings": arch.startswith("Gemma"),
        "torch_dtype": "float32",
        "bos_token_id": cfg.vocab_size - 3,
        "eos_token_id": cfg.vocab_size - 2,
        **own,
    }
    if arch == "LlamaForCausalLM" and cfg.head_dim is None:
        del config["head_dim"]
    else:
        config["head_dim"] = cfg.head_size
    if arch.startswith("Gemma") or arch == "Phi3ForCausalLM":
        config["sliding_window"] = cfg.sliding_window
    if arch.startswith("Gemma"):
        config["query_pre_attn_scalar"] = cfg.head_size
    if arch == "Phi3ForCausalLM":
        config["original_max_position_embeddings"] = 256
    return config


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
    spm = cfg.architecture in SENTENCEPIECE_FAMILIES
    bos, eos = (1, 2) if spm else (cfg.vocab_size - 3, cfg.vocab_size - 2)  # the SentencePiece model's own ids
    tokenizer_config: dict[str, object] = {
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "model_max_length": 256,
        "add_bos_token": True,
        "chat_template": CHAT_TEMPLATE,
    }
    docs: dict[str, object] = {
        "model.safetensors.index.json": {"metadata": {"total_size": total}, "weight_map": weight_map},
        "config.json": _config(cfg) | {"bos_token_id": bos, "eos_token_id": eos},
        "generation_config.json": {"bos_token_id": bos, "eos_token_id": eos},
        "tokenizer_config.json": tokenizer_config,
    }
    if spm:
        tokenizer_config["added_tokens_decoder"] = _write_sentencepiece(root, cfg)
        written.append(root / "tokenizer.model")
    else:
        docs["tokenizer.json"] = _byte_level_tokenizer_json(cfg)
    for name, doc in docs.items():
        (root / name).write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
        written.append(root / name)
    return written


def _byte_level_tokenizer_json(cfg: SampleConfig) -> dict[str, object]:
    """tokenizer.json of a small byte-level BPE with <s>, </s>, <unk> as its last three ids."""
    vocab, merges = _byte_level_bpe(cfg.vocab_size)
    return {
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
        "pre_tokenizer": _pre_tokenizer(cfg.architecture),
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "vocab": vocab, "merges": merges},
    }


#: Families whose llama.cpp converter reads only a SentencePiece ``tokenizer.model``.
SENTENCEPIECE_FAMILIES = ("Gemma2ForCausalLM", "Phi3ForCausalLM")
#: Phi-3's chat tokens, added after its SentencePiece pieces as in its tokenizer_config.json
#: (llama.cpp's vocabulary loader looks <|endoftext|> up in any model named phi3).
PHI3_ADDED = ("<|endoftext|>", "<|assistant|>", "<|end|>", "<|user|>")
SYLLABLES = [a + b for a in "bdfgklmnprstvz" for b in "aeiou"]


def sentencepiece_model(vocab_size: int, seed: int = 0, **options: Any) -> bytes:
    """A real SentencePiece BPE model with byte fallback (<unk>, <s>, </s> = 0, 1, 2, as
    LLaMA's and Gemma's, unless ``options`` for the trainer say otherwise), trained on seeded
    made-up words: about a second."""
    import io
    import random

    import sentencepiece as spm

    rng = random.Random(seed)
    words = "the a model weights share peer swarm seed verify llama token byte merge layer head rope norm".split()
    words += ["".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 4))) for _ in range(3000)]
    lines = [" ".join(rng.choice(words) for _ in range(12)) for _ in range(3000)]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="bpe",
        byte_fallback=True,
        minloglevel=2,
        **options,
    )
    return model.getvalue()


def _write_sentencepiece(root: Path, cfg: SampleConfig) -> dict[str, object]:
    """Gemma 2's and Phi-3's tokenizer.model (pieces up to 512, the rest of a larger vocabulary
    left to padding, as Gemma pads to its embedding); returns tokenizer_config.json's
    added_tokens_decoder: Phi-3's added chat tokens after the pieces."""
    added = PHI3_ADDED if cfg.architecture == "Phi3ForCausalLM" else ()
    pieces = min(cfg.vocab_size, 512) - len(added)
    (root / "tokenizer.model").write_bytes(sentencepiece_model(pieces, cfg.seed))
    return {
        str(pieces + k): {"content": t, "special": True, "lstrip": False, "rstrip": True, "normalized": False}
        for k, t in enumerate(added)
    }
