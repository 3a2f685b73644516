"""A GGUF model opened for inference: hyperparameters from the metadata (read as llama.cpp reads
them for each architecture, see families.py), tensors as views of the memory-mapped file.

The header comes from quant/gguf_file.py (struct-parsed, no per-value NumPy objects) rather than
gguf-py's ``GGUFReader``, which takes seconds to open a 49k-token vocabulary; everything is
checked here, before any weight is touched, so a wrong file fails in one line at start-up.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llamashare.errors import InferenceError
from llamashare.infer.families import FAMILIES, Family, family
from llamashare.quant.gguf_file import GGUFHeader, TensorInfo, read_header
from llamashare.quant.qtype import QuantType, by_ggml

#: GGUF architectures the engine runs.
ARCHITECTURES = tuple(FAMILIES)
#: llama.cpp's Gemma 27B models scale queries by 1/sqrt(n_embd / n_head) rather than by the head
#: size (gemma_pytorch's query_pre_attn_scalar); llama.cpp knows them by their layer count.
GEMMA_27B_LAYERS = {"gemma2": 46, "gemma3": 62}


@dataclass(frozen=True)
class Config:
    """What the forward pass needs to know, read from ``{arch}.*`` metadata keys."""

    n_vocab: int
    n_embd: int
    n_layer: int
    n_ff: int
    n_head: int
    n_head_kv: int
    rms_eps: float
    rope_theta: float
    rope_freq_scale: float  # 1 / linear scaling factor
    n_ctx_train: int
    family: Family = FAMILIES["llama"]
    head_dim: int = 0  # attention.key_length; 0 means n_embd / n_head
    attn_scale: float = 0.0  # queries are scaled by this before q·k; 0 means 1/sqrt(head_dim)
    attn_softcap: float = 0.0  # score = cap · tanh(score / cap) (Gemma 2); 0: none
    final_softcap: float = 0.0  # the same on the logits (Gemma 2, some Gemma 3); 0: none
    n_swa: int = 0  # sliding window: a position sees the last n_swa positions in those layers
    swa_layers: tuple[bool, ...] = ()  # which layers slide (empty: none)
    rope_theta_swa: float = 10000.0  # rope base and scale of the sliding layers
    rope_freq_scale_swa: float = 1.0
    rope_attn_factor: float = 1.0  # cos and sin are multiplied by it (Phi-3's long-context rope)
    n_ctx_orig: int = 0  # Phi-3: a context above this uses the long rope factors

    def __post_init__(self) -> None:
        if not self.head_dim:
            object.__setattr__(self, "head_dim", self.n_embd // self.n_head)
        if not self.attn_scale:
            object.__setattr__(self, "attn_scale", 1.0 / math.sqrt(self.head_dim))
        if not self.n_ctx_orig:
            object.__setattr__(self, "n_ctx_orig", self.n_ctx_train)

    @property
    def arch(self) -> str:
        return self.family.arch

    def slides(self, layer: int) -> bool:
        """Whether ``layer`` attends to a sliding window rather than to every position."""
        return self.n_swa > 0 and bool(self.swa_layers) and self.swa_layers[layer]


def _show(value: object) -> str:
    """A metadata value for an error message, cut short."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


