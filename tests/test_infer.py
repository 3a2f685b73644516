"""`llamashare run` / `perplexity` against llama.cpp (llama-cpp-python) on the same files.

What can be asked of a float32 NumPy engine: tokens identical; logits as close to the exact
result as llama.cpp's; the same greedy token wherever llama.cpp's choice is clear. llama.cpp
quantizes activations before each quantized matrix product, and the engine does too
(infer/weights.py), so a rounding flip from a 1e-7 difference in summation order moves logits by
up to ~1 (out of ~20) on SmolLM2: llama.cpp's own logits differ that much between batched and
token-by-token evaluation, and between CPUs. Quantized logits are therefore judged against a
float32 reference R, the same weights decoded by ggml and run by llama.cpp without quantized
kernels (tests/float_reference.py), with bounds fixed in advance; greedy runs follow llama.cpp's
tokens, and our choice must match wherever llama.cpp's top-2 margin exceeds a fixed fraction of
the logit range (anything closer is a tie, and a divergence there is accepted).
"""

from __future__ import annotations

import math
import pydoc_data.topics
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import gguf
import numpy as np
import pytest
from click.testing import CliRunner
from llama_cpp import Llama as LlamaCpp
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from llamashare.cli import cli
from llamashare.errors import InferenceError
from llamashare.infer import kernels
from llamashare.infer.activations import to_bf16
from llamashare.infer.chat import Chat, render
from llamashare.infer.model import Llama
from llamashare.infer.model_file import ModelFile
from llamashare.infer.perplexity import perplexity
from llamashare.infer.sampling import Sampler, SamplingParams, candidates
from llamashare.infer.tokenizer import GGUFTokenizer
from llamashare.quant.convert import convert
from llamashare.quant.quantize import quantize_file
from llamashare.sample import SampleConfig, write_sample_model
from tests.checkpoints import write_meta

TEXTS = [
    "Hello world",
    " leading space and  double  spaces",
    "The year 2024 had 366 days!!\n\nnew\tline",
    "<|im_start|>user\nHi there<|im_end|>\n",
    "unicode: café naïve 日本語 🚀",
    "'s 're I'm can't won't",
    "   ",
    "",
    "x" * 40,
    "def f(x):\n    return x**2  # square\n",
    "<s> literal </s> tags",
]
PROMPT = "The capital of France is"
TINY = SampleConfig(hidden_size=256, intermediate_size=768, num_hidden_layers=4)
T = gguf.GGMLQuantizationType


def llama_cpp(path: Path, n_ctx: int = 256, **kw: Any) -> LlamaCpp:
    return LlamaCpp(model_path=str(path), n_ctx=n_ctx, n_threads=2, logits_all=True, verbose=False, **kw)


def prose(chars: int) -> str:
    """English prose that ships with Python itself (pydoc's topic texts), for perplexity."""
    return "\n\n".join(pydoc_data.topics.topics[k] for k in sorted(pydoc_data.topics.topics))[:chars]


# -- models ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def smollm2_as(smollm2: Path, tmp_path_factory: pytest.TempPathFactory):
    """SmolLM2 requantized to a preset (made once per session), or the shipped Q4_1 file."""
    root = tmp_path_factory.mktemp("smollm2")
    made: dict[str, Path] = {"Q4_1": smollm2}

    def get(preset: str) -> Path:
        if preset not in made:
            made[preset] = root / f"smollm2.{preset}.gguf"
            quantize_file(smollm2, made[preset], preset, allow_requantize=True)
        return made[preset]

    return get


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory):
    """The generated sample model (256 wide, so K-quants apply) as f32 and --pure quantizations."""
    root = tmp_path_factory.mktemp("tiny")
    write_sample_model(root / "hf", TINY)
    convert(root / "hf", root / "tiny.F32.gguf", "f32")
    made: dict[str, Path] = {"F32": root / "tiny.F32.gguf"}

    def get(preset: str) -> Path:
        if preset not in made:
            made[preset] = root / f"tiny.{preset}.gguf"
            quantize_file(made["F32"], made[preset], preset, pure=True)
        return made[preset]

    return get


