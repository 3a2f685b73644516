"""llama.cpp's vocabulary-only test GGUFs, and tiny Hugging Face tokenizer folders to convert.

llama.cpp ships ``models/ggml-vocab-<name>.gguf`` with inputs (``.inp``) and the ids llama.cpp
gives them (``.out``); llama-cpp-python's source package carries that folder. ``vocab_folder``
downloads the source package of the installed llama-cpp-python with pip (PyPI is the only
network the tests may use) once into the real user cache, keeping only the files asked for.

The tokenizer folders are built here from nothing (a byte-level BPE like Qwen2's, SentencePiece
models trained on the spot like Gemma's and Phi-3's), in the layout Hugging Face releases use.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import gguf
import llama_cpp

from llamashare.infer.tokenizer import GGUFTokenizer, VocabFile, gpt2_byte_map
from llamashare.quant.vocab import QWEN2_SPLIT, Vocab, add_vocab
from llamashare.sample import sentencepiece_model

#: The user's cache folder, read when the tests are collected: conftest's isolated_home points
#: HOME and XDG_CACHE_HOME at a temp dir for every test, and a download must outlive the run.
REAL_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
#: The same variables for pip, so that it reads the user's own configuration (an index mirror).
REAL_HOME_ENV = {k: os.environ.get(k) for k in ("HOME", "XDG_CACHE_HOME", "XDG_CONFIG_HOME")}
#: Seconds pip may take to download the source package (about 77 MB).
PIP_TIMEOUT = 900
#: Age after which a temp folder of an earlier run is taken for a killed run's, and removed.
STALE_SECONDS = 2 * PIP_TIMEOUT
#: Largest member taken from the archive (the biggest vocabulary file is about 16 MB).
MAX_MEMBER = 64 << 20
#: Separator between the inputs of a ``.inp`` file (tests/test-tokenizer-0.cpp).
SEPARATOR = "\n__ggml_vocab_test__\n"
_MEMBER = re.compile(r"[^/]+/vendor/llama\.cpp/models/(ggml-vocab-[a-z0-9][a-z0-9.-]*\.gguf(?:\.inp|\.out)?)")
#: llama.cpp's copies of real models' chat templates (models/templates/<org>-<model>.jinja).
_TEMPLATE = re.compile(r"[^/]+/vendor/llama\.cpp/models/templates/([A-Za-z0-9][A-Za-z0-9._-]*\.jinja)")


def vocab_folder(names: list[str], version: str = llama_cpp.__version__) -> Path:
    """A folder holding ``ggml-vocab-<name>.gguf`` (with ``.inp`` and ``.out``) for every name,
    from llama-cpp-python ``version``'s source package; made once in the user cache, atomically
    (a killed run leaves a hidden temp folder beside it, never a half-filled one)."""
    wanted = {f"ggml-vocab-{n}.gguf{ext}" for n in names for ext in ("", ".inp", ".out")}
    return _from_sdist(f"llama-cpp-python-{version}-vocab", wanted, _MEMBER, version)


def template_folder(names: list[str], version: str = llama_cpp.__version__) -> Path:
    """A folder holding llama.cpp's ``models/templates/<name>.jinja`` for every name (real chat
    templates of Qwen, Gemma, Phi … as their publishers ship them), made as ``vocab_folder``'s."""
    wanted = {f"{n}.jinja" for n in names}
    return _from_sdist(f"llama-cpp-python-{version}-templates", wanted, _TEMPLATE, version)


def _from_sdist(name: str, wanted: set[str], pattern: re.Pattern[str], version: str) -> Path:
    cache = REAL_CACHE / "llamashare-test"
    folder = cache / name
    if all((folder / f).is_file() for f in wanted):
        return folder
    cache.mkdir(parents=True, exist_ok=True)
    for stale in cache.glob(".partial-*"):  # a killed run's (a live one's is younger)
        if time.time() - stale.stat().st_mtime > STALE_SECONDS:
            shutil.rmtree(stale, ignore_errors=True)
    work = Path(tempfile.mkdtemp(prefix=".partial-", dir=cache))
    try:
        sdist = _download_sdist(version, work / "download")
        out = work / "vocab"
        out.mkdir()
        _extract(sdist, wanted, out, pattern)
        if folder.exists() and not all((folder / f).is_file() for f in wanted):
            shutil.rmtree(folder)  # an older run's, missing a file asked for now
        try:
            os.rename(out, folder)
        except OSError:  # another run made it meanwhile
            assert all((folder / f).is_file() for f in wanted), f"{folder} is incomplete and cannot be replaced"
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return folder


