"""A LLaMA-family GGUF opened for inference: hyperparameters from the metadata, tensors as views
of the memory-mapped file.

The header comes from quant/gguf_file.py (struct-parsed, no per-value NumPy objects) rather than
gguf-py's ``GGUFReader``, which takes seconds to open a 49k-token vocabulary; everything is
checked here, before any weight is touched, so a wrong file fails in one line at start-up.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llamashare.errors import InferenceError
from llamashare.quant.gguf_file import GGUFHeader, TensorInfo, read_header
from llamashare.quant.qtype import QuantType, by_ggml

#: Architectures whose GGUF tensors and graph are LLaMA's (llama.cpp's ``LLM_ARCH_LLAMA``).
ARCHITECTURES = ("llama",)


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

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


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
        arch = self.meta("general.architecture")
        if arch not in ARCHITECTURES:
            raise self._fail(f"architecture {arch!r} is not supported; llamashare runs: {', '.join(ARCHITECTURES)}")
        if self.meta(f"{arch}.expert_count", 0):
            raise self._fail("is a mixture-of-experts model; llamashare runs dense LLaMA-family models only")

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
        if n_embd % n_head or n_head % n_head_kv:
            raise self._fail(f"{n_head} heads ({n_head_kv} for keys/values) do not divide a width of {n_embd}")
        head_dim = n_embd // n_head
        if self.meta(f"{arch}.rope.dimension_count", head_dim) != head_dim:
            raise self._fail("rotary embeddings over part of a head are not supported")
        for key in ("attention.key_length", "attention.value_length"):
            if self.meta(f"{arch}.{key}", head_dim) != head_dim:
                raise self._fail(f"{arch}.{key} differs from the head size {head_dim}; not supported")
        scaling = self.meta(f"{arch}.rope.scaling.type", "none")
        factor = number("rope.scaling.factor", 0.0, zero_ok=True)
        if scaling not in ("none", "linear") and factor not in (0.0, 1.0):
            raise self._fail(f"rope scaling {_show(scaling)} is not supported (only linear)")
        n_layer = count("block_count")
        if 9 * n_layer > len(self.tensors):  # before anything is sized by it: a damaged count is not a model
            raise self._fail(f"metadata says {n_layer} layers, but the file has only {len(self.tensors)} tensors")
        tokens = self.meta("tokenizer.ggml.tokens")
        n_vocab = len(tokens) if isinstance(tokens, list) else count("vocab_size")
        return Config(
            n_vocab=n_vocab,
            n_embd=n_embd,
            n_layer=n_layer,
            n_ff=count("feed_forward_length"),
            n_head=n_head,
            n_head_kv=n_head_kv,
            rms_eps=number("attention.layer_norm_rms_epsilon", None),
            rope_theta=number("rope.freq_base", 10000.0),
            rope_freq_scale=1.0 / factor if scaling == "linear" and factor > 0 else 1.0,
            n_ctx_train=count("context_length", 2048),
        )

    def _check_tensors(self) -> None:
        c = self.config
        kv = c.n_head_kv * c.head_dim
        want = {"token_embd.weight": (c.n_embd, c.n_vocab), "output_norm.weight": (c.n_embd,)}
        for i in range(c.n_layer):
            want |= {
                f"blk.{i}.attn_norm.weight": (c.n_embd,),
                f"blk.{i}.attn_q.weight": (c.n_embd, c.n_embd),
                f"blk.{i}.attn_k.weight": (c.n_embd, kv),
                f"blk.{i}.attn_v.weight": (c.n_embd, kv),
                f"blk.{i}.attn_output.weight": (c.n_embd, c.n_embd),
                f"blk.{i}.ffn_norm.weight": (c.n_embd,),
                f"blk.{i}.ffn_gate.weight": (c.n_embd, c.n_ff),
                f"blk.{i}.ffn_up.weight": (c.n_embd, c.n_ff),
                f"blk.{i}.ffn_down.weight": (c.n_ff, c.n_embd),
            }
        if "output.weight" in self.tensors:
            want["output.weight"] = (c.n_embd, c.n_vocab)
        if "rope_freqs.weight" in self.tensors:
            want["rope_freqs.weight"] = (c.head_dim // 2,)
        size = len(self.header.data)
        for name, shape in want.items():
            t = self.tensors.get(name)
            if t is None:
                raise self._fail(f"tensor {name} is missing")
            if t.ne != shape:
                raise self._fail(f"tensor {name} has shape {list(t.ne)}, expected {list(shape)}")
            qtype = self.qtype(name)  # refuses unsupported types by name
            end = self.header.data_start + t.offset + qtype.row_bytes(t.ne[0]) * int(np.prod(t.ne[1:]))
            if end > size:
                raise self._fail(
                    f"is truncated: tensor {name} ends at byte {end}, the file has {size} (incomplete download?)"
                )

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
