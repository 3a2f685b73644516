"""A plain NumPy LLaMA forward pass over Hugging Face-named weights: the tests' source math.

Written from the model's definition (RMSNorm, rotary embeddings in Hugging Face's half-split
convention, grouped-query causal attention, SwiGLU), independent of convert and of llama.cpp, so
logits from a converted GGUF running in llama.cpp can be checked against it.
"""

from __future__ import annotations

import numpy as np


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rotary(x: np.ndarray, theta: float) -> np.ndarray:
    """x: (T, heads, d); Hugging Face's rotate_half: pairs (i, i + d/2)."""
    t, _, d = x.shape
    inv = 1.0 / theta ** (np.arange(0, d, 2, dtype=np.float64) / d)  # (d/2,)
    ang = np.arange(t)[:, None] * inv[None, :]  # (T, d/2)
    cos = np.concatenate([np.cos(ang)] * 2, axis=-1)[:, None, :]
    sin = np.concatenate([np.sin(ang)] * 2, axis=-1)[:, None, :]
    rot = np.concatenate([-x[..., d // 2 :], x[..., : d // 2]], axis=-1)
    return x * cos + rot * sin


def logits(w: dict[str, np.ndarray], cfg: dict, tokens: list[int]) -> np.ndarray:
    """(T, vocab) logits for ``tokens`` in float64."""
    w = {k: v.astype(np.float64) for k, v in w.items()}
    nh, nkv, eps = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["rms_norm_eps"]
    theta = cfg.get("rope_theta", 10000.0)
    x = w["model.embed_tokens.weight"][tokens]  # (T, C)
    t, c = x.shape
    d = c // nh
    mask = np.triu(np.full((t, t), -np.inf), 1)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = rms_norm(x, w[p + "input_layernorm.weight"], eps)
        q = rotary((h @ w[p + "self_attn.q_proj.weight"].T).reshape(t, nh, d), theta)
        k = rotary((h @ w[p + "self_attn.k_proj.weight"].T).reshape(t, nkv, d), theta)
        v = (h @ w[p + "self_attn.v_proj.weight"].T).reshape(t, nkv, d)
        k, v = np.repeat(k, nh // nkv, axis=1), np.repeat(v, nh // nkv, axis=1)  # (T, nh, d)
        att = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(d) + mask
        att = np.exp(att - att.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        y = np.einsum("hqk,khd->qhd", att, v).reshape(t, c)
        x = x + y @ w[p + "self_attn.o_proj.weight"].T
        h = rms_norm(x, w[p + "post_attention_layernorm.weight"], eps)
        gate = h @ w[p + "mlp.gate_proj.weight"].T
        x = x + ((gate / (1 + np.exp(-gate))) * (h @ w[p + "mlp.up_proj.weight"].T)) @ w[p + "mlp.down_proj.weight"].T
    x = rms_norm(x, w["model.norm.weight"], eps)
    out = w.get("lm_head.weight", w["model.embed_tokens.weight"])
    return x @ out.T
