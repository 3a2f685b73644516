"""Perplexity as llama.cpp's ``llama-perplexity`` computes it, so the numbers compare:

the whole text is tokenized once (BOS added if the model adds one); it is cut into
``len // n_ctx`` chunks of ``n_ctx`` tokens, each evaluated from an empty cache with its first
token replaced by BOS (if the model uses one); only the second half of each chunk is scored —
the negative log-likelihood of token j+1 given tokens ..j for j from n_ctx/2 to n_ctx-2 — so
every scored token has at least n_ctx/2 tokens of context. PPL = exp(mean NLL).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from llamashare.errors import InferenceError
from llamashare.infer.model import Llama
from llamashare.infer.tokenizer import GGUFTokenizer


@dataclass(frozen=True)
class Perplexity:
    ppl: float
    stderr: float  # of the PPL, from the spread of per-token NLLs (llama.cpp's ± figure)
    chunks: int
    scored: int  # tokens scored
    n_ctx: int


def token_nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """-log softmax(logits)[target] per row, in float64."""
    z = logits.astype(np.float64)
    m = z.max(axis=1, keepdims=True)
    logsum = np.log(np.exp(z - m).sum(axis=1)) + m[:, 0]
    return logsum - z[np.arange(len(targets)), targets]


def perplexity(
    model: Llama, tok: GGUFTokenizer, text: str, n_ctx: int, progress: Callable[[int, int, float], None] | None = None
) -> Perplexity:
    """``progress(chunk, n_chunks, ppl so far)`` is called after each chunk."""
    if n_ctx < 4 or n_ctx > model.n_ctx:
        raise InferenceError(f"perplexity context must be 4..{model.n_ctx} tokens (got {n_ctx})")
    tokens = tok.encode(text, add_special=True, parse_special=False)
    if len(tokens) < 2 * n_ctx:
        raise InferenceError(
            f"the text is {len(tokens)} tokens; perplexity with a context of {n_ctx} needs at "
            f"least {2 * n_ctx} (more text or a smaller --ctx)"
        )
    n_chunks = len(tokens) // n_ctx
    first = n_ctx // 2
    nll: list[np.ndarray] = []
    for c in range(n_chunks):
        chunk = tokens[c * n_ctx : (c + 1) * n_ctx]
        if tok.add_bos and tok.bos is not None:
            chunk = [tok.bos, *chunk[1:]]
        model.reset()
        logits = model.forward(chunk, logits_from=first)[:-1]  # predictions for tokens first+1 ..
        targets = np.asarray(tokens[c * n_ctx + first + 1 : (c + 1) * n_ctx])
        nll.append(token_nll(logits, targets))
        if progress:
            progress(c + 1, n_chunks, math.exp(np.concatenate(nll).mean()))
    model.reset()
    all_nll = np.concatenate(nll)
    mean = float(all_nll.mean())
    spread = float(np.sqrt(max(float((all_nll**2).mean()) - mean**2, 0.0) / max(len(all_nll) - 1, 1)))
    ppl = math.exp(mean)
    return Perplexity(ppl, ppl * spread, n_chunks, len(all_nll), n_ctx)