# -- tokenizer ---------------------------------------------------------------------------------


def assert_same_tokens(path: Path, texts: list[str]) -> None:
    ours = GGUFTokenizer(ModelFile(path))
    ref = LlamaCpp(model_path=str(path), vocab_only=True, verbose=False)
    for text in texts:
        for add_special, parse_special in ((True, False), (True, True), (False, True)):
            expect = ref.tokenize(text.encode(), add_bos=add_special, special=parse_special)
            assert ours.encode(text, add_special, parse_special) == expect, (text, add_special, parse_special)
        ids = ref.tokenize(text.encode(), add_bos=False, special=False)
        assert ours.decode(ids) == ref.detokenize(ids).decode("utf-8", errors="replace"), text


def test_tokens_equal_llama_cpp_smollm2_bpe(smollm2: Path) -> None:
    assert_same_tokens(smollm2, TEXTS + [prose(3000)])


def test_tokens_equal_llama_cpp_gpt2_sample(tiny) -> None:
    assert_same_tokens(tiny("F32"), TEXTS)


def test_tokens_equal_llama_cpp_sentencepiece(tmp_path: Path) -> None:
    """A LLaMA-1/2 style vocabulary: SentencePiece BPE with byte fallback, from tokenizer.model."""
    write_sample_model(tmp_path / "hf", SampleConfig())
    write_meta(tmp_path / "meta" / "7B", tmp_path / "hf", ranks=1, dtype=np.float32)
    convert(tmp_path / "meta" / "7B", tmp_path / "spm.gguf", "f32")
    assert_same_tokens(tmp_path / "spm.gguf", TEXTS + [prose(2000)])


# -- forward pass and generation ---------------------------------------------------------------


@dataclass
class Run:
    """Our engine and llama.cpp on one file, and llama.cpp on its float32 copy R (tests/
    float_reference.py), teacher-forced along llama.cpp's greedy tokens. Per step: each engine's
    distance to R as max |Δlogit| / max |R|, llama.cpp's top-2 margin as a fraction of max |R|,
    and whether our argmax is llama.cpp's."""

    ours: list[float] = field(default_factory=list)
    theirs: list[float] = field(default_factory=list)
    between: list[float] = field(default_factory=list)  # ours vs llama.cpp, reported only
    margin: list[float] = field(default_factory=list)
    agree: list[bool] = field(default_factory=list)

    def clear_steps(self, bound: float) -> list[int]:
        """Steps where llama.cpp's own top-2 margin exceeds ``bound`` (not a tie)."""
        return [i for i, m in enumerate(self.margin) if m > bound]

    def differ(self, bound: float) -> list[tuple[int, float]]:
        """(step, llama.cpp's margin) where it chose clearly and we chose otherwise."""
        return [(i, round(self.margin[i], 3)) for i in self.clear_steps(bound) if not self.agree[i]]

    def summary(self, bound: float) -> str:
        clear = self.clear_steps(bound)
        return (
            f"max |Δlogit| / max |R| at the first step: ours {self.ours[0]:.4f}, llama.cpp {self.theirs[0]:.4f} "
            f"(ours vs llama.cpp {self.between[0]:.4f}); mean over {len(self.ours)} steps: ours "
            f"{np.mean(self.ours):.4f}, llama.cpp {np.mean(self.theirs):.4f}; same token at "
            f"{sum(self.agree)}/{len(self.agree)} steps, at {sum(self.agree[i] for i in clear)}/{len(clear)} "
            f"where llama.cpp's margin > {bound}"
        )


def compare(path: Path, reference: Path, prompt: str, steps: int = 32) -> Run:
    ours = Llama(path, n_ctx=256)
    ids = GGUFTokenizer(ours.file).encode(prompt, True, True)
    theirs, ref = llama_cpp(path), llama_cpp(reference)
    theirs.eval(ids)
    ref.eval(ids)
    x = ours.prefill(ids)
    run = Run()
    for step in range(steps):
        c, r = np.array(theirs.scores[theirs.n_tokens - 1]), np.array(ref.scores[ref.n_tokens - 1])
        scale = float(np.abs(r).max())
        run.ours.append(float(np.abs(x - r).max()) / scale)
        run.theirs.append(float(np.abs(c - r).max()) / scale)
        run.between.append(float(np.abs(x - c).max()) / scale)
        second, first = np.partition(c, -2)[-2:]
        run.margin.append(float(first - second) / scale)
        b = int(np.argmax(c))
        run.agree.append(int(np.argmax(x)) == b)
        if step + 1 < steps:
            x = ours.forward([b])
            theirs.eval([b])
            ref.eval([b])
    return run


