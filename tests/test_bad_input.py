"""Bad input gets one clean error: a LlamashareError subclass with a one-line message, never a
traceback.

First the cases attackers found (each a traceback before): GGUF metadata of the wrong type,
tokenizer merges that do not fit the vocabulary, tensors with a zero dimension, config.json
values of the wrong type, hostile safetensors headers, prompt files that are not UTF-8. Then
hypothesis generates each class, not only these cases: wrong-typed metadata and config values,
tokenizer entries, tensor shapes, views and nesting, hostile chat templates — and the only
exception ever raised is the module's own error class. Bounded: fixed example counts,
derandomized, no deadline per example (conversions take milliseconds, a hostile template at
most the render's time budget).
"""

from __future__ import annotations

import json
import math
import re
import resource
import shutil
import struct
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import gguf
import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llamashare.cli import cli
from llamashare.errors import CheckpointError, InferenceError, LlamashareError, QuantizeError
from llamashare.infer.model import Llama
from llamashare.infer.model_file import ModelFile
from llamashare.infer.tokenizer import GGUFTokenizer
from llamashare.quant import safetensors_io
from llamashare.quant.convert import convert
from llamashare.quant.gguf_file import TensorInfo, read_header
from llamashare.quant.quantize import quantize_file
from llamashare.quant.torch_pickle import TorchArchive
from tests.hostile import (
    DELETE,
    View,
    gguf_kv,
    gguf_value_of,
    hf_model,
    rewrite_gguf,
    view_pickle,
    write_pth,
)

V = gguf.GGUFValueType


def one_line(exc: BaseException) -> None:
    assert str(exc).strip() and "\n" not in str(exc).strip(), str(exc)


#: Refusals seen, by message with numbers and paths blanked: printed by each generated test
#: (pytest -s), to show which checks the generated input reaches.
REFUSALS: Counter[str] = Counter()


def only(kind: type[LlamashareError], work: Callable[[], object]) -> bool:
    """Run ``work``; True if it succeeded, False if it raised ``kind`` (one line); any other
    exception fails the test."""
    try:
        work()
    except kind as e:
        one_line(e)
        REFUSALS[re.sub(r"\d+", "N", re.sub(r"/\S+?: ", "", str(e)))[:100]] += 1
        return False
    return True


def report(name: str, seen: dict[Any, int]) -> None:
    print(f"\n{name}: {seen}; refusals by kind:")
    for message, n in REFUSALS.most_common():
        print(f"  {n:4d}  {message}")
    REFUSALS.clear()


BOUNDED = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return hf_model(tmp_path_factory.mktemp("bad") / "m")


@pytest.fixture(scope="module")
def small_gguf(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bad") / "m.gguf"
    convert(model_dir, out, "f32")
    return out


def load_all(path: Path) -> None:
    """Everything ``run`` does with a file before generating: header, tokenizer, weights, a token."""
    mf = ModelFile(path)
    tok = GGUFTokenizer(mf)
    tok.encode("Hello world, 2024!", parse_special=True)
    Llama(path, n_ctx=16)


# -- 5, 6: GGUF metadata -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key, vtype, value, message",
    [
        (
            "llama.attention.head_count_kv",
            V.STRING,
            "2",
            "llama.attention.head_count_kv is not a positive integer ('2')",
        ),
        ("llama.context_length", V.STRING, "256", "llama.context_length is not a positive integer ('256')"),
        ("llama.rope.freq_base", V.STRING, "1e4", "llama.rope.freq_base is missing or not a finite number ('1e4')"),
        ("llama.rope.scaling.factor", V.STRING, "4", "llama.rope.scaling.factor is missing or not a finite number"),
        ("llama.attention.head_count", V.FLOAT32, 1e-45, "llama.attention.head_count is not a positive integer"),
        ("llama.attention.head_count", V.FLOAT32, math.nan, "llama.attention.head_count is not a positive integer"),
        ("llama.block_count", V.FLOAT64, math.inf, "llama.block_count is not a positive integer (inf)"),
        ("llama.attention.layer_norm_rms_epsilon", V.FLOAT32, math.nan, "layer_norm_rms_epsilon is missing or not a"),
        ("llama.rope.freq_base", V.FLOAT32, -1.0, "llama.rope.freq_base is not a finite positive number (-1.0)"),
        ("llama.embedding_length", V.BOOL, True, "llama.embedding_length is not a positive integer (True)"),
    ],
)
def test_wrong_typed_metadata_is_one_line(
    small_gguf: Path, tmp_path: Path, key: str, vtype: int, value: Any, message: str
) -> None:
    """Before: string or tiny/NaN/inf float counts became ZeroDivisionError, ValueError or
    OverflowError tracebacks (model_file's need() took any float)."""
    bad = rewrite_gguf(small_gguf, tmp_path / "bad.gguf", {key: gguf_kv(key, vtype, value)})
    with pytest.raises(InferenceError, match="metadata key") as info:
        load_all(bad)
    assert message in str(info.value)
    result = CliRunner().invoke(cli, ["run", str(bad), "-p", "hi", "-n", "1"])
    assert result.exit_code == 2 and "Traceback" not in result.output and message in result.output


