"""Model checkpoints on disk, opened lazily: which layout, which hyper-parameters, which tensors.

Two layouts are detected from the files present:
- Hugging Face: ``config.json`` + ``*.safetensors`` (one file, or shards listed by
  ``model.safetensors.index.json``); tensor names like ``model.layers.0.self_attn.q_proj.weight``.
- Meta's original release: ``params.json`` + ``consolidated.NN.pth`` (one per model-parallel
  rank); names like ``layers.0.attention.wq.weight``. A tensor split across ranks is joined along
  the axis its layer was split on (column-parallel on rows, row-parallel and the embedding on
  columns); replicated ones (norms) come from rank 0.

Nothing is read until a tensor's ``load()`` is called, and then only that tensor (memory-mapped).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, TypeGuard

import numpy as np

from llamashare.errors import CheckpointError
from llamashare.quant import safetensors_io
from llamashare.quant.torch_pickle import LazyTensor, TorchArchive

#: Hugging Face architectures llamashare converts → the GGUF architecture llama.cpp runs them as.
SUPPORTED_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    "Gemma2ForCausalLM": "gemma2",
    "Gemma3ForCausalLM": "gemma3",
    "Gemma3ForConditionalGeneration": "gemma3",  # the text model; the vision tower is left out
    "Phi3ForCausalLM": "phi3",
}
#: Mixture-of-experts relatives of supported families: refused by name, not as "unknown".
MOE_ARCHITECTURES = ("Qwen2MoeForCausalLM", "Qwen3MoeForCausalLM", "MixtralForCausalLM", "PhiMoEForCausalLM")
#: Tensor name prefixes of a multimodal checkpoint's non-text parts, which convert leaves out.
VISION_PREFIXES = ("vision_tower.", "multi_modal_projector.", "model.vision_tower.", "model.multi_modal_projector.")


@dataclass(frozen=True)
class Tensor:
    """One source tensor: name, shape and dtype known up front; ``load()`` reads it."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # F32, F16, BF16, ...
    load: Callable[[], np.ndarray] = field(repr=False, compare=False)  # a fresh memory map each call
    rows: Callable[[int, int], np.ndarray] | None = field(default=None, repr=False, compare=False)

    def load_f32(self) -> np.ndarray:
        return safetensors_io.to_float32(self.load(), self.dtype)

    def rows_f32(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) as float32. Only those rows' pages are touched, and the mapping is
        dropped with the result, so converting a big matrix in row blocks keeps RSS at a block."""
        part = self.rows(start, stop) if self.rows is not None else self.load()[start:stop]
        # A new array either way (never a view that would keep the mapping alive).
        return safetensors_io.to_float32(part, "BF16") if self.dtype == "BF16" else np.array(part, dtype=np.float32)


@dataclass(frozen=True)
class LlamaParams:
    """The hyper-parameters a GGUF of a supported family records, from config.json or params.json
    (the name is historical: LLaMA's are the common core; the rest are per family)."""

    n_vocab: int
    n_embd: int
    n_layer: int
    n_ff: int
    n_head: int
    n_head_kv: int
    n_ctx: int
    norm_eps: float
    rope_theta: float = 10000.0
    head_dim: int | None = None  # defaults to n_embd // n_head
    rope_scaling: dict[str, Any] | None = None
    tied_embeddings: bool = False
    arch: str = "llama"  # GGUF general.architecture
    sliding_window: int | None = None  # Gemma 2/3, Phi-3
    swa_layers: tuple[bool, ...] | None = None  # Gemma 3: which layers slide
    attn_softcap: float | None = None  # Gemma 2
    final_softcap: float | None = None  # Gemma 2 (and Gemma 3 where set)
    rope_theta_swa: float | None = None  # Gemma 3: rope base of the sliding layers
    n_ctx_orig: int | None = None  # Phi-3: the context before long-rope scaling
    rope_long: tuple[float, ...] | None = None  # Phi-3 long-context rope factors
    rope_short: tuple[float, ...] | None = None

    @property
    def n_rot(self) -> int:
        return self.head_dim or self.n_embd // self.n_head


@dataclass
class Checkpoint:
    layout: str  # "hf" or "meta"
    root: Path
    params: LlamaParams
    tensors: dict[str, Tensor]
    config: dict[str, Any]
    closers: list[Callable[[], None]] = field(default_factory=list)
    left_out: int = 0  # tensors of a multimodal checkpoint's vision tower, not converted

    def close(self) -> None:
        for close in self.closers:
            close()

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def open_checkpoint(root: Path) -> Checkpoint:
    """Detect the layout of ``root`` and open it; a clear error for anything else."""
    if not root.is_dir():
        raise CheckpointError("is not a directory", root)
    if (root / "config.json").is_file():
        return _open_hf(root)
    if (root / "params.json").is_file():
        return _open_meta(root)
    raise CheckpointError(
        "is neither a Hugging Face model folder (config.json + *.safetensors) nor an original "
        "Meta checkpoint (params.json + consolidated.NN.pth)",
        root,
    )


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from a checkpoint file, or a CheckpointError naming the file."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot be read as JSON: {exc}", path) from None
    if not isinstance(doc, dict):
        raise CheckpointError("is not a JSON object", path)
    return doc