#: Bounds, fixed in advance (the measurements behind them are in the docstrings below), for
#: float files and quantized ones. CAP: our distance to R at the first step. RATIO, FLOOR: our
#: mean distance to R over the run may exceed llama.cpp's by this factor, plus FLOOR for float32
#: summation order (llama.cpp's distance is 0 on a float32 file, which is its own reference).
#: CLEAR: a top-2 margin (fraction of max |R|) above which llama.cpp's choice is no tie.
FLOAT, QUANT = "float", "quantized"
CAP = {"F32": 0.005, "F16": 0.01, "BF16": 0.03, QUANT: 0.2}
RATIO = {FLOAT: 1.2, QUANT: 1.3}
FLOOR = 0.001
CLEAR = {FLOAT: 0.025, QUANT: 0.1}


def check(run: Run, preset: str) -> None:
    kind = FLOAT if preset in ("F32", "F16", "BF16") else QUANT
    assert run.ours[0] <= CAP.get(preset, CAP[QUANT]), run.ours[0]
    assert np.mean(run.ours) <= RATIO[kind] * np.mean(run.theirs) + FLOOR
    assert not run.differ(CLEAR[kind]), (
        f"llama.cpp chose otherwise by a clear margin at (step, margin) {run.differ(CLEAR[kind])}"
    )


#: Chat-formatted, so the answer (a list of planets) has many clear greedy choices.
CHAT_PROMPT = (
    "<|im_start|>user\nName the planets of the solar system in order, from the Sun outwards.<|im_end|>\n"
    "<|im_start|>assistant\n"
)
#: The model's own Q4_1, the float types, and one of each kernel family end to end. Q5_0, Q5_1
#: and Q5_K have their own kernels checked bit for bit against ggml's vec_dot in
#: test_int_kernels.py, and Q4_K_M files carry Q5_0 and Q6_K tensors too, so a whole 32-step run
#: of each (~18 s apiece on 2 cores) is left out to keep the suite within its time. So is Q2_K:
#: SmolLM2's rows (576) are no multiple of 256, so that preset holds no Q2_K block here, only
#: Q3_K (ffn_down, as in Q3_K_M) and llama.cpp's fallback types (37 s for nothing new).
SMOLLM2_TYPES = [
    "Q4_1",
    "F16",
    "BF16",
    "Q8_0",
    "Q6_K",
    "Q4_K_M",
    "Q4_0",
    "Q3_K_M",
]


