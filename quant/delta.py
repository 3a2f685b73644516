"""Delta weights (Vicuna style): a release that holds ``target - base`` instead of the target.

Publishers share deltas when the base model's license forbids redistributing it; users who have
the base add the two back. Both directions work tensor by tensor, in float32, so only a few
tensors are in memory at once. When the target's vocabulary is larger than the base's (Vicuna's
32001 rows against LLaMA's 32000: one added pad token), the base's embedding and output matrices
get zero rows at the end first; any other shape difference is an error naming the tensor.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from llamashare.errors import CheckpointError, OutputExistsError
from llamashare.quant import safetensors_io
from llamashare.quant.checkpoint import Tensor, open_checkpoint, read_json

#: Tensors whose first axis is the vocabulary (Hugging Face and Meta names).
VOCAB_TENSORS = ("model.embed_tokens.weight", "lm_head.weight", "tok_embeddings.weight", "output.weight")


def check_shapes(name: str, base: Tensor, target_shape: tuple[int, ...]) -> None:
    """Same shape, or the base is short of rows on a vocabulary matrix (zero-extended then)."""
    if base.shape == target_shape:
        return
    if (
        name in VOCAB_TENSORS
        and len(base.shape) == 2
        and base.shape[1] == target_shape[1]
        and base.shape[0] < target_shape[0]
    ):
        return
    raise CheckpointError(
        f"tensor {name}: the delta has shape {list(target_shape)} but the base has {list(base.shape)}"
    )


def base_rows(base: Tensor, start: int, stop: int, width: tuple[int, ...]) -> np.ndarray:
    """Rows [start, stop) of the base as float32; rows past its end are zeros."""
    if not base.shape:
        return base.load_f32()
    have = min(stop, base.shape[0])
    out = np.zeros((stop - start, *width), np.float32)
    if have > start:
        out[: have - start] = base.rows_f32(start, have)
    return out


def apply_delta(base: Tensor, delta: Tensor, start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) of target = base + delta, in float32."""
    if not delta.shape:
        return base.load_f32() + delta.load_f32()
    return base_rows(base, start, stop, delta.shape[1:]) + delta.rows_f32(start, stop)


def make_delta(
    target: Path, base: Path, out: Path, force: bool = False, on_tensor: Callable[[str], None] | None = None
) -> int:
    """Write ``out/`` as a Hugging Face folder holding ``target - base`` (in the target's dtype,
    one safetensors file per target shard) plus the target's config and tokenizer files.
    Returns the number of tensors. The folder is built as ``out.partial`` and renamed at the end."""
    if out.exists() and not force:
        raise OutputExistsError(out)
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    with open_checkpoint(target) as t, open_checkpoint(base) as b:
        if t.layout != "hf":
            raise CheckpointError("delta make needs a Hugging Face (safetensors) target", target)
        missing = sorted(set(t.tensors) - set(b.tensors))
        if missing:
            raise CheckpointError(f"tensor {missing[0]} of the target is not in the base", base)
        for name, tt in t.tensors.items():
            check_shapes(name, b.tensors[name], tt.shape)
        shards: dict[str, list[str]] = {}
        index_path = target / "model.safetensors.index.json"
        if index_path.is_file():
            for name, shard in read_json(index_path)["weight_map"].items():
                shards.setdefault(shard, []).append(name)
        else:
            shards = {"model.safetensors": list(t.tensors)}
        for shard, names in shards.items():

            def producer(name: str) -> Callable[[], np.ndarray]:
                def run() -> np.ndarray:
                    if on_tensor:
                        on_tensor(name)
                    tt = t.tensors[name]
                    rows = tt.shape[0] if tt.shape else 1
                    diff = tt.load_f32() - base_rows(b.tensors[name], 0, rows, tt.shape[1:])
                    return safetensors_io.float32_to_bf16(diff) if tt.dtype == "BF16" else diff

                return run

            safetensors_io.write(
                partial / shard,
                [(n, t.tensors[n].dtype, t.tensors[n].shape, producer(n)) for n in names],
                metadata={"format": "pt", "llamashare": "delta"},
            )
        for f in sorted(target.iterdir()):
            if f.is_file() and not f.name.endswith(".safetensors"):
                shutil.copy2(f, partial / f.name)
        count = len(t.tensors)
    if out.exists():
        shutil.rmtree(out)
    partial.rename(out)
    return count
