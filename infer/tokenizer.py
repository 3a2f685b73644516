"""Text ↔ token ids from a GGUF's own vocabulary, giving the ids llama.cpp gives.

The merging itself is Hugging Face's ``tokenizers`` (a BPE model built from the GGUF's tokens and
merges); what is written here is llama.cpp's framing around it, which no library reproduces:

* special tokens are cut out of the text first, longest first, as ``tokenizer_st_partition``
  does — control tokens (``<|im_start|>``) only when ``parse_special`` is asked, user-defined
  tokens always;
* ``gpt2`` (byte-level BPE) vocabularies split each remaining fragment with the regexes llama.cpp
  uses for the vocabulary's ``tokenizer.ggml.pre`` name, then merge by rank;
* ``llama`` (SentencePiece) vocabularies get a leading space where llama.cpp adds one (first
  fragment and after a special token, if ``add_space_prefix``), spaces become ``▁``, and pieces
  merge by score — as a BPE whose merge ranks are the merged pieces' scores, highest first —
  with unknown characters falling back to ``<0xXX>`` byte tokens;
* BOS/EOS are added per ``tokenizer.ggml.add_bos_token`` / ``add_eos_token``.

Decoding is a byte map per token (the inverse of GPT-2's byte-to-unicode table, or ``▁`` → space
and ``<0xXX>`` → a byte), so a stream of tokens can be printed as UTF-8 completes.
"""

from __future__ import annotations

import codecs
import math
import re
from collections.abc import Callable
from functools import cache, partial
from typing import TypeVar

from tokenizers import Regex, Tokenizer, models, pre_tokenizers

from llamashare.errors import InferenceError
from llamashare.infer.model_file import ModelFile

# token types (gguf.TokenType / llama_token_type)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

_GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
#: llama.cpp's pre-tokenizer regexes per ``tokenizer.ggml.pre`` (src/llama-vocab.cpp), applied in turn.
PRE_TOKENIZERS: dict[str, list[str]] = {
    "default": [r"[\p{P}\$\+<=>\^~\|]+", _GPT2_SPLIT, r"\p{N}+", "[0-9][0-9][0-9]"],
    "gpt-2": [_GPT2_SPLIT],
    "smollm": [r"\p{N}", _GPT2_SPLIT],
    "llama-bpe": [
        r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
        r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    ],
}
#: Pre-tokenizers whose words are taken whole when the vocabulary has them (``ignore_merges``).
_IGNORE_MERGES = {"llama-bpe"}
#: Texts llama.cpp treats as end of generation besides the EOS/EOT/EOM ids (llama-vocab.cpp).
EOG_TEXTS = {
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "<|eom_id|>",
}


#: Pieces longer than this are not searched for merges (SentencePiece's own limit is 512).
MAX_MERGED_PIECE = 512

T = TypeVar("T")


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _tokenizers(failure: str, work: Callable[[], T]) -> T:
    """Run a call into Hugging Face's ``tokenizers``; its failures become InferenceError(failure:
    why). Its errors are plain ``Exception``s, and a Rust panic inside it arrives as
    ``pyo3_runtime.PanicException``, which derives from BaseException (so ``except Exception``
    misses it) and cannot be imported by name. KeyboardInterrupt and SystemExit pass through."""
    try:
        return work()
    except Exception as e:
        raise InferenceError(f"{failure}: {str(e)[:200]}") from None
    except BaseException as e:
        if type(e).__name__ != "PanicException":
            raise
        raise InferenceError(f"{failure} (a panic inside tokenizers): {str(e)[:200]}") from None


@cache
def gpt2_byte_map() -> dict[int, str]:
    """GPT-2's byte → printable character table: printable Latin-1 bytes map to themselves,
    the other 68 to U+0100 onwards, in byte order."""
    keep = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    extra = iter(range(256, 512))
    return {b: chr(b) if b in keep else chr(next(extra)) for b in range(256)}