def _download_sdist(version: str, into: Path) -> Path:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
    command += ["--disable-pip-version-check", "-d", str(into), f"llama-cpp-python=={version}"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT, env=_real_env())
    except subprocess.TimeoutExpired:
        raise AssertionError(f"pip did not download llama-cpp-python {version}'s source in {PIP_TIMEOUT} s") from None
    archives = sorted(into.glob("*.tar.gz")) if done.returncode == 0 else []
    why = (done.stderr.strip().splitlines() or ["no output"])[-1][:300]
    assert archives, f"pip could not download llama-cpp-python {version}'s source package: {why}"
    return archives[0]


def _real_env() -> dict[str, str]:
    env = dict(os.environ)
    for key, value in REAL_HOME_ENV.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def _extract(sdist: Path, wanted: set[str], out: Path, pattern: re.Pattern[str] = _MEMBER) -> None:
    """Copy the wanted files out of the archive, each by its bare file name: nothing the archive
    says about paths, links or modes is followed."""
    found: set[str] = set()
    with tarfile.open(sdist, "r:gz") as tar:
        for member in tar:
            match = pattern.fullmatch(member.name)
            if not match or match.group(1) not in wanted or not member.isfile():
                continue
            assert member.size <= MAX_MEMBER, f"{member.name} in {sdist.name} is {member.size} bytes"
            source = tar.extractfile(member)
            assert source is not None
            with source, open(out / match.group(1), "xb") as target:
                shutil.copyfileobj(source, target)
            found.add(match.group(1))
    missing = sorted(wanted - found)
    assert not missing, f"{sdist.name} has no {', '.join(missing)}"