# --------------------------------------------------------------------------- Hugging Face


def _open_hf(root: Path) -> Checkpoint:
    config = read_json(root / "config.json")
    archs = config.get("architectures") or []
    if not isinstance(archs, list) or not all(isinstance(a, str) for a in archs):
        raise CheckpointError(f"'architectures' must be a list of names, not {_show(archs)}", root / "config.json")
    moe = [a for a in archs if a in MOE_ARCHITECTURES]
    if moe:
        raise CheckpointError(
            f"{moe[0]} is a mixture-of-experts model; llamashare converts dense models only", root / "config.json"
        )
    known = [a for a in archs if a in SUPPORTED_ARCHITECTURES]
    if not known:
        raise CheckpointError(
            f"architecture {', '.join(archs) or _show(config.get('model_type', '?'))} is not "
            f"supported; llamashare converts {', '.join(SUPPORTED_ARCHITECTURES)}",
            root / "config.json",
        )
    if isinstance(config.get("text_config"), dict):  # a multimodal model: its text part, as llama.cpp reads it
        config = {**config, **config["text_config"]}
    params = hf_params(config, root / "config.json", SUPPORTED_ARCHITECTURES[known[0]])
    index = root / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError("has no weight_map", index)
        for shard in weight_map.values():
            if not isinstance(shard, str) or "/" in shard or "\\" in shard or shard.startswith("."):
                raise CheckpointError(f"names shard {_show(shard)}, which is not a file name in the folder", index)
        shards = sorted(set(weight_map.values()))
    else:
        shards = sorted(p.name for p in root.glob("*.safetensors"))
        weight_map = None
    if not shards:
        raise CheckpointError(
            "has no *.safetensors weights (PyTorch .bin checkpoints from Hugging Face are not "
            "supported: they are unrestricted pickles; ask for safetensors)",
            root,
        )
    tensors: dict[str, Tensor] = {}
    left_out = 0
    for shard in shards:
        path = root / shard
        if not path.is_file():
            raise CheckpointError(f"shard {shard} is missing", root)
        for stored, ref in safetensors_io.read_header(path).items():
            if weight_map is not None and weight_map.get(stored) != shard:
                continue  # the index is authoritative about which shard holds a tensor
            if stored.startswith(VISION_PREFIXES):
                left_out += 1
                continue
            name = stored.replace("language_model.", "")  # a multimodal model's text part, named as a text model
            if name in tensors:  # without an index, two shards holding one tensor is ambiguous
                raise CheckpointError(f"tensor {name} is in more than one shard (also in {shard})", root)
            tensors[name] = Tensor(name, ref.shape, ref.dtype, partial(safetensors_io.load, ref))
    if weight_map is not None:
        kept = {n for n in weight_map if not n.startswith(VISION_PREFIXES)}
        missing = sorted(n for n in kept if n.replace("language_model.", "") not in tensors)
        if missing:
            raise CheckpointError(
                f"tensor {missing[0]} is listed in the index but not in {weight_map[missing[0]]}", root
            )
    check_params(params, tensors, "hf", root / "config.json")
    params = _with_tied(params, tensors, "lm_head.weight")
    return Checkpoint("hf", root, params, tensors, config, left_out=left_out)


