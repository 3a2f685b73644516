"""Qwen2, Qwen3, Gemma 2, Gemma 3 and Phi-3 (and LLaMA beside them) through every stage, judged
by llama.cpp: convert → quantize → run → perplexity on generated tiny checkpoints.

Each family's sample (llamashare/sample.py) is built so that its differences from LLaMA show in
the logits: norms that are not all ones (Gemma's stored without the +1), Qwen2's biases, Q/K norms
(Qwen3, Gemma 3) with a head size that is not width / heads, a sliding window of 8 positions
(shorter than every sequence here), Gemma 3's global layer among five sliding ones with its own
rope base and linear scaling, Gemma 2's low soft-caps, Phi-3's fused projections. The
``test_*_would_be_caught`` tests switch each difference off and show the comparison sees it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import llama_cpp
import numpy as np
import pytest
from click.testing import CliRunner

from llamashare.cli import cli
from llamashare.errors import CheckpointError, InferenceError
from llamashare.infer import families
from llamashare.infer.model import Llama
from llamashare.infer.model_file import ModelFile
from llamashare.infer.perplexity import perplexity
from llamashare.infer.tokenizer import GGUFTokenizer
from llamashare.quant.convert import convert
from llamashare.quant.presets import PRESETS
from llamashare.quant.quantize import quantize_file
from llamashare.sample import SampleConfig, write_sample_model
from tests.test_infer import CLEAR, FLOAT, QUANT, check, compare, llama_cpp_perplexity, prose
from tests.test_quantize import llama_cpp_quantize

#: Hugging Face architecture → the sample's shape. Widths of 256 so K-quants apply; Qwen3's
#: heads are wider than width / heads (as Qwen3-0.6B's: 16 × 128 for a width of 1024); Gemma's
#: head of 96 makes attn_output's rows (384) fall back from K types, as llama.cpp decides.
SAMPLES = {
    "LlamaForCausalLM": SampleConfig(hidden_size=256, intermediate_size=512),
    "Qwen2ForCausalLM": SampleConfig(architecture="Qwen2ForCausalLM", hidden_size=256, intermediate_size=512),
    "Qwen3ForCausalLM": SampleConfig(
        architecture="Qwen3ForCausalLM", hidden_size=256, intermediate_size=512, head_dim=128
    ),
    "Gemma2ForCausalLM": SampleConfig(
        architecture="Gemma2ForCausalLM", hidden_size=256, intermediate_size=512, head_dim=96
    ),
    "Gemma3ForCausalLM": SampleConfig(
        architecture="Gemma3ForCausalLM", hidden_size=256, intermediate_size=512, head_dim=96, num_hidden_layers=6
    ),
    "Phi3ForCausalLM": SampleConfig(architecture="Phi3ForCausalLM", hidden_size=256, intermediate_size=512),
}
ARCH = {
    "LlamaForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    "Gemma2ForCausalLM": "gemma2",
    "Gemma3ForCausalLM": "gemma3",
    "Phi3ForCausalLM": "phi3",
}


def write_family(root: Path, hf_arch: str) -> Path:
    write_sample_model(root, SAMPLES[hf_arch])
    return root


@pytest.fixture(scope="module")
def family(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, str], Path]:
    """family(hf_arch, preset) → the converted GGUF: F32 and F16 from convert, the rest quantized
    from F32 by llamashare (made once per module)."""
    root = tmp_path_factory.mktemp("families")
    made: dict[tuple[str, str], Path] = {}

    def get(hf_arch: str, preset: str) -> Path:
        key = (hf_arch, preset)
        if key in made:
            return made[key]
        hf = root / hf_arch
        if not hf.exists():
            write_family(hf, hf_arch)
        out = root / f"{hf_arch}.{preset}.gguf"
        if preset in ("F32", "F16"):
            convert(hf, out, preset.lower())
        else:
            quantize_file(get(hf_arch, "F32"), out, preset)
        made[key] = out
        return out

    return get


def logits_of(path: Path, tokens: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(ours, llama.cpp's) logits for every position of one batch."""
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, logits_all=True, verbose=False, n_threads=2)
    try:
        llm.eval(tokens)
        theirs = np.array(llm.scores[: len(tokens)], dtype=np.float64)
    finally:
        llm.close()
    return Llama(path, n_ctx=64).forward(tokens, 0).astype(np.float64), theirs


