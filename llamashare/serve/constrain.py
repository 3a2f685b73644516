"""JSON replies that always parse: llguidance masks, at every step, the tokens a JSON schema
cannot continue with.

Why llguidance: it is the constrained-decoding library llama.cpp, vLLM and SGLang use (a Rust
Earley parser over the tokenizer's byte strings, a mask in ~50 µs a token), so nothing here parses
JSON or walks a schema. What it needs from us is the vocabulary as llama.cpp's own binding hands
it over: every token's bytes, control tokens (and user-defined ones that look like them) marked
with a leading 0xFF so no text can produce them, the end-of-generation ids, and a tokenize
function (ours, the same ids llama.cpp gives).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import llguidance
import llguidance.numpy as llnp
import numpy as np

from llamashare.infer.tokenizer import A_CONTROL, A_USER_DEFINED, GGUFTokenizer

#: Largest schema accepted, as JSON text (a schema is a few KiB; this bounds llguidance's work).
MAX_SCHEMA_CHARS = 64 * 1024


class _Vocabulary:
    """The tokenizer in the shape llguidance.TokenizerWrapper reads."""

    def __init__(self, tok: GGUFTokenizer) -> None:
        self.tok = tok
        eos = sorted(tok.eog) or ([tok.eos] if tok.eos is not None else [0])
        self.eos_token_id = tok.eos if tok.eos is not None else eos[0]
        self.bos_token_id = tok.bos
        self.tokens: list[bytes] = []
        self.special_token_ids: list[int] = []
        for i, text in enumerate(tok.tokens):
            attr = tok.attrs[i]
            if attr & A_CONTROL or (attr & A_USER_DEFINED and text.startswith("<") and text.endswith(">")):
                self.tokens.append(b"\xff" + text.encode("utf-8", "surrogatepass"))
                self.special_token_ids.append(i)
            else:
                self.tokens.append(tok.token_bytes(i))

    def __call__(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special=False, parse_special=False)


def vocabulary(tok: GGUFTokenizer) -> llguidance.LLTokenizer:
    """llguidance's view of ``tok`` (about a second for a large vocabulary: made once per model)."""
    return llguidance.LLTokenizer(llguidance.TokenizerWrapper(_Vocabulary(tok)), eos_token=sorted(tok.eog) or None)


def schema_of(spec: object) -> dict[str, Any] | bool:
    """A JSON schema from a request, checked for size and shape (llguidance judges the rest)."""
    if not isinstance(spec, (dict, bool)):
        raise ValueError("the JSON schema must be an object")
    if len(json.dumps(spec)) > MAX_SCHEMA_CHARS:
        raise ValueError(f"the JSON schema is over {MAX_SCHEMA_CHARS} characters")
    return spec


@dataclass
class Constraint:
    """One request's matcher: ``mask`` the logits before sampling, ``advance`` with the token."""

    matcher: llguidance.LLMatcher
    n_vocab: int

    def mask(self, logits: np.ndarray) -> np.ndarray:
        bits = llnp.allocate_token_bitmask(1, self.n_vocab)
        llnp.fill_next_token_bitmask(self.matcher, bits, 0)
        out = np.array(logits, dtype=np.float32).reshape(1, -1)
        llnp.apply_token_bitmask_inplace(out, bits)
        return out[0]

    def advance(self, token: int) -> None:
        self.matcher.consume_token(token)

    @property
    def finished(self) -> bool:
        """The value is complete: nothing but the end of generation can follow."""
        return self.matcher.is_stopped()


def constraint(lltok: llguidance.LLTokenizer, schema: dict[str, Any] | bool, n_vocab: int) -> Constraint:
    """A fresh matcher for ``schema``; a schema llguidance cannot compile is a ValueError."""
    # a boolean schema (true: anything, false: nothing) as the object form llguidance takes
    spec = schema if isinstance(schema, dict) else ({} if schema else {"not": {}})
    grammar = llguidance.LLMatcher.grammar_from_json_schema(spec, defaults={"whitespace_flexible": False})
    matcher = llguidance.LLMatcher(lltok, grammar, log_level=0)
    if matcher.is_error():
        raise ValueError(f"the JSON schema cannot be used: {matcher.get_error()[:200]}")
    return Constraint(matcher, n_vocab)
