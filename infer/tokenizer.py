"""Text ↔ token ids from a GGUF's own vocabulary, giving the ids llama.cpp gives.

The merging itself is Hugging Face's ``tokenizers`` (a BPE model built from the GGUF's tokens and
merges); what is written here is llama.cpp's framing around it, which no library reproduces:

* every token gets llama.cpp's attributes: its type from ``tokenizer.ggml.token_type``, plus the
  overrides llama.cpp applies at load time (end-of-generation and fill-in-the-middle texts such
  as ``<|im_end|>`` or ``</s>`` become control tokens whatever the file says; a vocabulary named
  Phi-3 strips the whitespace after its special tokens);
* special tokens are cut out of the text first, longest first, as ``tokenizer_st_partition``
  does — control and unknown tokens (``<|im_start|>``, ``<unk>``) only when ``parse_special`` is
  asked, user-defined tokens always;
* ``gpt2`` (byte-level BPE) vocabularies split each remaining fragment with the regexes llama.cpp
  uses for the vocabulary's ``tokenizer.ggml.pre`` name, then merge by rank;
* ``llama`` (SentencePiece) vocabularies get a leading space where llama.cpp adds one (first
  fragment and after a special token, if ``add_space_prefix``: Gemma's vocabularies say no),
  spaces become ``▁``, and pieces merge by score — as a BPE whose merge ranks are the merged
  pieces' scores, highest first — with unknown characters falling back to ``<0xXX>`` byte tokens;
* BOS/EOS ids and whether they are added default as llama.cpp's do for the vocabulary type (and
  pre-tokenizer), overridden by ``tokenizer.ggml.*`` keys.

Decoding is llama.cpp's ``token_to_piece`` without special tokens: a byte string per token (the
inverse of GPT-2's byte-to-unicode table, or ``▁`` → space and ``<0xXX>`` → a byte, user-defined
tokens as written, control and unknown tokens as nothing), so a stream of tokens can be printed
as UTF-8 completes.
"""

from __future__ import annotations

import codecs
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache, partial
from pathlib import Path
from typing import Protocol, TypeVar

from tokenizers import Regex, Tokenizer, models, pre_tokenizers

from llamashare.errors import InferenceError
from llamashare.quant.gguf_file import GGUFHeader, read_header

# token types (gguf.TokenType / llama_token_type)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
# token attributes (llama_token_attr bits): what llama.cpp decides from the type and the overrides
A_UNKNOWN, A_UNUSED, A_NORMAL, A_CONTROL, A_USER_DEFINED, A_BYTE = 1, 2, 4, 8, 16, 32
A_LSTRIP, A_RSTRIP = 128, 256
_ATTR_OF_TYPE = {
    NORMAL: A_NORMAL,
    UNKNOWN: A_UNKNOWN,
    CONTROL: A_CONTROL,
    USER_DEFINED: A_USER_DEFINED,
    UNUSED: A_UNUSED,
    BYTE: A_BYTE,
}
#: Attributes of the tokens cut out of text before merging (llama.cpp's special-token cache).
A_SPECIAL = A_CONTROL | A_USER_DEFINED | A_UNKNOWN
#: The characters C's isspace() accepts: what llama.cpp strips beside an lstrip/rstrip token.
C_SPACE = " \t\n\v\f\r"

_GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_CONTRACTIONS = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
_LLAMA3_SPLIT = (
    _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_QWEN35_SPLIT = (
    _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


@dataclass(frozen=True)
class PreTokenizer:
    """How llama.cpp splits text before BPE merges, for one family of ``tokenizer.ggml.pre`` names."""

    regexes: tuple[str, ...]  # applied in turn, each splitting the pieces the previous one left
    ignore_merges: bool = False  # a word the vocabulary has whole is taken whole
    add_bos: bool = False  # llama.cpp's add_bos when tokenizer.ggml.add_bos_token is absent


_DEFAULT = PreTokenizer((r"[\p{P}\$\+<=>\^~\|]+", _GPT2_SPLIT, r"\p{N}+", "[0-9][0-9][0-9]"))
_GPT2 = PreTokenizer((_GPT2_SPLIT,))
_SMOLLM = PreTokenizer((r"\p{N}", _GPT2_SPLIT))
_LLAMA3 = PreTokenizer((_LLAMA3_SPLIT,), ignore_merges=True, add_bos=True)
_QWEN2 = PreTokenizer((_QWEN2_SPLIT,))
#: llama.cpp's pre-tokenizers per ``tokenizer.ggml.pre`` (src/llama-vocab.cpp): the names it maps
#: to the regex sets above (each set matched by one of its hand-written splitters or by the regex).
PRE_TOKENIZERS: dict[str, PreTokenizer] = {
    "default": _DEFAULT,
    **dict.fromkeys(
        ("gpt-2", "phi-2", "mpt", "olmo", "jais", "trillion", "granite-docling", "exaone4", "mellum", "modern-bert"),
        _GPT2,
    ),
    **dict.fromkeys(
        ("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b", "mellum2"), _SMOLLM
    ),
    **dict.fromkeys(
        ("llama-bpe", "llama3", "llama-v3", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2"), _LLAMA3
    ),
    **dict.fromkeys(("dbrx", "smaug-bpe"), PreTokenizer((_LLAMA3_SPLIT,))),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "megrez", "stablelm2", "hunyuan"), _QWEN2),
    "qwen35": PreTokenizer((_QWEN35_SPLIT,)),
}
#: Texts llama.cpp treats as end of generation, made control tokens whatever their type (llama-vocab.cpp).
EOG_TEXTS = {
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
}
#: Fill-in-the-middle tokens llama.cpp finds by text when the file names none of that kind: the
#: first one found becomes a control token; pad, repo and file-separator ones end generation too.
FIM_TEXTS: dict[str, tuple[str, ...]] = {
    "fim_pre": ("<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>", "▁<PRE>")
    + ("<|code_prefix|>", "<|prefix|>"),
    "fim_suf": ("<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>", "▁<SUF>")
    + ("<|code_suffix|>", "<|suffix|>"),
    "fim_mid": ("<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>", "▁<MID>")
    + ("<|code_middle|>", "<|middle|>"),
    "fim_pad": ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"),
    "fim_rep": ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"),
    "fim_sep": ("<|file_sep|>",),
}
#: Older key names llama.cpp also reads for the first three kinds.
_FIM_OLD_KEYS = {"fim_pre": "prefix", "fim_suf": "suffix", "fim_mid": "middle"}
_FIM_EOG = ("fim_pad", "fim_rep", "fim_sep")


#: Pieces longer than this are not searched for merges (SentencePiece's own limit is 512).
MAX_MERGED_PIECE = 512

T = TypeVar("T")


class Metadata(Protocol):
    """What a tokenizer needs of a GGUF file: its metadata (ModelFile, or VocabFile for a
    vocabulary-only file with no architecture or tensors)."""

    @property
    def path(self) -> Path: ...

    def meta(self, key: str, default: object = None) -> object: ...


class VocabFile:
    """A GGUF's header alone: enough for its tokenizer, whatever its architecture or tensors
    (llama.cpp's vocabulary-only files have none)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.header: GGUFHeader = read_header(self.path)

    def meta(self, key: str, default: object = None) -> object:
        return self.header.value(key, default)


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


@cache
def _gpt2_char_to_byte() -> dict[str, int]:
    return {c: b for b, c in gpt2_byte_map().items()}


def _flag(value: object, default: bool) -> bool:
    """A boolean key as llama.cpp reads it: the file's value if it is a boolean, else the default."""
    return value if isinstance(value, bool) else default


def _hex_byte(text: str) -> int:
    """The byte of a ``<0xXX>`` token as llama.cpp reads it (``strtol`` of the two characters
    after ``<0x``; 0 when they are not hex digits)."""
    digits = re.match(r"[0-9A-Fa-f]*", text[3:5])
    return int(digits.group(), 16) if digits and digits.group() else 0


def _gpt2_text_bytes(text: str) -> bytes:
    """A byte-level BPE token's bytes (llama.cpp's ``llama_decode_text``): each character through
    GPT-2's table; one outside it becomes ``[UNK_BYTE_0x<its UTF-8>`` + the token + ``]``."""
    table = _gpt2_char_to_byte()
    out = bytearray()
    for c in text:
        if c in table:
            out.append(table[c])
        else:
            out += f"[UNK_BYTE_0x{c.encode('utf-8', 'surrogatepass').hex()}{text}]".encode("utf-8", "surrogatepass")
    return bytes(out)


def _cut(text: str, tid: int, tok: str, attr: int) -> list[str | int]:
    """``text`` split at each occurrence of the special token ``tok`` (id ``tid``), left to right;
    whitespace beside it is dropped on the side its LSTRIP/RSTRIP attribute says."""
    out: list[str | int] = []
    pos = 0
    while (match := text.find(tok, pos)) >= 0:
        left = text[pos:match]
        if attr & A_LSTRIP:
            left = left.rstrip(C_SPACE)
        if left:
            out.append(left)
        out.append(tid)
        pos = match + len(tok)
        if attr & A_RSTRIP:
            while pos < len(text) and text[pos] in C_SPACE:
                pos += 1
    if pos < len(text):
        out.append(text[pos:])
    return out


class GGUFTokenizer:
    """Encode/decode with a model's vocabulary; built from the GGUF metadata alone."""

    def __init__(self, mf: Metadata) -> None:
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
        if self.model not in ("gpt2", "llama"):
            raise InferenceError(f"{mf.path}: tokenizer model {_show(self.model)} is not supported (gpt2, llama)")
        # llama.cpp renames empty tokens, so that no text maps to them
        self.tokens: list[str] = [t or f"[EMPTY_{i}]" for i, t in enumerate(tokens)]
        self.types: list[int] = types
        self.n_vocab = n
        self.token_to_id = {t: i for i, t in enumerate(self.tokens)}  # later duplicates win, as in llama.cpp
        spm = self.model == "llama"
        pre_name = meta("tokenizer.ggml.pre") or "default"
        pre = None if spm else self._pre_tokenizer(mf, pre_name)

        def special(key: str, default: int | None) -> int | None:
            """A special id: the file's if in range, else llama.cpp's default for the vocabulary type."""
            v = meta(f"tokenizer.ggml.{key}_token_id")
            if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < n:
                return v
            return default if default is not None and 0 <= default < n else None

        self.bos = special("bos", 1 if spm else 11)
        self.eos = special("eos", 2 if spm else 11)
        self.unk = special("unknown", 0 if spm else None)
        self.add_bos = _flag(meta("tokenizer.ggml.add_bos_token"), spm or (pre is not None and pre.add_bos))
        self.add_eos = _flag(meta("tokenizer.ggml.add_eos_token"), False)
        self.add_space_prefix = _flag(meta("tokenizer.ggml.add_space_prefix"), spm)
        self.attrs = [_ATTR_OF_TYPE.get(t, 0) for t in types]  # another type: llama.cpp's "undefined"
        self.eog = self._end_of_generation(special)
        # cut out of text before merging: longest first, as llama.cpp orders them
        specials = [i for i, a in enumerate(self.attrs) if a & A_SPECIAL]
        self.specials = sorted(specials, key=lambda i: -len(self.tokens[i].encode("utf-8", "surrogatepass")))
        self._strip_like_llama_cpp(meta("general.name"))
        if pre is not None:
            self.bpe = self._byte_level_bpe(mf, pre)
            self._piece = self._gpt2_piece
        else:
            self.bpe = self._sentencepiece_bpe(mf)
            self._piece = self._spm_piece
        # each token's bytes, made when first decoded: making all 49k of SmolLM2's took 0.1 s of
        # every start-up, for the few dozen a short generation prints
        self._pieces: dict[int, bytes] = {}

    # -- building ------------------------------------------------------------------------------

    @staticmethod
    def _pre_tokenizer(mf: Metadata, name: object) -> PreTokenizer:
        if not isinstance(name, str) or name not in PRE_TOKENIZERS:
            first: dict[int, str] = {}
            for other, pre in PRE_TOKENIZERS.items():
                first.setdefault(id(pre), other)
            known = ", ".join(first.values())
            raise InferenceError(
                f"{mf.path}: BPE pre-tokenizer {_show(name)} is not supported; known: {known} (and their aliases)"
            )
        return PRE_TOKENIZERS[name]

    def _end_of_generation(self, special: Callable[[str, int | None], int | None]) -> set[int]:
        """The ids that end generation, as llama.cpp collects them; the tokens it finds by text
        become control tokens (so ``parse_special`` decides whether text can produce them)."""
        eog: set[int] = set()
        for kind, texts in FIM_TEXTS.items():
            tid = special(kind, None)
            if tid is None and kind in _FIM_OLD_KEYS:
                tid = special(_FIM_OLD_KEYS[kind], None)
            if tid is None:  # llama.cpp takes the first it meets; a vocabulary has one of each
                tid = min((self.token_to_id[t] for t in texts if t in self.token_to_id), default=None)
                if tid is not None:
                    self.attrs[tid] |= A_CONTROL
            if tid is not None and kind in _FIM_EOG:
                eog.add(tid)
        for text in EOG_TEXTS & self.token_to_id.keys():
            tid = self.token_to_id[text]
            self.attrs[tid] |= A_CONTROL
            eog.add(tid)
        eog |= {i for i in (self.eos, special("eot", None), special("eom", None)) if i is not None}
        return eog

    def _strip_like_llama_cpp(self, name: object) -> None:
        """llama.cpp's per-model whitespace stripping: a vocabulary whose ``general.name`` says
        Phi-3 drops whitespace after its special tokens (except ``<unk>``, ``<s>``, ``<|endoftext|>``)."""
        lowered = name.encode("utf-8", "surrogatepass").lower() if isinstance(name, str) else b""
        if b"phi-3" not in lowered and b"phi3" not in lowered:
            return
        for i in self.specials:
            self.attrs[i] |= A_RSTRIP
        for text, on in (("</s>", True), ("<unk>", False), ("<s>", False), ("<|endoftext|>", False)):
            if text in self.token_to_id:
                i = self.token_to_id[text]
                self.attrs[i] = self.attrs[i] | A_RSTRIP if on else self.attrs[i] & ~A_RSTRIP

    def _byte_level_bpe(self, mf: Metadata, pre: PreTokenizer) -> Tokenizer:
        merges = mf.meta("tokenizer.ggml.merges") or []
        if not isinstance(merges, list):
            raise InferenceError(f"{mf.path}: tokenizer.ggml.merges is not an array (a {type(merges).__name__})")
        vocab = self.token_to_id
        pairs = []
        for m in merges:
            if not isinstance(m, str):
                raise InferenceError(f"{mf.path}: tokenizer.ggml.merges holds {_show(m)}, not a string 'left right'")
            cut = m.find(" ", 1)  # as llama.cpp: the first space after the first character
            if cut < 0:
                continue
            left, right = m[:cut], m[cut + 1 :]
            # tokenizers refuses unknown halves and panics (a Rust panic) on an unknown result
            if left not in vocab or right not in vocab or left + right not in vocab:
                raise InferenceError(f"{mf.path}: BPE merge {_show(m)} names a token the vocabulary does not have")
            pairs.append((left, right))
        bpe = _tokenizers(
            f"{mf.path}: the vocabulary cannot be used by tokenizers",
            lambda: Tokenizer(models.BPE(vocab=vocab, merges=pairs, ignore_merges=pre.ignore_merges)),
        )
        splits = [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in pre.regexes]
        bpe.pre_tokenizer = pre_tokenizers.Sequence(
            [*splits, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
        )
        return bpe

    def _sentencepiece_bpe(self, mf: Metadata) -> Tokenizer:
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

    def _gpt2_piece(self, i: int) -> bytes:
        """llama.cpp's ``token_to_piece`` for a byte-level BPE token, special tokens not rendered."""
        attr, text = self.attrs[i], self.tokens[i]
        if attr & (A_CONTROL | A_UNKNOWN):
            return b""
        if attr & A_USER_DEFINED:
            return text.encode("utf-8", "surrogatepass")
        if attr & A_NORMAL:
            return _gpt2_text_bytes(text)
        if attr & A_BYTE:
            return bytes([_hex_byte(text)])
        return b""  # unused and undefined tokens render as nothing

    def _spm_piece(self, i: int) -> bytes:
        """llama.cpp's ``token_to_piece`` for a SentencePiece token, special tokens not rendered."""
        attr, text = self.attrs[i], self.tokens[i]
        if attr & (A_CONTROL | A_UNKNOWN):
            return b""
        if attr & A_USER_DEFINED:
            return text.encode("utf-8", "surrogatepass")
        if attr & A_NORMAL:
            return text.replace("\u2581", " ").encode("utf-8", "surrogatepass")
        if attr & A_BYTE:
            return bytes([_hex_byte(text)])
        return b""

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
            attr = self.attrs[tid]
            if attr & (A_CONTROL | A_UNKNOWN) and not parse_special:
                continue
            tok = self.tokens[tid]
            if not any(isinstance(f, str) and tok in f for f in frags):
                continue
            split: list[str | int] = []
            for f in frags:
                split.extend(_cut(f, tid, tok, attr) if isinstance(f, str) and tok in f else [f])
            frags = split
        return frags

    # -- decoding ------------------------------------------------------------------------------

    def token_bytes(self, tid: int) -> bytes:
        if not 0 <= tid < self.n_vocab:
            return b""
        piece = self._pieces.get(tid)
        if piece is None:
            piece = self._pieces[tid] = self._piece(tid)
        return piece

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
