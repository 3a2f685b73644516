"""Causal grouped-query attention over the KV cache, as one compiled loop.

For each new token i (position start+i) and query head h, sharing kv head h // (n_head/n_head_kv):

    s_j = (q · k_j) · scale              for the keys j it may see: 0 .. start+i, or the last
                                         ``window`` of them in a sliding-window layer
    s_j = cap · tanh(s_j / cap)          where scores are soft-capped (Gemma 2)
    p_j = exp(s_j - max s) / Σ exp(...)  (the sum in double, as ggml_vec_soft_max_f32 adds)
    y   = Σ_j half(p_j) · v_j            (the probabilities go through float16, as llama.cpp
                                          converts them for its float16 value cache)

Why a loop and not NumPy. A generated token's attention is nine heads of a few hundred keys:
as array expressions it took a dozen NumPy calls per layer (reshape, matmul, mask, max, exp,
sum, ...), 2.3 ms of a 14 ms token, almost all call overhead. Compiled, each layer is one call
of ~17 µs. A prompt batch goes the same way (no T × T mask is ever built): ~1 ms a layer for 128
tokens, ~10% of the batch. A single token's stays on one core; a prompt's may be spread over
them (``spread``), which the model allows unless BLAS multiplies its batches (numba's threads,
spinning after a parallel loop, slowed the BLAS product that followed to half speed).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from llamashare.infer.simd import through_half

F32 = np.float32


@njit(inline="always", cache=True, fastmath={"reassoc", "contract"})
def _attend_pair(q, k_cache, v_cache, start, scale, window, cap, out, pair):  # type: ignore[no-untyped-def]
    n_head, hd = q.shape[1], q.shape[2]
    group = n_head // k_cache.shape[0]
    i, h = pair // n_head, pair % n_head
    keys, vals = k_cache[h // group], v_cache[h // group]
    end = start + i + 1
    first = max(0, end - window) if window > 0 else 0  # llama.cpp masks keys window or more behind
    seen = end - first
    s = np.empty(seen, F32)
    top = F32(-np.inf)
    for j in range(seen):
        dot = F32(0)
        for d in range(hd):
            dot += q[i, h, d] * keys[first + j, d]
        s[j] = dot * scale
        if cap > 0:  # as ggml: scaled by 1/cap, tanh, scaled by cap
            s[j] = cap * np.tanh(s[j] * (F32(1) / cap))
        top = max(top, s[j])
    total = 0.0
    for j in range(seen):
        s[j] = np.exp(s[j] - top)
        total += s[j]
    inv = F32(1.0 / total)
    y = out[i, h * hd : (h + 1) * hd]
    y[:] = 0
    for j in range(seen):
        p = through_half(s[j] * inv)
        for d in range(hd):
            y[d] += p * vals[first + j, d]


@njit(cache=True, fastmath={"reassoc", "contract"})
def _attend(q, k_cache, v_cache, start, scale, window, cap, out):  # type: ignore[no-untyped-def]
    for pair in range(q.shape[0] * q.shape[1]):
        _attend_pair(q, k_cache, v_cache, start, scale, window, cap, out, pair)


@njit(parallel=True, cache=True, fastmath={"reassoc", "contract"})
def _attend_parallel(q, k_cache, v_cache, start, scale, window, cap, out):  # type: ignore[no-untyped-def]
    n = q.shape[0] * q.shape[1]
    for k in prange(n):
        # pairs taken short, long, short, long...: later tokens see more keys, and each core
        # gets one contiguous run of k
        pair = k // 2 if k % 2 == 0 else n - 1 - k // 2
        _attend_pair(q, k_cache, v_cache, start, scale, window, cap, out, pair)


def attend(
    q: np.ndarray,
    k_cache: np.ndarray,
    v_cache: np.ndarray,
    start: int,
    scale: float,
    window: int = 0,
    softcap: float = 0.0,
    spread: bool = False,
) -> np.ndarray:
    """q: (T, n_head, head_dim), already through float16; caches: (n_head_kv, n_ctx, head_dim)
    holding positions 0 .. start+T-1. ``window`` > 0: each query sees only the last ``window``
    positions up to its own; ``softcap`` > 0 caps the scores; ``spread``: the (token, head) pairs
    on every core. Returns (T, n_head·head_dim) float32."""
    n_tok, n_head, hd = q.shape
    out = np.empty((n_tok, n_head * hd), F32)
    kernel = _attend_parallel if spread else _attend
    kernel(np.ascontiguousarray(q, dtype=F32), k_cache, v_cache, start, F32(scale), window, F32(softcap), out)
    return out