@pytest.mark.slow
@pytest.mark.parametrize("preset", SMOLLM2_TYPES)
def test_smollm2_greedy_and_logits_match_llama_cpp(preset: str, smollm2_as, reference) -> None:
    """SmolLM2 in every preset: our logits are about as close to the float32 reference R (the
    same weights decoded by ggml, run by llama.cpp) as llama.cpp's own, and where llama.cpp's
    greedy choice is clear ours is the same.

    Why R and not llama.cpp's quantized logits: both engines round every activation before a
    quantized product (to Q8_0/Q8_1/Q8_K blocks), a step function, so a last-bit difference in a
    sum (summation order: CPU kernels, batch sizes) moves a value by a whole step, and through 30
    layers each engine ends up with its own draw of the same rounding noise. llama.cpp picks its
    kernels by CPU (Q4_0 and Q4_K are repacked into interleaved 8-row blocks, q4_0_8x8 and
    q4_K_8x8, on AVX2 and AVX-512 CPUs; AVX-512 builds add 16-row GEMM blocks and sum in other
    orders), so its draw moves between CPUs, and a bound on ours vs llama.cpp judges the CPU. The
    distance to R is that noise's size, which no CPU path changes; so the claims are:
    our first-step distance to R is at most CAP (0.2 for quantized files, 0.01 F16, 0.03 BF16);
    our mean distance to R over 32 steps is at most 1.3x llama.cpp's (1.2x for F16/BF16, + 0.001);
    at every step where llama.cpp's top-2 margin exceeds 0.1 of max |R| (0.025 for F16/BF16; about
    2 and 0.5 logits here) our token is the same; and at least 8 of the 32 steps are that clear.

    Measured on AMD EPYC (Zen 3: AVX2, FMA, F16C, no AVX-512; llama-cpp-python 0.3.36 built
    -march=native, so llama.cpp's AVX2 and q4_0_8x8/q4_K_8x8 repacked paths), this prompt, each
    engine also re-batched (prompt in 1, 2, 4 or 3-token batches: other summation orders):
    first-step distance to R, ours 0.017-0.041 (F16 0.0007, BF16 0.008), llama.cpp 0.020-0.040;
    mean-distance ratio ours/llama.cpp 0.85-1.08 (F16 0.9, BF16 1.05); disagreements only where
    llama.cpp's margin was below 0.018 of max |R|; the margin moved between the engines by at most
    0.062 of max |R|; 11-19 clear steps (Q4_0 the fewest). With the earlier prompt "The capital of
    France is", Q4_0's first step is a three-way near tie (0.17 logits in llama.cpp, 0.09 in R,
    whose choice differs), and the distances to R there were ours 0.060-0.092, llama.cpp
    0.067-0.083, ours vs llama.cpp 0.043-0.066 here and 0.0804 on an Intel Xeon (AVX-512, VNNI;
    not run here): the same noise, and the tie the Xeon's "tie at step 0" fell on. Its worst
    32-step ratio was 1.19 (Q4_K_M). A decoding bug fails these claims: in a scratch run with
    Q4_0 decoded without its -8 offset (ours at 1.35 of the logit range), with -7, or with its
    scale 10% or even 2% off (mean 0.045 vs llama.cpp's 0.029), while the intact float path passed.
    """
    path = smollm2_as(preset)
    run = compare(path, reference(path), CHAT_PROMPT)
    kind = FLOAT if preset in ("F16", "BF16") else QUANT
    print(f"SmolLM2 {preset}: {run.summary(CLEAR[kind])}")
    check(run, preset)
    assert len(run.clear_steps(CLEAR[kind])) >= 8  # the greedy comparison judges a good part of the run


EVERY_TYPE = {
    "F32": T.F32,
    "F16": T.F16,
    "BF16": T.BF16,
    "Q8_0": T.Q8_0,
    "Q4_0": T.Q4_0,
    "Q4_1": T.Q4_1,
    "Q5_0": T.Q5_0,
    "Q5_1": T.Q5_1,
    "Q2_K": T.Q2_K,
    "Q3_K_S": T.Q3_K,
    "Q4_K_S": T.Q4_K,
    "Q5_K_S": T.Q5_K,
    "Q6_K": T.Q6_K,
}


@pytest.mark.parametrize("preset", EVERY_TYPE)
def test_tiny_model_every_type_matches_llama_cpp(preset: str, tiny, reference) -> None:
    """Every tensor type the engine reads (--pure files), on the generated model, with the
    SmolLM2 test's claims and bounds. Its random weights give near-uniform logits (max |R| ~ 1)
    and noisier ones: measured (AMD EPYC, AVX2) first-step distances to R up to 0.134 (Q3_K_S,
    both engines), 32-step means 0.034 (F16) to 0.116 (Q4_K_S), ours at most 1.14x llama.cpp's
    (Q5_1: 0.087 vs 0.076), and disagreements only where llama.cpp's margin was below 0.045 of
    max |R|. Fewer steps are clear choices here (9-18 of 32 for quantized types)."""
    path = tiny(preset)
    assert EVERY_TYPE[preset] in {t.ggml_type for t in ModelFile(path).tensors.values()}
    run = compare(path, reference(path), "the rain in spain")
    kind = FLOAT if preset in ("F32", "F16", "BF16") else QUANT
    print(f"tiny {preset}: {run.summary(CLEAR[kind])}")
    check(run, preset)
    if preset in ("F32", "F16"):
        assert all(run.agree)


