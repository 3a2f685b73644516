"""GGUF → Hugging Face folder (the demo's publisher side): converting it back gives the same model."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
from tokenizers import Tokenizer

from llamashare.export_hf import export_hf, hf_name, unpermute_rotary
from llamashare.infer.model_file import ModelFile
from llamashare.infer.tokenizer import GGUFTokenizer
from llamashare.quant.convert import convert, permute_rotary
from llamashare.quant.safetensors_io import float32_to_bf16, to_float32

pytestmark = pytest.mark.slow
TEXTS = ["The capital of France is Paris.", "  spaces, digits 12345 and émojis 🦙\n<|im_start|>user", "x=1;y=22"]


def test_rotary_unpermute_inverts_convert() -> None:
    w = np.arange(6 * 8 * 3, dtype=np.float32).reshape(6 * 8, 3)
    np.testing.assert_array_equal(unpermute_rotary(permute_rotary(w, 6), 6), w)
    assert not np.array_equal(unpermute_rotary(w, 6), w)


def test_smollm2_round_trips_through_hugging_face_layout(smollm2: Path, tmp_path: Path) -> None:
    folder = tmp_path / "smollm2"
    export_hf(smollm2, folder)
    back = tmp_path / "back.gguf"
    convert(folder, back, "f32")
    orig, new = ModelFile(smollm2), ModelFile(back)
    assert new.config == orig.config
    for key in (
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.token_type",
        "tokenizer.ggml.merges",
        "tokenizer.ggml.pre",
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.padding_token_id",
        "tokenizer.ggml.unknown_token_id",
        "tokenizer.ggml.add_bos_token",
        "tokenizer.chat_template",
    ):
        assert new.meta(key) == orig.meta(key), key
    assert set(new.tensors) == set(orig.tensors)
    for name in orig.tensors:  # exactly the original values, rounded once to bf16
        want = to_float32(float32_to_bf16(orig.floats(name)), "BF16")
        np.testing.assert_array_equal(new.floats(name), want, err_msg=name)
    assert new.tensors["token_embd.weight"].ggml_type == gguf.GGMLQuantizationType.F32

    # The tokenizer.json is a working Hugging Face tokenizer with llama.cpp's token ids.
    hf, ours = Tokenizer.from_file(str(folder / "tokenizer.json")), GGUFTokenizer(orig)
    for text in TEXTS:
        assert hf.encode(text, add_special_tokens=False).ids == ours.encode(
            text, add_special=False, parse_special=True
        ), text
    assert hf_name("blk.3.ffn_down.weight") == "model.layers.3.mlp.down_proj.weight"