def as_sentencepiece(small_gguf: Path, tmp_path: Path, scores: list[float]) -> Path:
    n = len(gguf_value_of(small_gguf, "tokenizer.ggml.tokens"))
    assert len(scores) < n
    return rewrite_gguf(
        small_gguf,
        tmp_path / "spm.gguf",
        {
            "tokenizer.ggml.model": gguf_kv("tokenizer.ggml.model", V.STRING, "llama"),
            "tokenizer.ggml.scores": gguf_kv("tokenizer.ggml.scores", V.ARRAY, (V.FLOAT32, scores)),
        },
    )


def test_scores_shorter_than_the_vocabulary(small_gguf: Path, tmp_path: Path) -> None:
    """Before: an IndexError traceback while building the SentencePiece merges."""
    bad = as_sentencepiece(small_gguf, tmp_path, [0.0] * 10)
    with pytest.raises(InferenceError, match=r"tokenizer.ggml.scores has 10 entries for 300 tokens"):
        GGUFTokenizer(ModelFile(bad))


@pytest.mark.parametrize(
    "merges, message",
    [
        ((V.INT32, [1, 2, 3]), "tokenizer.ggml.merges holds 1, not a string 'left right'"),
        ((V.STRING, ["Ġ t", "zz qq"]), "BPE merge 'zz qq' names a token the vocabulary does not have"),
        ((V.STRING, ["q z"]), "BPE merge 'q z' names a token the vocabulary does not have"),  # 'qz' is not one
    ],
)
def test_merges_that_do_not_fit_the_vocabulary(small_gguf: Path, tmp_path: Path, merges: tuple, message: str) -> None:
    """Before: int merges were a TypeError, unknown halves a tokenizers Exception, and a merge
    whose result is unknown a pyo3 PanicException (a BaseException) at the first encode."""
    tokens = gguf_value_of(small_gguf, "tokenizer.ggml.tokens")
    assert "qz" not in tokens and "q" in tokens and "z" in tokens
    bad = rewrite_gguf(
        small_gguf, tmp_path / "m.gguf", {"tokenizer.ggml.merges": gguf_kv("tokenizer.ggml.merges", V.ARRAY, merges)}
    )
    with pytest.raises(InferenceError) as info:
        GGUFTokenizer(ModelFile(bad)).encode("the theta")
    assert message in str(info.value)


def test_nested_metadata_arrays_are_bounded(tmp_path: Path) -> None:
    """An array of arrays 100,000 deep: a RecursionError before, one QuantizeError now."""
    key = struct.pack("<Q", 1) + b"x" + struct.pack("<I", V.ARRAY)  # key "x": an array of one array...
    body = key + struct.pack("<IQ", V.ARRAY, 1) * 100_000 + struct.pack("<IQ", V.UINT8, 0)  # ...100,000 deep
    (tmp_path / "n.gguf").write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + body)
    with pytest.raises(QuantizeError, match="metadata arrays nest more than 8 deep"):
        read_header(tmp_path / "n.gguf")


# -- 7: quantize ----------------------------------------------------------------------------------


def test_quantize_refuses_a_zero_dimension(small_gguf: Path, tmp_path: Path) -> None:
    """Before: a ZeroDivisionError traceback (rows of nothing, no row size to slab by)."""
    h = read_header(small_gguf)
    tensors = [
        TensorInfo(t.name, (t.ne[0], 0) if t.name == "blk.0.ffn_up.weight" else t.ne, t.ggml_type, t.offset)
        for t in h.tensors
    ]
    h.data.close()
    bad = rewrite_gguf(small_gguf, tmp_path / "z.gguf", tensors=tensors)
    with pytest.raises(QuantizeError, match=r"tensor blk.0.ffn_up.weight has shape \[64, 0\], a zero dimension"):
        quantize_file(bad, tmp_path / "q.gguf", "Q8_0")
    assert not (tmp_path / "q.gguf").exists()
    result = CliRunner().invoke(cli, ["quantize", str(bad), str(tmp_path / "q.gguf"), "Q8_0"])
    assert result.exit_code == 2 and "Traceback" not in result.output


