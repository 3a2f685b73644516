"""Choosing the next token from logits, in llama.cpp's default order:

    repetition penalty → top-k → top-p → min-p → temperature → draw

Greedy (argmax) when the temperature is 0. The draw uses a NumPy generator seeded from ``seed``,
so a seed reproduces a run exactly (the stream of random numbers is NumPy's, not llama.cpp's, so
the same seed does not pick the same tokens as llama.cpp).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SamplingParams:
    """llama.cpp's defaults (common/common.h)."""

    temperature: float = 0.8
    top_k: int = 40  # <= 0: all tokens
    top_p: float = 0.95  # 1.0: off
    min_p: float = 0.05  # 0.0: off
    repeat_penalty: float = 1.0  # 1.0: off
    repeat_last_n: int = 64  # how many recent tokens the penalty looks at
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.temperature < 0 or not 0 < self.top_p <= 1 or not 0 <= self.min_p <= 1 or self.repeat_penalty <= 0:
            raise ValueError("sampling: need temperature >= 0, 0 < top-p <= 1, 0 <= min-p <= 1, repeat-penalty > 0")


def apply_repeat_penalty(logits: np.ndarray, recent: list[int], penalty: float) -> np.ndarray:
    """Make each recently seen token less likely: divide a positive logit, multiply a negative."""
    if penalty == 1.0 or not recent:
        return logits
    ids = np.unique(np.asarray(recent, dtype=np.int64))
    seen = logits[ids]
    logits[ids] = np.where(seen > 0, seen / penalty, seen * penalty)
    return logits


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def candidates(logits: np.ndarray, p: SamplingParams) -> tuple[np.ndarray, np.ndarray]:
    """Token ids still in the running after top-k, top-p and min-p, best first, and their
    logits (before temperature)."""
    k = len(logits) if p.top_k <= 0 else min(p.top_k, len(logits))
    ids = np.argpartition(-logits, k - 1)[:k] if k < len(logits) else np.arange(len(logits))
    ids = ids[np.argsort(-logits[ids], kind="stable")]
    vals = logits[ids]
    if p.top_p < 1.0:
        cum = np.cumsum(softmax(vals))
        keep = int(np.searchsorted(cum, p.top_p)) + 1  # smallest prefix reaching top_p
        ids, vals = ids[:keep], vals[:keep]
    if p.min_p > 0.0:
        keep = vals >= vals[0] + np.log(p.min_p)  # prob >= min_p * best prob
        ids, vals = ids[keep], vals[keep]
    return ids, vals


class Sampler:
    def __init__(self, params: SamplingParams = SamplingParams()) -> None:
        self.params = params
        self.rng = np.random.default_rng(params.seed)

    def __call__(self, logits: np.ndarray, history: list[int]) -> int:
        p = self.params
        logits = logits.astype(np.float64)  # a copy: the caller's logits stay as they were
        recent = history[-p.repeat_last_n :] if p.repeat_last_n > 0 else []
        logits = apply_repeat_penalty(logits, recent, p.repeat_penalty)
        if p.temperature == 0:
            return int(np.argmax(logits))
        ids, vals = candidates(logits, p)
        return int(self.rng.choice(ids, p=softmax(vals / p.temperature)))
