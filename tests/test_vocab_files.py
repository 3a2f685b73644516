"""Tokenizers against llama.cpp, both ways.

Reading: llama.cpp's own vocabulary-only test files (``models/ggml-vocab-*.gguf``, from the
installed llama-cpp-python's source package) must tokenize to the ids llama.cpp recorded for
them, as its test-tokenizer-0 runs them (no BOS, special tokens not parsed), and to what
llama-cpp-python gives on more texts (BOS and special tokens on and off, decoding, end-of-
generation tokens).

Writing: tiny Hugging Face tokenizer folders in the shapes Qwen2, Gemma and Phi-3 ship are
converted as llama.cpp's converter converts them (pre-tokenizer name, token types, Gemma's
missing space prefix, Phi-3's added tokens), and the vocabulary-only GGUF written from them
must tokenize alike in llama.cpp and in llamashare.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import gguf
import pytest

from llamashare.errors import CheckpointError
from llamashare.infer.tokenizer import GGUFTokenizer, VocabFile
from llamashare.quant.vocab import read_vocab
from tests.vocab_files import (
    GEMMA_SYMBOLS,
    assert_same_as_llama_cpp,
    train_sentencepiece,
    vocab_cases,
    vocab_folder,
    write_gemma_tokenizer,
    write_phi3_tokenizer,
    write_qwen2_tokenizer,
    write_vocab_gguf,
)

T = gguf.TokenType
#: Vocabularies of the families llamashare runs: LLaMA 1/2 (SentencePiece), LLaMA 3, GPT-2's
#: split (the sample model's), Phi-3, Qwen2 and Qwen3.5's split on a qwen2 file.
FAMILY_VOCABS = ["llama-spm", "llama-bpe", "gpt-2", "phi-3", "qwen2", "qwen35"]
#: Vocabularies whose pre-tokenizer names llama.cpp maps to the same splits (GPT-2's; SmolLM's).
SHARED_VOCABS = ["mpt", "starcoder", "refact"]
VOCABS = FAMILY_VOCABS + SHARED_VOCABS
#: Beyond llama.cpp's inputs: every family's special tokens, whitespace beside them, ids as text.
TEXTS = [
    "Hello world",
    " leading space and  double  spaces",
    "The year 2024 had 366 days!!\n\nnew\tline 12345678 3.14",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>tail",
    "<s> literal </s>  tags",
    "<unk> x <pad>",
    "<|user|>\n  hi<|end|>\n <|assistant|>  ok <|placeholder1|>",
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>",
    "<|fim_prefix|>def f(<|fim_suffix|>)<|fim_middle|> <|repo_name|>r<|file_sep|>",
    "<start_of_turn>user\nhi<end_of_turn>\n<mask> <unused0> [@BOS@] <table>x",
    "<tool_call> [PAD32011] <0x41>",
    "unicode: café naïve 日本語 🚀 e\u0301",
    "'s 're I'M can't WON'T",
    "   ",
    "",
    "\n",
    "x" * 40,
    "def f(x):\n    return x**2  # square\n",
]


@pytest.fixture(scope="session")
def vocabs() -> Path:
    """llama.cpp's vocabulary files (downloaded once into the user cache)."""
    return vocab_folder(VOCABS)


@cache
def tokenizer(folder: Path, name: str) -> GGUFTokenizer:
    return GGUFTokenizer(VocabFile(folder / f"ggml-vocab-{name}.gguf"))


@pytest.mark.parametrize("name", VOCABS)
def test_ids_equal_llama_cpp_recorded_ids(vocabs: Path, name: str) -> None:
    cases = vocab_cases(vocabs / f"ggml-vocab-{name}.gguf")
    assert len(cases) > 30, name
    ours = tokenizer(vocabs, name)
    wrong = [(text, got, ids) for text, ids in cases.items() if (got := ours.encode(text, False, False)) != ids]
    assert not wrong, f"{name}: {len(wrong)} of {len(cases)} inputs differ, first: {wrong[0]!r:.300}"


