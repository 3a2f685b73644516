"""``export``: a GGUF laid out for Ollama and LM Studio, with the stop tokens llama.cpp itself ends
generation on (read from llama.cpp's vocabulary, not from our tokenizer), on two real models."""

from __future__ import annotations

import os
import re
from pathlib import Path

import llama_cpp
import pytest

from llamashare.daemon.home import Home
from llamashare.infer.go_template import check_conversations, ollama_template
from llamashare.infer.tokenizer import GGUFTokenizer, VocabFile
from llamashare.manifests.create import write_release
from llamashare.manifests.manifest import load_manifest
from llamashare.store import Store
from tests.go_engine import render_go
from tests.helpers import cli, make_release
from tests.vocab_files import template_folder


def _llama_cpp_stops(path: Path) -> set[str]:
    ref = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    try:
        vocab = ref._model.vocab
        n = llama_cpp.llama_vocab_n_tokens(vocab)
        return {
            llama_cpp.llama_vocab_get_text(vocab, i).decode()
            for i in range(n)
            if llama_cpp.llama_vocab_is_eog(vocab, i)
        }
    finally:
        ref.close()


def _stops(modelfile: Path) -> set[str]:
    return set(re.findall(r'^PARAMETER stop "(.*)"$', modelfile.read_text(), flags=re.M))


@pytest.mark.parametrize("model", ["smollm2", "gemma3_270m"])
def test_ollama_modelfile_stops_where_llama_cpp_stops(
    tmp_path: Path, model: str, request: pytest.FixtureRequest
) -> None:
    gguf: Path = request.getfixturevalue(model)
    src = tmp_path / gguf.name
    try:
        os.link(gguf, src)
    except OSError:  # another filesystem
        src.write_bytes(gguf.read_bytes())
    home = Home(tmp_path / "home")
    out = tmp_path / "ollama"
    p = cli(home, "export", str(src), "--to", str(out))
    assert p.returncode == 0, p.stderr
    assert f"ollama create {src.name.split('.')[0].lower()} -f {out / 'Modelfile'}" in p.stdout, p.stdout
    text = (out / "Modelfile").read_text()
    assert f"FROM ./{src.name}\n" in text
    stops = _stops(out / "Modelfile")
    assert stops and stops == _llama_cpp_stops(src), stops
    assert os.path.samefile(out / src.name, src)  # a hard link, not a copy

    # Again: the same files are fine. A different file in the way is refused, and kept.
    assert cli(home, "export", str(src), "--to", str(out)).returncode == 0
    (out / "Modelfile").write_text("FROM ./mine.gguf\n")
    p = cli(home, "export", str(src), "--to", str(out))
    assert p.returncode != 0 and "nothing was overwritten" in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert (out / "Modelfile").read_text() == "FROM ./mine.gguf\n"


def test_export_a_store_release_for_both_runtimes(tmp_path: Path, smollm2: Path) -> None:
    home = Home(tmp_path / "home")
    folder = tmp_path / "smol"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    m, torrent = make_release(folder, license="Apache-2.0")
    write_release(m, torrent, tmp_path / "smol.toml")
    entry = Store(home.models_dir).add(load_manifest(tmp_path / "smol.toml"))
    entry.gguf_dir.mkdir(parents=True)
    built = entry.gguf_dir / "smol.Q4_1.gguf"
    built.write_bytes(smollm2.read_bytes())
    entry.finish_step("quantize:Q4_1", "k", built, 0.0, {})

    p = cli(home, "export", "smol", "--to", str(tmp_path / "o"))
    assert p.returncode == 0, p.stderr
    text = (tmp_path / "o" / "Modelfile").read_text()
    assert 'LICENSE """Apache-2.0"""' in text and "FROM ./smol.Q4_1.gguf" in text
    assert "ollama create smol -f" in p.stdout

    lm = tmp_path / "lmstudio-models"
    p = cli(home, "export", "smol", "--format", "lmstudio", "--to", str(lm))
    assert p.returncode == 0, p.stderr
    placed = lm / "llamashare" / "smol-GGUF" / "smol.Q4_1.gguf"
    assert os.path.samefile(placed, built) and f"lms import {placed}" in p.stdout

    p = cli(home, "export", "nothing-here", "--to", str(tmp_path / "x"))
    assert p.returncode != 0 and "no release 'nothing-here'" in p.stderr and "Traceback" not in p.stderr