class GGUFTokenizer:
    """Encode/decode with a model's vocabulary; built from the GGUF metadata alone."""

    def __init__(self, mf: ModelFile) -> None:
        meta = mf.meta
        self.model = meta("tokenizer.ggml.model")
        tokens = meta("tokenizer.ggml.tokens")
        if not isinstance(tokens, list) or not tokens:
            raise InferenceError(f"{mf.path}: has no tokenizer.ggml.tokens vocabulary")
        n = len(tokens)
        if not all(isinstance(t, str) for t in tokens):
            raise InferenceError(f"{mf.path}: tokenizer.ggml.tokens holds something other than strings")
        types = meta("tokenizer.ggml.token_type") or [NORMAL] * n
        if not isinstance(types, list):
            raise InferenceError(f"{mf.path}: tokenizer.ggml.token_type is not an array (a {type(types).__name__})")
        if len(types) != n:
            raise InferenceError(f"{mf.path}: tokenizer.ggml.token_type has {len(types)} entries for {n} tokens")
        if not all(isinstance(t, int) and not isinstance(t, bool) for t in types):
            raise InferenceError(f"{mf.path}: tokenizer.ggml.token_type holds something other than integers")
        self.tokens: list[str] = tokens
        self.types: list[int] = types
        self.n_vocab = n
        self.token_to_id = {t: i for i, t in enumerate(tokens)}  # later duplicates win, as in llama.cpp

        def special(key: str) -> int | None:
            v = meta(f"tokenizer.ggml.{key}_token_id")
            return v if isinstance(v, int) and 0 <= v < n else None

        self.bos, self.eos, self.unk = special("bos"), special("eos"), special("unknown")
        self.add_bos = bool(meta("tokenizer.ggml.add_bos_token", self.model == "llama"))
        self.add_eos = bool(meta("tokenizer.ggml.add_eos_token", False))
        self.add_space_prefix = bool(meta("tokenizer.ggml.add_space_prefix", self.model == "llama"))
        self.eog = {i for i in (self.eos, special("eot"), special("eom")) if i is not None}
        self.eog |= {i for i, t in enumerate(tokens) if t in EOG_TEXTS and types[i] in (CONTROL, USER_DEFINED)}
        # specials cut out of text before merging: longest first, as llama.cpp orders them
        specials = [i for i, t in enumerate(types) if t in (CONTROL, USER_DEFINED) and tokens[i]]
        self.specials = sorted(specials, key=lambda i: -len(tokens[i].encode()))
        if self.model == "gpt2":
            self.bpe = self._byte_level_bpe(mf, meta("tokenizer.ggml.pre", "default"))
            decode_char = {c: b for b, c in gpt2_byte_map().items()}
            self.piece = [self._gpt2_piece(t, ty, decode_char) for t, ty in zip(tokens, types)]
        elif self.model == "llama":
            self.bpe = self._sentencepiece_bpe(mf)
            self.piece = [self._spm_piece(t, ty) for t, ty in zip(tokens, types)]
        else:
            raise InferenceError(f"{mf.path}: tokenizer model {self.model!r} is not supported (gpt2, llama)")

    # -- building ------------------------------------------------------------------------------

    def _byte_level_bpe(self, mf: ModelFile, pre: object) -> Tokenizer:
        if not isinstance(pre, str) or pre not in PRE_TOKENIZERS:
            raise InferenceError(
                f"{mf.path}: BPE pre-tokenizer {pre!r} is not supported; known: {', '.join(PRE_TOKENIZERS)}"
            )
        merges = mf.meta("tokenizer.ggml.merges") or []
        if not isinstance(merges, list):
            raise InferenceError(f"{mf.path}: tokenizer.ggml.merges is not an array (a {type(merges).__name__})")
        vocab = self.token_to_id
        pairs = []
        for m in merges:
            if not isinstance(m, str):
                raise InferenceError(f"{mf.path}: tokenizer.ggml.merges holds {_show(m)}, not a string 'left right'")
            if " " not in m:
                continue
            left, right = m.split(" ", 1)
            # tokenizers refuses unknown halves and panics (a Rust panic) on an unknown result
            if left not in vocab or right not in vocab or left + right not in vocab:
                raise InferenceError(f"{mf.path}: BPE merge {_show(m)} names a token the vocabulary does not have")
            pairs.append((left, right))
        bpe = _tokenizers(
            f"{mf.path}: the vocabulary cannot be used by tokenizers",
            lambda: Tokenizer(models.BPE(vocab=vocab, merges=pairs, ignore_merges=pre in _IGNORE_MERGES)),
        )
        splits = [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in PRE_TOKENIZERS[pre]]
        bpe.pre_tokenizer = pre_tokenizers.Sequence(
            [*splits, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
        )
        return bpe

    def _sentencepiece_bpe(self, mf: ModelFile) -> Tokenizer:
        scores = mf.meta("tokenizer.ggml.scores") or [0.0] * self.n_vocab
        if not isinstance(scores, list):
            raise InferenceError(f"{mf.path}: tokenizer.ggml.scores is not an array (a {type(scores).__name__})")
        if len(scores) != self.n_vocab:
            raise InferenceError(
                f"{mf.path}: tokenizer.ggml.scores has {len(scores)} entries for {self.n_vocab} tokens"
            )
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in scores):
            raise InferenceError(f"{mf.path}: tokenizer.ggml.scores holds something other than finite numbers")
        vocab = self.token_to_id
        merges = []  # (score of the merged piece, its id, left, right)
        for piece, i in vocab.items():
            # every split of a piece is tried (quadratic in its length); SentencePiece's pieces are
            # at most 16 characters by default and 512 at most, so longer ones (only user-defined
            # tokens, matched whole by _partition) are never formed by merging
            if self.types[i] == BYTE or len(piece) > MAX_MERGED_PIECE:
                continue
            for k in range(1, len(piece)):
                left, right = piece[:k], piece[k:]
                if left in vocab and right in vocab:
                    merges.append((-scores[i], i, left, right))
        merges.sort()
        unk = self.tokens[self.unk] if self.unk is not None else None
        return _tokenizers(
            f"{mf.path}: the vocabulary cannot be used by tokenizers",
            lambda: Tokenizer(
                models.BPE(
                    vocab=vocab,
                    merges=[(a, b) for _, _, a, b in merges],
                    unk_token=unk,
                    byte_fallback=True,
                    fuse_unk=False,
                )
            ),
        )

    @staticmethod
    def _gpt2_piece(text: str, ttype: int, decode_char: dict[str, int]) -> bytes:
        if ttype in (CONTROL, UNUSED):
            return b""
        if ttype == USER_DEFINED:
            return text.encode()
        return bytes(decode_char[c] for c in text) if all(c in decode_char for c in text) else text.encode()

    @staticmethod
    def _spm_piece(text: str, ttype: int) -> bytes:
        if ttype in (CONTROL, UNUSED):
            return b""
        if ttype == BYTE and re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", text):
            return bytes([int(text[3:5], 16)])
        return text.replace("\u2581", " ").encode()

    # -- encoding ------------------------------------------------------------------------------

    def encode(self, text: str, add_special: bool = True, parse_special: bool = False) -> list[int]:
        """Token ids for ``text``, as ``llama_tokenize(text, add_special, parse_special)``."""
        out: list[int] = []
        if add_special and self.add_bos and self.bos is not None:
            out.append(self.bos)
        prev_special = True
        for frag in self._partition(text, parse_special):
            if isinstance(frag, int):
                out.append(frag)
                prev_special = True
                continue
            if self.model == "llama":
                frag = (" " + frag if self.add_space_prefix and prev_special else frag).replace(" ", "\u2581")
            out.extend(_tokenizers("tokenizing failed", partial(self.bpe.encode, frag, add_special_tokens=False)).ids)
            prev_special = False
        if add_special and self.add_eos and self.eos is not None:
            out.append(self.eos)
        return out

    def _partition(self, text: str, parse_special: bool) -> list[str | int]:
        """Cut special tokens out of ``text``: each in turn, longest first, splits every text
        fragment at its occurrences (llama.cpp's ``tokenizer_st_partition``)."""
        frags: list[str | int] = [text] if text else []
        for tid in self.specials:
            if self.types[tid] == CONTROL and not parse_special:
                continue
            tok = self.tokens[tid]
            if not any(isinstance(f, str) and tok in f for f in frags):
                continue
            split: list[str | int] = []
            for f in frags:
                if isinstance(f, int) or tok not in f:
                    split.append(f)
                    continue
                parts = f.split(tok)
                for j, part in enumerate(parts):
                    if j:
                        split.append(tid)
                    if part:
                        split.append(part)
            frags = split
        return frags

    # -- decoding ------------------------------------------------------------------------------

    def token_bytes(self, tid: int) -> bytes:
        return self.piece[tid] if 0 <= tid < self.n_vocab else b""

    def decode(self, ids: list[int]) -> str:
        return b"".join(self.token_bytes(i) for i in ids).decode("utf-8", errors="replace")

    def streamer(self) -> TextStream:
        return TextStream(self)


class TextStream:
    """Turns tokens into text as they come, holding back bytes of an unfinished UTF-8 character."""

    def __init__(self, tok: GGUFTokenizer) -> None:
        self.tok = tok
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, tid: int) -> str:
        return self.decoder.decode(self.tok.token_bytes(tid))

    def flush(self) -> str:
        return self.decoder.decode(b"", final=True)