@pytest.mark.parametrize("preset", ["F32", "Q3_K_S"])
def test_streamed_weights_give_the_same_logits(preset: str, tiny) -> None:
    """For types without a kernel, a prompt batch of slabs of dequantized rows agrees with float32
    copies, and so do single tokens (both BLAS products of the same float32 values, in orders
    that may differ in the last bits; a last-bit difference can move one float16 rounding of
    the cache, hence 1e-4 on logits of about 1)."""
    ids = [1, 300, 301, 302, 303]
    dense = Llama(tiny(preset), n_ctx=16, weights="f32")
    streamed = Llama(tiny(preset), n_ctx=16, weights="streamed")
    assert (dense.weights_kind, streamed.weights_kind) == ("f32", "streamed")
    assert streamed.weight_bytes == 0 and dense.weight_bytes >= streamed.token_bytes  # 4 bytes a weight
    np.testing.assert_allclose(streamed.forward(ids, 0), dense.forward(ids, 0), rtol=0, atol=1e-4)
    for token in (5, 6, 7):
        np.testing.assert_allclose(streamed.forward([token]), dense.forward([token]), rtol=0, atol=1e-4)


@pytest.mark.parametrize("preset", ["F16", "BF16", "Q8_0", "Q4_0", "Q5_0", "Q4_1", "Q5_1", "Q5_K_S", "Q6_K"])
def test_kernel_types_keep_no_copy(preset: str, tiny) -> None:
    """Types with a kernel multiply prompt batches on the blocks as well: no float32 copy
    whatever ``--weights`` says, and the same bits either way."""
    ids = [1, 300, 301, 302, 303]
    dense = Llama(tiny(preset), n_ctx=16, weights="f32")
    streamed = Llama(tiny(preset), n_ctx=16, weights="streamed")
    mats = dense._matrices()
    assert any(m.qtype.name == preset.lower().removesuffix("_s") for m in mats)
    assert all(m.nbytes == 0 for m in mats if m.qtype.name in kernels.KERNELS)
    assert dense.weights_kind == streamed.weights_kind == "blocks"
    assert np.array_equal(streamed.forward(ids, 0), dense.forward(ids, 0))
    assert np.array_equal(streamed.forward([5]), dense.forward([5]))


def test_cache_reuse_gives_the_same_logits(tiny) -> None:
    m = Llama(tiny("F32"), n_ctx=64)
    a = m.prefill([1, 5, 6, 7, 8, 9])
    m.prefill([1, 5, 6, 40, 41])  # shares 3 tokens with the cache
    assert m.cache.tokens == [1, 5, 6, 40, 41]
    m.cache.k[:, :, 3:] = m.cache.v[:, :, 3:] = 1e4  # what is not reused must be recomputed
    b = m.prefill([1, 5, 6, 7, 8, 9])
    # Not bit-equal: batches of 6 and of 3 sum in different orders, and a last-bit difference
    # can flip one float16 rounding of the cache (a 2^-11 step): ~4e-5 here.
    np.testing.assert_allclose(a, b, atol=2e-4)


def test_bf16_rounding_is_nearest_even() -> None:
    x = np.array([1.0, 1.00390625, 1.01171875, -2.5e-3, np.inf, np.nan], dtype=np.float32)
    y = to_bf16(x)
    assert list(y[:2]) == [1.0, 1.0] and y[2] == np.float32(1.015625)  # ties go to the even mantissa
    assert np.isinf(y[4]) and np.isnan(y[5])


# -- perplexity --------------------------------------------------------------------------------


