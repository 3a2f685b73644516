"""The decoder forward pass of every supported family: one page to read, top to bottom.

    x = embedding[tokens]                   (· sqrt(n_embd): Gemma)
    for each layer:
        h = rms_norm(x) * attn_norm
        q, k, v = h Wq + bq, h Wk + bk, h Wv + bv   (one fused Wqkv: Phi-3; biases: Qwen2)
        q, k = rms_norm per head (Qwen3, Gemma 3)
        q, k = rope(q), rope(k)             (pairs (2i, 2i+1) for LLaMA, (i, i + d/2) for the rest;
                                             sliding-window layers have their own rope base)
        a = attention(q, cache) Wo          (causal, grouped-query; the last n_swa positions
                                             only in sliding-window layers; scores soft-capped:
                                             Gemma 2)
        x += a                              (a through rms_norm * attn_post_norm first: Gemma)
        h = rms_norm(x) * ffn_norm
        x += act(h Wgate) · (h Wup) Wdown   (act = silu, or tanh-GELU for Gemma; gate and up
                                             fused into one matrix: Phi-3; post-norm: Gemma)
    logits = rms_norm(x) * output_norm  Wout   (cap · tanh(logits / cap): Gemma 2)

Which switches a family sets is families.py; this file has one place per difference.

Prompt processing passes all its tokens through each matrix at once (matrix × matrix), generation
one token (matrix × vector, on the quantized blocks: weights.py). The arithmetic is NumPy, except
where NumPy's per-call cost dominated a single token: the block kernels, activation rounding
and attention are compiled loops (kernels.py, activations.py, attention.py).
Where llama.cpp rounds an intermediate, this does too, so the two
agree to float32 summation order: activations entering a matrix product (activations.py), the
key/value cache (float16 by default in llama.cpp), queries and attention weights entering the
float16 cache products. RoPE angles are built the way ggml builds them, by repeated float32
multiplication.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import numpy as np
from numba import njit, prange

from llamashare.errors import InferenceError
from llamashare.infer.activations import PARALLEL_ROWS, round_half
from llamashare.infer.attention import attend
from llamashare.infer.model_file import Config, ModelFile
from llamashare.infer.simd import through_half
from llamashare.infer.weights import Blocks, Dense, Matrix, Streamed, block_kernel, project

F32 = np.float32
#: Context size when none is asked for (capped by the model's training context).
DEFAULT_CTX = 4096


@dataclass
class Layer:
    attn_norm: np.ndarray
    wq: Matrix | None  # None where q, k and v come from one fused matrix
    wk: Matrix | None
    wv: Matrix | None
    wqkv: Matrix | None
    biases: tuple[np.ndarray, np.ndarray, np.ndarray] | None  # of q, k, v
    wo: Matrix
    ffn_norm: np.ndarray
    w_gate: Matrix | None  # None where w_up holds gate and up (gate first)
    w_up: Matrix
    w_down: Matrix
    q_norm: np.ndarray | None = None
    k_norm: np.ndarray | None = None
    attn_post_norm: np.ndarray | None = None
    ffn_post_norm: np.ndarray | None = None
    window: int = 0  # sliding window in positions; 0: attends to everything before it
    rope: int = 0  # which rope table (sliding layers may have their own base)

    def matrices(self) -> list[Matrix]:
        found = (self.wq, self.wk, self.wv, self.wqkv, self.wo, self.w_gate, self.w_up, self.w_down)
        return [m for m in found if m is not None]


# rms_norm and swiglu are loops, compiled: as NumPy expressions they were 9 and 4 calls per use,
# whose overhead (not their arithmetic) cost a generated token 1.5 ms of its ~14.
@njit(cache=True)
def _rms_norm(x, weight, eps, out):  # type: ignore[no-untyped-def]
    for r in range(x.shape[0]):
        squares = 0.0
        for i in range(x.shape[1]):
            squares += x[r, i] * x[r, i]  # float32 squares added in double, as ggml adds them
        scale = F32(1) / np.sqrt(F32(squares / x.shape[1]) + eps)
        for i in range(x.shape[1]):
            out[r, i] = x[r, i] * scale * weight[i]


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """x / sqrt(mean(x²) + eps) · weight, row by row. Always called on a C-contiguous array, so
    the compiled loop has one signature (another layout would be compiled anew on first use)."""
    x = np.ascontiguousarray(x, dtype=F32)
    out = np.empty_like(x)
    _rms_norm(x, weight, F32(eps), out)
    return out


@njit(cache=True)
def _swiglu(gate, up, out):  # type: ignore[no-untyped-def]
    for i in range(gate.shape[0]):
        out[i] = gate[i] / (F32(1) + np.exp(-gate[i])) * up[i]


@njit(parallel=True, cache=True)
def _swiglu_parallel(gate, up, out):  # type: ignore[no-untyped-def]
    for i in prange(gate.shape[0]):
        out[i] = gate[i] / (F32(1) + np.exp(-gate[i])) * up[i]


def swiglu(gate: np.ndarray, up: np.ndarray, spread: bool = False) -> np.ndarray:
    """silu(gate) · up, silu(g) = g / (1 + e^-g). ``spread``: on every core (a prompt's rows: one
    exp per value took 7% of a 128-token prefill on one core)."""
    gate, up = np.ascontiguousarray(gate, dtype=F32), np.ascontiguousarray(up, dtype=F32)
    out = np.empty_like(gate)
    kernel = _swiglu_parallel if spread else _swiglu
    kernel(gate.reshape(-1), up.reshape(-1), out.reshape(-1))
    return out


#: ggml's tanh-GELU constants (ggml-cpu/vec.h).
_GELU_A = F32(0.044715)
_SQRT_2_OVER_PI = F32(0.79788456080286535587989211986876)


@njit(cache=True)
def _gelu_halves(halves, out):  # type: ignore[no-untyped-def]
    for i in range(halves.shape[0]):
        h = halves[i]
        out[i] = through_half(F32(0.5) * h * (F32(1) + np.tanh(_SQRT_2_OVER_PI * h * (F32(1) + _GELU_A * h * h))))


@cache
def gelu_table() -> np.ndarray:
    """GELU of every float16 value, rounded to float16 (as float32): ggml's ggml_table_gelu_f16,
    computed the same way (float32 arithmetic, libm's tanhf, then float16)."""
    halves = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(F32)
    out = np.empty_like(halves)
    _gelu_halves(halves, out)
    return out


def geglu(gate: np.ndarray, up: np.ndarray, spread: bool = False) -> np.ndarray:
    """gelu(gate) · up, gelu(x) = x/2 · (1 + tanh(sqrt(2/π) (x + 0.044715 x³))), as ggml computes
    it: looked up by the float16 of x in its table, exactly 0 at or below -10, x at or above 10.
    A lookup, not a loop: a few array operations whatever the batch (tanh per value cost a
    generated Gemma token ~0.5 ms)."""
    gate = np.ascontiguousarray(gate, dtype=F32)
    with np.errstate(over="ignore"):  # beyond float16's range: taken by the >= 10 branch below
        g = gelu_table()[gate.astype(np.float16).view(np.uint16)]
    g = np.where(gate <= F32(-10), F32(0), np.where(gate >= F32(10), gate, g))
    return g * up


def rope_tables(
    head_dim: int,
    theta_base: float,
    freq_scale: float,
    n_ctx: int,
    freq_factors: np.ndarray | None = None,
    mscale: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin of shape (n_ctx, head_dim/2): angle p · theta_scale^i / factor_i · freq_scale,
    the power taken by repeated float32 multiplication as ggml_rope_cache_init does, both
    multiplied by ``mscale`` (ggml's attention factor, 1 but for Phi-3's long-context rope)."""
    half = head_dim // 2
    theta_scale = F32(theta_base) ** F32(-2.0 / head_dim)
    steps = np.full((n_ctx, half), theta_scale, dtype=F32)
    steps[:, 0] = np.arange(n_ctx, dtype=F32)
    theta: np.ndarray = np.cumprod(steps, axis=1, dtype=F32)
    if freq_factors is not None:
        theta = theta / freq_factors.astype(F32)
    theta = F32(freq_scale) * theta
    if mscale == 1.0:
        return np.cos(theta), np.sin(theta)
    return np.cos(theta) * F32(mscale), np.sin(theta) * F32(mscale)


@njit(cache=True)
def _rope_rounded(x, cos, sin, positions, neox, mult, out):  # type: ignore[no-untyped-def]
    half = x.shape[2] // 2
    for t in range(x.shape[0]):
        c, s = cos[positions[t]], sin[positions[t]]
        for h in range(x.shape[1]):
            for i in range(half):
                a, b = (i, i + half) if neox else (2 * i, 2 * i + 1)
                x0, x1 = x[t, h, a], x[t, h, b]
                out[t, h, a] = through_half((x0 * c[i] - x1 * s[i]) * mult)
                out[t, h, b] = through_half((x0 * s[i] + x1 * c[i]) * mult)


def rope_rounded(
    x: np.ndarray, cos: np.ndarray, sin: np.ndarray, positions: np.ndarray, neox: bool, mult: float = 1.0
) -> np.ndarray:
    """Rotate every head of x (T, heads, d), row t by position ``positions[t]`` of the tables
    (n_ctx, d/2), times ``mult``, through float16 (as the cache and the attention take it): pairs
    (x[i], x[i + d/2]) in ggml's NEOX mode (Hugging Face's layout), else (x[2i], x[2i+1]). One
    compiled call for what took eight NumPy expressions a head set."""
    out = np.empty(x.shape, dtype=F32)
    _rope_rounded(np.ascontiguousarray(x, dtype=F32), cos, sin, positions, neox, F32(mult), out)
    return out


def untouched_zeros(shape: tuple[int, ...]) -> np.ndarray:
    """float32 zeros whose memory is taken only where written, 4 KiB at a time (an anonymous
    memory map). NumPy asks for 2 MiB pages for big arrays, and a cache is written one position
    of every (layer, head) slab at a time, so the first token made SmolLM2's whole 4096-position
    cache resident: 180 MB of RSS for a few positions."""
    size = int(np.prod(shape)) * 4
    return np.frombuffer(mmap.mmap(-1, max(size, 1)), dtype=F32, count=size // 4).reshape(shape)


class KVCache:
    """Keys and values of every position so far, per layer: (n_kv_heads, n_ctx, head_dim) float32
    holding float16-rounded values (llama.cpp's default cache type; no conversion per step)."""

    def __init__(self, cfg: Config, n_ctx: int) -> None:
        shape = (cfg.n_layer, cfg.n_head_kv, n_ctx, cfg.head_dim)
        self.k = untouched_zeros(shape)
        self.v = untouched_zeros(shape)
        self.tokens: list[int] = []  # what the cache holds, position by position

    def __len__(self) -> int:
        return len(self.tokens)

    def truncate(self, n: int) -> None:
        """Forget positions n and later (their slots are overwritten by the next tokens)."""
        del self.tokens[n:]


def context_bytes(cfg: Config, n_ctx: int) -> int:
    """Memory a context of ``n_ctx`` positions takes: the float32 key and value caches of every
    layer, and the rotary tables with the temporaries that build them (six (n_ctx, head_dim/2)
    float32 arrays at the peak of ``rope_tables``)."""
    per_position = 2 * 4 * cfg.n_layer * cfg.n_head_kv * cfg.head_dim + 6 * 4 * (cfg.head_dim // 2)
    return n_ctx * per_position


def available_memory() -> int | None:
    """Bytes the kernel can still hand out without swapping (MemAvailable), if it says."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_context(cfg: Config, n_ctx: int) -> None:
    """Refuse a context the model was not made for or the machine cannot hold, before anything
    is allocated for it. The limit is the model's training context, or DEFAULT_CTX when that is
    larger (a short context costs little, and small test models are trained on a few hundred
    tokens); then the key/value cache must fit in the memory available."""
    if n_ctx < 1:
        raise InferenceError(f"context size must be at least 1 (got {n_ctx})")
    limit = max(cfg.n_ctx_train, DEFAULT_CTX)
    if n_ctx > limit:
        raise InferenceError(
            f"a context of {n_ctx} tokens was asked; this model was trained on {cfg.n_ctx_train}, so the limit is "
            f"{limit} tokens"
        )
    need, free = context_bytes(cfg, n_ctx), available_memory()
    if free is not None and need > free:
        raise InferenceError(
            f"a context of {n_ctx} tokens was asked; its key/value cache needs {need / 2**30:.1f} GiB and "
            f"{free / 2**30:.1f} GiB of memory are available, so the limit here is "
            f"{free // context_bytes(cfg, 1)} tokens"
        )


class Llama:
    """A loaded model of any supported family (the name is historical: LLaMA's block is the
    template the others vary): weights in memory (see weights.py) and a KV cache of ``n_ctx``
    positions."""

    def __init__(self, path: str | os.PathLike[str], n_ctx: int | None = None, weights: str = "auto") -> None:
        self.file = mf = ModelFile(path)
        self.cfg = cfg = mf.config
        fam = cfg.family
        self.n_ctx = n_ctx if n_ctx is not None else min(cfg.n_ctx_train, DEFAULT_CTX)
        check_context(cfg, self.n_ctx)
        kinds: dict[str, type[Dense] | type[Streamed]] = {"f32": Dense, "streamed": Streamed}
        kind = _auto_kind(mf) if weights == "auto" else kinds.get(weights)
        if kind is None:
            raise InferenceError(f"unknown weight representation {weights!r} (auto, f32, streamed)")

        def matrix(name: str) -> Matrix:
            raw, qtype = mf.raw(name), mf.qtype(name)
            return Blocks(raw, qtype) if block_kernel(raw, qtype) else kind(raw, qtype)

        def vector(name: str) -> np.ndarray:
            return mf.floats(name).reshape(-1)

        def optional(make: Callable[[str], np.ndarray], name: str) -> np.ndarray | None:
            return make(name) if mf.has(name) else None

        def layer(i: int) -> Layer:
            b = f"blk.{i}."
            fused = mf.has(b + "attn_qkv.weight")
            split = not fused
            biases = None
            if mf.has(b + "attn_qkv.bias"):
                qkv = vector(b + "attn_qkv.bias")
                q, kv = cfg.n_head * cfg.head_dim, cfg.n_head_kv * cfg.head_dim
                biases = (qkv[:q], qkv[q : q + kv], qkv[q + kv :])
            elif all(mf.has(b + f"attn_{x}.bias") for x in "qkv"):
                biases = (vector(b + "attn_q.bias"), vector(b + "attn_k.bias"), vector(b + "attn_v.bias"))
            return Layer(
                attn_norm=vector(b + "attn_norm.weight"),
                wq=matrix(b + "attn_q.weight") if split else None,
                wk=matrix(b + "attn_k.weight") if split else None,
                wv=matrix(b + "attn_v.weight") if split else None,
                wqkv=matrix(b + "attn_qkv.weight") if fused else None,
                biases=biases,
                wo=matrix(b + "attn_output.weight"),
                ffn_norm=vector(b + "ffn_norm.weight"),
                w_gate=None if fam.fused_gate_up else matrix(b + "ffn_gate.weight"),
                w_up=matrix(b + "ffn_up.weight"),
                w_down=matrix(b + "ffn_down.weight"),
                q_norm=optional(vector, b + "attn_q_norm.weight"),
                k_norm=optional(vector, b + "attn_k_norm.weight"),
                attn_post_norm=optional(vector, b + "post_attention_norm.weight"),
                ffn_post_norm=optional(vector, b + "post_ffw_norm.weight"),
                window=cfg.n_swa if cfg.slides(i) else 0,
                rope=1 if cfg.slides(i) else 0,
            )

        self.embd_raw, self.embd_type = mf.raw("token_embd.weight"), mf.qtype("token_embd.weight")
        self.layers = [layer(i) for i in range(cfg.n_layer)]
        self.output_norm = vector("output_norm.weight")
        tied = fam.tied_output or not mf.has("output.weight")
        self.output = matrix("token_embd.weight" if tied else "output.weight")
        # Per-frequency rope factors: Llama 3.1's rope_freqs, or Phi-3's long/short pair, the long
        # one for contexts beyond the original training length (llama_model::get_rope_factors),
        # judged as llama.cpp judges it: on the context rounded up to a multiple of 256.
        factors = optional(vector, "rope_freqs.weight")
        if factors is None:
            long = -(-self.n_ctx // 256) * 256 > cfg.n_ctx_orig
            factors = optional(vector, "rope_factors_long.weight" if long else "rope_factors_short.weight")
        global_rope = rope_tables(
            cfg.head_dim, cfg.rope_theta, cfg.rope_freq_scale, self.n_ctx, factors, cfg.rope_attn_factor
        )
        self.ropes = [global_rope]
        if any(la.rope == 1 for la in self.layers):
            self.ropes.append(
                rope_tables(cfg.head_dim, cfg.rope_theta_swa, cfg.rope_freq_scale_swa, self.n_ctx, factors)
            )
        self.act = geglu if fam.ffn_act == "gelu" else swiglu
        # A prompt's attention and activation run on every core, unless a batch product is BLAS's
        # (float32 copies): numba's threads, still spinning after a parallel loop, slowed the BLAS
        # product that followed to half speed (F16's 128-token prefill: 0.22 s -> 0.45 s).
        self.spread_batches = not any(isinstance(m, Dense) for m in self._matrices())
        #: How the matrices are kept: "blocks" (all on the file's blocks), else the representation
        #: of those without a kernel ("f32" copies or "streamed").
        self.weights_kind = (
            "blocks" if all(isinstance(m, Blocks) for m in self._matrices()) else "f32" if kind is Dense else "streamed"
        )
        self.cache = KVCache(cfg, self.n_ctx)
        self.forward([0])  # loads the compiled kernels (~0.3 s from numba's cache) now, not in the first token
        self.reset()

    def _matrices(self) -> list[Matrix]:
        return [m for layer in self.layers for m in layer.matrices()] + [self.output]

    @property
    def weight_bytes(self) -> int:
        """Memory held by weight copies (float32 ones; blocks stay in the file's pages)."""
        return sum(m.nbytes for m in self._matrices())

    @property
    def token_bytes(self) -> int:
        """Bytes of weights read to generate one token."""
        return sum(m.token_bytes for m in self._matrices())

    def forward(self, tokens: list[int], logits_from: int | None = None, cache: KVCache | None = None) -> np.ndarray:
        """Append ``tokens`` to the cache (``self.cache``, or a sequence's own) and return logits:
        (vocab,) for the last token, or (T - logits_from, vocab) for tokens ``logits_from``
        onwards of this batch."""
        cache = cache if cache is not None else self.cache
        start, t = len(cache), len(tokens)
        if start + t > self.n_ctx:
            raise InferenceError(
                f"the context holds {self.n_ctx} tokens; {start} used + {t} new do not fit (raise --ctx)"
            )
        x = self._run(tokens, [(cache, start, t)], apart=False, last=logits_from is None)
        logits = self._logits(x if logits_from is None else x[logits_from:])
        return logits[0] if logits_from is None else logits

    def decode(self, caches: list[KVCache], tokens: list[int]) -> np.ndarray:
        """One token for each of several sequences, each with its own cache: (n, vocab) logits.
        The weights are read once for all of them (the products of weights.py with ``apart``), and
        every row is computed exactly as ``forward([token], cache=its cache)`` computes it alone,
        so a sequence's output does not depend on what is decoded beside it."""
        if len(caches) != len(tokens):
            raise InferenceError("decode needs one token for each of distinct caches")
        return self._pass([(c, [t]) for c, t in zip(caches, tokens)])

    def step(self, runs: list[tuple[KVCache, list[int]]]) -> np.ndarray:
        """Several sequences advanced in one pass, each by its own tokens (a prompt's chunk or
        one generated token) in its own cache: (len(runs), vocab), the logits of each run's last
        token. Only for a model whose matrices are all on their blocks (``weights_kind`` "blocks"),
        where every row is computed as it would be alone — so a prompt's numbers do not depend on
        how it was chunked or on what else was in the pass, and a serve turn reads the weights once
        for the prompt it feeds and the streams it decodes."""
        if self.weights_kind != "blocks":
            raise InferenceError("mixed passes need every matrix on its blocks")
        return self._pass(runs)

    def _pass(self, runs: list[tuple[KVCache, list[int]]]) -> np.ndarray:
        """Each run's tokens appended to its own cache in one pass, every product ``apart`` (row
        by row where a matrix has no kernel): the logits of each run's last token."""
        if not runs or len({id(c) for c, _ in runs}) != len(runs) or not all(toks for _, toks in runs):
            raise InferenceError("a pass needs tokens for each of distinct caches")
        for c, toks in runs:
            if len(c) + len(toks) > self.n_ctx:
                raise InferenceError(f"the context holds {self.n_ctx} tokens; a sequence is full")
        tokens = [t for _, toks in runs for t in toks]
        x = self._run(tokens, [(c, len(c), len(toks)) for c, toks in runs], apart=True, last=False)
        ends = np.cumsum([len(toks) for _, toks in runs]) - 1
        return self._logits(x[ends], apart=True)

    def new_cache(self) -> KVCache:
        """An empty cache of this model's context, for one more sequence (``decode``)."""
        return KVCache(self.cfg, self.n_ctx)

    def _logits(self, x: np.ndarray, apart: bool = False) -> np.ndarray:
        cfg = self.cfg
        logits = self.output(rms_norm(x, self.output_norm, cfg.rms_eps), apart)
        if cfg.final_softcap:
            logits = np.tanh(logits * F32(1.0 / cfg.final_softcap)) * F32(cfg.final_softcap)
        return logits

    def _run(self, tokens: list[int], segments: list[tuple[KVCache, int, int]], apart: bool, last: bool) -> np.ndarray:
        """The decoder over rows of tokens, each segment (cache, first position, rows) a run of
        one sequence's consecutive positions; returns the final hidden rows (only the last if
        ``last``). Everything but rotation, the cache and attention is row by row."""
        cfg, fam = self.cfg, self.cfg.family
        t = len(tokens)
        ids = np.asarray(tokens, dtype=np.int64)
        if t == 0 or ids.min() < 0 or ids.max() >= cfg.n_vocab:
            raise InferenceError(f"token ids must be in 0..{cfg.n_vocab - 1}")
        x = self.embd_type.dequantize(self.embd_raw[ids])  # (T, C)
        if fam.scale_embeddings:
            x = x * np.sqrt(F32(cfg.n_embd))
        hd, nh, nkv = cfg.head_dim, cfg.n_head, cfg.n_head_kv
        positions = np.concatenate([np.arange(start, start + n) for _, start, n in segments])
        spread = self.spread_batches and t >= PARALLEL_ROWS
        bounds = np.cumsum([0] + [n for _, _, n in segments])
        for li, layer in enumerate(self.layers):
            h = rms_norm(x, layer.attn_norm, cfg.rms_eps)
            if layer.wqkv is not None:
                (qkv,) = project(h, layer.wqkv, apart=apart)
                q, k, v = np.split(qkv, [nh * hd, (nh + nkv) * hd], axis=1)
            else:
                assert layer.wq is not None and layer.wk is not None and layer.wv is not None
                q, k, v = project(h, layer.wq, layer.wk, layer.wv, apart=apart)
            if layer.biases is not None:
                q, k, v = q + layer.biases[0], k + layer.biases[1], v + layer.biases[2]
            q, k, v = q.reshape(t, nh, hd), k.reshape(t, nkv, hd), v.reshape(t, nkv, hd)
            if layer.q_norm is not None and layer.k_norm is not None:
                q = rms_norm(q.reshape(t * nh, hd), layer.q_norm, cfg.rms_eps).reshape(t, nh, hd)
                k = rms_norm(k.reshape(t * nkv, hd), layer.k_norm, cfg.rms_eps).reshape(t, nkv, hd)
            cos, sin = self.ropes[layer.rope]
            q_mult, scale = (cfg.attn_scale, 1.0) if fam.scale_queries else (1.0, cfg.attn_scale)
            q = rope_rounded(q, cos, sin, positions, fam.rope_neox, q_mult)
            k, v = rope_rounded(k, cos, sin, positions, fam.rope_neox), round_half(v)
            ys = []
            for (kv, start, n), lo in zip(segments, bounds):
                kv.k[li, :, start : start + n] = k[lo : lo + n].transpose(1, 0, 2)
                kv.v[li, :, start : start + n] = v[lo : lo + n].transpose(1, 0, 2)
                ys.append(
                    attend(q[lo : lo + n], kv.k[li], kv.v[li], start, scale, layer.window, cfg.attn_softcap, spread)
                )
            y = ys[0] if len(ys) == 1 else np.concatenate(ys)
            a = layer.wo(y, apart)
            if layer.attn_post_norm is not None:
                a = rms_norm(a, layer.attn_post_norm, cfg.rms_eps)
            x = x + a
            h = rms_norm(x, layer.ffn_norm, cfg.rms_eps)
            if layer.w_gate is None:
                (gate_up,) = project(h, layer.w_up, apart=apart)
                gate, up = gate_up[:, : cfg.n_ff], gate_up[:, cfg.n_ff :]
            else:
                gate, up = project(h, layer.w_gate, layer.w_up, apart=apart)
            f = layer.w_down(self.act(gate, up, spread), apart)
            if layer.ffn_post_norm is not None:
                f = rms_norm(f, layer.ffn_post_norm, cfg.rms_eps)
            x = x + f
        for (kv, _, n), lo in zip(segments, bounds):
            kv.tokens.extend(int(i) for i in ids[lo : lo + n])
        return x[-1:] if last else x

    def prefill(self, tokens: list[int], batch: int = 512) -> np.ndarray:
        """Bring the cache to exactly ``tokens`` and return the last token's logits. Reuses the
        longest prefix the cache already holds (a chat turn re-sends the whole conversation) and
        evaluates the rest ``batch`` tokens at a time, bounding the attention scratch memory."""
        if not tokens:
            raise InferenceError("nothing to evaluate: the prompt is empty")
        if len(tokens) > self.n_ctx:
            raise InferenceError(
                f"the prompt is {len(tokens)} tokens; the context holds {self.n_ctx} (raise --ctx "
                "or shorten the prompt)"
            )
        held = self.cache.tokens
        same = 0
        for a, b in zip(held, tokens[:-1]):  # at least the last token is evaluated, for its logits
            if a != b:
                break
            same += 1
        self.cache.truncate(same)
        for start in range(same, len(tokens), batch):
            logits = self.forward(tokens[start : start + batch])
        return logits

    def reset(self) -> None:
        self.cache.truncate(0)


def _auto_kind(mf: ModelFile) -> type[Dense] | type[Streamed]:
    """float32 copies of the matrices without a kernel for batches while they take under half the
    memory still available, else streamed."""
    params = 0
    for name, t in mf.tensors.items():
        if len(t.ne) == 2 and not block_kernel(mf.raw(name), mf.qtype(name)):
            params += int(np.prod(t.ne))
    try:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return Dense
    return Dense if params * 4 < available // 2 else Streamed
