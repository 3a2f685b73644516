"""Quantization: every type byte-identical to llama.cpp's own quantizer (ggml, through ctypes),
dequantization equal to ggml's and gguf-py's, whole files byte-identical to
``llama_model_quantize`` for every preset, and the refusals a user can hit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import gguf
import llama_cpp
import numpy as np
import pytest

from llamashare import fsio
from llamashare.errors import InsufficientSpaceError, OutputExistsError, QuantizeError
from llamashare.quant.convert import convert
from llamashare.quant.presets import PRESETS
from llamashare.quant.qtype import lookup
from llamashare.quant.quantize import quantize_file
from llamashare.sample import SampleConfig, write_sample_model
from tests import ggml_ref

QUANT_TYPES = ["q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q2_k", "q3_k", "q4_k", "q5_k", "q6_k"]
LEGACY = QUANT_TYPES[:5]
#: A sample whose rows are multiples of 256, so every K-quant rule and type is exercised.
K_CONFIG = SampleConfig(hidden_size=256, intermediate_size=768, num_hidden_layers=8)


def ggml_name(t: str) -> str:
    return t[:-2] + "_K" if t.endswith("_k") else t


def hard_rows(rng: np.random.Generator, n: int = 1024) -> np.ndarray:
    """Gaussian rows plus the blocks that break naive ports: zeros, -0.0, constants, ties of
    +a/-a, one outlier, all-positive/all-negative, sparse, subnormal-small and large values."""
    x = (rng.standard_normal((48, n)) * 0.02).astype(np.float32)
    x[1, :256] = 0
    x[2, :256] = -0.0
    x[2, 256:288] = np.where(np.arange(32) % 2, 0.0, -0.0)
    x[3, :256] = 0.75
    x[4, :256] = -0.5
    x[5, :32] = np.tile([0.3, -0.3], 16)
    x[5, 32:64] = np.tile([-0.3, 0.3], 16)
    x[6, 7] = 50.0
    x[7] = rng.uniform(0, 1, n)
    x[8] = -rng.uniform(0, 1, n)
    x[9] = np.where(rng.random(n) < 0.9, 0, rng.standard_normal(n)).astype(np.float32)
    x[10, :64] = 1e-30
    x[11] = rng.standard_normal(n).astype(np.float32) * 1000
    x[12] = np.round(rng.standard_normal(n) * 4).astype(np.float32)  # exact ties for the rounding
    x[13] = np.round(rng.standard_normal(n) * 8) / 2  # halves: roundf vs round-half-even
    return x


@pytest.mark.parametrize("name", QUANT_TYPES)
def test_quantize_is_byte_identical_to_ggml(name: str) -> None:
    t = lookup(name)
    x = hard_rows(np.random.default_rng(7))
    ours, ref = t.quantize(x), ggml_ref.quantize(int(t.ggml), x)
    bad = np.nonzero((ours.reshape(-1, t.type_size) != ref.reshape(-1, t.type_size)).any(axis=1))[0]
    assert bad.size == 0, f"{bad.size} of {ref.size // t.type_size} blocks differ, first {bad[:5]}"
    assert np.array_equal(t.quantize(x, threads=1), ours)  # threads change no byte


@pytest.mark.parametrize("name", QUANT_TYPES)
def test_dequantize_matches_ggml_and_gguf_py(name: str) -> None:
    t = lookup(name)
    x = hard_rows(np.random.default_rng(8))
    q = ggml_ref.quantize(int(t.ggml), x)
    ours = t.dequantize(q)
    assert ours.shape == x.shape
    assert np.array_equal(ours, ggml_ref.dequantize(ggml_name(name), q, x.size).reshape(x.shape))
    assert np.array_equal(ours, gguf.quants.dequantize(q, t.ggml))
    # and arbitrary bytes (every bit pattern of the level fields), scales kept finite
    raw = np.random.default_rng(9).integers(0, 256, (64, t.type_size), dtype=np.uint8)
    for off in t.fp16_fields:
        raw[:, off : off + 2] = np.float16(0.01) * np.arange(1, 65, dtype=np.float16)[:, None].view(np.uint8)[:, :2]
    assert np.array_equal(
        t.dequantize(raw.reshape(1, -1)).ravel(), ggml_ref.dequantize(ggml_name(name), raw, 64 * t.block_size)
    )


@pytest.mark.parametrize("name", LEGACY)
def test_legacy_types_equal_gguf_py_quantizer(name: str) -> None:
    """gguf-py's reference quantizers agree too, except on blocks of -0.0 (row 2), where
    gguf-py takes the sign from the data and ggml's loop keeps its initial +0.0; we follow ggml."""
    t = lookup(name)
    x = np.delete(hard_rows(np.random.default_rng(10)), 2, axis=0)
    assert np.array_equal(t.quantize(x), gguf.quants.quantize(x, t.ggml))


