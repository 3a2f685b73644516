"""convert: every input layout → GGUF, checked tensor by tensor against the source math."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
from safetensors.numpy import save_file

from llamashare.errors import CheckpointError, OutputExistsError, UnsafePickleError
from llamashare.quant.convert import convert
from llamashare.quant.delta import make_delta
from llamashare.sample import CHAT_TEMPLATE, SampleConfig, write_sample_model
from tests.checkpoints import hf_weights, unpermute_rotary_to_meta, write_hf_tied, write_meta
from tests.torch_format import save_pth

CFG = SampleConfig()


def read_gguf(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, str]]:
    """(metadata (gguf-py's decoded values), tensors as float32 in NumPy order, tensor types) of a GGUF file."""
    r = gguf.GGUFReader(path)
    meta = {k: f.contents() for k, f in r.fields.items()}
    tensors, types = {}, {}
    for t in r.tensors:
        data = np.array(t.data)
        if t.tensor_type == gguf.GGMLQuantizationType.BF16:
            data = (data.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
        tensors[t.name] = data.astype(np.float32).reshape(tuple(reversed(t.shape.tolist())))
        types[t.name] = t.tensor_type.name
    return meta, tensors, types


def ggml_rotary(w: np.ndarray, n_head: int) -> np.ndarray:
    return unpermute_rotary_to_meta(w, n_head)  # GGML's layout is Meta's


def expected_tensors(w: dict[str, np.ndarray], cfg: SampleConfig = CFG) -> dict[str, np.ndarray]:
    """The GGUF tensors the HF weights must become, written out by hand."""
    out = {"token_embd.weight": w["model.embed_tokens.weight"], "output_norm.weight": w["model.norm.weight"]}
    if "lm_head.weight" in w:
        out["output.weight"] = w["lm_head.weight"]
    for i in range(cfg.num_hidden_layers):
        p, b = f"model.layers.{i}.", f"blk.{i}."
        out |= {
            b + "attn_norm.weight": w[p + "input_layernorm.weight"],
            b + "attn_q.weight": ggml_rotary(w[p + "self_attn.q_proj.weight"], cfg.num_attention_heads),
            b + "attn_k.weight": ggml_rotary(w[p + "self_attn.k_proj.weight"], cfg.num_key_value_heads),
            b + "attn_v.weight": w[p + "self_attn.v_proj.weight"],
            b + "attn_output.weight": w[p + "self_attn.o_proj.weight"],
            b + "ffn_norm.weight": w[p + "post_attention_layernorm.weight"],
            b + "ffn_gate.weight": w[p + "mlp.gate_proj.weight"],
            b + "ffn_up.weight": w[p + "mlp.up_proj.weight"],
            b + "ffn_down.weight": w[p + "mlp.down_proj.weight"],
        }
    return out


@pytest.fixture(scope="module")
def hf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hf") / "tiny-llama"
    write_sample_model(root)
    return root


@pytest.mark.parametrize("outtype,dtype,ftype", [("f32", np.float32, 0), ("f16", np.float16, 1), ("bf16", None, 32)])
def test_sharded_gqa_checkpoint_matches_source_math(
    hf: Path, tmp_path: Path, outtype: str, dtype: type, ftype: int
) -> None:
    out = tmp_path / "m.gguf"
    report = convert(hf, out, outtype)
    meta, tensors, types = read_gguf(out)
    expected = expected_tensors(hf_weights(hf))
    assert set(tensors) == set(expected) and report.tensors == len(expected)
    for name, want in expected.items():
        if want.ndim == 1:
            assert types[name] == "F32" and np.array_equal(tensors[name], want), name
        elif dtype is not None:
            assert types[name] == outtype.upper() and np.array_equal(
                tensors[name], want.astype(dtype).astype(np.float32)
            ), name
        else:  # bf16: within one bf16 rounding step
            assert types[name] == "BF16" and np.allclose(tensors[name], want, rtol=2**-8, atol=0), name
    assert meta["general.architecture"] == "llama" and meta["general.file_type"] == ftype
    assert meta["llama.block_count"] == 4 and meta["llama.embedding_length"] == 128
    assert meta["llama.attention.head_count"] == 4 and meta["llama.attention.head_count_kv"] == 2
    assert meta["llama.feed_forward_length"] == 344 and meta["llama.context_length"] == 256
    assert meta["llama.rope.dimension_count"] == 32 and meta["llama.vocab_size"] == 512
    assert meta["llama.rope.freq_base"] == 10000.0
    assert abs(meta["llama.attention.layer_norm_rms_epsilon"] - 1e-5) < 1e-9
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "gpt-2"
    tokens = meta["tokenizer.ggml.tokens"]
    assert len(tokens) == 512 and tokens[509:] == ["<s>", "</s>", "<unk>"] and tokens[32] == "Ġ" and tokens[256] == "Ġe"
    assert meta["tokenizer.ggml.token_type"][509:] == [gguf.TokenType.CONTROL] * 3
    assert meta["tokenizer.ggml.merges"][0] == "Ġ e" and len(meta["tokenizer.ggml.merges"]) == 253
    assert (meta["tokenizer.ggml.bos_token_id"], meta["tokenizer.ggml.eos_token_id"]) == (509, 510)
    assert meta["tokenizer.ggml.add_bos_token"] is True and meta["tokenizer.chat_template"] == CHAT_TEMPLATE
    assert not (tmp_path / "m.gguf.partial").exists()


def test_tied_embeddings_write_no_output_matrix(tmp_path: Path) -> None:
    write_hf_tied(tmp_path / "tied")
    convert(tmp_path / "tied", tmp_path / "t.gguf", "f32")
    _, tensors, _ = read_gguf(tmp_path / "t.gguf")
    assert "output.weight" not in tensors  # llama.cpp then uses token_embd for the output
    assert np.array_equal(tensors["token_embd.weight"], hf_weights(tmp_path / "tied")["model.embed_tokens.weight"])


def test_meta_two_shard_pth_equals_the_hf_conversion(hf: Path, tmp_path: Path) -> None:
    write_meta(tmp_path / "meta" / "7B", hf, ranks=2, dtype=np.float32)
    convert(tmp_path / "meta" / "7B", tmp_path / "meta.gguf", "f32")
    convert(hf, tmp_path / "hf.gguf", "f32")
    meta_md, meta_t, _ = read_gguf(tmp_path / "meta.gguf")
    _, hf_t, _ = read_gguf(tmp_path / "hf.gguf")
    assert set(meta_t) == set(hf_t)
    for name in hf_t:  # joined shards along the right axes, and no rotary permutation for Meta
        assert np.array_equal(meta_t[name], hf_t[name]), name
    assert meta_md["tokenizer.ggml.model"] == "llama"  # SentencePiece, from ../tokenizer.model
    tokens, types = meta_md["tokenizer.ggml.tokens"], meta_md["tokenizer.ggml.token_type"]
    assert len(tokens) == 512 and tokens[:3] == ["<unk>", "<s>", "</s>"] and tokens[-1] == "[PAD511]"
    assert types[0] == gguf.TokenType.UNKNOWN and types[1] == gguf.TokenType.CONTROL and types[3] == gguf.TokenType.BYTE
    assert types[-1] == gguf.TokenType.UNUSED and len(meta_md["tokenizer.ggml.scores"]) == 512
    assert (meta_md["tokenizer.ggml.bos_token_id"], meta_md["tokenizer.ggml.eos_token_id"]) == (1, 2)
    assert meta_md["llama.context_length"] == 4096  # LLaMA 2's, from norm_eps 1e-5


def test_delta_with_a_larger_vocabulary_rebuilds_the_target(tmp_path: Path) -> None:
    base, target = tmp_path / "base", tmp_path / "target"
    write_sample_model(base, SampleConfig(vocab_size=512, seed=1))
    write_sample_model(target, SampleConfig(vocab_size=513, seed=2))  # one added token, as Vicuna's 32001
    assert make_delta(target, base, tmp_path / "delta") == 39
    convert(tmp_path / "delta", tmp_path / "rebuilt.gguf", "f32", base=base)
    convert(target, tmp_path / "direct.gguf", "f32")
    _, rebuilt, _ = read_gguf(tmp_path / "rebuilt.gguf")
    _, direct, _ = read_gguf(tmp_path / "direct.gguf")
    assert rebuilt["token_embd.weight"].shape == (513, 128)
    for name in direct:
        np.testing.assert_allclose(rebuilt[name], direct[name], rtol=0, atol=1e-6, err_msg=name)
    delta = hf_weights(tmp_path / "delta")
    b, t = hf_weights(base), hf_weights(target)
    assert np.array_equal(
        delta["model.embed_tokens.weight"][512], t["model.embed_tokens.weight"][512]
    )  # new row: base was 0
    assert np.allclose(delta["lm_head.weight"][:512], t["lm_head.weight"][:512] - b["lm_head.weight"])


def test_delta_shape_mismatch_names_the_tensor_and_leaves_nothing(tmp_path: Path) -> None:
    base, target = tmp_path / "base", tmp_path / "target"
    write_sample_model(base, SampleConfig(intermediate_size=344))
    write_sample_model(target, SampleConfig(intermediate_size=352, seed=3))
    (tmp_path / "out.gguf").write_bytes(b"an older conversion")
    with pytest.raises(CheckpointError, match=r"tensor model\.layers\.0\.mlp\.\w+_proj\.weight: the delta has shape"):
        convert(target, tmp_path / "out.gguf", "f16", base=base, force=True)
    assert (tmp_path / "out.gguf").read_bytes() == b"an older conversion"  # never replaced by a failed step
    assert not (tmp_path / "out.gguf.partial").exists()


def test_pickle_calling_os_system_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self) -> tuple:
            return (os.system, (f"touch {marker}",))

    root = tmp_path / "evil"
    root.mkdir()
    (root / "params.json").write_text(json.dumps({"dim": 8, "n_layers": 1, "n_heads": 1}))
    save_pth(root / "consolidated.00.pth", {}, payload={"tok_embeddings.weight": Evil()})
    with pytest.raises(UnsafePickleError, match=r"'posix\.system'") as info:
        convert(root, tmp_path / "x.gguf")
    assert info.value.name == "posix.system" and info.value.exit_code == 2
    assert not marker.exists() and not (tmp_path / "x.gguf").exists()


def test_truncated_safetensors_is_a_clear_error(hf: Path, tmp_path: Path) -> None:
    import shutil

    root = tmp_path / "cut"
    shutil.copytree(hf, root)
    shard = root / "model-00002-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:-1000])
    with pytest.raises(CheckpointError, match="truncated"):
        convert(root, tmp_path / "x.gguf")
    shard.write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    with pytest.raises(CheckpointError, match="header length"):
        convert(root, tmp_path / "x.gguf")


def test_missing_tokenizer_wrong_dtype_and_unknown_architecture(hf: Path, tmp_path: Path) -> None:
    import shutil

    root = tmp_path / "m"
    shutil.copytree(hf, root)
    (root / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match="has no tokenizer"):
        convert(root, tmp_path / "x.gguf")
    shutil.copy(hf / "tokenizer.json", root)

    weights = hf_weights(hf)
    weights["model.norm.weight"] = weights["model.norm.weight"].astype(np.int32)
    for f in root.glob("*.safetensors"):
        f.unlink()
    (root / "model.safetensors.index.json").unlink()
    save_file(weights, str(root / "model.safetensors"))
    with pytest.raises(CheckpointError, match="model.norm.weight has dtype I32"):
        convert(root, tmp_path / "x.gguf")

    config = json.loads((root / "config.json").read_text()) | {"architectures": ["GPTNeoXForCausalLM"]}
    (root / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        CheckpointError, match="GPTNeoXForCausalLM is not supported; llamashare converts LlamaForCausalLM"
    ):
        convert(root, tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()


def test_existing_output_is_not_replaced_without_force(hf: Path, tmp_path: Path) -> None:
    (tmp_path / "m.gguf").write_bytes(b"keep me")
    with pytest.raises(OutputExistsError):
        convert(hf, tmp_path / "m.gguf")
    assert (tmp_path / "m.gguf").read_bytes() == b"keep me"


def test_small_row_blocks_give_the_same_file(hf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Big tensors are converted in row blocks; blocks of a few rows (heads for Q/K, shards for
    Meta, base rows for deltas) must produce the very same bytes as whole-tensor blocks."""
    import llamashare.quant.convert as conv

    write_meta(tmp_path / "meta" / "7B", hf, ranks=2, dtype=np.float16)
    base = tmp_path / "base"
    write_sample_model(base, SampleConfig(vocab_size=500, seed=5))
    jobs = {"hf": (hf, None), "meta": (tmp_path / "meta" / "7B", None), "delta": (hf, base)}
    for label, (src, base_dir) in jobs.items():
        convert(src, tmp_path / f"{label}-whole.gguf", "f16", base=base_dir)
    monkeypatch.setattr(conv, "BLOCK_BYTES", 3000)  # a few rows per block
    for label, (src, base_dir) in jobs.items():
        convert(src, tmp_path / f"{label}-blocks.gguf", "f16", base=base_dir)
        assert (tmp_path / f"{label}-blocks.gguf").read_bytes() == (tmp_path / f"{label}-whole.gguf").read_bytes(), (
            label
        )


@pytest.mark.parametrize(
    "scaling",
    [
        {"rope_type": "linear", "factor": 4.0},
        {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        },
    ],
)
def test_rope_scaling_from_the_config(hf: Path, tmp_path: Path, scaling: dict) -> None:
    import shutil

    root = tmp_path / "m"
    shutil.copytree(hf, root)
    config = json.loads((root / "config.json").read_text()) | {"rope_scaling": scaling, "rope_theta": 500000.0}
    (root / "config.json").write_text(json.dumps(config))
    convert(root, tmp_path / "x.gguf", "f32")
    meta, tensors, _ = read_gguf(tmp_path / "x.gguf")
    assert meta["llama.rope.freq_base"] == 500000.0
    if scaling["rope_type"] == "linear":
        assert meta["llama.rope.scaling.type"] == "linear" and meta["llama.rope.scaling.factor"] == 4.0
        assert "rope_freqs.weight" not in tensors
    else:  # Llama 3.1: per-frequency factors, 1 for short wavelengths, `factor` for long ones
        factors = tensors["rope_freqs.weight"]
        assert factors.shape == (16,) and factors[0] == 1.0 and factors[-1] == 8.0
        assert np.all(np.diff(factors) >= 0) and "llama.rope.scaling.type" not in meta
