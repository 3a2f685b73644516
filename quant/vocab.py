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
    path = find_tokenizer(root)
    vocab = _sentencepiece(path, root) if path.suffix == ".model" else _bpe(path)
    if len(vocab.tokens) > n_vocab:
        raise CheckpointError(
            f"the tokenizer has {len(vocab.tokens)} tokens but the model's embedding has only {n_vocab} rows", path
        )
    for i in range(len(vocab.tokens), n_vocab):
        vocab.tokens.append(f"[PAD{i}]")
        vocab.scores.append(-1000.0)
        vocab.types.append(gguf.TokenType.UNUSED)
    return vocab


def _added_tokens(root: Path) -> dict[int, tuple[str, bool]]:
    """Tokens added on top of the base tokenizer: id -> (text, special)."""
    out: dict[int, tuple[str, bool]] = {}
    tj = root / "tokenizer.json"
    if tj.is_file():
        for item in read_json(tj).get("added_tokens") or []:
            out[int(item["id"])] = (item["content"], bool(item.get("special")))
    tc = root / "tokenizer_config.json"
    if tc.is_file():
        for tid, item in (read_json(tc).get("added_tokens_decoder") or {}).items():
            out.setdefault(int(tid), (item["content"], bool(item.get("special"))))
    at = root / "added_tokens.json"
    if at.is_file():
        for text, tid in read_json(at).items():
            out.setdefault(int(tid), (text, False))
    return out


def _sentencepiece(path: Path, root: Path) -> Vocab:
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
    added = {i: t for i, t in _added_tokens(root).items() if i >= len(tokens)}
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


def _bpe(path: Path) -> Vocab:
    doc = read_json(path)
    model = doc.get("model") or {}
    if (
        model.get("type") != "BPE"
        or model.get("byte_fallback")
        or (doc.get("decoder") or {}).get("type") != "ByteLevel"
    ):
        raise CheckpointError(
            "is not a byte-level BPE tokenizer (for SentencePiece-based ones, include tokenizer.model)", path
        )
    by_id: dict[int, str] = {int(i): t for t, i in model["vocab"].items()}
    special: set[int] = set()
    added: set[int] = set()
    for item in doc.get("added_tokens") or []:
        by_id[int(item["id"])] = item["content"]
        added.add(int(item["id"]))
        if item.get("special"):
            special.add(int(item["id"]))
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
    kinds = [s.get("type") if isinstance(s, dict) else None for s in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"  # GPT-2's own split pattern
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
        return "smollm"  # GPT-2's pattern, every digit on its own (SmolLM, SmolLM2)
    if kinds == ["Split", "ByteLevel"] and (steps[0].get("pattern") or {}).get("Regex") == LLAMA3_SPLIT:
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
    special = gguf.SpecialVocab(root, load_merges=vocab.model == "gpt2", n_vocab=len(vocab.tokens))
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
    special.add_to_gguf(writer, quiet=True)
