"""The repository installs as one import name, both as a wheel and editable, in a fresh venv."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

PROBE = """
import importlib.util, llamashare, llamashare.manifests.torrent, llamashare.manifests.manifest, llamashare.quant, llamashare.infer
import llamashare.daemon.dashboard as d
assert (d.WEB / "index.html").is_file(), "the dashboard page was not installed"
for generic in ("p2p", "quant", "infer", "manifests"):
    assert importlib.util.find_spec(generic) is None, generic + " leaked as a top-level module"
print(llamashare.__version__, llamashare.manifests.torrent.__file__)
"""


@pytest.mark.slow
@pytest.mark.parametrize("editable", [False, True], ids=["wheel", "editable"])
def test_fresh_venv_install(tmp_path: Path, editable: bool) -> None:
    # Dependencies (and pip/setuptools) come from the running environment through a .pth file, so
    # the test needs no network; the project itself is built from a copy of this checkout.
    src = tmp_path / "src"
    shutil.copytree(
        REPO,
        src,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "*.egg-info", "build", "__pycache__", ".hypothesis", ".pytest_cache"
        ),
    )
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    site = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    Path(site, "parent-env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    cmd = [str(py), "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "-q"]
    cmd += ["-e", str(src)] if editable else [str(src)]
    subprocess.run(cmd, check=True, cwd=tmp_path, timeout=300)
    out = subprocess.run(
        [str(py), "-c", PROBE], check=True, cwd=tmp_path, capture_output=True, text=True, timeout=60
    ).stdout
    installed_from = Path(out.split()[1])
    if editable:
        assert installed_from == src / "manifests" / "torrent.py"
    else:
        assert installed_from.is_relative_to(env_dir) and installed_from.parts[-3:] == (
            "llamashare",
            "manifests",
            "torrent.py",
        )
    version = subprocess.run(
        [str(env_dir / "bin" / "llamashare"), "--version"], check=True, capture_output=True, text=True, timeout=60
    ).stdout
    assert out.split()[0] in version
    assert sys.prefix != str(env_dir)