#: Real chat templates (llama.cpp's models/templates/): the first group restates exactly as a Go
#: template; the second cannot (content trimmed, system folded into a user turn or moved first),
#: so export leaves TEMPLATE out and Ollama maps the GGUF's own.
RESTATED = [
    "Qwen-Qwen2.5-7B-Instruct",
    "Qwen-QwQ-32B",
    "microsoft-Phi-3.5-mini-instruct",
    "ibm-granite-granite-3.3-2B-Instruct",
    "Mistral-Small-3.2-24B-Instruct-2506",
    "LFM2-8B-A1B",
]
NOT_RESTATED = [
    "meta-llama-Llama-3.1-8B-Instruct",
    "google-gemma-2-2b-it",
    "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B",
    "mistralai-Mistral-Nemo-Instruct-2407",
]
#: Conversations the derivation never saw.
UNSEEN = [
    [{"role": "user", "content": "Tell me a joke about ünïcode ✓"}],
    [
        {"role": "system", "content": "You are terse.\n\nVery terse."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "  <b>bold</b> and {{ braces }}  "},
        {"role": "assistant", "content": "Done."},
        {"role": "user", "content": "Bye"},
    ],
]


def test_modelfile_templates_render_in_go_exactly_as_the_jinja_templates(smollm2: Path) -> None:
    """Each restated template, rendered by Go's own text/template with Ollama's data shape, gives
    what llama-cpp-python's Jinja formatter makes of the original, on conversations including
    ones the derivation never saw."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    folder = template_folder(RESTATED + NOT_RESTATED)
    tok = GGUFTokenizer(VocabFile(smollm2))
    bos, eos = tok.tokens[tok.bos] if tok.bos is not None else "", tok.tokens[tok.eos] if tok.eos is not None else ""
    own = VocabFile(smollm2).meta("tokenizer.chat_template")
    assert isinstance(own, str)
    templates = {name: (folder / f"{name}.jinja").read_text() for name in RESTATED + NOT_RESTATED}
    templates["SmolLM2 (the GGUF's own)"] = own
    derived = {name: ollama_template(t, tok) for name, t in templates.items()}
    assert [n for n in NOT_RESTATED if derived[n] is not None] == []
    jobs, expected = [], []
    for name, go in derived.items():
        if name in NOT_RESTATED:
            continue
        assert go is not None, name
        for convo in check_conversations() + UNSEEN:
            theirs = Jinja2ChatFormatter(templates[name], eos_token=eos, bos_token=bos)(messages=convo).prompt  # type: ignore[arg-type]
            if tok.add_bos:
                theirs = theirs.removeprefix(bos)
            jobs.append((go, {"Messages": [{"Role": m["role"], "Content": m["content"]} for m in convo]}))
            expected.append((name, theirs))
    for (name, theirs), ours in zip(expected, render_go(jobs), strict=True):
        assert ours == theirs, name


def test_gemma_exports_without_a_template_and_says_so(tmp_path: Path, gemma3_270m: Path) -> None:
    p = cli(Home(tmp_path / "home"), "export", str(gemma3_270m), "--to", str(tmp_path / "o"))
    assert p.returncode == 0, p.stderr
    assert "TEMPLATE" not in (tmp_path / "o" / "Modelfile").read_text()
    assert "Ollama maps the GGUF's own" in p.stderr


def test_smollm2_modelfile_template_is_the_restated_one(tmp_path: Path, smollm2: Path) -> None:
    p = cli(Home(tmp_path / "home"), "export", str(smollm2), "--to", str(tmp_path / "o"))
    assert p.returncode == 0, p.stderr
    text = (tmp_path / "o" / "Modelfile").read_text()
    found = re.search(r'^TEMPLATE """(.*?)"""$', text, flags=re.M | re.S)
    tok = GGUFTokenizer(VocabFile(smollm2))
    template = VocabFile(smollm2).meta("tokenizer.chat_template")
    assert found and isinstance(template, str) and found.group(1) == ollama_template(template, tok)