@pytest.mark.parametrize("name", QUANT_TYPES)
def test_round_trip_error_is_what_the_bits_allow(name: str) -> None:
    t = lookup(name)
    x = (np.random.default_rng(11).standard_normal((64, 512)) * 0.02).astype(np.float32)
    back = t.dequantize(t.quantize(x))
    rel = np.sqrt(np.mean((back - x) ** 2)) / np.sqrt(np.mean(x**2))
    bits = t.bits_per_weight()
    assert rel < 2.0 ** -(bits - 3.2), f"{name}: relative RMS error {rel:.4f} at {bits} bits per weight"
    assert np.array_equal(t.dequantize(t.quantize(np.zeros((2, 256), np.float32))), np.zeros((2, 256)))


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_non_finite_values_are_refused(bad: float) -> None:
    x = np.zeros((4, 256), np.float32)
    x[2, 100] = bad
    for name in QUANT_TYPES:
        with pytest.raises(QuantizeError, match="not finite"):
            lookup(name).quantize(x)


def test_bad_shapes_and_overflow_are_refused() -> None:
    with pytest.raises(QuantizeError, match="not a whole number of q4_k blocks"):
        lookup("q4_k").quantize(np.zeros((2, 100), np.float32))
    with pytest.raises(QuantizeError, match="not a whole number of q8_0 blocks"):
        lookup("q8_0").quantize(np.zeros((2, 33), np.float32))
    with pytest.raises(QuantizeError, match="overflows float16"):
        lookup("q4_0").quantize(np.full((1, 32), 1e6, np.float32))
    with pytest.raises(QuantizeError, match="unknown tensor type"):
        lookup("q7_x")


# -- the real model ----------------------------------------------------------------------------


def test_real_weights_quantize_identically(smollm2: Path) -> None:
    """SmolLM2's tensors, dequantized to float32 (as a float model would give them), through
    every type: ours and ggml's bytes are the same."""
    reader = gguf.GGUFReader(smollm2)
    tensors = {t.name: t for t in reader.tensors}
    picked = [
        "token_embd.weight",
        "blk.0.attn_q.weight",
        "blk.0.attn_v.weight",
        "blk.15.ffn_down.weight",
        "blk.29.ffn_up.weight",
    ]
    for name in picked:
        t = tensors[name]
        src = lookup(t.tensor_type.name)
        rows = np.asarray(t.data)[:256]  # 256 rows each keeps the test quick
        w = src.dequantize(rows)
        assert np.array_equal(w, gguf.quants.dequantize(rows, t.tensor_type))
        for qname in QUANT_TYPES:
            q = lookup(qname)
            if w.shape[1] % q.block_size:
                continue
            assert np.array_equal(q.quantize(w), ggml_ref.quantize(int(q.ggml), w)), f"{name} as {qname}"


# -- whole files against llama.cpp -------------------------------------------------------------


def llama_cpp_quantize(src: Path, out: Path, preset: str, *extra: str) -> None:
    ftype = int(PRESETS[preset].ftype)
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).parent / "llamacpp_quantize.py"), str(src), str(out), str(ftype), *extra],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.fixture(scope="session")
def k_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("kmodel")
    write_sample_model(root / "hf", K_CONFIG)
    convert(root / "hf", root / "k.f16.gguf", "f16")
    return root / "k.f16.gguf"


@pytest.mark.slow
@pytest.mark.parametrize("preset", [p for p in PRESETS if p != "F32"])
def test_file_is_byte_identical_to_llama_quantize(preset: str, k_model: Path, tmp_path: Path) -> None:
    ours, theirs = tmp_path / "ours.gguf", tmp_path / "theirs.gguf"
    report = quantize_file(k_model, ours, preset)
    llama_cpp_quantize(k_model, theirs, preset)
    assert ours.read_bytes() == theirs.read_bytes()
    assert report.bytes_out < k_model.stat().st_size or preset in ("F16", "BF16")


@pytest.mark.parametrize(
    "preset,extra", [("Q4_K_M", ()), ("Q3_K_M", ()), ("Q2_K", ()), ("Q4_0", ()), ("Q6_K", ("--pure",))]
)
def test_fallback_rules_match_llama_quantize(preset: str, extra: tuple[str, ...], tmp_path: Path) -> None:
    """The default sample's rows are 128 and 344 wide: K types fall back to Q5_0/Q8_0, and 344
    is not a multiple of 32 either, so ffn_down goes to F16 — all as llama.cpp decides."""
    write_sample_model(tmp_path / "hf")
    convert(tmp_path / "hf", tmp_path / "m.f32.gguf", "f32")
    ours, theirs = tmp_path / "ours.gguf", tmp_path / "theirs.gguf"
    report = quantize_file(tmp_path / "m.f32.gguf", ours, preset, pure=bool(extra))
    llama_cpp_quantize(tmp_path / "m.f32.gguf", theirs, preset, *extra)
    assert ours.read_bytes() == theirs.read_bytes()
    assert report.types.get("f16") == 4  # the four ffn_down matrices


