"""Tokenizers into GGUF metadata: SentencePiece (``tokenizer.model``) or byte-level BPE
(``tokenizer.json``), with the token types, scores, merges and special ids llama.cpp reads.

Choices follow llama.cpp's converter, per architecture:

* ``llama``: SentencePiece first when a ``tokenizer.model`` exists (LLaMA 1/2, Vicuna, Mistral),
  else GPT-2-style BPE (LLaMA 3, SmolLM); added tokens beyond the SentencePiece model follow it;
* ``qwen2``/``qwen3``: SentencePiece if there is a ``tokenizer.model``, else byte-level BPE;
* ``gemma2``: SentencePiece, with ``add_space_prefix`` false (Gemma adds no leading space);
  ``gemma3`` the same, or byte-level BPE when it has no ``tokenizer.model``;
* ``phi3``: SentencePiece as Phi-3 builds it (added tokens from added_tokens.json,
  tokenizer_config.json and tokenizer.json), or byte-level BPE for a ``GPT2Tokenizer`` (Phi-4).

Added tokens are CONTROL when marked special (or, as llama.cpp's converter judges, when they look
special: ``<|…|>``, ``<unused…>``), USER_DEFINED otherwise; ids the tokenizer does not cover up
to the model's vocabulary size become ``[PAD<id>]`` UNUSED tokens. The BPE pre-tokenizer (how
text is split before merging) is named from ``tokenizer.json``'s own pre-tokenizer description;
an unknown one is an error, because a wrong guess tokenizes silently wrong. Special ids,
``add_bos``/``add_eos`` and the chat template come from gguf-py's ``SpecialVocab``, which reads
tokenizer_config.json, tokenizer.json and config.json. Every token id read from JSON is checked
against the model's embedding before anything is built from it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf

from llamashare.errors import CheckpointError
from llamashare.quant.checkpoint import read_json

#: llama.cpp's Llama 3 split pattern (also in its converter); matched verbatim in tokenizer.json.
LLAMA3_SPLIT = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
#: Qwen2's (Qwen1.5 to Qwen3): Llama 3's with every digit on its own.
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
#: ``tokenizer.ggml.pre`` for a split pattern followed by a plain byte-level step.
SPLIT_PRE_TOKENIZERS = {LLAMA3_SPLIT: "llama-bpe", QWEN2_SPLIT: "qwen2"}
#: Architectures whose vocabulary read_vocab knows how to build.
ARCHITECTURES = ("llama", "qwen2", "qwen3", "gemma2", "gemma3", "phi3")
#: Score of an id no tokenizer file covers, as llama.cpp's converters pad: read_vocab's own
#: padding, and the SentencePiece vocabularies llama.cpp's converter prefills.
PAD_SCORE, SPM_PAD_SCORE, ADDED_SCORE = -1000.0, -10000.0, -1000.0
#: U+2581, SentencePiece's space.
SPM_SPACE = "\u2581"


@dataclass(frozen=True)
class Vocab:
    model: str  # tokenizer.ggml.model: "llama" (SentencePiece) or "gpt2" (byte-level BPE)
    pre: str | None  # tokenizer.ggml.pre (BPE, and SentencePiece outside llama: "default")
    tokens: list[str]
    scores: list[float]
    types: list[int]  # gguf.TokenType values
    model_special_ids: dict[str, int] = field(default_factory=dict)  # bos/eos/unk the SentencePiece model names
    add_space_prefix: bool | None = None  # tokenizer.ggml.add_space_prefix, written when not None


def find_tokenizer(root: Path) -> Path:
    """tokenizer.model (also one folder up, as in Meta's release) or tokenizer.json."""
    for candidate in (root / "tokenizer.model", root / "tokenizer.json", root.parent / "tokenizer.model"):
        if candidate.is_file():
            return candidate
    raise CheckpointError("has no tokenizer: expected tokenizer.model (SentencePiece) or tokenizer.json (BPE)", root)


def read_vocab(root: Path, n_vocab: int, arch: str = "llama") -> Vocab:
    """The tokenizer beside the checkpoint of architecture ``arch``, padded to the embedding's
    ``n_vocab`` rows. Every token id is checked against ``n_vocab`` before anything is built
    from it: ids come from downloaded JSON, and a vocabulary is never built larger than the
    model's embedding."""
    vocab, path = _read(root, n_vocab, arch)
    if len(vocab.tokens) > n_vocab:
        raise CheckpointError(
            f"the tokenizer has {len(vocab.tokens)} tokens but the model's embedding has only {n_vocab} rows", path
        )
    for i in range(len(vocab.tokens), n_vocab):
        vocab.tokens.append(f"[PAD{i}]")
        vocab.scores.append(PAD_SCORE)
        vocab.types.append(gguf.TokenType.UNUSED)
    return vocab


def _read(root: Path, n_vocab: int, arch: str) -> tuple[Vocab, Path]:
    """The vocabulary llama.cpp's converter builds for ``arch``, and the file it came from."""
    spm, tj = root / "tokenizer.model", root / "tokenizer.json"
    if arch == "llama":
        path = find_tokenizer(root)
        return (_sentencepiece(path, root, n_vocab) if path.suffix == ".model" else _bpe(path, n_vocab)), path
    if arch in ("qwen2", "qwen3"):
        if spm.is_file():
            return _sentencepiece_hf(spm, root, n_vocab), spm
        return _bpe(_needed(tj, arch, "tokenizer.model (SentencePiece) or tokenizer.json (BPE)"), n_vocab), tj
    if arch == "gemma2" or (arch == "gemma3" and spm.is_file()):
        vocab = _sentencepiece_hf(_needed(spm, arch, "tokenizer.model (SentencePiece)"), root, n_vocab)
        return Vocab(vocab.model, vocab.pre, vocab.tokens, vocab.scores, vocab.types, add_space_prefix=False), spm
    if arch == "gemma3":
        return _bpe(_needed(tj, arch, "tokenizer.model (SentencePiece) or tokenizer.json (BPE)"), n_vocab), tj
    if arch == "phi3":
        if _tokenizer_class(root) == "GPT2Tokenizer":  # Phi-4
            return _bpe(_needed(tj, arch, "tokenizer.json (BPE), as its tokenizer_config.json says"), n_vocab), tj
        return _sentencepiece_hf(_needed(spm, arch, "tokenizer.model (SentencePiece)"), root, n_vocab, phi3=True), spm
    raise CheckpointError(
        f"llamashare has no vocabulary rules for architecture {arch!r}; known: {', '.join(ARCHITECTURES)}"
    )


def _needed(path: Path, arch: str, what: str) -> Path:
    if not path.is_file():
        raise CheckpointError(f"has no tokenizer: a {arch} checkpoint needs {what}", path.parent)
    return path


def _tokenizer_class(root: Path) -> object:
    tc = root / "tokenizer_config.json"
    return read_json(tc).get("tokenizer_class") if tc.is_file() else None


def _token_id(value: object, n_vocab: int, where: Path) -> int:
    """A token id from tokenizer JSON (an integer, or a string of digits as a key), which must
    name a row of the model's embedding."""
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 20:
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise CheckpointError(f"has a token id {json.dumps(value)[:40]} that is not an integer", where)
    if not 0 <= value < n_vocab:
        raise CheckpointError(
            f"has token id {value}, outside the model's vocabulary of {n_vocab} (its embedding's rows)", where
        )
    return value


def _token_entry(item: object, where: Path) -> tuple[object, str, bool]:
    """(id, text, special) of one added-token object."""
    if not isinstance(item, dict) or "id" not in item or not isinstance(item.get("content"), str):
        raise CheckpointError(f"has an added token that is not an object with an id and a text: {item!r:.60}", where)
    return item["id"], item["content"], bool(item.get("special"))


def _list_of(doc: dict[str, Any], key: str, where: Path) -> list[Any]:
    value = doc.get(key) or []
    if not isinstance(value, list):
        raise CheckpointError(f"{key!r} must be a list", where)
    return value


def _object_of(doc: dict[str, Any], key: str, where: Path) -> dict[str, Any]:
    value = doc.get(key) or {}
    if not isinstance(value, dict):
        raise CheckpointError(f"{key!r} must be an object", where)
    return value


def looks_special(text: str) -> bool:
    """Whether llama.cpp's converter makes an added token CONTROL although it is not marked
    special: some models mark real control tokens as plain ones (Gemma's ``<mask>``, ``<|…|>``)."""
    return (
        text in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
        or (text.startswith("<|") and text.endswith("|>"))
        or (text.startswith("<｜") and text.endswith("｜>"))
        or (text.startswith("<unused") and text.endswith(">"))
    )


def _added_tokens(root: Path, n_vocab: int) -> dict[int, tuple[str, bool]]:
    """Tokens added on top of the base tokenizer: id -> (text, special)."""
    out: dict[int, tuple[str, bool]] = {}
    tj = root / "tokenizer.json"
    if tj.is_file():
        for item in _list_of(read_json(tj), "added_tokens", tj):
            tid, text, special = _token_entry(item, tj)
            out[_token_id(tid, n_vocab, tj)] = (text, special)
    tc = root / "tokenizer_config.json"
    if tc.is_file():
        for key, item in _decoder_entries(tc):
            _, text, special = _token_entry(dict(item, id=key) if isinstance(item, dict) else item, tc)
            out.setdefault(_token_id(key, n_vocab, tc), (text, special))
    at = root / "added_tokens.json"
    if at.is_file():
        for text, tid in read_json(at).items():
            out.setdefault(_token_id(tid, n_vocab, at), (text, False))
    return out


def _decoder_entries(tc: Path) -> list[tuple[str, Any]]:
    return list(_object_of(read_json(tc), "added_tokens_decoder", tc).items())


def _load_sentencepiece(path: Path) -> Any:
    from sentencepiece import SentencePieceProcessor

    sp = SentencePieceProcessor()
    try:
        sp.LoadFromFile(str(path))
    except (OSError, RuntimeError) as exc:
        raise CheckpointError(f"is not a SentencePiece model: {exc}", path) from None
    return sp


def _sentencepiece_pieces(sp: Any) -> tuple[list[str], list[float], list[int]]:
    """Tokens, scores and types of every piece of a SentencePiece model, typed as llama.cpp's
    converter types them."""
    tokens: list[str] = []
    scores: list[float] = []
    types: list[int] = []  # gguf.TokenType values
    for i in range(sp.vocab_size()):
        kind = gguf.TokenType.NORMAL
        if sp.IsUnknown(i):
            kind = gguf.TokenType.UNKNOWN
        elif sp.IsControl(i):
            kind = gguf.TokenType.CONTROL
        elif sp.IsUnused(i):
            kind = gguf.TokenType.UNUSED
        elif sp.IsByte(i):
            kind = gguf.TokenType.BYTE
        tokens.append(sp.IdToPiece(i))
        scores.append(sp.GetScore(i))
        types.append(kind)
    return tokens, scores, types


def _sentencepiece(path: Path, root: Path, n_vocab: int) -> Vocab:
    """LLaMA's: the model's pieces, then added tokens, which must follow them in id order."""
    sp = _load_sentencepiece(path)
    tokens, scores, types = _sentencepiece_pieces(sp)
    added = {i: t for i, t in _added_tokens(root, n_vocab).items() if i >= len(tokens)}
    if added and sorted(added) != list(range(len(tokens), len(tokens) + len(added))):
        raise CheckpointError(
            f"added token ids {sorted(added)} do not follow the {len(tokens)} SentencePiece tokens", root
        )
    for i in sorted(added):
        text, special = added[i]
        tokens.append(text)
        scores.append(ADDED_SCORE)
        types.append(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED)
    named = {"bos": sp.bos_id(), "eos": sp.eos_id(), "unk": sp.unk_id()}
    return Vocab("llama", None, tokens, scores, types, {k: v for k, v in named.items() if v >= 0})


def _sentencepiece_hf(path: Path, root: Path, n_vocab: int, phi3: bool = False) -> Vocab:
    """The SentencePiece vocabulary llama.cpp's converter builds for Hugging Face models other
    than LLaMA: all ``n_vocab`` ids prefilled as ``[PAD<id>]`` UNUSED tokens, the model's pieces
    over them, then added tokens written over any id they name (added_tokens.json: USER_DEFINED;
    tokenizer_config.json's added_tokens_decoder: CONTROL if special, else USER_DEFINED; Phi-3
    also reads tokenizer.json's added_tokens, and judges by the special flag alone, where the
    others also take tokens that look special as CONTROL and give user-defined ones real spaces)."""
    sp = _load_sentencepiece(path)
    pieces, piece_scores, piece_types = _sentencepiece_pieces(sp)
    if len(pieces) > n_vocab:
        raise CheckpointError(
            f"the tokenizer has {len(pieces)} tokens but the model's embedding has only {n_vocab} rows", path
        )
    tokens = [f"[PAD{i}]" for i in range(n_vocab)]
    scores, types = [SPM_PAD_SCORE] * n_vocab, [int(gguf.TokenType.UNUSED)] * n_vocab
    tokens[: len(pieces)], scores[: len(pieces)], types[: len(pieces)] = pieces, piece_scores, piece_types

    def put(tid: int, text: str, kind: int) -> None:
        tokens[tid], scores[tid], types[tid] = text, ADDED_SCORE, kind

    at = root / "added_tokens.json"
    if at.is_file():
        for text, tid in read_json(at).items():
            put(_token_id(tid, n_vocab, at), text, gguf.TokenType.USER_DEFINED)
    tc = root / "tokenizer_config.json"
    entries: list[tuple[Path, object, str, bool]] = []
    if tc.is_file():
        for key, item in _decoder_entries(tc):
            _, text, special = _token_entry(dict(item, id=key) if isinstance(item, dict) else item, tc)
            entries.append((tc, key, text, special))
    tj = root / "tokenizer.json"
    if phi3 and tj.is_file():
        for item in _list_of(read_json(tj), "added_tokens", tj):
            entries.append((tj, *_token_entry(item, tj)))
    for where, raw, text, special in entries:
        tid = _token_id(raw, n_vocab, where)
        if special or (not phi3 and looks_special(text)):
            put(tid, text, gguf.TokenType.CONTROL)
        else:
            put(tid, text if phi3 else text.replace(SPM_SPACE, " "), gguf.TokenType.USER_DEFINED)
    return Vocab("llama", "default", tokens, scores, types)


def _bpe(path: Path, n_vocab: int) -> Vocab:
    doc = read_json(path)
    model = _object_of(doc, "model", path)
    if (
        model.get("type") != "BPE"
        or model.get("byte_fallback")
        or _object_of(doc, "decoder", path).get("type") != "ByteLevel"
    ):
        raise CheckpointError(
            "is not a byte-level BPE tokenizer (for SentencePiece-based ones, include tokenizer.model)", path
        )
    by_id: dict[int, str] = {_token_id(i, n_vocab, path): t for t, i in _object_of(model, "vocab", path).items()}
    special: set[int] = set()
    added: set[int] = set()
    for item in _list_of(doc, "added_tokens", path):
        raw, text, is_special = _token_entry(item, path)
        tid = _token_id(raw, n_vocab, path)
        added.add(tid)
        if is_special or looks_special(text):
            special.add(tid)
        else:
            text = text.replace(SPM_SPACE, " ")  # as llama.cpp's converter: user-defined tokens get real spaces
        by_id[tid] = text
    if not by_id:
        raise CheckpointError("has an empty vocabulary", path)
    size = max(by_id) + 1
    tokens: list[str] = []
    types: list[int] = []  # gguf.TokenType values
    for i in range(size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        tokens.append(by_id[i])
        types.append(
            gguf.TokenType.CONTROL
            if i in special
            else gguf.TokenType.USER_DEFINED
            if i in added
            else gguf.TokenType.NORMAL
        )
    return Vocab("gpt2", bpe_pre_tokenizer(doc.get("pre_tokenizer"), path), tokens, [0.0] * size, types)


def bpe_pre_tokenizer(pre: Any, where: Path) -> str:
    """llama.cpp's name for the way ``tokenizer.json`` splits text before BPE merges."""
    steps = pre.get("pretokenizers", []) if isinstance(pre, dict) and pre.get("type") == "Sequence" else [pre]
    steps = steps if isinstance(steps, list) else [steps]
    kinds = [s.get("type") if isinstance(s, dict) else None for s in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"  # GPT-2's own split pattern
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
        return "smollm"  # GPT-2's pattern, every digit on its own (SmolLM, SmolLM2)
    if kinds == ["Split", "ByteLevel"] and _plain_split(steps[0]) and steps[1].get("use_regex", True) is False:
        pattern = steps[0].get("pattern")
        regex = pattern.get("Regex") if isinstance(pattern, dict) else None
        if isinstance(regex, str) and regex in SPLIT_PRE_TOKENIZERS:
            return SPLIT_PRE_TOKENIZERS[regex]  # LLaMA 3, Qwen2
    raise CheckpointError(
        f"has a BPE pre-tokenizer llamashare does not know ({json.dumps(pre)[:120]}); known: GPT-2, SmolLM, LLaMA 3, Qwen2",
        where,
    )


def _plain_split(step: dict[str, Any]) -> bool:
    """A Split that keeps each match as its own piece (the only kind llama.cpp's regexes mean)."""
    return step.get("behavior", "Isolated") == "Isolated" and not step.get("invert", False)


def add_vocab(writer: gguf.GGUFWriter, root: Path, vocab: Vocab, arch: str = "llama") -> None:
    """Write the tokenizer keys: tokens, scores, types, merges, special ids, chat template."""
    writer.add_tokenizer_model(vocab.model)
    if vocab.pre is not None:
        writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    if vocab.model == "llama":
        writer.add_token_scores(vocab.scores)
    writer.add_token_types(vocab.types)
    if vocab.add_space_prefix is not None:
        writer.add_add_space_prefix(vocab.add_space_prefix)
    try:  # gguf-py reads tokenizer_config.json, tokenizer.json and config.json again, trusting their shapes
        special = gguf.SpecialVocab(root, load_merges=vocab.model == "gpt2", n_vocab=len(vocab.tokens))
    except (ValueError, TypeError, KeyError, AttributeError, IndexError) as exc:
        raise CheckpointError(f"its tokenizer files cannot be read: {str(exc)[:120]}", root) from None
    if not all(isinstance(m, str) for m in special.merges):
        raise CheckpointError("tokenizer.json has BPE merges that are not strings or pairs of strings", root)
    if vocab.model == "gpt2" and not special.merges:
        raise CheckpointError(
            "tokenizer.json has no BPE merges; llama.cpp cannot load a BPE vocabulary without them", root
        )
    if arch == "llama" and vocab.model == "llama" and "bos" not in special.special_token_ids:
        # Meta's release has no tokenizer_config.json: the SentencePiece model names bos/eos/unk.
        for kind, tid in vocab.model_special_ids.items():
            special.special_token_ids.setdefault(kind, tid)
        special.add_special_token.setdefault("bos", True)
        special.add_special_token.setdefault("eos", False)
    template = special.chat_template
    named = isinstance(template, list) and all(
        isinstance(c, dict) and isinstance(c.get("name", ""), str) and isinstance(c.get("template"), str | None)
        for c in template
    )
    if template is not None and not isinstance(template, str) and not named:
        raise CheckpointError("its chat template is neither text nor a list of named templates", root)
    try:
        special.add_to_gguf(writer, quiet=True)
    except (ValueError, TypeError, KeyError, AttributeError, IndexError) as exc:
        raise CheckpointError(f"its tokenizer files cannot be read: {str(exc)[:120]}", root) from None
