"""How each model family differs from LLaMA, in one table.

Every family llamashare runs is LLaMA's decoder block with a few switches: how q/k are rotated,
which gated activation the feed-forward uses, extra norms, fused projections, sliding-window
layers. The forward pass (model.py) reads these switches; nothing else in it is per family.
Each row is what llama.cpp's graph for that architecture does (src/models/<arch>.cpp in
llama.cpp), named by the GGUF ``general.architecture`` value.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    arch: str  # GGUF general.architecture
    title: str  # for messages and the README
    #: Rotate pairs (x_i, x_{i+d/2}) ("NEOX" in ggml) rather than (x_2i, x_2i+1). LLaMA's
    #: converter permutes Hugging Face's Q/K rows into the interleaved layout; the others keep
    #: Hugging Face's half-split layout and rotate it as it is.
    rope_neox: bool = True
    #: Feed-forward gate: "silu" (SwiGLU) or "gelu" (GeGLU, tanh approximation).
    ffn_act: str = "silu"
    #: Gate and up projections stored as one ``ffn_up`` of twice the width, gate first (Phi-3).
    fused_gate_up: bool = False
    #: Embeddings multiplied by sqrt(n_embd) before the first layer (Gemma).
    scale_embeddings: bool = False
    #: RMS norms after attention and after the feed-forward, before each residual add (Gemma 2/3).
    post_norms: bool = False
    #: Per-head RMS norms of q and k before rotation (Qwen3, Gemma 3).
    qk_norm: bool = False
    #: The output matrix is always the embedding, whatever the file holds (Gemma).
    tied_output: bool = False
    #: Sliding-window layers: every ``swa_pattern``-th layer attends globally, the others to
    #: the last ``attention.sliding_window`` positions (0: no sliding window).
    swa_pattern: int = 0
    #: Gemma 2 caps attention scores with tanh: score = cap · tanh(score / cap).
    attn_softcap: bool = False
    #: llama.cpp scales the queries (before they meet the float16 key cache) rather than the
    #: scores: the same product, rounded differently (Gemma, Phi-3).
    scale_queries: bool = False


FAMILIES: dict[str, Family] = {
    f.arch: f
    for f in [
        Family("llama", "LLaMA / Mistral / SmolLM", rope_neox=False),
        Family("qwen2", "Qwen2 / Qwen2.5"),
        Family("qwen3", "Qwen3", qk_norm=True),
        Family(
            "gemma2",
            "Gemma 2",
            ffn_act="gelu",
            scale_embeddings=True,
            post_norms=True,
            tied_output=True,
            swa_pattern=2,
            attn_softcap=True,
            scale_queries=True,
        ),
        Family(
            "gemma3",
            "Gemma 3",
            ffn_act="gelu",
            scale_embeddings=True,
            post_norms=True,
            qk_norm=True,
            tied_output=True,
            swa_pattern=6,
            scale_queries=True,
        ),
        Family("phi3", "Phi-3 / Phi-3.5", fused_gate_up=True, scale_queries=True),
    ]
}


def family(arch: object) -> Family | None:
    return FAMILIES.get(arch) if isinstance(arch, str) else None