@pytest.mark.parametrize("name", VOCABS)
def test_ids_equal_llama_cpp_on_more_texts(vocabs: Path, name: str) -> None:
    path = vocabs / f"ggml-vocab-{name}.gguf"
    assert_same_as_llama_cpp(path, TEXTS + list(vocab_cases(path)), tokenizer(vocabs, name))


def test_vocab_only_file_needs_no_architecture_llamashare_runs(vocabs: Path) -> None:
    """GPT-2's file is of an architecture llamashare does not run: its tokenizer still loads."""
    assert VocabFile(vocabs / "ggml-vocab-gpt-2.gguf").meta("general.architecture") == "gpt2"
    assert tokenizer(vocabs, "gpt-2").encode("Hello world", add_special=False) == [15496, 995]


# -- converting Hugging Face tokenizer folders ----------------------------------------------------

SP_SIZE = 600  # pieces of the SentencePiece models trained here (256 of them bytes)
N_VOCAB = 700  # rows of the (imagined) embedding: beyond every tokenizer here, so padding shows


@pytest.mark.parametrize("arch", ["qwen2", "qwen3"])
def test_qwen_byte_level_bpe_converts_with_the_qwen2_pre_tokenizer(tmp_path: Path, arch: str) -> None:
    ids = write_qwen2_tokenizer(tmp_path / "hf", N_VOCAB)
    vocab = read_vocab(tmp_path / "hf", N_VOCAB, arch)
    assert (vocab.model, vocab.pre, len(vocab.tokens)) == ("gpt2", "qwen2", N_VOCAB)
    assert [vocab.types[i] for i in ids.values()] == [T.CONTROL] * 4 + [T.USER_DEFINED]  # <|fim_prefix|> looks special
    assert vocab.tokens[-1] == f"[PAD{N_VOCAB - 1}]" and vocab.types[-1] == T.UNUSED
    path = write_vocab_gguf(tmp_path / f"{arch}.gguf", arch, tmp_path / "hf", vocab)
    assert VocabFile(path).meta("tokenizer.ggml.pre") == "qwen2"
    ours = assert_same_as_llama_cpp(path, TEXTS)
    assert ours.eos == ids["<|im_end|>"] and not ours.add_bos
    # Qwen2's split keeps every digit apart
    assert ours.encode("1234", add_special=False) == [ord(c) for c in "1234"]  # byte tokens, though "12" is one


def test_qwen_with_tokenizer_model_converts_as_sentencepiece(tmp_path: Path) -> None:
    train_sentencepiece(tmp_path / "hf" / "tokenizer.model", SP_SIZE)
    vocab = read_vocab(tmp_path / "hf", N_VOCAB, "qwen2")
    assert (vocab.model, vocab.pre, vocab.add_space_prefix) == ("llama", "default", None)
    assert vocab.tokens[SP_SIZE] == f"[PAD{SP_SIZE}]" and vocab.scores[SP_SIZE] == -10000.0
    assert_same_as_llama_cpp(write_vocab_gguf(tmp_path / "q.gguf", "qwen2", tmp_path / "hf", vocab), TEXTS)


@pytest.mark.parametrize("arch", ["gemma2", "gemma3"])
def test_gemma_sentencepiece_converts_without_a_space_prefix(tmp_path: Path, arch: str) -> None:
    write_gemma_tokenizer(tmp_path / "hf", SP_SIZE, N_VOCAB)
    vocab = read_vocab(tmp_path / "hf", N_VOCAB, arch)
    assert (vocab.model, vocab.pre, vocab.add_space_prefix, len(vocab.tokens)) == ("llama", "default", False, N_VOCAB)
    # <mask>, [@BOS@] and <unused0> are not marked special, but look it
    kinds = dict(zip(GEMMA_SYMBOLS, vocab.types[4:10]))
    assert kinds == {t: T.USER_DEFINED if t == "<table>" else T.CONTROL for t in GEMMA_SYMBOLS}
    assert (vocab.tokens[-1], vocab.types[-1], vocab.scores[-1]) == (f"[PAD{N_VOCAB - 1}]", T.UNUSED, -10000.0)
    path = write_vocab_gguf(tmp_path / f"{arch}.gguf", arch, tmp_path / "hf", vocab)
    assert VocabFile(path).meta("tokenizer.ggml.add_space_prefix") is False
    ours = assert_same_as_llama_cpp(path, TEXTS)
    assert (ours.bos, ours.eos, ours.add_bos) == (2, 1, True)
    assert ours.decode(ours.encode("hello world", add_special=False)) == "hello world"  # no leading space


