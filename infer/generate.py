"""The generation loop: prompt in, tokens out one at a time, with the speeds llama.cpp reports."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from llamashare.infer.model import Llama
from llamashare.infer.sampling import Sampler
from llamashare.infer.tokenizer import GGUFTokenizer


@dataclass
class Stats:
    prompt_tokens: int = 0
    prompt_seconds: float = 0.0
    generated: list[int] = field(default_factory=list)
    gen_seconds: float = 0.0
    stop: str = ""  # "eog" (end-of-generation token), "limit" (-n reached), "context" (full)

    @staticmethod
    def rate(n: int, seconds: float) -> float:
        return n / seconds if seconds > 0 else float("nan")

    def summary(self) -> str:
        n = len(self.generated)
        return (
            f"prompt: {self.prompt_tokens} tokens, {self.rate(self.prompt_tokens, self.prompt_seconds):.1f} tok/s · "
            f"generation: {n} tokens, {self.rate(n, self.gen_seconds):.1f} tok/s"
        )


def generate(
    model: Llama,
    tok: GGUFTokenizer,
    prompt: list[int],
    n_predict: int,
    sampler: Sampler,
    stats: Stats | None = None,
    ignore_eos: bool = False,
) -> Iterator[tuple[int, str]]:
    """Yield (token id, its text) for each generated token, stopping at an end-of-generation token,
    after ``n_predict`` tokens (< 0: until the context is full) or when the context is full.
    The end-of-generation token itself is not yielded (``ignore_eos``: never stop at one — it is
    banned instead). ``stats`` is filled in as it goes."""
    stats = stats if stats is not None else Stats()
    t0 = time.perf_counter()
    logits = model.prefill(prompt)
    stats.prompt_tokens, stats.prompt_seconds = len(prompt), time.perf_counter() - t0
    stream = tok.streamer()
    t0 = time.perf_counter()
    try:
        while True:
            if 0 <= n_predict <= len(stats.generated):
                stats.stop = "limit"
                break
            if ignore_eos:
                logits[list(tok.eog)] = -np.inf
            nxt = sampler(logits, model.cache.tokens)  # the cache holds prompt + generated so far
            if nxt in tok.eog:
                stats.stop = "eog"
                break
            stats.generated.append(nxt)
            yield nxt, stream.push(nxt)
            if len(model.cache) >= model.n_ctx:
                stats.stop = "context"
                break
            logits = model.forward([nxt])
        tail = stream.flush()
        if tail:
            yield -1, tail
    finally:
        stats.gen_seconds = time.perf_counter() - t0