def test_quantized_models_run_in_llama_cpp(k_model: Path, tmp_path: Path) -> None:
    """They load and run; logits move away from f16 in the order of the bits spent."""

    def scores(path: Path) -> np.ndarray:
        llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, logits_all=True, verbose=False, n_threads=2)
        try:
            llm.eval([3, 17, 200, 45, 300, 7, 256, 99])
            return np.array(llm.scores[:8], dtype=np.float64)
        finally:
            llm.close()

    base = scores(k_model)
    errors = []
    for preset in ("Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M"):
        out = tmp_path / f"k.{preset}.gguf"
        quantize_file(k_model, out, preset)
        got = scores(out)
        errors.append(np.sqrt(np.mean((got - base) ** 2)) / np.sqrt(np.mean(base**2)))
    assert 0 < errors[0] < 0.1, errors  # the sample's peaked attention amplifies weight error ~15x
    assert errors == sorted(errors), errors


def test_requantizing_needs_consent(smollm2: Path, tmp_path: Path) -> None:
    with pytest.raises(QuantizeError, match="already q4_1.*--allow-requantize"):
        quantize_file(smollm2, tmp_path / "x.gguf", "Q8_0")
    assert not (tmp_path / "x.gguf").exists()


@pytest.mark.slow
def test_requantized_real_model_matches_llama_quantize(smollm2: Path, tmp_path: Path) -> None:
    ours, theirs = tmp_path / "ours.gguf", tmp_path / "theirs.gguf"
    quantize_file(smollm2, ours, "Q8_0", allow_requantize=True)
    llama_cpp_quantize(smollm2, theirs, "Q8_0", "--allow-requantize", "--threads", "2")
    assert ours.read_bytes() == theirs.read_bytes()


def test_refusals_leave_nothing_behind(k_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out.gguf"
    with pytest.raises(QuantizeError, match="overwrite the input"):
        quantize_file(k_model, k_model, "Q4_0")
    with pytest.raises(QuantizeError, match="unknown quantization 'Q3_X'"):
        quantize_file(k_model, out, "Q3_X")
    truncated = tmp_path / "cut.gguf"
    truncated.write_bytes(k_model.read_bytes()[: k_model.stat().st_size // 2])
    with pytest.raises(QuantizeError, match="cut.gguf"):
        quantize_file(truncated, out, "Q4_0")
    out.write_bytes(b"keep me")
    with pytest.raises(OutputExistsError):
        quantize_file(k_model, out, "Q4_0")
    assert out.read_bytes() == b"keep me"

    # too little space: found before anything is written
    monkeypatch.setattr(fsio.shutil, "disk_usage", lambda _p: type("U", (), {"free": 1000})())
    with pytest.raises(InsufficientSpaceError, match="not enough free space"):
        quantize_file(k_model, out, "Q4_0", force=True)
    assert out.read_bytes() == b"keep me"
    monkeypatch.undo()

    # interrupted half way (Ctrl-C): no partial file, the old output untouched
    seen = []

    def interrupt(nbytes: int) -> None:
        seen.append(nbytes)
        if len(seen) == 20:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        quantize_file(k_model, out, "Q4_K_M", force=True, progress=interrupt)
    assert out.read_bytes() == b"keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.gguf", "out.gguf"]


# -- the GGUF header reader ----------------------------------------------------------------------


def test_header_reader_agrees_with_gguf_py(smollm2: Path, k_model: Path) -> None:
    from llamashare.quant.gguf_file import read_header

    for path in (smollm2, k_model):
        ours, theirs = read_header(path), gguf.GGUFReader(path)
        fields = {k: f for k, f in theirs.fields.items() if not k.startswith("GGUF.")}
        assert list(ours.raw_kv) == list(fields)
        for key, f in fields.items():
            raw = b"".join(bytes(part) for part in f.parts)
            assert ours.raw_kv[key] == raw, key
        assert ours.value("tokenizer.ggml.tokens") == fields["tokenizer.ggml.tokens"].contents()
        assert [(t.name, t.ne, t.ggml_type, ours.data_start + t.offset) for t in ours.tensors] == [
            (t.name, tuple(int(d) for d in t.shape), int(t.tensor_type), t.data_offset) for t in theirs.tensors
        ]


def test_header_reader_refuses_damaged_files(k_model: Path, tmp_path: Path) -> None:
    from llamashare.quant.gguf_file import read_header

    data = k_model.read_bytes()
    cases = {
        "empty": b"",
        "magic": b"GGML" + data[4:],
        "version": data[:4] + (9).to_bytes(4, "little") + data[8:],
        "header cut": data[:5000],
        "huge count": data[:8] + (2**62).to_bytes(8, "little") + data[16:],
        "huge string": data[:24] + (2**60).to_bytes(8, "little") + data[32:],
    }
    for label, blob in cases.items():
        bad = tmp_path / f"{label.replace(' ', '-')}.gguf"
        bad.write_bytes(blob)
        with pytest.raises(QuantizeError, match=bad.name):
            read_header(bad)
        with pytest.raises(QuantizeError):
            quantize_file(bad, tmp_path / "out.gguf", "Q8_0")
    assert not (tmp_path / "out.gguf").exists()