# -- 8: config.json -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config, message",
    [
        ({"num_attention_heads": 0}, "'num_attention_heads' must be a positive integer, not 0"),
        ({"rms_norm_eps": "1e-5"}, "'rms_norm_eps' must be a positive number, not \"1e-5\""),
        ({"num_key_value_heads": "2"}, "'num_key_value_heads' must be a positive integer, not \"2\""),
        ({"max_position_embeddings": "256"}, "'max_position_embeddings' must be a positive integer, not \"256\""),
        ({"rope_scaling": {"rope_type": "linear"}}, "linear rope_scaling needs a positive 'factor', not null"),
        ({"rope_scaling": {"type": "linear", "factor": math.nan}}, "needs a positive 'factor', not NaN"),
        ({"rope_theta": math.inf}, "'rope_theta' must be a positive number, not Infinity"),
        ({"architectures": 7}, "'architectures' must be a list of names, not 7"),
        ({"vocab_size": DELETE}, "needs 'vocab_size' (a positive integer)"),
    ],
)
def test_wrong_typed_config_is_one_line(tmp_path: Path, config: dict, message: str) -> None:
    """Before: ZeroDivisionError, ValueError, TypeError, struct.error and KeyError tracebacks."""
    root = hf_model(tmp_path / "m", config)
    with pytest.raises(CheckpointError) as info:
        convert(root, tmp_path / "x.gguf")
    assert message in str(info.value)
    one_line(info.value)
    result = CliRunner().invoke(cli, ["convert", str(root), "-o", str(tmp_path / "y.gguf")])
    assert result.exit_code == 2 and "Traceback" not in result.output and message in result.output


# -- 9: safetensors headers ----------------------------------------------------------------------


def safetensors_file(path: Path, header: bytes, data: bytes = b"") -> Path:
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)
    return path


@pytest.mark.parametrize(
    "header, message",
    [
        (b"[" * 100_000 + b"]" * 100_000, "header nests too deep"),
        (json.dumps({"w": {"dtype": "F32", "shape": [10**30], "data_offsets": [0, 0]}}).encode(), "no array can"),
        (json.dumps({"w": {"dtype": "F32", "shape": [2**32, 2**32], "data_offsets": [0, 0]}}).encode(), "no array can"),
        (json.dumps({"w": {"dtype": "U8", "shape": [2**31, 2**31], "data_offsets": [0, 0]}}).encode(), "0 bytes for"),
        (json.dumps({"w": {"dtype": ["F32"], "shape": [1], "data_offsets": [0, 4]}}).encode(), "malformed"),
        (b'{"w": {"dtype": "F32", "shape": [' + b"9" * 5000 + b'], "data_offsets": [0, 4]}}', "not valid JSON"),
    ],
)
def test_hostile_safetensors_headers(tmp_path: Path, header: bytes, message: str) -> None:
    """Before: RecursionError, OverflowError, a 2^64-element tensor of 0 bytes accepted (int64
    wrap), TypeError (unhashable dtype) and ValueError (a 5000-digit number)."""
    path = safetensors_file(tmp_path / "t.safetensors", header, b"\0" * 8)
    with pytest.raises(CheckpointError, match=message):
        safetensors_io.read_header(path)


# -- 2: .pth views --------------------------------------------------------------------------------


def test_pth_views_must_be_plain_and_each_element_stored_once(tmp_path: Path) -> None:
    """A view whose strides interleave covers a storage many times over (16 elements from 7);
    three tensors viewing one storage claim three times its bytes. A tie (two names, one
    storage) is what a real checkpoint may hold, and still loads."""
    storage = {"0": bytes(32)}  # 16 float16 elements
    path = tmp_path / "consolidated.00.pth"
    cases = {
        "interleaved": ({"w": View("0", 16, 0, (4, 4), (1, 1))}, "is a view whose elements overlap"),
        "three copies": ({n: View("0", 16, 0, (16,), (1,)) for n in "abc"}, "views repeat the same bytes"),
        "past the end": ({"w": View("0", 16, 8, (4, 4), (4, 1))}, "reaches outside its storage 0"),
    }
    for views, message in cases.values():
        write_pth(path, view_pickle(views), storage)
        with pytest.raises(CheckpointError, match=message):
            TorchArchive(path)
    write_pth(
        path, view_pickle({"emb": View("0", 16, 0, (4, 4), (4, 1)), "out": View("0", 16, 0, (4, 4), (4, 1))}), storage
    )
    archive = TorchArchive(path)
    assert archive.tensors["out"].load().shape == (4, 4)
    archive.close()
    transposed = {"w": View("0", 16, 0, (4, 4), (1, 4)), "v": View("0", 16, 0, (2, 8), (8, 1))}
    write_pth(path, view_pickle(transposed), storage)
    assert TorchArchive(path).tensors["w"].load().shape == (4, 4)  # strides in any order, no overlap


# -- 10: prompt files -----------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["run", "perplexity"])
def test_prompt_files_that_are_not_utf8(small_gguf: Path, tmp_path: Path, command: str) -> None:
    """Before: a UnicodeDecodeError traceback."""
    text = tmp_path / "latin1.txt"
    text.write_bytes("the café\r\n".encode() + b"na\xefve")
    result = CliRunner().invoke(cli, [command, str(small_gguf), "-f", str(text)])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert f"error: {text}: is not UTF-8 text: byte 0xef at offset 13 (invalid continuation byte)" in result.output


def test_prompt_files_read_as_before(small_gguf: Path, tmp_path: Path) -> None:
    """UTF-8 prompts still read as Path.read_text reads them (universal newlines)."""
    from llamashare.cli.generate import _read_text

    text = tmp_path / "p.txt"
    text.write_bytes("a\r\nb\rc\nd é".encode())
    assert _read_text(text) == text.read_text(encoding="utf-8")


