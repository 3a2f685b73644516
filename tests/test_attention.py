"""The compiled attention (infer/attention.py) against the same attention as NumPy array
expressions: a causal mask over the cache, softmax summed in double, probabilities through
float16 before they weight the values."""

from __future__ import annotations

import numpy as np
import pytest

from llamashare.infer.activations import round_half
from llamashare.infer.attention import attend

F32 = np.float32


def numpy_attention(q: np.ndarray, kc: np.ndarray, vc: np.ndarray, start: int, scale: float) -> np.ndarray:
    t, n_head, hd = q.shape
    nkv = kc.shape[0]
    group, end = n_head // nkv, start + t
    mask = np.triu(np.full((t, end), -np.inf, dtype=F32), k=start + 1)  # query i sees keys 0..start+i
    qg = q.reshape(t, nkv, group, hd).transpose(1, 2, 0, 3).reshape(nkv, group * t, hd)
    att = (qg @ kc[:, :end].transpose(0, 2, 1)).reshape(nkv, group, t, end) * F32(scale) + mask
    att = np.exp(att - att.max(axis=-1, keepdims=True))
    att *= (1.0 / att.sum(axis=-1, keepdims=True, dtype=np.float64)).astype(F32)
    y = round_half(att).reshape(nkv, group * t, end) @ vc[:, :end]
    return y.reshape(nkv, group, t, hd).transpose(2, 0, 1, 3).reshape(t, n_head * hd)


@pytest.mark.parametrize(("t", "start", "n_head", "nkv"), [(1, 0, 4, 4), (1, 37, 9, 3), (12, 0, 9, 3), (5, 20, 8, 1)])
def test_attend_matches_numpy(t: int, start: int, n_head: int, nkv: int) -> None:
    rng = np.random.default_rng(t + start)
    hd, n_ctx = 64, 64
    kc = round_half(rng.standard_normal((nkv, n_ctx, hd)).astype(F32) * 2)
    vc = round_half(rng.standard_normal((nkv, n_ctx, hd)).astype(F32))
    kc[:, start + t :] = 1e4  # positions not yet written must never be read
    q = round_half(rng.standard_normal((t, n_head, hd)).astype(F32))
    got = attend(q, kc, vc, start, 1 / np.sqrt(hd))
    assert got.shape == (t, n_head * hd) and got.dtype == F32
    want = numpy_attention(q, kc, vc, start, 1 / np.sqrt(hd))
    # Scores are summed in another order, so a probability on a float16 rounding boundary can land
    # one float16 step (≤ 2^-11) away, moving its value row's share: rare, and bounded by it.
    diff = np.abs(got - want)
    assert np.mean(diff < 2e-5) > 0.99 and diff.max() < 2**-11 * np.abs(vc).max()


@pytest.mark.parametrize(("start", "window"), [(0, 0), (40, 0), (40, 16)])
def test_spread_attention_is_the_one_core_attention(start: int, window: int) -> None:
    """A prompt's attention may run on every core (``spread``): the pairs are handed out in
    another order, but each pair is computed by the same loop, so the results are the same bits."""
    rng = np.random.default_rng(start + window)
    t, n_head, nkv, hd, n_ctx = 24, 9, 3, 64, 96
    kc = round_half(rng.standard_normal((nkv, n_ctx, hd)).astype(F32))
    vc = round_half(rng.standard_normal((nkv, n_ctx, hd)).astype(F32))
    q = round_half(rng.standard_normal((t, n_head, hd)).astype(F32))
    alone = attend(q, kc, vc, start, 0.125, window)
    spread = attend(q, kc, vc, start, 0.125, window, spread=True)
    assert np.array_equal(alone.view(np.uint32), spread.view(np.uint32))