def hf_params(config: dict[str, Any], where: Path, arch: str = "llama") -> LlamaParams:
    n_head = _positive_int(config, "num_attention_heads", where)
    extra: dict[str, Any] = {}
    if arch.startswith("gemma"):
        default_window = 4096 if arch == "gemma2" else 0
        extra["sliding_window"] = _positive_int(config, "sliding_window", where, default=default_window) or None
        extra["final_softcap"] = _positive_float(config, "final_logit_softcapping", where, 0.0, zero_is_unset=True)
        extra["final_softcap"] = extra["final_softcap"] or None
    if arch == "gemma2":
        extra["attn_softcap"] = _positive_float(config, "attn_logit_softcapping", where, 50.0)
    if arch == "gemma3":
        if config.get("attn_logit_softcapping") is not None:
            raise CheckpointError("Gemma 3 has no attention soft-capping, but attn_logit_softcapping is set", where)
        extra["swa_layers"] = _swa_layers(config, where)
        extra["rope_theta_swa"] = _positive_float(config, "rope_local_base_freq", where, 10000.0)
    if arch == "phi3":
        extra |= _phi3_rope(config, where)
    rope_default = 1_000_000.0 if arch == "gemma3" else 10000.0
    return LlamaParams(
        n_vocab=_positive_int(config, "vocab_size", where),
        n_embd=_positive_int(config, "hidden_size", where),
        n_layer=_positive_int(config, "num_hidden_layers", where),
        n_ff=_positive_int(config, "intermediate_size", where),
        n_head=n_head,
        n_head_kv=_positive_int(config, "num_key_value_heads", where, default=n_head),
        n_ctx=_positive_int(config, "max_position_embeddings", where, default=2048),
        norm_eps=_positive_float(config, "rms_norm_eps", where, 1e-6),
        rope_theta=_positive_float(config, "rope_theta", where, rope_default, zero_is_unset=True),
        head_dim=_positive_int(config, "head_dim", where, default=0) or None,
        rope_scaling=None if arch == "phi3" else rope_scaling(config.get("rope_scaling"), where),
        tied_embeddings=bool(config.get("tie_word_embeddings", arch.startswith("gemma"))),
        arch=arch,
        **extra,
    )


def _swa_layers(config: dict[str, Any], where: Path) -> tuple[bool, ...]:
    """Gemma 3's sliding layers: ``layer_types`` (newer configs) or every ``sliding_window_pattern``-th
    layer global (6 unless said)."""
    n_layer = _positive_int(config, "num_hidden_layers", where)
    types = config.get("layer_types")
    if types is not None:
        if not isinstance(types, list) or len(types) != n_layer:
            raise CheckpointError(f"layer_types must list one type per layer ({n_layer})", where)
        return tuple(t == "sliding_attention" for t in types)
    n = _positive_int(config, "sliding_window_pattern", where, default=6)
    return tuple(i % n < n - 1 for i in range(n_layer))