def vocab_cases(gguf_path: Path) -> dict[str, list[int]]:
    """The inputs and expected ids of a vocabulary file, read as test-tokenizer-0.cpp reads
    them: inputs split at the separator (a trailing one ends the list), one output line each,
    ids separated by spaces; a repeated input keeps its last ids (the C++ test's std::map)."""
    raw = Path(f"{gguf_path}.inp").read_bytes().decode("utf-8")
    inputs = raw.split(SEPARATOR)
    if inputs and inputs[-1] == "":
        inputs.pop()
    lines = Path(f"{gguf_path}.out").read_bytes().decode("utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    assert len(inputs) == len(lines), f"{gguf_path.name}: {len(inputs)} inputs but {len(lines)} outputs"
    return {text: [int(t) for t in line.split()] for text, line in zip(inputs, lines)}


# -- llama.cpp as the reference ------------------------------------------------------------------


def piece(vocab: Any, tid: int) -> bytes:
    """llama.cpp's text for one token, special tokens not rendered (as detokenize does)."""
    buf = ctypes.create_string_buffer(512)
    n = llama_cpp.llama_token_to_piece(vocab, tid, buf, len(buf), 0, False)
    assert 0 <= n <= len(buf), (tid, n)
    return buf.raw[:n]


def assert_same_as_llama_cpp(path: Path, texts: list[str], ours: GGUFTokenizer | None = None) -> GGUFTokenizer:
    """Our tokenizer on ``path`` (``ours`` if already built) and llama.cpp's (vocab_only) agree
    on every text, with and without special tokens added and parsed; on each token's bytes; on
    BOS/EOS, whether they are added, and which tokens end generation."""
    ours = ours or GGUFTokenizer(VocabFile(path))
    ref = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    try:
        for text in texts:
            for add_special in (True, False):
                for parse_special in (True, False):
                    expect = ref.tokenize(text.encode(), add_bos=add_special, special=parse_special)
                    got = ours.encode(text, add_special, parse_special)
                    assert got == expect, (path.name, text, add_special, parse_special)
        vocab = ref._model.vocab
        for text in texts:
            # llama-cpp-python's detokenize drops a space after a leading BOS: llama.cpp's pieces instead
            ids = ref.tokenize(text.encode(), add_bos=False, special=True)
            theirs = b"".join(piece(vocab, i) for i in ids).decode("utf-8", errors="replace")
            assert ours.decode(ids) == theirs, (path.name, text)
        assert ours.n_vocab == llama_cpp.llama_vocab_n_tokens(vocab)
        differ = [i for i in range(ours.n_vocab) if ours.token_bytes(i) != piece(vocab, i)]
        assert not differ, f"{path.name}: tokens {differ[:10]} decode otherwise than in llama.cpp"
        eog = {i for i in range(ours.n_vocab) if llama_cpp.llama_vocab_is_eog(vocab, i)}
        assert ours.eog == eog, (path.name, sorted(ours.eog ^ eog)[:10])
        assert (ours.bos, ours.eos) == (llama_cpp.llama_vocab_bos(vocab), llama_cpp.llama_vocab_eos(vocab))
        assert ours.add_bos == llama_cpp.llama_vocab_get_add_bos(vocab)
        assert ours.add_eos == llama_cpp.llama_vocab_get_add_eos(vocab)
    finally:
        ref.close()
    return ours


# -- Hugging Face tokenizer folders -------------------------------------------------------------


def _write_json(root: Path, docs: dict[str, Any]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for name, doc in docs.items():
        (root / name).write_text(json.dumps(doc, indent=1, ensure_ascii=False))


def added(tid: int, text: str, special: bool) -> dict[str, Any]:
    """One ``added_tokens`` entry as Hugging Face writes it."""
    flags = {"single_word": False, "lstrip": False, "rstrip": False, "normalized": False}
    return {"id": tid, "content": text, **flags, "special": special}


def byte_level_bpe(words: list[str]) -> tuple[dict[str, int], list[str]]:
    """A small real byte-level BPE: the 256 byte tokens, then merges that build each of
    ``words`` (GPT-2 characters, ``Ġ`` for a space) left to right."""
    mapping = gpt2_byte_map()
    vocab = {mapping[b]: b for b in range(256)}
    merges: list[str] = []
    for word in words:
        text = "".join(mapping[b] for b in word.encode())
        for end in range(2, len(text) + 1):
            left, right = text[: end - 1], text[end - 1]
            if text[:end] not in vocab:
                vocab[text[:end]] = len(vocab)
                merges.append(f"{left} {right}")
    return vocab, merges


#: Words the BPE folders' merges build (Qwen2's splits keep digits apart and a space on words).
BPE_WORDS = [" the", " hello", "hello", " world", " model", "ing", " token", "er", "\n\n", "  ", " 1", "12", "Hi"]


def write_qwen2_tokenizer(root: Path, n_vocab: int) -> dict[str, int]:
    """A Qwen2-style folder: byte-level BPE with Qwen2's split pattern, its ChatML control tokens
    (and a FIM one marked not special, which llama.cpp's converter still takes as control), one
    plain added token; returns the added tokens' ids."""
    vocab, merges = byte_level_bpe(BPE_WORDS)
    names = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|fim_prefix|>", "<tool_call>"]
    ids = {t: len(vocab) + k for k, t in enumerate(names)}
    assert max(ids.values()) < n_vocab
    split = {"type": "Split", "pattern": {"Regex": QWEN2_SPLIT}, "behavior": "Isolated", "invert": False}
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    tokenizer = {
        "version": "1.0",
        "added_tokens": [added(i, t, t.startswith("<|im") or t == "<|endoftext|>") for t, i in ids.items()],
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [split, byte_level]},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        "model": {"type": "BPE", "vocab": vocab, "merges": merges, "byte_fallback": False, "ignore_merges": False},
    }
    config = {
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "add_prefix_space": False,
        "chat_template": "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}",
        "tokenizer_class": "Qwen2Tokenizer",
        "added_tokens_decoder": {str(i): added(i, t, t.startswith("<|im")) for t, i in ids.items()},
    }
    model_config = {"architectures": ["Qwen2ForCausalLM"], "vocab_size": n_vocab, "bos_token_id": ids["<|endoftext|>"]}
    _write_json(root, {"tokenizer.json": tokenizer, "tokenizer_config.json": config, "config.json": model_config})
    return ids


def train_sentencepiece(path: Path, vocab_size: int, **options: Any) -> None:
    """A SentencePiece BPE model with byte fallback, trained on seeded pseudo-words."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(sentencepiece_model(vocab_size, **options))


#: Gemma's SentencePiece layout: pad, eos, bos, unk first, then pieces the model defines itself.
GEMMA_SYMBOLS = ["<mask>", "[@BOS@]", "<unused0>", "<start_of_turn>", "<end_of_turn>", "<table>"]


def write_gemma_tokenizer(root: Path, sp_size: int, n_vocab: int) -> None:
    """A Gemma-style folder: tokenizer.model (ids 0-3 pad, eos, bos, unk; Gemma's own control-like
    pieces as user-defined symbols), tokenizer_config.json marking the turn tokens special and
    leaving ``<mask>`` and ``<unused0>`` unmarked (llama.cpp's converter takes them as control
    anyway) and ``<table>`` plain."""
    train_sentencepiece(
        root / "tokenizer.model",
        sp_size,
        pad_id=0,
        eos_id=1,
        bos_id=2,
        unk_id=3,
        pad_piece="<pad>",
        eos_piece="<eos>",
        bos_piece="<bos>",
        unk_piece="<unk>",
        user_defined_symbols=GEMMA_SYMBOLS,
        add_dummy_prefix=False,
    )
    specials = {0: "<pad>", 1: "<eos>", 2: "<bos>", 3: "<unk>"}
    decoder = {str(i): added(i, t, True) for i, t in specials.items()}
    for k, text in enumerate(GEMMA_SYMBOLS):
        decoder[str(4 + k)] = added(4 + k, text, text.endswith("_of_turn>"))
    config = {
        "bos_token": "<bos>",
        "eos_token": "<eos>",
        "pad_token": "<pad>",
        "unk_token": "<unk>",
        "add_bos_token": True,
        "add_eos_token": False,
        "chat_template": "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ m['content'] }}<end_of_turn>\n{% endfor %}",
        "tokenizer_class": "GemmaTokenizer",
        "added_tokens_decoder": decoder,
    }
    model_config = {"architectures": ["Gemma2ForCausalLM"], "vocab_size": n_vocab, "pad_token_id": 0}
    _write_json(
        root, {"tokenizer_config.json": config, "config.json": model_config | {"bos_token_id": 2, "eos_token_id": 1}}
    )


#: Phi-3's chat tokens, added after the SentencePiece model's pieces (as in Phi-3-mini).
PHI3_ADDED = ["<|endoftext|>", "<|assistant|>", "<|placeholder1|>", "<|system|>", "<|end|>", "<|user|>"]


def write_phi3_tokenizer(root: Path, sp_size: int, n_vocab: int) -> dict[str, int]:
    """A Phi-3-style folder: a LLaMA-2-like tokenizer.model (unk, bos, eos), the chat tokens in
    added_tokens.json, tokenizer_config.json and tokenizer.json (``</s>`` listed as not special,
    as Phi-3 lists it); returns the added tokens' ids."""
    train_sentencepiece(root / "tokenizer.model", sp_size)
    ids = {t: sp_size + k for k, t in enumerate(PHI3_ADDED)}
    assert max(ids.values()) < n_vocab
    entries = [added(0, "<unk>", True), added(1, "<s>", True), added(2, "</s>", False)]
    entries += [added(i, t, t != "<|placeholder1|>") for t, i in ids.items()]
    config = {
        "bos_token": "<s>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<unk>",
        "pad_token": "<|endoftext|>",
        "add_bos_token": True,
        "add_eos_token": False,
        "chat_template": "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}",
        "tokenizer_class": "LlamaTokenizer",
        "added_tokens_decoder": {str(e["id"]): e for e in entries},
    }
    tokenizer = {
        "version": "1.0",
        "added_tokens": entries,
        "model": {"type": "BPE", "vocab": {}, "merges": [], "byte_fallback": True},
    }
    docs = {"tokenizer_config.json": config, "tokenizer.json": tokenizer, "added_tokens.json": ids}
    _write_json(root, docs | {"config.json": {"architectures": ["Phi3ForCausalLM"], "vocab_size": n_vocab}})
    return ids


def write_vocab_gguf(path: Path, arch: str, root: Path, vocab: Vocab, name: str = "tiny") -> Path:
    """A vocabulary-only GGUF of ``arch``: the tokenizer keys add_vocab writes and the few
    hyperparameters llama.cpp reads before it will load a vocabulary."""
    w = gguf.GGUFWriter(path, arch)
    w.add_name(name)
    w.add_block_count(1)
    w.add_context_length(64)
    w.add_embedding_length(8)
    w.add_feed_forward_length(8)
    w.add_head_count(1)
    w.add_layer_norm_rms_eps(1e-6)
    add_vocab(w, root, vocab, arch)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    return path
