"""Tokenizers into GGUF metadata: SentencePiece (``tokenizer.model``) or byte-level BPE
(``tokenizer.json``), with the token types, scores, merges and special ids llama.cpp reads.

Choices follow llama.cpp's converter for the ``llama`` architecture: SentencePiece first when a
``tokenizer.model`` exists (LLaMA 1/2, Vicuna, Mistral), else GPT-2-style BPE (LLaMA 3,
SmolLM). Added tokens are CONTROL when marked special, USER_DEFINED otherwise; ids the tokenizer
does not cover up to the model's vocabulary size become ``[PAD<id>]`` UNUSED tokens. The BPE
pre-tokenizer (how text is split before merging) is named from ``tokenizer.json``'s own
pre-tokenizer description; an unknown one is an error, because a wrong guess tokenizes silently
wrong. Special ids, ``add_bos``/``add_eos`` and the chat template come from gguf-py's
``SpecialVocab``, which reads tokenizer_config.json, tokenizer.json and config.json.
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


@dataclass(frozen=True)
class Vocab:
    model: str  # tokenizer.ggml.model: "llama" (SentencePiece) or "gpt2" (byte-level BPE)
    pre: str | None  # tokenizer.ggml.pre, BPE only
    tokens: list[str]
    scores: list[float]
    types: list[int]  # gguf.TokenType values
    model_special_ids: dict[str, int] = field(default_factory=dict)  # bos/eos/unk the SentencePiece model names


def find_tokenizer(root: Path) -> Path:
    """tokenizer.model (also one folder up, as in Meta's release) or tokenizer.json."""
    for candidate in (root / "tokenizer.model", root / "tokenizer.json", root.parent / "tokenizer.model"):
        if candidate.is_file():
            return candidate
    raise CheckpointError("has no tokenizer: expected tokenizer.model (SentencePiece) or tokenizer.json (BPE)", root)


def read_vocab(root: Path, n_vocab: int) -> Vocab:
    """The tokenizer beside the checkpoint, padded to the embedding's ``n_vocab`` rows. Every
    token id is checked against ``n_vocab`` before anything is built from it: ids come from
    downloaded JSON, and a vocabulary is never built larger than the model's embedding."""
    path = find_tokenizer(root)
    vocab = _sentencepiece(path, root, n_vocab) if path.suffix == ".model" else _bpe(path, n_vocab)
    if len(vocab.tokens) > n_vocab:
        raise CheckpointError(
            f"the tokenizer has {len(vocab.tokens)} tokens but the model's embedding has only {n_vocab} rows", path
        )
    for i in range(len(vocab.tokens), n_vocab):
        vocab.tokens.append(f"[PAD{i}]")
        vocab.scores.append(-1000.0)
        vocab.types.append(gguf.TokenType.UNUSED)
    return vocab


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
        for key, item in _object_of(read_json(tc), "added_tokens_decoder", tc).items():
            _, text, special = _token_entry(dict(item, id=key) if isinstance(item, dict) else item, tc)
            out.setdefault(_token_id(key, n_vocab, tc), (text, special))
    at = root / "added_tokens.json"
    if at.is_file():
        for text, tid in read_json(at).items():
            out.setdefault(_token_id(tid, n_vocab, at), (text, False))
    return out


def _sentencepiece(path: Path, root: Path, n_vocab: int) -> Vocab:
    from sentencepiece import SentencePieceProcessor

    sp = SentencePieceProcessor()
    try:
        sp.LoadFromFile(str(path))
    except (OSError, RuntimeError) as exc:
        raise CheckpointError(f"is not a SentencePiece model: {exc}", path) from None
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
    added = {i: t for i, t in _added_tokens(root, n_vocab).items() if i >= len(tokens)}
    if added and sorted(added) != list(range(len(tokens), len(tokens) + len(added))):
        raise CheckpointError(
            f"added token ids {sorted(added)} do not follow the {len(tokens)} SentencePiece tokens", root
        )
    for i in sorted(added):
        text, special = added[i]
        tokens.append(text)
        scores.append(-1000.0)
        types.append(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED)
    named = {"bos": sp.bos_id(), "eos": sp.eos_id(), "unk": sp.unk_id()}
    return Vocab("llama", None, tokens, scores, types, {k: v for k, v in named.items() if v >= 0})


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
        by_id[tid] = text
        added.add(tid)
        if is_special:
            special.add(tid)
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
    pattern = steps[0].get("pattern") if kinds == ["Split", "ByteLevel"] else None
    if isinstance(pattern, dict) and pattern.get("Regex") == LLAMA3_SPLIT:
        return "llama-bpe"  # LLaMA 3
    raise CheckpointError(
        f"has a BPE pre-tokenizer llamashare does not know ({json.dumps(pre)[:120]}); known: GPT-2, SmolLM, LLaMA 3",
        where,
    )


def add_vocab(writer: gguf.GGUFWriter, root: Path, vocab: Vocab) -> None:
    """Write the tokenizer keys: tokens, scores, types, merges, special ids, chat template."""
    writer.add_tokenizer_model(vocab.model)
    if vocab.pre is not None:
        writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    if vocab.model == "llama":
        writer.add_token_scores(vocab.scores)
    writer.add_token_types(vocab.types)
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
    if vocab.model == "llama" and "bos" not in special.special_token_ids:
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