def llama_cpp_perplexity(path: Path, text: str, n_ctx: int) -> float:
    """llama-perplexity's chunking, computed from llama-cpp-python's logits."""
    ref = llama_cpp(path, n_ctx=n_ctx)
    tokens = ref.tokenize(text.encode(), add_bos=True, special=False)
    add_bos = ref._model.add_bos_token()
    nll, count, first = 0.0, 0, n_ctx // 2
    for c in range(len(tokens) // n_ctx):
        chunk = tokens[c * n_ctx : (c + 1) * n_ctx]
        if add_bos:
            chunk = [ref.token_bos(), *chunk[1:]]
        ref.reset()
        ref.eval(chunk)
        logits = np.array(ref.scores[first : n_ctx - 1], dtype=np.float64)
        targets = chunk[first + 1 :]
        lse = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
        nll += float((lse - logits[np.arange(len(targets)), targets]).sum())
        count += len(targets)
    return math.exp(nll / count)


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["Q8_0", "Q4_K_M"])
def test_perplexity_within_one_percent_of_llama_cpp(preset: str, smollm2_as) -> None:
    path, text = smollm2_as(preset), prose(6000)
    m = Llama(path, n_ctx=256)
    ours = perplexity(m, GGUFTokenizer(m.file), text, 256)
    theirs = llama_cpp_perplexity(path, text, 256)
    print(
        f"SmolLM2 {preset}: perplexity {ours.ppl:.4f} ± {ours.stderr:.3f} (llama.cpp {theirs:.4f}), {ours.chunks} chunks"
    )
    assert ours.chunks >= 3
    assert abs(ours.ppl / theirs - 1) < 0.01


def test_perplexity_needs_two_contexts_of_text(tiny) -> None:
    m = Llama(tiny("F32"), n_ctx=64)
    with pytest.raises(InferenceError, match="needs at least 128"):
        perplexity(m, GGUFTokenizer(m.file), "too short", 64)


# -- sampling ----------------------------------------------------------------------------------


def test_sampling_is_seeded_and_filters_as_documented() -> None:
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.04, 0.01]))
    ids, _ = candidates(logits, SamplingParams(top_k=0, top_p=0.75, min_p=0.0))
    assert list(ids) == [0, 1]  # 0.5 + 0.3 reaches 0.75
    ids, _ = candidates(logits, SamplingParams(top_k=0, top_p=1.0, min_p=0.1))
    assert list(ids) == [0, 1, 2]  # 0.04 < 0.1 × 0.5
    ids, _ = candidates(logits, SamplingParams(top_k=2, top_p=1.0, min_p=0.0))
    assert list(ids) == [0, 1]
    wide = SamplingParams(temperature=1.5, top_k=0, top_p=1, min_p=0, seed=7)
    runs = [[s(logits, []) for _ in range(200)] for s in (Sampler(wide), Sampler(wide))]
    assert runs[0] == runs[1] and len(set(runs[0])) >= 4  # same seed, same draws; all tokens reachable
    assert Sampler(SamplingParams(temperature=0))(logits, []) == 0
    # the repetition penalty turns a greedy choice away from a token just seen
    flat = np.log(np.array([0.4, 0.38, 0.22]))
    assert Sampler(SamplingParams(temperature=0, repeat_penalty=1.3))(flat, [0]) == 1
    with pytest.raises(ValueError):
        SamplingParams(top_p=0)


# -- chat --------------------------------------------------------------------------------------


def test_chat_template_renders_as_llama_cpp_python_does(smollm2: Path) -> None:
    m = Llama(smollm2, n_ctx=512)
    tok = GGUFTokenizer(m.file)
    template = m.file.meta("tokenizer.chat_template")
    assert isinstance(template, str)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"}]
    formatter = Jinja2ChatFormatter(template, eos_token="<|im_end|>", bos_token="<|im_start|>")
    theirs = formatter(messages=cast(Any, messages)).prompt  # its messages are TypedDicts of the same keys
    assert render(template, messages, tok) == theirs
    chat = Chat(m, tok, Sampler(SamplingParams(temperature=0)), system="Be brief.")
    pieces: list[str] = []
    stats = chat.say("What is the capital of France?", 12, pieces.append)
    assert stats.generated and "".join(pieces) == chat.messages[-1]["content"]
    held = len(m.cache)
    stats = chat.say("And of Italy?", 8, pieces.append)
    assert len(m.cache) > held and stats.prompt_tokens > held  # the whole conversation, most of it reused