def _phi3_rope(config: dict[str, Any], where: Path) -> dict[str, Any]:
    """Phi-3's rope: no partial rotation (Phi-4-mini's is not supported), and for the 128k
    models the long/short per-frequency factors of ``rope_scaling`` ("longrope"/"su")."""
    if _is_number(config.get("partial_rotary_factor")) and config["partial_rotary_factor"] != 1:
        raise CheckpointError("partial rotary embeddings (partial_rotary_factor) are not supported", where)
    out: dict[str, Any] = {
        "n_ctx_orig": _positive_int(config, "original_max_position_embeddings", where, default=0) or None,
        "sliding_window": _positive_int(config, "sliding_window", where, default=0),
    }
    scaling = config.get("rope_scaling")
    if scaling is None:
        return out
    if not isinstance(scaling, dict) or scaling.get("type", scaling.get("rope_type")) not in ("longrope", "su"):
        raise CheckpointError(f"Phi-3 rope_scaling {_show(scaling)} is not supported (longrope is)", where)
    n_embd = _positive_int(config, "hidden_size", where)
    half = n_embd // _positive_int(config, "num_attention_heads", where) // 2
    for key in ("long_factor", "short_factor"):
        factors = scaling.get(key)
        if (
            not isinstance(factors, list)
            or len(factors) != half
            or not all(_is_number(f) and math.isfinite(f) and f > 0 for f in factors)
        ):
            raise CheckpointError(f"rope_scaling.{key} must be {half} positive numbers (half a head)", where)
        out["rope_long" if key == "long_factor" else "rope_short"] = tuple(float(f) for f in factors)
    if out["n_ctx_orig"] is None:
        raise CheckpointError("longrope scaling needs original_max_position_embeddings", where)
    return out