def test_gemma2_needs_tokenizer_model_and_gemma3_falls_back_to_bpe(tmp_path: Path) -> None:
    write_qwen2_tokenizer(tmp_path / "hf", N_VOCAB)
    with pytest.raises(CheckpointError, match="a gemma2 checkpoint needs tokenizer.model"):
        read_vocab(tmp_path / "hf", N_VOCAB, "gemma2")
    vocab = read_vocab(tmp_path / "hf", N_VOCAB, "gemma3")
    assert (vocab.model, vocab.pre, vocab.add_space_prefix) == ("gpt2", "qwen2", None)


def test_phi3_sentencepiece_converts_with_its_added_tokens(tmp_path: Path) -> None:
    ids = write_phi3_tokenizer(tmp_path / "hf", SP_SIZE, N_VOCAB)
    vocab = read_vocab(tmp_path / "hf", N_VOCAB, "phi3")
    assert (vocab.model, vocab.pre, vocab.add_space_prefix, len(vocab.tokens)) == ("llama", "default", None, N_VOCAB)
    assert (vocab.tokens[2], vocab.types[2], vocab.scores[2]) == ("</s>", T.USER_DEFINED, -1000.0)  # as Phi-3 lists it
    assert [vocab.types[i] for i in ids.values()] == [T.CONTROL] * 2 + [T.USER_DEFINED] + [T.CONTROL] * 3
    assert (vocab.tokens[-1], vocab.types[-1], vocab.scores[-1]) == (f"[PAD{N_VOCAB - 1}]", T.UNUSED, -10000.0)
    # llama.cpp strips whitespace after the special tokens of a vocabulary named Phi-3
    path = write_vocab_gguf(tmp_path / "phi3.gguf", "phi3", tmp_path / "hf", vocab, name="Phi3 tiny")
    ours = assert_same_as_llama_cpp(path, TEXTS)
    assert ours.encode("<|user|>\n hi", False, True) == ours.encode("<|user|>hi", False, True)
    assert ours.eos == ids["<|endoftext|>"] and {ids["<|end|>"], ids["<|endoftext|>"], 2} <= ours.eog


def test_phi3_gpt2_tokenizer_converts_as_byte_level_bpe(tmp_path: Path) -> None:
    """Phi-4 ships a GPT2Tokenizer under the Phi-3 architecture."""
    write_qwen2_tokenizer(tmp_path / "hf", N_VOCAB)
    config = json.loads((tmp_path / "hf" / "tokenizer_config.json").read_text())
    (tmp_path / "hf" / "tokenizer_config.json").write_text(json.dumps(config | {"tokenizer_class": "GPT2Tokenizer"}))
    assert read_vocab(tmp_path / "hf", N_VOCAB, "phi3").model == "gpt2"
    (tmp_path / "hf" / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match="a phi3 checkpoint needs tokenizer.json"):
        read_vocab(tmp_path / "hf", N_VOCAB, "phi3")


def test_ids_beyond_the_embedding_are_one_line_errors(tmp_path: Path) -> None:
    write_phi3_tokenizer(tmp_path / "hf", SP_SIZE, N_VOCAB)
    (tmp_path / "hf" / "added_tokens.json").write_text(json.dumps({"<|far|>": N_VOCAB}))
    with pytest.raises(CheckpointError, match=f"has token id {N_VOCAB}, outside the model's vocabulary of {N_VOCAB}"):
        read_vocab(tmp_path / "hf", N_VOCAB, "phi3")
    too_few = f"the tokenizer has {SP_SIZE} tokens but the model's embedding has only {SP_SIZE - 1} rows"
    with pytest.raises(CheckpointError, match=too_few):
        read_vocab(tmp_path / "hf", SP_SIZE - 1, "gemma2")
    with pytest.raises(CheckpointError, match="no vocabulary rules for architecture 'gpt2'"):
        read_vocab(tmp_path / "hf", N_VOCAB, "gpt2")