TOKENS = [3, 17, 200, 45, 300, 7, 256, 99, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]  # > the window of 8


def relative_error(ours: np.ndarray, theirs: np.ndarray) -> float:
    return float(np.abs(ours - theirs).max() / np.abs(theirs).max())


@pytest.mark.parametrize("hf_arch", SAMPLES)
def test_converted_file_is_the_architecture_llama_cpp_runs(hf_arch: str, family) -> None:
    path = family(hf_arch, "F32")
    mf = ModelFile(path)
    assert mf.meta("general.architecture") == ARCH[hf_arch]
    ours, theirs = logits_of(path, TOKENS)
    # F32 weights, the same rounding of activations and cache: only summation order differs
    assert relative_error(ours, theirs) < 2e-3
    assert (ours.argmax(1) == theirs.argmax(1)).mean() >= 0.9


@pytest.mark.parametrize("preset", ["F16", "Q8_0", "Q4_K_M"])
@pytest.mark.parametrize("hf_arch", [a for a in SAMPLES if a != "LlamaForCausalLM"])
def test_greedy_and_logits_match_llama_cpp(hf_arch: str, preset: str, family, reference) -> None:
    """32 greedy steps from a prompt, with test_infer's claims and bounds for every type: our
    distance to the float32 reference R at most CAP at the first step, our 32-step mean at most
    1.2× (float) / 1.3× (quantized) llama.cpp's, and our token llama.cpp's wherever its margin is
    clear. The prompt plus 32 steps is four times the sliding window."""
    path = family(hf_arch, preset)
    run = compare(path, reference(path), "the rain in spain falls mainly")
    kind = FLOAT if preset == "F16" else QUANT
    print(f"{hf_arch} {preset}: {run.summary(CLEAR[kind])}")
    check(run, preset)


@pytest.mark.parametrize("preset", [p for p in PRESETS if p != "F32"])
@pytest.mark.parametrize("hf_arch", [a for a in SAMPLES if a != "LlamaForCausalLM"])
def test_quantized_file_is_byte_identical_to_llama_quantize(hf_arch: str, preset: str, family, tmp_path: Path) -> None:
    """Every preset, per family: Phi-3's fused attn_qkv counts and is treated as attn_v, Qwen2's
    biases and every norm stay F32, tied embeddings (Gemma) take the output's type, rows of 384
    (Gemma's attn_output) fall back from K types."""
    src = family(hf_arch, "F32")
    ours, theirs = tmp_path / "ours.gguf", tmp_path / "theirs.gguf"
    quantize_file(src, ours, preset)
    llama_cpp_quantize(src, theirs, preset)
    assert ours.read_bytes() == theirs.read_bytes()


@pytest.mark.parametrize("hf_arch", [a for a in SAMPLES if a != "LlamaForCausalLM"])
def test_perplexity_within_one_percent_of_llama_cpp(hf_arch: str, family) -> None:
    path, text = family(hf_arch, "Q8_0"), prose(4000)
    m = Llama(path, n_ctx=64)
    ours = perplexity(m, GGUFTokenizer(m.file), text, 64)
    theirs = llama_cpp_perplexity(path, text, 64)
    print(f"{hf_arch}: perplexity {ours.ppl:.4f} (llama.cpp {theirs:.4f}), {ours.chunks} chunks")
    assert ours.chunks >= 3
    assert abs(ours.ppl / theirs - 1) < 0.01


@pytest.mark.parametrize("hf_arch", [a for a in SAMPLES if a != "LlamaForCausalLM"])
def test_tokens_equal_llama_cpp(hf_arch: str, family) -> None:
    from tests.test_infer import TEXTS, assert_same_tokens

    chats = ["<|user|>\n  Hi there <|end|>\n<|assistant|>\n", "<s> <|endoftext|>  x </s>\t\n y"]
    assert_same_tokens(family(hf_arch, "F32"), TEXTS + chats + [prose(1500)])