def _show(value: object) -> str:
    """A config value as the file spells it, cut short."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _positive_int(config: dict[str, Any], key: str, where: Path, default: int | None = None) -> int:
    """``config[key]``, a positive integer; ``default`` when missing or null (required if None)."""
    value = config.get(key)
    if value is None:
        if default is None:
            raise CheckpointError(f"needs {key!r} (a positive integer)", where)
        return default
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise CheckpointError(f"{key!r} must be a positive integer, not {_show(value)}", where)
    return value


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _positive_float(
    config: dict[str, Any], key: str, where: Path, default: float, zero_is_unset: bool = False
) -> float:
    """``config[key]``, a finite positive number; ``default`` when missing or null (or 0, where
    Hugging Face's own code reads 0 as unset)."""
    value = config.get(key)
    if value is None or (zero_is_unset and _is_number(value) and value == 0):
        return default
    if not _is_number(value) or not math.isfinite(value) or value <= 0:
        raise CheckpointError(f"{key!r} must be a positive number, not {_show(value)}", where)
    return float(value)


#: rope_scaling types convert writes, and the numeric fields each needs (with HF's defaults).
ROPE_SCALING: dict[str, dict[str, float | None]] = {
    "linear": {"factor": None},
    "llama3": {
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    },
}


def rope_scaling(scaling: object, where: Path) -> dict[str, Any] | None:
    """``rope_scaling`` checked: null, or an object of a supported type whose factors are
    positive numbers (linear needs its factor; llama3 takes HF's defaults for missing ones)."""
    if scaling is None:
        return None
    if not isinstance(scaling, dict):
        raise CheckpointError(f"rope_scaling must be an object or null, not {_show(scaling)}", where)
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind in (None, "default"):
        return scaling
    if not isinstance(kind, str) or kind not in ROPE_SCALING:
        raise CheckpointError(f"rope_scaling type {_show(kind)} is not supported (linear and llama3 are)", where)
    for key, default in ROPE_SCALING[kind].items():
        if default is not None:
            _positive_float(scaling, key, where, default)
        else:
            factor = scaling.get(key)
            if not _is_number(factor) or not math.isfinite(factor) or factor <= 0:
                raise CheckpointError(f"{kind} rope_scaling needs a positive {key!r}, not {_show(factor)}", where)
    if kind == "llama3" and _positive_float(scaling, "high_freq_factor", where, 4.0) <= _positive_float(
        scaling, "low_freq_factor", where, 1.0
    ):
        raise CheckpointError("llama3 rope_scaling needs high_freq_factor above low_freq_factor", where)
    return scaling


#: Where each layout keeps the tensors whose shapes fix the hyper-parameters.
_SHAPE_TENSORS = {
    "hf": (
        "model.embed_tokens.weight",
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.0.self_attn.k_proj.weight",
        "model.layers.0.mlp.gate_proj.weight",
    ),
    "meta": (
        "tok_embeddings.weight",
        "layers.0.attention.wq.weight",
        "layers.0.attention.wk.weight",
        "layers.0.feed_forward.w1.weight",
    ),
}
_LAYER = {"hf": re.compile(r"^model\.layers\.(\d+)\."), "meta": re.compile(r"^layers\.(\d+)\.")}


def check_params(params: LlamaParams, tensors: dict[str, Tensor], layout: str, where: Path) -> None:
    """The hyper-parameters against the tensors' shapes, before anything is sized by them: a
    config claiming 10^8 layers or a 3·10^7-token vocabulary fails here, in microseconds, rather
    than after building tables that large. The full per-tensor check is convert's ``plan``."""
    layers = {m[1] for name in tensors if (m := _LAYER[layout].match(name))}  # digits, kept as text
    if params.n_layer > len(layers):
        raise CheckpointError(
            f"the config says {params.n_layer} layers, but the checkpoint has tensors for {len(layers)}", where
        )
    emb, wq, wk, ff = (tensors.get(name) for name in _SHAPE_TENSORS[layout])
    want = [
        (emb, (params.n_vocab, params.n_embd), "vocabulary size × width"),
        (wq, (params.n_head * params.n_rot, params.n_embd), "heads × head size, width"),
        (wk, (params.n_head_kv * params.n_rot, params.n_embd), "key/value heads × head size, width"),
        (ff, (params.n_ff, params.n_embd), "feed-forward size × width"),
    ]
    for tensor, shape, meaning in want:
        if tensor is not None and tuple(tensor.shape) != shape:
            raise CheckpointError(
                f"tensor {tensor.name} has shape {list(tensor.shape)}, the config implies {list(shape)} ({meaning})",
                where,
            )


def _with_tied(params: LlamaParams, tensors: dict[str, Tensor], output: str) -> LlamaParams:
    """A checkpoint without an output matrix uses the embedding for it (tied), whatever the config says."""
    return replace(params, tied_embeddings=output not in tensors)


# --------------------------------------------------------------------------- Meta


_RANK_FILE = re.compile(r"^consolidated\.(\d+)\.pth$")


def meta_split_axis(name: str) -> int | None:
    """The axis Meta's model-parallel code split ``name`` along; None for replicated tensors."""
    if name.endswith("norm.weight") or name == "rope.freqs":
        return None
    if name.startswith("tok_embeddings.") or name.endswith((".attention.wo.weight", ".feed_forward.w2.weight")):
        return 1  # ParallelEmbedding and RowParallelLinear split the input dimension
    return 0  # ColumnParallelLinear (wq, wk, wv, w1, w3, output) splits the output dimension


def _open_meta(root: Path) -> Checkpoint:
    config = read_json(root / "params.json")
    ranked = sorted((int(m[1]), p) for p in root.iterdir() if (m := _RANK_FILE.match(p.name)))
    files = [p for _, p in ranked]
    if not files:
        raise CheckpointError("has params.json but no consolidated.NN.pth", root)
    ranks = [rank for rank, _ in ranked]
    if ranks != list(range(len(files))):
        raise CheckpointError(
            f"model-parallel shards must be consolidated.00 … {len(files) - 1:02d}; found ranks {ranks}", root
        )
    archives = [TorchArchive(p) for p in files]
    first = archives[0].tensors
    for a in archives[1:]:
        if set(a.tensors) != set(first):
            extra = sorted(set(a.tensors) ^ set(first))[0]
            raise CheckpointError(f"shards disagree on tensor names ({extra})", a.path)
    tensors: dict[str, Tensor] = {}
    for name, t0 in first.items():
        if name == "rope.freqs":
            continue  # recomputed by every runtime from rope_theta
        parts = [a.tensors[name] for a in archives]
        axis = meta_split_axis(name) if len(parts) > 1 else None
        shape = list(t0.shape)
        for p in parts[1:]:
            if p.dtype != t0.dtype or len(p.shape) != len(shape) or (axis is None and p.shape != t0.shape):
                raise CheckpointError(f"tensor {name}: shards disagree on its dtype or shape", root)
            if axis is not None:
                if any(p.shape[d] != shape[d] for d in range(len(shape)) if d != axis):
                    raise CheckpointError(f"tensor {name}: shard shapes do not line up on axis {axis}", root)
                shape[axis] += p.shape[axis]
        if axis is None:
            tensors[name] = Tensor(name, tuple(shape), t0.dtype, partial(_contiguous, t0))
        else:
            tensors[name] = Tensor(
                name,
                tuple(shape),
                t0.dtype,
                partial(_joined, parts, axis),
                rows=partial(_joined_rows, parts, axis),
            )
    params = meta_params(config, tensors, root)
    return Checkpoint(
        "meta", root, _with_tied(params, tensors, "output.weight"), tensors, config, closers=[a.close for a in archives]
    )


def _contiguous(t: LazyTensor) -> np.ndarray:
    return np.ascontiguousarray(t.load())


def _joined(parts: list[LazyTensor], axis: int) -> np.ndarray:
    """Shards joined along ``axis``."""
    return np.concatenate([p.load() for p in parts], axis=axis)


def _joined_rows(parts: list[LazyTensor], axis: int, start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) of shards joined along ``axis``, reading only those rows."""
    if axis == 1:
        return np.concatenate([p.load()[start:stop] for p in parts], axis=1)
    out, offset = [], 0
    for p in parts:
        n = p.shape[0]
        a, b = max(start - offset, 0), min(stop - offset, n)
        if a < b:
            out.append(np.array(p.load()[a:b]))
        offset += n
    return np.concatenate(out, axis=0)


def meta_params(config: dict[str, Any], tensors: dict[str, Tensor], root: Path) -> LlamaParams:
    where = root / "params.json"
    dim, n_layers, n_heads = (_positive_int(config, key, where) for key in ("dim", "n_layers", "n_heads"))
    emb = tensors.get("tok_embeddings.weight")
    ff = tensors.get("layers.0.feed_forward.w1.weight")
    if emb is None or ff is None or len(emb.shape) != 2 or len(ff.shape) != 2:
        raise CheckpointError(
            "has no tok_embeddings.weight or layers.0.feed_forward.w1.weight matrix: not a LLaMA checkpoint", root
        )
    eps = _positive_float(config, "norm_eps", where, 1e-6)
    # params.json has no context length. LLaMA 1 (eps 1e-6) was trained on 2048 tokens, LLaMA 2
    # (eps 1e-5) on 4096: the same rule llama.cpp's original converter used.
    n_ctx = _positive_int(config, "max_seq_len", where, default=4096 if eps == 1e-5 else 2048)
    params = LlamaParams(
        n_vocab=emb.shape[0],  # params.json says -1 in LLaMA 1; the embedding knows
        n_embd=dim,
        n_layer=n_layers,
        n_ff=ff.shape[0],
        n_head=n_heads,
        n_head_kv=_positive_int(config, "n_kv_heads", where, default=n_heads),
        n_ctx=n_ctx,
        norm_eps=eps,
        rope_theta=_positive_float(config, "rope_theta", where, 10000.0, zero_is_unset=True),
    )
    check_params(params, tensors, "meta", where)
    return params
