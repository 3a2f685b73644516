"""Checkpoint → GGUF for every supported family, one tensor in memory at a time.

The output is what llama.cpp's own converter writes for the architecture (``llama``, ``qwen2``,
``qwen3``, ``gemma2``, ``gemma3``, ``phi3``): GGUF tensor names (gguf-py's name map per
architecture knows the Hugging Face and the Meta names), the metadata keys ``{arch}.*`` and
``general.*``, the tokenizer, and the tensors transformed as llama.cpp expects:
- LLaMA's Q/K weights in GGML's interleaved rotary layout. Hugging Face checkpoints store Q and K
  with each head's rotary pairs split into halves; Meta's and GGML's keep pairs interleaved, so HF
  Q/K rows are permuted back (per KV head for K, which matters with grouped-query attention). The
  other families rotate in Hugging Face's layout ("NEOX" rope) and are left as they are.
- Gemma's RMS norms scale by (1 + w): the 1 is folded into the stored weights.
- Phi-3's fused projections (``qkv_proj``, ``gate_up_proj``) stay fused (``attn_qkv``, a
  double-width ``ffn_up``); its long/short rope factors become tensors.
Norm vectors and biases stay F32, matrices take ``outtype``.

Writing streams: the header and tensor table first (shapes are known from the file headers),
then each tensor is read (memory-mapped), transformed and appended. The output goes to
``OUT.partial`` and is renamed over nothing only when complete, so a crash or a bad tensor
halfway leaves no file that looks finished; an existing OUT is never replaced without ``force``.
With ``base``, the source is a delta and every tensor is ``base + delta`` (see quant.delta).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import gguf
import numpy as np

from llamashare.errors import CheckpointError, OutputExistsError
from llamashare.fsio import check_free_space, partial_output
from llamashare.quant import safetensors_io
from llamashare.quant.checkpoint import Checkpoint, LlamaParams, Tensor, open_checkpoint
from llamashare.quant.delta import apply_delta, check_shapes
from llamashare.quant.vocab import Vocab, add_vocab, read_vocab

OUTTYPES = {
    "f32": (gguf.GGMLQuantizationType.F32, gguf.LlamaFileType.ALL_F32),
    "f16": (gguf.GGMLQuantizationType.F16, gguf.LlamaFileType.MOSTLY_F16),
    "bf16": (gguf.GGMLQuantizationType.BF16, gguf.LlamaFileType.MOSTLY_BF16),
}
WEIGHT_DTYPES = ("F32", "F16", "BF16", "F64")
#: Source tensors that carry no weights (precomputed rotary tables some exports include).
IGNORED_SUFFIXES = ("rotary_emb.inv_freq", "rope.freqs")

Progress = Callable[[int], None]
#: Rows are converted in blocks of about this many bytes (float32), so peak memory is a block,
#: not the largest tensor (a 7B model's embedding is 500 MB in float32).
BLOCK_BYTES = 2 * 1024 * 1024


@dataclass(frozen=True)
class OutTensor:
    name: str  # GGUF name
    shape: tuple[int, ...]  # NumPy order (rows, cols)
    qtype: gguf.GGMLQuantizationType
    blocks: Callable[[], Iterator[np.ndarray]]  # float32 row blocks, already in GGML layout

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * (2 if self.qtype != gguf.GGMLQuantizationType.F32 else 4)


def permute_rotary(w: np.ndarray, n_head: int) -> np.ndarray:
    """Hugging Face Q/K rows → GGML's interleaved rotary layout, head by head.

    Within each head HF orders rows [x0 … x(d/2-1), y0 … y(d/2-1)]; GGML wants [x0, y0, x1, y1, …].
    """
    rows = w.shape[0]
    return (
        w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
    )  # (heads, 2, d/2, cols) → (heads, d/2, 2, cols)


def llama3_rope_factors(params: LlamaParams) -> np.ndarray | None:
    """Per-frequency rope scaling of Llama 3.1-style ``rope_scaling`` (rope_type "llama3"),
    written as the ``rope_freqs.weight`` tensor llama.cpp reads; None for other models."""
    rs = params.rope_scaling or {}
    if rs.get("rope_type", rs.get("type")) != "llama3":
        return None
    factor = float(rs.get("factor", 8.0))
    low, high = float(rs.get("low_freq_factor", 1.0)), float(rs.get("high_freq_factor", 4.0))
    old_ctx = float(rs.get("original_max_position_embeddings", 8192))
    dim = params.n_rot
    freqs = 1.0 / params.rope_theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    wavelen = 2 * math.pi / freqs
    smooth = (old_ctx / wavelen - low) / (high - low)
    factors = np.where(
        wavelen < old_ctx / high, 1.0, np.where(wavelen > old_ctx / low, factor, 1.0 / ((1 - smooth) / factor + smooth))
    )
    return factors.astype(np.float32)


def gguf_arch(arch: str) -> gguf.MODEL_ARCH:
    return {name: key for key, name in gguf.MODEL_ARCH_NAMES.items()}[arch]


def plan(ckpt: Checkpoint, outtype: str, base: Checkpoint | None = None) -> list[OutTensor]:
    """Every output tensor, in llama.cpp's order, without reading any weights yet."""
    p = ckpt.params
    qtype = OUTTYPES[outtype][0]
    names = gguf.get_tensor_name_map(gguf_arch(p.arch), p.n_layer)
    gemma = p.arch.startswith("gemma")
    out: list[OutTensor] = []
    for src in ckpt.tensors.values():
        if src.name.endswith(IGNORED_SUFFIXES) or (gemma and src.name == "lm_head.weight"):
            continue  # Gemma's output is its embedding; llama.cpp's converter drops a stray lm_head
        if src.dtype not in WEIGHT_DTYPES:
            raise CheckpointError(
                f"tensor {src.name} has dtype {src.dtype}; weights must be one of {', '.join(WEIGHT_DTYPES)}", ckpt.root
            )
        name = names.get_name(src.name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise CheckpointError(f"tensor {src.name} has no place in a {p.arch} GGUF (unexpected tensor)", ckpt.root)
        rotary_heads = None
        if p.arch == "llama" and ckpt.layout == "hf" and name.endswith(("attn_q.weight", "attn_k.weight")):
            rotary_heads = p.n_head if name.endswith("attn_q.weight") else p.n_head_kv
        shift = 1.0 if gemma and name.endswith("norm.weight") else 0.0
        blocks = _blocks(src, base.tensors.get(src.name) if base else None, rotary_heads, base, shift)
        shape = src.shape  # with a delta, the delta's shape wins (a larger vocabulary extends the base)
        out.append(OutTensor(name, shape, qtype if len(shape) > 1 else gguf.GGMLQuantizationType.F32, blocks))
    _check_complete(out, p, ckpt.root)  # before anything is sized by the config (the rope table by its head size)
    extra = {"rope_freqs.weight": llama3_rope_factors(p)}
    if p.rope_long is not None and p.rope_short is not None:
        extra["rope_factors_long.weight"] = np.array(p.rope_long, dtype=np.float32)
        extra["rope_factors_short.weight"] = np.array(p.rope_short, dtype=np.float32)
    for name, table in extra.items():
        if table is not None:
            out.append(OutTensor(name, table.shape, gguf.GGMLQuantizationType.F32, partial(iter, [table])))
    first = ("token_embd.weight", "rope_freqs.weight", "rope_factors_long.weight", "rope_factors_short.weight")
    order = {n: i for i, n in enumerate(first)}
    return sorted(
        out,
        key=lambda t: (
            order.get(t.name, len(first)),
            _block(t.name),
            t.name == "output_norm.weight",
            t.name == "output.weight",
        ),
    )


def _block(name: str) -> int:
    return int(name.split(".")[1]) if name.startswith("blk.") else 1 << 30


def _blocks(
    src: Tensor, base_t: Tensor | None, rotary_heads: int | None, base: Checkpoint | None, shift: float = 0.0
) -> Callable[[], Iterator[np.ndarray]]:
    """Row blocks of the output tensor: read, add the base (deltas), permute Q/K rows per head,
    add ``shift`` (Gemma's norms)."""
    if base is not None:
        if base_t is None:
            raise CheckpointError(f"delta tensor {src.name} is not in the base model", base.root)
        check_shapes(src.name, base_t, src.shape)
    if len(src.shape) < 2:

        def vector() -> Iterator[np.ndarray]:
            v = apply_delta(base_t, src, 0, src.shape[0] if src.shape else 1) if base_t else src.load_f32()
            yield v + np.float32(shift) if shift else v

        return vector
    rows, width = src.shape[0], math.prod(src.shape[1:])
    step = max(1, BLOCK_BYTES // (4 * max(1, width)))  # a zero width fails in _check_complete
    head = max(1, rows // rotary_heads) if rotary_heads else 1  # a wrong row count fails in _check_complete
    step = max(head, step // head * head)  # whole heads per block: the permutation is per head

    def gen() -> Iterator[np.ndarray]:
        for start in range(0, rows, step):
            stop = min(rows, start + step)
            block = apply_delta(base_t, src, start, stop) if base_t is not None else src.rows_f32(start, stop)
            yield permute_rotary(block, (stop - start) // head) if rotary_heads else block

    return gen


def expected_tensors(p: LlamaParams, have: set[str]) -> dict[str, tuple[int, ...]]:
    """Every tensor a GGUF of this family and shape holds (NumPy order: rows, cols), taking the
    choices the checkpoint made where llama.cpp accepts either (fused or split Q/K/V, biases,
    an output matrix or a tied embedding)."""
    hd, fused_ffn = p.n_rot, p.arch == "phi3"
    q, kv = p.n_head * hd, p.n_head_kv * hd
    want: dict[str, tuple[int, ...]] = {"token_embd.weight": (p.n_vocab, p.n_embd), "output_norm.weight": (p.n_embd,)}
    if not p.tied_embeddings:
        want["output.weight"] = (p.n_vocab, p.n_embd)
    for name in ("rope_freqs.weight", "rope_factors_long.weight", "rope_factors_short.weight"):
        if name in have:
            want[name] = (hd // 2,)
    for i in range(p.n_layer):
        b = f"blk.{i}."
        want |= {
            b + "attn_norm.weight": (p.n_embd,),
            b + "attn_output.weight": (p.n_embd, q),
            b + "ffn_norm.weight": (p.n_embd,),
            b + "ffn_down.weight": (p.n_embd, p.n_ff),
        }
        if b + "attn_qkv.weight" in have:
            want[b + "attn_qkv.weight"] = (q + 2 * kv, p.n_embd)
        else:
            want |= {b + "attn_q.weight": (q, p.n_embd), b + "attn_k.weight": (kv, p.n_embd)}
            want[b + "attn_v.weight"] = (kv, p.n_embd)
        for part, rows in (("q", q), ("k", kv), ("v", kv), ("qkv", q + 2 * kv)):
            if f"{b}attn_{part}.bias" in have:
                want[f"{b}attn_{part}.bias"] = (rows,)
        if fused_ffn:
            want[b + "ffn_up.weight"] = (2 * p.n_ff, p.n_embd)
        else:
            want |= {b + "ffn_gate.weight": (p.n_ff, p.n_embd), b + "ffn_up.weight": (p.n_ff, p.n_embd)}
        if p.arch in ("qwen3", "gemma3"):
            want |= {b + "attn_q_norm.weight": (hd,), b + "attn_k_norm.weight": (hd,)}
        if p.arch.startswith("gemma"):
            want |= {b + "post_attention_norm.weight": (p.n_embd,), b + "post_ffw_norm.weight": (p.n_embd,)}
    return want


def _check_complete(out: list[OutTensor], p: LlamaParams, root: Path) -> None:
    have = {t.name: t.shape for t in out}
    expected = expected_tensors(p, set(have) | {"rope_freqs.weight"})
    for name, shape in expected.items():
        if name not in have:
            if name == "rope_freqs.weight":
                continue
            raise CheckpointError(f"has no tensor for {name}: incomplete checkpoint (a {p.arch} model needs it)", root)
        if tuple(have[name]) != shape:
            raise CheckpointError(
                f"tensor for {name} has shape {list(have[name])}, the config implies {list(shape)}", root
            )
    extra = sorted(set(have) - set(expected))
    if extra:
        raise CheckpointError(f"tensor for {extra[0]} does not fit a {p.n_layer}-layer {p.arch} model", root)


_CAST_POOL: ThreadPoolExecutor | None = None


def _cast(array: np.ndarray, qtype: gguf.GGMLQuantizationType) -> np.ndarray:
    """A block in the output type. F32 and F16 blocks are cast on every core, a slice of rows
    each (NumPy lets go of the GIL while it casts): on one, the cast took a third of a
    conversion's time."""
    global _CAST_POOL
    if qtype not in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
        return safetensors_io.float32_to_bf16(array)
    out = np.empty(array.shape, dtype=np.float32 if qtype == gguf.GGMLQuantizationType.F32 else np.float16)
    cores = os.cpu_count() or 1
    if cores < 2 or array.ndim == 0 or array.shape[0] < 2 * cores:
        np.copyto(out, array, casting="same_kind")
        return out
    if _CAST_POOL is None:
        _CAST_POOL = ThreadPoolExecutor(max_workers=cores, thread_name_prefix="convert")
    edges = np.linspace(0, array.shape[0], cores + 1, dtype=np.int64)
    parts = [slice(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]
    for done in [_CAST_POOL.submit(np.copyto, out[part], array[part], casting="same_kind") for part in parts]:
        done.result()
    return out


def write_metadata(writer: gguf.GGUFWriter, name: str, p: LlamaParams, outtype: str) -> None:
    """The general.* and {arch}.* keys llama.cpp reads for this architecture, as its converter
    writes them (LLaMA's adds the vocabulary size and rope dimensions; Phi-3 the rope dimensions
    and its original context; Gemma its soft-caps and sliding window)."""
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_context_length(p.n_ctx)
    writer.add_embedding_length(p.n_embd)
    writer.add_block_count(p.n_layer)
    writer.add_feed_forward_length(p.n_ff)
    writer.add_head_count(p.n_head)
    writer.add_head_count_kv(p.n_head_kv)
    writer.add_rope_freq_base(p.rope_theta)
    writer.add_layer_norm_rms_eps(p.norm_eps)
    if p.arch == "llama":
        writer.add_vocab_size(p.n_vocab)
    if p.arch in ("llama", "phi3"):
        writer.add_rope_dimension_count(p.n_rot)
    if p.head_dim is not None or p.arch.startswith("gemma"):
        writer.add_key_length(p.n_rot)
        writer.add_value_length(p.n_rot)
    if p.arch == "phi3":
        orig = p.n_ctx_orig or p.n_ctx
        writer.add_rope_scaling_orig_ctx_len(orig)
        writer.add_sliding_window(p.sliding_window or 0)
        if p.rope_long is not None:
            scale = p.n_ctx / orig
            writer.add_rope_scaling_attn_factors(math.sqrt(1 + math.log(scale) / math.log(orig)) if scale > 1 else 1.0)
    if p.attn_softcap is not None:
        writer.add_attn_logit_softcapping(p.attn_softcap)
    if p.final_softcap is not None:
        writer.add_final_logit_softcapping(p.final_softcap)
    if p.arch == "gemma2" or (p.arch == "gemma3" and p.swa_layers and any(p.swa_layers)):
        writer.add_sliding_window(p.sliding_window or 4096)
    if p.arch == "gemma3" and p.rope_theta_swa is not None:
        writer.add_rope_freq_base_swa(p.rope_theta_swa)
    if p.arch == "gemma3" and p.swa_layers and p.swa_layers != tuple(i % 6 < 5 for i in range(p.n_layer)):
        writer.add_sliding_window_pattern(list(p.swa_layers))  # llama.cpp assumes every 6th layer global
    rs = p.rope_scaling or {}
    kind = rs.get("rope_type", rs.get("type"))
    if kind == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rs["factor"]))
    elif kind not in (None, "default", "llama3"):
        raise CheckpointError(f"rope_scaling type {kind!r} is not supported (linear and llama3 are)")
    writer.add_file_type(OUTTYPES[outtype][1])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


@dataclass(frozen=True)
class ConvertReport:
    path: Path
    layout: str
    tensors: int
    bytes_written: int
    params: LlamaParams
    tokenizer: str
    left_out: int = 0  # vision-tower tensors of a multimodal checkpoint, not converted


def convert(
    src: Path,
    out: Path,
    outtype: str = "f16",
    base: Path | None = None,
    force: bool = False,
    progress: Progress | None = None,
    on_tensor: Callable[[str], None] | None = None,
    on_total: Callable[[int], None] | None = None,
) -> ConvertReport:
    """Convert the checkpoint folder ``src`` (a delta when ``base`` is given) to GGUF at ``out``."""
    if outtype not in OUTTYPES:
        raise CheckpointError(f"--outtype {outtype!r} is not one of {', '.join(OUTTYPES)}")
    if out.exists() and not force:
        raise OutputExistsError(out)
    with open_checkpoint(src) as ckpt, open_checkpoint(base) if base else nullcontext() as base_ckpt:
        # Both before any weights are read; the tensors first, so that the vocabulary is built
        # only once the config's vocabulary size is known to match the embedding.
        tensors = plan(ckpt, outtype, base_ckpt)
        vocab = read_vocab(src, ckpt.params.n_vocab, ckpt.params.arch)
        if on_total:
            on_total(sum(t.nbytes for t in tensors))
        with partial_output(out) as unfinished:
            writer = gguf.GGUFWriter(unfinished, ckpt.params.arch)
            try:
                written = _write_gguf(writer, src, ckpt.params, vocab, tensors, outtype, progress, on_tensor)
            finally:
                writer.close()
    return ConvertReport(out, ckpt.layout, len(tensors), written, ckpt.params, vocab.model, ckpt.left_out)


def _write_gguf(
    writer: gguf.GGUFWriter,
    src: Path,
    params: LlamaParams,
    vocab: Vocab,
    tensors: list[OutTensor],
    outtype: str,
    progress: Progress | None,
    on_tensor: Callable[[str], None] | None,
) -> int:
    """Metadata, vocabulary, tensor infos, then every tensor streamed block by block; returns the
    tensor bytes written. Free space is checked once the header is out and its size known."""
    write_metadata(writer, src.resolve().name, params, outtype)
    add_vocab(writer, src, vocab, params.arch)
    for t in tensors:
        writer.add_tensor_info(t.name, t.shape, np.dtype(np.float32), t.nbytes, raw_dtype=t.qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    assert writer.fout is not None and writer.path is not None  # set by write_header_to_file
    fout = writer.fout[0]
    align = writer.data_alignment
    check_free_space(writer.path.parent, sum(-(-t.nbytes // align) * align + align for t in tensors))
    written = 0
    for t in tensors:
        if on_tensor:
            on_tensor(t.name)
        # gguf-py's write_tensor_data takes whole tensors; the data section is simply each
        # tensor aligned to data_alignment, so blocks are written the same way by hand.
        writer.write_padding(fout, fout.tell())
        size = 0
        for block in t.blocks():
            data = _cast(block, t.qtype)
            if data.shape[1:] != tuple(t.shape[1:]):
                raise CheckpointError(f"tensor {t.name} came out as {list(data.shape)}, planned {list(t.shape)}", src)
            data.tofile(fout)
            size += data.nbytes
            if progress:
                progress(data.nbytes)
        if size != t.nbytes:
            raise CheckpointError(f"tensor {t.name} came out as {size} bytes, planned {t.nbytes}", src)
        writer.write_padding(fout, size)
        written += size
    fout.flush()
    return written