# -- the comparison is sharp enough to see each family difference ------------------------------

SWITCHES: dict[str, dict[str, object]] = {
    "Qwen2ForCausalLM": {"rope_neox": False},
    "Qwen3ForCausalLM": {"qk_norm": False},
    "Gemma2ForCausalLM": {"attn_softcap": False, "swa_pattern": 0, "post_norms": False, "scale_embeddings": False},
    "Gemma3ForCausalLM": {"swa_pattern": 0, "ffn_act": "silu"},
    "Phi3ForCausalLM": {"rope_neox": False},
}


@pytest.mark.parametrize(
    "hf_arch,switch", [(a, k) for a, switches in SWITCHES.items() for k in switches], ids=lambda v: str(v)
)
def test_a_missing_family_difference_would_be_caught(
    hf_arch: str, switch: str, family, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each switch of families.py turned off in our engine alone: llama.cpp's logits move far
    beyond the 2e-3 the intact engine keeps to (test_converted_file_is_...)."""
    path = family(hf_arch, "F32")
    arch = ARCH[hf_arch]
    broken = replace(families.FAMILIES[arch], **{switch: SWITCHES[hf_arch][switch]})  # type: ignore[arg-type]
    monkeypatch.setitem(families.FAMILIES, arch, broken)
    if switch == "qk_norm":  # the norms are read when present: drop them instead
        import llamashare.infer.model as model

        real = model.Layer.__init__

        def without_norms(self, *a, **kw):
            real(self, *a, **kw)
            self.q_norm = self.k_norm = None

        monkeypatch.setattr(model.Layer, "__init__", without_norms)
    if switch == "post_norms":
        import llamashare.infer.model as model

        real_init = model.Layer.__init__

        def without_post(self, *a, **kw):
            real_init(self, *a, **kw)
            self.attn_post_norm = self.ffn_post_norm = None

        monkeypatch.setattr(model.Layer, "__init__", without_post)
    ours, theirs = logits_of(path, TOKENS)
    assert relative_error(ours, theirs) > 0.02


def test_gemma_norms_without_the_folded_one_would_be_caught(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import llamashare.quant.convert as conv

    hf = write_family(tmp_path / "g", "Gemma2ForCausalLM")
    real = conv._blocks
    monkeypatch.setattr(conv, "_blocks", lambda src, base_t, heads, base, shift=0.0: real(src, base_t, heads, base))
    convert(hf, tmp_path / "g.gguf", "f32")
    ours, theirs = logits_of(tmp_path / "g.gguf", TOKENS)  # both engines read the same wrong file
    monkeypatch.undo()
    convert(hf, tmp_path / "good.gguf", "f32")
    _, right = logits_of(tmp_path / "good.gguf", TOKENS)
    assert relative_error(theirs, right) > 0.02


# -- bad input -------------------------------------------------------------------------------------


def test_unsupported_and_mixture_of_experts_architectures_are_refused(tmp_path: Path) -> None:
    write_family(tmp_path / "m", "Qwen2ForCausalLM")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    for arch, message in (
        ("FalconForCausalLM", "not supported; llamashare converts LlamaForCausalLM, MistralForCausalLM, Qwen2"),
        ("Qwen2MoeForCausalLM", "mixture-of-experts"),
        ("Qwen3MoeForCausalLM", "mixture-of-experts"),
    ):
        (tmp_path / "m" / "config.json").write_text(json.dumps(config | {"architectures": [arch]}))
        with pytest.raises(CheckpointError, match=message):
            convert(tmp_path / "m", tmp_path / "out.gguf")
        assert not (tmp_path / "out.gguf").exists()


@pytest.mark.parametrize(
    "hf_arch,tensor,gguf_name",
    [
        ("Qwen3ForCausalLM", "model.layers.1.self_attn.k_norm.weight", "blk.1.attn_k_norm.weight"),
        ("Gemma2ForCausalLM", "model.layers.0.post_feedforward_layernorm.weight", "blk.0.post_ffw_norm.weight"),
        ("Phi3ForCausalLM", "model.layers.2.mlp.gate_up_proj.weight", "blk.2.ffn_up.weight"),
    ],
)
def test_a_missing_tensor_is_named(hf_arch: str, tensor: str, gguf_name: str, tmp_path: Path) -> None:
    from safetensors.numpy import load_file, save_file

    root = write_family(tmp_path / "m", hf_arch)
    index = json.loads((root / "model.safetensors.index.json").read_text())
    shard = root / index["weight_map"].pop(tensor)
    weights = load_file(str(shard))
    del weights[tensor]
    save_file(weights, str(shard))
    (root / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=f"has no tensor for {gguf_name}"):
        convert(root, tmp_path / "out.gguf")


def test_gguf_of_an_unknown_or_moe_architecture_is_one_line(family, tmp_path: Path) -> None:
    import gguf

    for arch, extra, message in (
        ("falcon", {}, "architecture 'falcon' is not supported; llamashare runs: llama, qwen2, qwen3, gemma2"),
        ("qwen2", {"qwen2.expert_count": 8}, "mixture-of-experts"),
    ):
        path = tmp_path / f"{arch}.gguf"
        w = gguf.GGUFWriter(path, arch)
        w.add_block_count(1)
        for key, value in extra.items():
            w.add_uint32(key, value)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        w.close()
        with pytest.raises(InferenceError, match=message):
            ModelFile(path)


def test_gemma3_multimodal_checkpoint_converts_its_text_part(family, tmp_path: Path) -> None:
    """Gemma3ForConditionalGeneration: text_config holds the text model, tensors sit under
    language_model., the vision tower is left out; the result is the text model's file."""
    from safetensors.numpy import load_file, save_file

    src = write_family(tmp_path / "text", "Gemma3ForCausalLM")
    mm = tmp_path / "mm"
    mm.mkdir()
    weights: dict[str, np.ndarray] = {}
    for shard in sorted(src.glob("*.safetensors")):
        weights |= {f"language_model.{k}": v for k, v in load_file(str(shard)).items()}
    weights["vision_tower.vision_model.embeddings.patch_embedding.weight"] = np.ones((4, 3), np.float32)
    weights["multi_modal_projector.mm_input_projection_weight"] = np.ones((4, 4), np.float32)
    save_file(weights, str(mm / "model.safetensors"))
    text = json.loads((src / "config.json").read_text())
    config = {"architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3", "text_config": text}
    (mm / "config.json").write_text(json.dumps(config))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (mm / name).write_bytes((src / name).read_bytes())
    result = CliRunner().invoke(cli, ["convert", str(mm), "-o", str(tmp_path / "mm.gguf"), "--outtype", "f32", "-q"])
    assert result.exit_code == 0, result.output
    assert "left out the vision tower (2 tensors)" in result.output
    ours, theirs = logits_of(tmp_path / "mm.gguf", TOKENS)
    assert relative_error(ours, theirs) < 2e-3
    plain, _ = logits_of(family("Gemma3ForCausalLM", "F32"), TOKENS)
    np.testing.assert_allclose(ours, plain, rtol=0, atol=1e-5)


# -- variants a family's real checkpoints have -------------------------------------------------


def _edit_config(root: Path, **changes: object) -> None:
    config = json.loads((root / "config.json").read_text())
    (root / "config.json").write_text(json.dumps(config | changes))


@pytest.mark.parametrize("n_ctx", [64, 300])
def test_phi3_long_context_rope_factors_match_llama_cpp(n_ctx: int, tmp_path: Path) -> None:
    """Phi-3.5 / Phi-3-128k: "longrope" factors per frequency, the short set for contexts up to
    the original training length, the long set (and llama.cpp's attention factor) above it. The
    context is judged rounded up to a multiple of 256, as llama.cpp pads it: 64 → 256 (short),
    300 → 512 (long), against an original length of 256 stretched to 1024."""
    root = write_family(tmp_path / "phi", "Phi3ForCausalLM")
    half = SAMPLES["Phi3ForCausalLM"].head_size // 2
    rng = np.random.default_rng(7)
    long = (1 + rng.random(half) * 8).round(3).tolist()
    short = (1 + rng.random(half) * 0.5).round(3).tolist()
    _edit_config(
        root,
        original_max_position_embeddings=256,
        max_position_embeddings=1024,
        rope_scaling={"type": "longrope", "long_factor": long, "short_factor": short},
    )
    convert(root, tmp_path / "phi.gguf", "f32")
    mf = ModelFile(tmp_path / "phi.gguf")
    assert {"rope_factors_long.weight", "rope_factors_short.weight"} <= set(mf.tensors)
    llm = llama_cpp.Llama(model_path=str(tmp_path / "phi.gguf"), n_ctx=n_ctx, logits_all=True, verbose=False)
    try:
        llm.eval(TOKENS)
        theirs = np.array(llm.scores[: len(TOKENS)], dtype=np.float64)
    finally:
        llm.close()
    ours = Llama(tmp_path / "phi.gguf", n_ctx=n_ctx).forward(TOKENS, 0).astype(np.float64)
    assert relative_error(ours, theirs) < 2e-3
    other = Llama(tmp_path / "phi.gguf", n_ctx=364 - n_ctx).forward(TOKENS, 0)  # the other factor set
    assert relative_error(other.astype(np.float64), theirs) > 0.02


def test_gemma3_layer_types_beyond_the_default_pattern_match_llama_cpp(tmp_path: Path) -> None:
    """A Gemma 3 whose global layers are not every sixth (newer configs list ``layer_types``):
    written as a per-layer sliding_window_pattern, read by llama.cpp and by the engine."""
    root = write_family(tmp_path / "g", "Gemma3ForCausalLM")
    types = ["sliding_attention", "full_attention"] * 3
    _edit_config(root, layer_types=types)
    convert(root, tmp_path / "g.gguf", "f32")
    assert ModelFile(tmp_path / "g.gguf").config.swa_layers == tuple(t == "sliding_attention" for t in types)
    ours, theirs = logits_of(tmp_path / "g.gguf", TOKENS)
    assert relative_error(ours, theirs) < 2e-3


#: Real chat templates of each family, as llama.cpp keeps them (models/templates/), and the
#: conversation each accepts (Gemma's refuse a system turn).
TEMPLATES = {
    "Qwen-Qwen2.5-7B-Instruct": "Qwen2ForCausalLM",
    "Qwen-Qwen3-0.6B": "Qwen3ForCausalLM",
    "google-gemma-2-2b-it": "Gemma2ForCausalLM",
    "microsoft-Phi-3.5-mini-instruct": "Phi3ForCausalLM",
}


@pytest.mark.parametrize("name", TEMPLATES)
def test_real_chat_templates_render_as_llama_cpp_python_does(name: str, family) -> None:
    """--chat renders each family's own template in the sandbox; the text must be what
    llama-cpp-python's Jinja formatter makes of the same template and conversation."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    from llamashare.infer.chat import render
    from tests.vocab_files import template_folder

    template = (template_folder(list(TEMPLATES)) / f"{name}.jinja").read_text()
    tok = GGUFTokenizer(ModelFile(family(TEMPLATES[name], "F32")))
    messages = [
        {"role": "user", "content": "Name three planets."},
        {"role": "assistant", "content": "Mercury, Venus, Earth."},
        {"role": "user", "content": "And the largest?"},
    ]
    if not name.startswith("google-gemma"):
        messages.insert(0, {"role": "system", "content": "Answer briefly."})
    bos, eos = (tok.tokens[i] if i is not None else "" for i in (tok.bos, tok.eos))
    theirs = Jinja2ChatFormatter(template, eos_token=eos, bos_token=bos)(messages=messages).prompt  # type: ignore[arg-type]
    ours = render(template, messages, tok)
    assert ours == theirs
    assert "And the largest?" in ours