# -- generated: wrong-typed GGUF metadata -------------------------------------------------------

INT_TYPES: dict[int, tuple[int, int]] = {
    V.UINT8: (0, 2**8 - 1),
    V.INT8: (-(2**7), 2**7 - 1),
    V.UINT16: (0, 2**16 - 1),
    V.INT16: (-(2**15), 2**15 - 1),
    V.UINT32: (0, 2**32 - 1),
    V.INT32: (-(2**31), 2**31 - 1),
    V.UINT64: (0, 2**64 - 1),
    V.INT64: (-(2**63), 2**63 - 1),
}
EDGE_FLOATS = [math.nan, math.inf, -math.inf, 1e-45, 0.0, -0.0, -1.0, 0.5, 1e30]


def gguf_scalar_of(vtype: int) -> st.SearchStrategy[Any]:
    """Values of one GGUF scalar type, extremes and oddities included."""
    if vtype in INT_TYPES:
        lo, hi = INT_TYPES[vtype]
        edges = [v for v in (0, 1, 2, 3, 4, 64, 300, hi, lo, -1) if lo <= v <= hi]
        return st.sampled_from(edges) | st.integers(lo, hi)
    if vtype in (V.FLOAT32, V.FLOAT64):
        return st.sampled_from(EDGE_FLOATS) | st.floats(width=32 if vtype == V.FLOAT32 else 64)
    if vtype == V.BOOL:
        return st.booleans()
    return st.sampled_from(["", "llama", "gpt2", "linear", "smollm", "64", "nan"]) | st.text(max_size=8)


SCALAR_TYPES = [*INT_TYPES, V.FLOAT32, V.FLOAT64, V.BOOL, V.STRING]


def gguf_scalars() -> st.SearchStrategy[tuple[int, Any]]:
    return st.sampled_from(SCALAR_TYPES).flatmap(lambda t: st.tuples(st.just(t), gguf_scalar_of(t)))


@st.composite
def gguf_values(draw: st.DrawFn, original: Any) -> tuple[int, Any]:
    """A value of any GGUF type, or (for an array key) the real array cut, padded or retyped."""
    if isinstance(original, list) and original and draw(st.booleans()):
        edit = draw(st.sampled_from(["cut", "retype", "nest", "empty"]))
        if edit == "cut":
            return V.ARRAY, (_element_type(original), original[: draw(st.integers(0, len(original) - 1))])
        if edit == "retype":
            vtype = draw(st.sampled_from(SCALAR_TYPES))
            return V.ARRAY, (vtype, draw(st.lists(gguf_scalar_of(vtype), min_size=1, max_size=50)))
        if edit == "nest":
            return V.ARRAY, (V.ARRAY, [(V.STRING, ["a", "b"])] * 3)
        return V.ARRAY, (V.STRING, [])
    if draw(st.integers(0, 4)) == 0:
        sub = draw(st.sampled_from(SCALAR_TYPES))
        return V.ARRAY, (sub, draw(st.lists(gguf_scalar_of(sub), max_size=4)))
    return draw(gguf_scalars())


def _element_type(items: list[Any]) -> int:
    first = items[0]
    return V.STRING if isinstance(first, str) else V.FLOAT32 if isinstance(first, float) else V.INT32


METADATA_KEYS = [
    f"llama.{k}"
    for k in (
        "context_length",
        "embedding_length",
        "block_count",
        "feed_forward_length",
        "attention.head_count",
        "attention.head_count_kv",
        "attention.layer_norm_rms_epsilon",
        "rope.freq_base",
        "rope.dimension_count",
        "rope.scaling.type",
        "rope.scaling.factor",
        "attention.key_length",
        "vocab_size",
        "expert_count",
    )
] + [
    "general.architecture",
    "tokenizer.ggml.model",
    "tokenizer.ggml.pre",
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.token_type",
    "tokenizer.ggml.scores",
    "tokenizer.ggml.merges",
    "tokenizer.ggml.bos_token_id",
    "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.add_bos_token",
    "tokenizer.ggml.add_space_prefix",
]


@pytest.mark.slow
def test_generated_metadata_fails_only_as_inference_or_quantize_errors(small_gguf: Path, tmp_path: Path) -> None:
    originals = {k: gguf_value_of(small_gguf, k) for k in METADATA_KEYS}
    originals["tokenizer.ggml.scores"] = [0.0] * len(originals["tokenizer.ggml.tokens"])
    seen = {"loaded": 0, "refused": 0}

    @settings(BOUNDED, max_examples=150)
    @given(st.data())
    def one(data: st.DataObject) -> None:
        keys = data.draw(st.lists(st.sampled_from(METADATA_KEYS), min_size=1, max_size=3, unique=True))
        if data.draw(st.booleans()):  # reach the SentencePiece path, with scores
            keys = list(dict.fromkeys(["tokenizer.ggml.model", *keys]))
        changes: dict[str, bytes | None] = {}
        for key in keys:
            if key == "tokenizer.ggml.model" and data.draw(st.booleans()):
                changes[key] = gguf_kv(key, V.STRING, "llama")
            elif data.draw(st.integers(0, 5)) == 0:
                changes[key] = None  # missing
            else:
                changes[key] = gguf_kv(key, *data.draw(gguf_values(originals[key])))
        path = rewrite_gguf(small_gguf, tmp_path / "m.gguf", changes)
        loaded = only(InferenceError, lambda: load_all(path))
        seen["loaded" if loaded else "refused"] += 1
        out = tmp_path / "q.gguf"
        out.unlink(missing_ok=True)
        only(QuantizeError, lambda: quantize_file(path, out, "Q8_0"))

    REFUSALS.clear()
    one()
    report("GGUF metadata", seen)
    assert seen["refused"] > 20 and seen["loaded"] > 5, seen  # both sides reached