class ModelFile:
    """The header of ``path`` plus typed access to its tensors (nothing is read until asked)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.header: GGUFHeader = read_header(self.path)
        self.tensors: dict[str, TensorInfo] = {t.name: t for t in self.header.tensors}
        self.config = self._read_config()
        self._check_tensors()

    def meta(self, key: str, default: object = None) -> object:
        return self.header.value(key, default)

    def _fail(self, problem: str) -> InferenceError:
        return InferenceError(f"{self.path}: {problem}")

    def _read_config(self) -> Config:
        named = self.meta("general.architecture")
        fam = family(named)
        if fam is None:
            raise self._fail(
                f"architecture {_show(named)} is not supported; llamashare runs: {', '.join(ARCHITECTURES)}"
            )
        arch = fam.arch
        if self.meta(f"{arch}.expert_count", 0):
            raise self._fail(
                "is a mixture-of-experts model (it names an expert count); llamashare runs dense models only"
            )

        def count(key: str, default: int | None = None) -> int:
            """A positive integer (GGUF writes counts as integers: a float, NaN or string is damage)."""
            v = self.meta(f"{arch}.{key}", default)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                problem = "is missing" if v is None else f"is not a positive integer ({_show(v)})"
                raise self._fail(f"metadata key {arch}.{key} {problem}")
            return v

        def number(key: str, default: float | None, zero_ok: bool = False) -> float:
            """A finite number above zero (or zero, where zero means "none")."""
            v = self.meta(f"{arch}.{key}", default)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
                raise self._fail(f"metadata key {arch}.{key} is missing or not a finite number ({_show(v)})")
            if v < 0 or (v == 0 and not zero_ok):
                raise self._fail(f"metadata key {arch}.{key} is not a finite positive number ({_show(v)})")
            return float(v)

        n_embd, n_head = count("embedding_length"), count("attention.head_count")
        n_head_kv = count("attention.head_count_kv", n_head)
        if n_head % n_head_kv:
            raise self._fail(f"{n_head} query heads cannot share {n_head_kv} key/value heads evenly")
        if self.meta(f"{arch}.attention.key_length") is None and n_embd % n_head:
            raise self._fail(f"{n_head} heads do not divide a width of {n_embd}")
        head_dim = count("attention.key_length", n_embd // n_head or 1)
        if count("attention.value_length", head_dim) != head_dim:
            raise self._fail(f"{arch}.attention.value_length differs from key_length {head_dim}; not supported")
        if self.meta(f"{arch}.rope.dimension_count", head_dim) != head_dim:
            raise self._fail("rotary embeddings over part of a head are not supported")
        scaling = self.meta(f"{arch}.rope.scaling.type", "none")
        factor = number("rope.scaling.factor", 0.0, zero_ok=True)
        if scaling == "longrope" and arch == "phi3":
            scaling, factor = "none", 0.0  # the factors are tensors (rope_factors_long/short)
        if scaling not in ("none", "linear") and factor not in (0.0, 1.0):
            raise self._fail(f"rope scaling {_show(scaling)} is not supported (only linear)")
        n_layer = count("block_count")
        per_layer = 6 if fam.fused_gate_up else 9  # the fewest tensors a layer of this family has
        if per_layer * n_layer > len(self.tensors):  # before anything is sized by it: a damaged count is not a model
            raise self._fail(f"metadata says {n_layer} layers, but the file has only {len(self.tensors)} tensors")
        tokens = self.meta("tokenizer.ggml.tokens")
        n_vocab = len(tokens) if isinstance(tokens, list) else count("vocab_size")
        rope_theta = number("rope.freq_base", 10000.0)
        freq_scale = 1.0 / factor if scaling == "linear" and factor > 0 else 1.0
        n_ctx_train = count("context_length", 2048)
        n_swa, swa_layers = self._sliding_window(fam, n_layer, count)
        # llama.cpp: Gemma 2 slides with the global rope; Gemma 3's sliding layers keep base 10^4, scale 1
        swa_base, swa_scale = (rope_theta, freq_scale) if arch == "gemma2" else (10000.0, 1.0)
        attn_scale = 0.0
        if GEMMA_27B_LAYERS.get(arch) == n_layer:
            attn_scale = 1.0 / math.sqrt(n_embd // n_head)
        return Config(
            n_vocab=n_vocab,
            n_embd=n_embd,
            n_layer=n_layer,
            n_ff=count("feed_forward_length"),
            n_head=n_head,
            n_head_kv=n_head_kv,
            rms_eps=number("attention.layer_norm_rms_epsilon", None),
            rope_theta=rope_theta,
            rope_freq_scale=freq_scale,
            n_ctx_train=n_ctx_train,
            family=fam,
            head_dim=head_dim,
            attn_scale=attn_scale,
            attn_softcap=number("attn_logit_softcapping", 50.0 if fam.attn_softcap else 0.0, zero_ok=True)
            if fam.attn_softcap
            else 0.0,
            final_softcap=number("final_logit_softcapping", 30.0 if arch == "gemma2" else 0.0, zero_ok=True)
            if arch.startswith("gemma")
            else 0.0,
            n_swa=n_swa,
            swa_layers=swa_layers,
            rope_theta_swa=number("rope.freq_base_swa", swa_base),
            rope_freq_scale_swa=swa_scale,
            rope_attn_factor=number("rope.scaling.attn_factor", 1.0),
            n_ctx_orig=count("rope.scaling.original_context_length", n_ctx_train),
        )

    def _sliding_window(self, fam: Family, n_layer: int, count: Callable[..., int]) -> tuple[int, tuple[bool, ...]]:
        """(window, which layers slide) as llama.cpp sets them: Gemma 2 defaults to a 4096-token
        window, Gemma 3 slides only when the file names a window, Phi-3's window is ignored (llama.cpp
        disables it); the pattern is a per-layer array or "every n-th layer is global"."""
        key = f"{fam.arch}.attention.sliding_window"
        if not fam.swa_pattern or (fam.arch == "gemma3" and not self.meta(key)):
            return 0, ()
        n_swa = count("attention.sliding_window", 4096)
        pattern = self.meta(f"{fam.arch}.attention.sliding_window_pattern", fam.swa_pattern)
        if isinstance(pattern, list):
            if len(pattern) != n_layer or not all(isinstance(b, bool) for b in pattern):
                raise self._fail(f"{fam.arch}.attention.sliding_window_pattern is not one flag per layer")
            return n_swa, tuple(pattern)
        n = count("attention.sliding_window_pattern", fam.swa_pattern)
        return n_swa, tuple(i % n < n - 1 for i in range(n_layer))

    def _check_tensors(self) -> None:
        """Every tensor the family needs, with its shape; optional ones (biases, fused or split
        projections, rope factors) checked where present. Shapes are GGML order (row length first)."""
        c, fam, t = self.config, self.config.family, self.tensors
        q, kv = c.n_head * c.head_dim, c.n_head_kv * c.head_dim
        want = {"token_embd.weight": (c.n_embd, c.n_vocab), "output_norm.weight": (c.n_embd,)}
        optional: dict[str, tuple[int, ...]] = {"output.weight": (c.n_embd, c.n_vocab)}
        optional |= {f"rope_{kind}.weight": (c.head_dim // 2,) for kind in ("freqs", "factors_long", "factors_short")}
        for i in range(c.n_layer):
            b = f"blk.{i}."
            want |= {
                b + "attn_norm.weight": (c.n_embd,),
                b + "attn_output.weight": (q, c.n_embd),
                b + "ffn_norm.weight": (c.n_embd,),
                b + "ffn_down.weight": (c.n_ff, c.n_embd),
            }
            if b + "attn_qkv.weight" in t:
                want[b + "attn_qkv.weight"] = (c.n_embd, q + 2 * kv)
            else:
                want |= {b + "attn_q.weight": (c.n_embd, q), b + "attn_k.weight": (c.n_embd, kv)}
                want[b + "attn_v.weight"] = (c.n_embd, kv)
            optional |= {b + "attn_q.bias": (q,), b + "attn_k.bias": (kv,), b + "attn_v.bias": (kv,)}
            optional[b + "attn_qkv.bias"] = (q + 2 * kv,)
            if fam.fused_gate_up:
                want[b + "ffn_up.weight"] = (c.n_embd, 2 * c.n_ff)
            else:
                want |= {b + "ffn_gate.weight": (c.n_embd, c.n_ff), b + "ffn_up.weight": (c.n_embd, c.n_ff)}
            if fam.qk_norm:
                want |= {b + "attn_q_norm.weight": (c.head_dim,), b + "attn_k_norm.weight": (c.head_dim,)}
            if fam.post_norms:
                want |= {b + "post_attention_norm.weight": (c.n_embd,), b + "post_ffw_norm.weight": (c.n_embd,)}
        want |= {name: shape for name, shape in optional.items() if name in t}
        size = len(self.header.data)
        for name, shape in want.items():
            info = t.get(name)
            if info is None:
                raise self._fail(f"tensor {name} is missing ({fam.title} needs it)")
            if info.ne != shape:
                raise self._fail(f"tensor {name} has shape {list(info.ne)}, expected {list(shape)}")
            qtype = self.qtype(name)  # refuses unsupported types by name
            end = self.header.data_start + info.offset + qtype.row_bytes(info.ne[0]) * int(np.prod(info.ne[1:]))
            if end > size:
                raise self._fail(
                    f"is truncated: tensor {name} ends at byte {end}, the file has {size} (incomplete download?)"
                )

    def has(self, name: str) -> bool:
        return name in self.tensors

    def qtype(self, name: str) -> type[QuantType]:
        try:
            return by_ggml(self.tensors[name].ggml_type)
        except ValueError as e:  # QuantizeError: unsupported type
            raise self._fail(f"tensor {name}: {e}") from None

    def raw(self, name: str) -> np.ndarray:
        """The tensor's bytes as a read-only (rows, row_bytes) uint8 view of the memory map."""
        t = self.tensors[name]
        rows = int(np.prod(t.ne[1:]))
        row_bytes = self.qtype(name).row_bytes(t.ne[0])
        start = self.header.data_start + t.offset
        return np.frombuffer(self.header.data, np.uint8, rows * row_bytes, start).reshape(rows, row_bytes)

    def floats(self, name: str) -> np.ndarray:
        """The tensor dequantized to float32, (rows, row length)."""
        return self.qtype(name).dequantize(self.raw(name))
