"""``export``: a GGUF laid out for Ollama and LM Studio, with the stop tokens llama.cpp itself ends
generation on (read from llama.cpp's vocabulary, not from our tokenizer), on two real models."""

from __future__ import annotations

import os
import re
from pathlib import Path

import llama_cpp
import pytest

from llamashare.daemon.home import Home
from llamashare.manifests.create import write_release
from llamashare.manifests.manifest import load_manifest
from llamashare.store import Store
from tests.helpers import cli, make_release


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