# -- generated: wrong-typed config.json, params.json, tokenizer.json ------------------------------

JSON_EDGES: st.SearchStrategy[Any] = st.sampled_from(
    [None, True, False, 0, -1, 1, 2, 4, 64, 300, 2**31, 2**63, 10**30, 0.5, 1e-45, math.nan, math.inf, "", "64", [], {}]
)
JSON_VALUES = st.recursive(
    JSON_EDGES | st.integers() | st.floats() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)
ROPE_SCALING = st.fixed_dictionaries(
    {"rope_type": st.sampled_from(["linear", "llama3", "dynamic", "default", None, 3])},
    optional={
        "factor": JSON_VALUES,
        "low_freq_factor": JSON_VALUES,
        "high_freq_factor": JSON_VALUES,
        "original_max_position_embeddings": JSON_VALUES,
    },
)
CONFIG_KEYS = [
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "intermediate_size",
    "num_attention_heads",
    "num_key_value_heads",
    "max_position_embeddings",
    "rms_norm_eps",
    "rope_theta",
    "head_dim",
    "rope_scaling",
    "tie_word_embeddings",
    "architectures",
    "bos_token_id",
    "eos_token_id",
]


def converts_or_refuses(src: Path, out: Path) -> bool:
    out.unlink(missing_ok=True)
    return only(CheckpointError, lambda: convert(src, out, "f32"))


