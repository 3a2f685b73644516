"""Converted files load and run in llama.cpp (llama-cpp-python), with logits matching the NumPy
reference forward pass over the source weights: the proof that names, layouts (the Q/K rotary
permutation with grouped-query attention), metadata and tokenizer keys are what llama.cpp expects.
"""

from __future__ import annotations

import json
from pathlib import Path

import llama_cpp
import numpy as np
import pytest

from llamashare.quant.convert import convert
from llamashare.quant.delta import make_delta
from llamashare.sample import SampleConfig, write_sample_model
from tests.checkpoints import hf_weights, write_hf_tied, write_meta
from tests.reference_llama import logits

TOKENS = [3, 17, 200, 45, 300, 7, 256, 99]  # ids, so every tokenizer layout runs the same input


def llama_cpp_logits(path: Path, tokens: list[int] = TOKENS) -> np.ndarray:
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, logits_all=True, verbose=False, n_threads=2)
    try:
        llm.eval(tokens)
        return np.array(llm.scores[: len(tokens)], dtype=np.float64)
    finally:
        llm.close()


def reference(root: Path) -> np.ndarray:
    return logits(hf_weights(root), json.loads((root / "config.json").read_text()), TOKENS)


def assert_close(got: np.ndarray, want: np.ndarray, rel: float) -> None:
    err = np.abs(got - want).max() / np.abs(want).max()
    assert err < rel, f"max |llama.cpp - reference| is {err:.2e} of the largest logit"
    assert (got.argmax(-1) == want.argmax(-1)).mean() >= 0.75  # the same next-token picks, nearly always


@pytest.fixture(scope="module")
def hf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("llamacpp") / "tiny"
    write_sample_model(root)
    return root


@pytest.mark.parametrize("outtype,rel", [("f32", 2e-3), ("f16", 5e-3), ("bf16", 2e-2)])
def test_hf_sharded_gqa_runs_in_llama_cpp(hf: Path, tmp_path: Path, outtype: str, rel: float) -> None:
    convert(hf, tmp_path / "m.gguf", outtype)
    assert_close(llama_cpp_logits(tmp_path / "m.gguf"), reference(hf), rel)


def test_wrong_rotary_layout_would_be_caught(hf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The comparison is sharp enough to see a missing Q/K permutation."""
    import llamashare.quant.convert as conv

    monkeypatch.setattr(conv, "permute_rotary", lambda w, n_head: w)
    convert(hf, tmp_path / "bad.gguf", "f32")
    got, want = llama_cpp_logits(tmp_path / "bad.gguf"), reference(hf)
    assert np.abs(got - want).max() / np.abs(want).max() > 0.1


def test_tied_embeddings_run_in_llama_cpp(tmp_path: Path) -> None:
    write_hf_tied(tmp_path / "tied")
    convert(tmp_path / "tied", tmp_path / "t.gguf", "f32")
    assert_close(llama_cpp_logits(tmp_path / "t.gguf"), reference(tmp_path / "tied"), 2e-3)


def test_meta_pth_shards_run_in_llama_cpp(hf: Path, tmp_path: Path) -> None:
    write_meta(tmp_path / "meta" / "7B", hf, ranks=2, dtype=np.float16)
    convert(tmp_path / "meta" / "7B", tmp_path / "meta.gguf", "f16")
    assert_close(llama_cpp_logits(tmp_path / "meta.gguf"), reference(hf), 5e-3)


def test_rebuilt_delta_runs_in_llama_cpp(tmp_path: Path) -> None:
    base, target = tmp_path / "base", tmp_path / "target"
    write_sample_model(base, SampleConfig(vocab_size=512, seed=1))
    write_sample_model(target, SampleConfig(vocab_size=513, seed=2))
    make_delta(target, base, tmp_path / "delta")
    convert(tmp_path / "delta", tmp_path / "v.gguf", "f32", base=base)
    assert_close(llama_cpp_logits(tmp_path / "v.gguf"), reference(target), 2e-3)


def test_llama_cpp_tokenizes_with_the_converted_vocabulary(hf: Path, tmp_path: Path) -> None:
    convert(hf, tmp_path / "m.gguf", "f16")
    llm = llama_cpp.Llama(model_path=str(tmp_path / "m.gguf"), n_ctx=64, vocab_only=True, verbose=False)
    try:
        vocab = json.loads((hf / "tokenizer.json").read_text())["model"]["vocab"]
        ids = llm.tokenize(b"the seed", add_bos=False, special=False)
        # byte-level BPE with the sample's merges: "th" and "e"; "Ġs" then "e", "e", "d" merged pairwise
        assert [llm.detokenize([i]) for i in ids] == [b"th", b"e", b" s", b"ee", b"d"]
        assert ids[0] == vocab["th"] and ids[2] == vocab["Ġs"]
        assert llm.detokenize(ids) == b"the seed"
    finally:
        llm.close()