def test_hostile_template_cannot_reach_python(tiny) -> None:
    m = Llama(tiny("F32"), n_ctx=64)
    evil = "{{ messages.__class__.__mro__[1].__subclasses__() }}"
    with pytest.raises(InferenceError, match="chat template failed"):
        render(evil, [{"role": "user", "content": "x"}], GGUFTokenizer(m.file))


# -- the command line and bad input ------------------------------------------------------------


def test_run_prints_text_and_speeds(tiny) -> None:
    result = CliRunner().invoke(cli, ["run", str(tiny("Q8_0")), "-p", "the rain", "-n", "8", "--temp", "0"])
    assert result.exit_code == 0, result.output
    assert "generation: " in result.output and "tok/s" in result.output
    seeded = [
        CliRunner().invoke(cli, ["run", str(tiny("Q8_0")), "-p", "a", "-n", "12", "--seed", "3", "-q"]).output
        for _ in range(2)
    ]
    assert seeded[0] == seeded[1] and seeded[0].strip()


def test_bad_models_and_prompts_are_one_line_errors(tiny, tmp_path: Path) -> None:
    src = tiny("F32")
    # an architecture llamashare does not run
    w = gguf.GGUFWriter(tmp_path / "gpt2.gguf", "gpt2")
    w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    # a tensor type llamashare does not handle (IQ2_XXS): same model, one tensor's type id changed
    data = bytearray(src.read_bytes())
    t = next(t for t in gguf.GGUFReader(src).tensors if t.name == "blk.0.attn_q.weight")
    type_at = t.field.offset + sum(
        p.nbytes for p in t.field.parts[:-2]
    )  # parts: name len, name, n_dims, dims, type, offset
    data[type_at : type_at + 4] = int(gguf.GGMLQuantizationType.IQ2_XXS).to_bytes(4, "little")
    (tmp_path / "iq2.gguf").write_bytes(bytes(data))
    (tmp_path / "cut.gguf").write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    cases = {
        "gpt2.gguf": "architecture 'gpt2' is not supported",
        "iq2.gguf": "blk.0.attn_q.weight: tensor type IQ2_XXS is not supported",
        "cut.gguf": "truncated",
    }
    for name, message in cases.items():
        result = CliRunner().invoke(cli, ["run", str(tmp_path / name), "-p", "hi"])
        assert result.exit_code == 2 and message in result.output, (name, result.output)
        assert "Traceback" not in result.output
    result = CliRunner().invoke(cli, ["run", str(src), "-p", "word " * 80, "-c", "32"])
    assert result.exit_code == 2 and "the context holds 32" in result.output


def test_ctrl_c_stops_generation_cleanly(tiny) -> None:
    # A child inherits an ignored SIGINT (pytest started in the background by a shell without job
    # control), and Python then never raises KeyboardInterrupt: give it the default disposition.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llamashare",
            "run",
            str(tiny("F32")),
            "-p",
            "the",
            "-n",
            "-1",
            "--ignore-eos",
            "-c",
            "4096",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    signal.signal(signal.SIGINT, previous)
    try:
        assert proc.stdout is not None
        first = proc.stdout.read(1)  # generating
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        out, errs = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, errs
    assert "Traceback" not in errs and "(interrupted)" in errs
    # What was generated before the signal is kept and counted: the text so far, ended with a
    # newline, and the statistics line for those tokens.
    text = first + out
    assert text.strip() and text.endswith("\n"), text
    generated = re.search(r"generation: (\d+) tokens", errs)
    assert generated and int(generated.group(1)) >= 1, errs


def test_kv_cache_memory_is_taken_only_where_written() -> None:
    """The cache is written one position into every (layer, head) slab per token; with 2 MiB
    pages that made the whole cache resident at the first token (180 MB for SmolLM2)."""
    from llamashare.infer.model import untouched_zeros

    def resident_kib() -> int:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))

    before = resident_kib()
    cache = untouched_zeros((30, 3, 4096, 64))  # 94 MB
    cache[:, :, 0:5] = 1.0
    grew = resident_kib() - before
    assert float(cache[29, 2, 4, 63]) == 1.0 and float(cache[0, 0, 5, 0]) == 0.0
    assert grew < 8 * 1024, f"{grew} KiB resident for 90 slabs of 5 positions"