@pytest.mark.slow
def test_generated_config_values_fail_only_as_checkpoint_errors(model_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "m"
    shutil.copytree(model_dir, root)
    original = json.loads((root / "config.json").read_text())
    seen = {True: 0, False: 0}

    @settings(BOUNDED, max_examples=100)
    @given(st.data())
    def one(data: st.DataObject) -> None:
        doc = dict(original)
        for key in data.draw(st.lists(st.sampled_from(CONFIG_KEYS), min_size=1, max_size=3, unique=True)):
            if key == "rope_scaling" and data.draw(st.booleans()):
                doc[key] = data.draw(ROPE_SCALING)
            elif isinstance(original.get(key), int) and data.draw(st.booleans()):
                doc[key] = original[key] * data.draw(st.sampled_from([0, 2, 10**6])) + data.draw(st.integers(-1, 1))
            else:
                doc[key] = data.draw(JSON_VALUES)
        (root / "config.json").write_text(json.dumps(doc))
        seen[converts_or_refuses(root, tmp_path / "x.gguf")] += 1

    REFUSALS.clear()
    one()
    report("config.json", seen)
    assert seen[False] > 30 and seen[True] > 3, seen


@pytest.mark.slow
def test_generated_tokenizer_entries_fail_only_as_checkpoint_errors(model_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "m"
    shutil.copytree(model_dir, root)
    original = json.loads((root / "tokenizer.json").read_text())
    seen = {True: 0, False: 0}

    @settings(BOUNDED, max_examples=60)
    @given(st.data())
    def one(data: st.DataObject) -> None:
        doc = json.loads(json.dumps(original))
        parts = data.draw(
            st.lists(st.sampled_from(["added", "vocab", "merges", "pre", "model"]), min_size=1, max_size=2)
        )
        for part in sorted(parts, key=lambda p: p == "model"):  # the whole model replaced last
            if part == "added":
                item = doc["added_tokens"][data.draw(st.integers(0, len(doc["added_tokens"]) - 1))]
                item[data.draw(st.sampled_from(["id", "content", "special"]))] = data.draw(JSON_VALUES)
            elif part == "vocab":
                doc["model"]["vocab"][data.draw(st.sampled_from(["a", "Ġt", "new"]))] = data.draw(JSON_VALUES)
            elif part == "merges":
                merges = doc["model"]["merges"]
                merges[data.draw(st.integers(0, len(merges) - 1))] = data.draw(JSON_VALUES)
            elif part == "pre":
                doc["pre_tokenizer"] = data.draw(JSON_VALUES)
            else:
                doc["model"] = data.draw(JSON_VALUES)
        (root / "tokenizer.json").write_text(json.dumps(doc))
        seen[converts_or_refuses(root, tmp_path / "x.gguf")] += 1

    REFUSALS.clear()
    one()
    report("tokenizer.json", seen)
    assert seen[False] > 20, seen


@pytest.mark.slow
def test_generated_params_json_fails_only_as_checkpoint_errors(model_dir: Path, tmp_path: Path) -> None:
    from tests.checkpoints import write_meta

    root = tmp_path / "meta" / "7B"
    write_meta(root, model_dir, ranks=1)
    original = json.loads((root / "params.json").read_text())
    seen = {True: 0, False: 0}

    @settings(BOUNDED, max_examples=50)
    @given(st.data())
    def one(data: st.DataObject) -> None:
        doc = dict(original)
        for key in data.draw(
            st.lists(
                st.sampled_from(["dim", "n_layers", "n_heads", "n_kv_heads", "norm_eps", "rope_theta", "max_seq_len"]),
                min_size=1,
                max_size=2,
                unique=True,
            )
        ):
            doc[key] = data.draw(JSON_VALUES)
        (root / "params.json").write_text(json.dumps(doc))
        seen[converts_or_refuses(root, tmp_path / "x.gguf")] += 1

    REFUSALS.clear()
    one()
    report("params.json", seen)
    assert seen[False] > 20, seen


# -- generated: shapes, views and nesting --------------------------------------------------------

DIMS = st.sampled_from([0, 1, 2, 3, 7, 64, 2**31, 2**32, 2**62, 2**63 - 1, 2**63, 2**64, 10**30, -1])


@pytest.mark.slow
def test_generated_safetensors_headers_fail_only_as_checkpoint_errors(tmp_path: Path) -> None:
    dtypes = st.sampled_from([*safetensors_io.DTYPES, "F8", ""]) | JSON_VALUES
    shapes = st.lists(DIMS, max_size=4) | st.lists(DIMS | JSON_VALUES, max_size=3) | JSON_VALUES
    offsets = (
        st.lists(st.integers(0, 64), min_size=2, max_size=2).map(sorted) | st.lists(DIMS, max_size=3) | JSON_VALUES
    )
    entries = st.fixed_dictionaries({"dtype": dtypes, "shape": shapes, "data_offsets": offsets})
    seen = {True: 0, False: 0}

    @settings(BOUNDED, max_examples=200)
    @given(
        st.dictionaries(st.text(max_size=4), entries | JSON_VALUES, max_size=3),
        st.sampled_from([0, 0, 0, 0, 10, 40_000]),  # how deep the metadata nests
        st.integers(0, 64),
    )
    def one(header: dict, depth: int, data_bytes: int) -> None:
        text = json.dumps(header)
        if depth:  # nested inside the metadata (written as text: json.dumps recurses too)
            text = json.dumps({**header, "__metadata__": "NEST"}).replace('"NEST"', "[" * depth + "]" * depth)
        path = safetensors_file(tmp_path / "t.safetensors", text.encode(), b"\0" * data_bytes)
        refs: dict[str, safetensors_io.TensorRef] = {}

        def read() -> None:
            refs.update(safetensors_io.read_header(path))

        accepted = only(CheckpointError, read)
        if accepted:
            for ref in refs.values():
                assert ref.nbytes <= data_bytes
                assert safetensors_io.load(ref).nbytes == ref.nbytes
        seen[accepted] += 1

    REFUSALS.clear()
    one()
    report("safetensors headers", seen)
    assert seen[True] > 10 and seen[False] > 100, seen


@pytest.mark.slow
def test_generated_pth_views_fail_only_as_checkpoint_errors(tmp_path: Path) -> None:
    counts = st.sampled_from([0, 1, 2, 3, 4, 8, 16, -1, 2**40, 2**63])

    @st.composite
    def views(draw: st.DrawFn) -> tuple[dict[str, View], dict[str, bytes]]:
        storages = {str(k): bytes(draw(st.sampled_from([0, 2, 8, 16, 32, 64]))) for k in range(draw(st.integers(1, 2)))}
        out = {}
        for i in range(draw(st.integers(1, 2))):
            ndim = draw(st.integers(0, 3))
            key = draw(st.sampled_from([*storages, "missing"])) if draw(st.integers(0, 3)) == 0 else "0"
            numel = draw(counts) if draw(st.integers(0, 3)) == 0 else len(storages.get(key, b"")) // 2
            if draw(st.integers(0, 2)):  # mostly a plausible view: small, contiguous, near the start
                shape = tuple(draw(st.lists(st.integers(1, 4), min_size=ndim, max_size=ndim)))
                stride = tuple(math.prod(shape[d + 1 :]) for d in range(ndim))
                offset = draw(st.integers(0, 2))
            else:
                shape = tuple(draw(st.lists(counts, min_size=ndim, max_size=ndim)))
                stride = tuple(draw(st.lists(counts, min_size=ndim, max_size=ndim)))
                offset = draw(counts)
            out[f"t{i}"] = View(key, numel, offset, shape, stride)
        return out, storages

    seen = {True: 0, False: 0}

    @settings(BOUNDED, max_examples=200)
    @given(views(), st.sampled_from([False, False, False, False, True]))  # now and then a compressed pickle
    def one(drawn: tuple[dict[str, View], dict[str, bytes]], compress: bool) -> None:
        tensors, storages = drawn
        path = tmp_path / "consolidated.00.pth"
        write_pth(path, view_pickle(tensors), storages, compress_pickle=compress)
        loaded: list[np.ndarray] = []

        def read() -> None:
            archive = TorchArchive(path)
            try:
                loaded.extend(t.load() for t in archive.tensors.values())
            finally:
                archive.close()

        accepted = only(CheckpointError, read)
        if accepted:  # what was accepted is bounded by what the file holds
            assert sum(a.nbytes for a in loaded) <= 2 * sum(len(b) for b in storages.values())
        seen[accepted] += 1

    REFUSALS.clear()
    one()
    report(".pth views", seen)
    assert seen[True] > 10 and seen[False] > 100, seen


#: Pickle opcodes with a length, an index or a count in their argument (pickletools' names),
#: each with how its argument is packed, and a few that build structure.
SIZED_OPS = {
    b"\x8e": "<Q",  # BINBYTES8
    b"\x8d": "<Q",  # BINUNICODE8
    b"\x96": "<Q",  # BYTEARRAY8
    b"\x95": "<Q",  # FRAME
    b"\x8b": "<i",  # LONG4
    b"B": "<i",  # BINBYTES
    b"X": "<I",  # BINUNICODE
    b"r": "<I",  # LONG_BINPUT
    b"j": "<I",  # LONG_BINGET
    b"q": "<B",  # BINPUT
    b"J": "<i",  # BININT
}
DATA_OPS = {b"\x8e", b"\x8d", b"\x96", b"\x8b", b"B", b"X"}
PLAIN_OPS = [b"N", b"]", b"}", b"(", b"e", b"u", b"\x94", b"t", b"."]


@pytest.mark.slow
def test_generated_pickle_opcodes_fail_only_as_checkpoint_errors(tmp_path: Path) -> None:
    """data.pkl as a stream of opcodes whose lengths, memo indices and counts are extremes:
    refused as a CheckpointError before the unpickler allocates what they claim."""
    extremes = st.sampled_from([0, 1, 7, 255, 2**16, 2**27, 2**31 - 1, 2**32 - 1, 2**44, 2**63, 2**64 - 1])
    seen = {True: 0, False: 0}
    start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    @st.composite
    def opcode(draw: st.DrawFn) -> bytes:
        if draw(st.booleans()):
            return draw(st.sampled_from(PLAIN_OPS))
        op, fmt = draw(st.sampled_from(sorted(SIZED_OPS.items())))
        bits = struct.calcsize(fmt) * 8
        lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if fmt.islower() else (0, 2**bits - 1)
        arg = min(max(draw(extremes), lo), hi)
        data = bytes(draw(st.integers(0, 16))) if op in DATA_OPS else b""  # some of what a length claims
        return op + struct.pack(fmt, arg) + data

    @settings(BOUNDED, max_examples=200)
    @given(st.lists(opcode(), min_size=1, max_size=6))
    def one(ops: list[bytes]) -> None:
        path = tmp_path / "consolidated.00.pth"
        write_pth(path, b"\x80\x04" + b"".join(ops) + b".")
        seen[only(CheckpointError, lambda: TorchArchive(path).close())] += 1

    REFUSALS.clear()
    one()
    report("pickle opcodes", seen)
    assert seen[False] > 150, seen
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - start  # KiB
    assert grown < 200 * 1024, f"peak RSS grew by {grown // 1024} MB"


@pytest.mark.slow
def test_generated_checkpoint_shapes_fail_only_as_checkpoint_errors(model_dir: Path, tmp_path: Path) -> None:
    """One tensor of the checkpoint given another shape (zero dimensions, other ranks, other
    sizes) or dtype: convert refuses it with a CheckpointError naming the tensor, or converts."""
    root = tmp_path / "m"
    shutil.copytree(model_dir, root)
    (root / "model.safetensors.index.json").unlink()
    (shard,) = root.glob("*.safetensors")
    refs = safetensors_io.read_header(shard)
    weights = {name: np.array(safetensors_io.load(ref)) for name, ref in refs.items()}
    small_dims = st.sampled_from([0, 1, 2, 3, 4, 63, 64, 65, 128, 300])
    seen = {True: 0, False: 0}

    @settings(BOUNDED, max_examples=60)
    @given(
        st.sampled_from(sorted(weights)),
        st.none() | st.lists(small_dims, max_size=3),  # None: the tensor keeps its shape
        st.sampled_from(["F32", "F32", "F16", "BF16", "I32", "U8"]),
    )
    def one(name: str, shape: list[int] | None, dtype: str) -> None:
        dims = list(weights[name].shape) if shape is None else shape if math.prod(shape) <= 40_000 else shape[:1]
        changed = dict(weights)
        changed[name] = np.ones(dims, np.float32)
        items = [(n, dtype if n == name else "F32", a.shape, a) for n, a in changed.items()]
        safetensors_io.write(shard, items)
        seen[converts_or_refuses(root, tmp_path / "x.gguf")] += 1

    REFUSALS.clear()
    one()
    report("checkpoint tensor shapes", seen)
    assert seen[False] > 30 and seen[True] > 5, seen


@pytest.mark.slow
def test_generated_tensor_shapes_fail_only_as_inference_or_quantize_errors(small_gguf: Path, tmp_path: Path) -> None:
    h = read_header(small_gguf)
    originals = list(h.tensors)
    h.data.close()
    gguf_dims = st.sampled_from([0, 1, 2, 32, 64, 300, 2**32, 2**63 - 1, 2**64 - 1])

    @settings(BOUNDED, max_examples=60)
    @given(st.integers(0, len(originals) - 1), st.lists(gguf_dims, min_size=1, max_size=4))
    def one(which: int, ne: list[int]) -> None:
        tensors = list(originals)
        t = tensors[which]
        tensors[which] = TensorInfo(t.name, tuple(ne), t.ggml_type, t.offset)
        path = rewrite_gguf(small_gguf, tmp_path / "s.gguf", tensors=tensors)
        only(InferenceError, lambda: load_all(path))
        out = tmp_path / "q.gguf"
        out.unlink(missing_ok=True)
        only(QuantizeError, lambda: quantize_file(path, out, "Q8_0"))

    REFUSALS.clear()
    one()
    report("GGUF tensor shapes", {})


# -- generated: hostile chat templates ------------------------------------------------------------

NUMBERS = st.sampled_from(["0", "1", "3", "100000", "1000000", "2**31", "4000000000", "10**30", "-1", "1e9"])
STRINGS = st.sampled_from(["'a'", "'%s'", "'{}'", "messages", "'x' * 1000", "range(10)|list", "ns.s"])
ATOMS = [
    "{{ S * N }}",
    "{{ '%Ns' % S }}",
    "{{ '{:N}'.format(S) }}",
    "{{ lipsum(n=N) }}",
    "{{ range(N)|list|length }}",
    "{{ S|center(N) }}",
    "{{ S|indent(N) }}",
    "{{ range(N)|batch(N, S)|list|length }}",
    "{{ S|replace('', S) }}",
    "{{ range(N)|map('string')|join(S) }}",
    "{{ S|wordwrap(1, wrapstring=S) }}",
    "{{ N ** N }}",
    "{{ S.ljust(N) }}",
    "{{ S|tojson(indent=N) }}",
    "{% set ns.s = ns.s ~ ns.s %}",
    "{% set ns.s = ns.s + S %}",
    "{{ m(N) }}",
    "{{ S|list|string|list|string }}",
    "{{ raise_exception(S) }}",
    "{{ undefined.x.y }}",
    "{% for a in S * N %}{% for b in S * N %}{% endfor %}{% endfor %}",
    "{% for a in range(N) %}{% for b in range(N) %}{% endfor %}{% endfor %}",
]


@st.composite
def templates(draw: st.DrawFn, depth: int = 0) -> str:
    parts = []
    for _ in range(draw(st.integers(1, 3))):
        if depth < 2 and draw(st.integers(0, 2)) == 0:
            kind = draw(st.sampled_from(["for", "macro", "set"]))
            inner = draw(templates(depth + 1))
            if kind == "for":
                parts.append(f"{{% for i in range({draw(NUMBERS)}) %}}{inner}{{% endfor %}}")
            elif kind == "macro":
                parts.append(f"{{% macro r(k) %}}{inner}{{{{ r(k) }}}}{{% endmacro %}}{{{{ r(0) }}}}")
            else:
                parts.append(f"{{% set x %}}{inner}{{% endset %}}{{{{ x }}}}")
        else:
            atom = draw(st.sampled_from(ATOMS))
            parts.append(atom.replace("N", draw(NUMBERS)).replace("S", f"({draw(STRINGS)})"))
    return "".join(parts)


PREAMBLE = "{% set ns = namespace(s='ab') %}{% macro m(n) %}{{ 'y' * n }}{% endmacro %}"


@pytest.mark.slow
def test_generated_templates_fail_only_as_inference_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    import llamashare.infer.chat as chat

    monkeypatch.setattr(chat, "RENDER_SECONDS", 0.25)  # the mechanism is the same; the test is faster
    tok = SimpleNamespace(tokens=["<s>", "</s>"], bos=0, eos=1)
    messages = [{"role": "user", "content": "hi"}]
    seen = {True: 0, False: 0}

    @settings(BOUNDED, max_examples=80)
    @given(templates())
    def one(template: str) -> None:
        start = time.monotonic()
        out: list[str] = []
        rendered = only(InferenceError, lambda: out.append(chat.render(PREAMBLE + template, messages, tok)))  # type: ignore[arg-type]
        assert time.monotonic() - start < 2.0, template  # the budget, and a margin fixed in advance
        if rendered:
            assert len(out[0]) <= chat.render_limit(messages, tok)  # type: ignore[arg-type]
        seen[rendered] += 1

    REFUSALS.clear()
    one()
    report("chat templates", seen)
    assert seen[False] > 20 and seen[True] > 3, seen
