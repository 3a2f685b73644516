"""Tiny LLaMA-family checkpoints in every input layout convert reads, generated on the spot.

All are derived from one set of Hugging Face-named float32 weights (``llamashare.sample``), so a
test can convert two layouts and expect the same GGUF tensors.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from llamashare.quant.checkpoint import open_checkpoint
from llamashare.sample import SampleConfig, sentencepiece_model, write_sample_model
from tests.torch_format import save_pth

WORDS = "the a model weights share peer swarm seed verify llama token byte merge layer head rope norm".split()


def hf_weights(root: Path) -> dict[str, np.ndarray]:
    with open_checkpoint(root) as ckpt:
        return {n: np.array(t.load_f32()) for n, t in ckpt.tensors.items()}


def write_hf_tied(root: Path, cfg: SampleConfig = SampleConfig()) -> None:
    """A single-file HF checkpoint with tied embeddings (no lm_head), as SmolLM ships."""
    src = root.with_name(root.name + "-untied")
    write_sample_model(src, cfg)
    weights = hf_weights(src)
    del weights["lm_head.weight"]
    root.mkdir(parents=True)
    save_file(weights, str(root / "model.safetensors"))
    config = json.loads((src / "config.json").read_text()) | {"tie_word_embeddings": True}
    (root / "config.json").write_text(json.dumps(config))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (root / name).write_bytes((src / name).read_bytes())


def write_sentencepiece(path: Path, vocab_size: int) -> None:
    path.write_bytes(sentencepiece_model(vocab_size))


def write_meta(root: Path, hf_root: Path, ranks: int = 2, dtype: type = np.float16) -> None:
    """Meta's original layout of the HF sample's weights: params.json, tokenizer.model one folder
    up, and ``ranks`` model-parallel consolidated.NN.pth shards split the way Meta's code splits."""
    from llamashare.quant.checkpoint import meta_split_axis

    cfg = json.loads((hf_root / "config.json").read_text())
    w = hf_weights(hf_root)
    n_head, n_kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    rename = {
        "model.embed_tokens.weight": "tok_embeddings.weight",
        "model.norm.weight": "norm.weight",
        "lm_head.weight": "output.weight",
    }
    parts = {
        "input_layernorm": "attention_norm",
        "self_attn.q_proj": "attention.wq",
        "self_attn.k_proj": "attention.wk",
        "self_attn.v_proj": "attention.wv",
        "self_attn.o_proj": "attention.wo",
        "post_attention_layernorm": "ffn_norm",
        "mlp.gate_proj": "feed_forward.w1",
        "mlp.up_proj": "feed_forward.w3",
        "mlp.down_proj": "feed_forward.w2",
    }
    meta: dict[str, np.ndarray] = {}
    for name, array in w.items():
        if name in rename:
            meta[rename[name]] = array
            continue
        _, _, layer, rest = name.split(".", 3)
        hf_part = rest.removesuffix(".weight")
        if hf_part == "self_attn.q_proj":
            array = unpermute_rotary_to_meta(array, n_head)
        elif hf_part == "self_attn.k_proj":
            array = unpermute_rotary_to_meta(array, n_kv)
        meta[f"layers.{layer}.{parts[hf_part]}.weight"] = array
    root.mkdir(parents=True)
    for r in range(ranks):
        shard: dict[str, np.ndarray] = {}
        for name, array in meta.items():
            axis = meta_split_axis(name)
            shard[name] = (array if axis is None else np.split(array, ranks, axis=axis)[r]).astype(dtype)
        save_pth(root / f"consolidated.{r:02d}.pth", shard)
    params = {
        "dim": cfg["hidden_size"],
        "n_layers": cfg["num_hidden_layers"],
        "n_heads": n_head,
        "n_kv_heads": n_kv,
        "multiple_of": 8,
        "norm_eps": 1e-5,
        "vocab_size": -1,
    }
    (root / "params.json").write_text(json.dumps(params))
    write_sentencepiece(root.parent / "tokenizer.model", vocab_size=cfg["vocab_size"] - 12)


def unpermute_rotary_to_meta(w: np.ndarray, n_head: int) -> np.ndarray:
    """Hugging Face half-split rows → Meta's interleaved rows (what convert does, written apart)."""
    d = w.shape[0] // n_head
    out = np.empty_like(w)
    for h in range(n_head):
        head = w[h * d : (h + 1) * d]
        out[h * d : (h + 1) * d : 2] = head[: d // 2]  # x halves go to even rows
        out[h * d + 1 : (h + 1) * d : 2] = head[d // 2 :]  # y halves to odd rows
    return out
