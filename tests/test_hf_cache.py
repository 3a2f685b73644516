"""The Hugging Face cache both ways, checked with huggingface_hub itself: a snapshot it downloaded
is published and seeded in place, and a release fetched with ``--hf-cache`` is one it loads offline."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

from llamashare.daemon.client import DaemonClient
from llamashare.daemon.home import Home
from llamashare.manifests.hf_cache import hub_cache
from llamashare.manifests.manifest import load_manifest
from llamashare.store import Store
from tests.helpers import Homes, cli
from tests.hf_hub import LFS_SUFFIXES, download_repo, git_sha1, hf_env, huggingface_hub

REPO = "llamashare-tests/tiny-llama"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _repo_files() -> dict[str, bytes]:
    rng = np.random.default_rng(26)
    return {
        ".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n",
        "config.json": b'{"architectures": ["LlamaForCausalLM"], "hidden_size": 64}\n',
        "tokenizer/tokenizer.json": b'{"version": "1.0", "model": {"type": "BPE"}}\n',
        "model-00001-of-00002.safetensors": rng.integers(0, 256, 3 << 20, dtype=np.uint8).tobytes(),
        "model-00002-of-00002.safetensors": rng.integers(0, 256, 1 << 20, dtype=np.uint8).tobytes(),
    }


@pytest.fixture()
def snapshot(tmp_path: Path) -> Path:
    return download_repo(tmp_path / "hf-a", REPO, COMMIT, _repo_files())


def test_the_cache_folder_is_the_one_huggingface_hub_uses(tmp_path: Path) -> None:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "XDG_CACHE_HOME"))}
    cases = [
        {},
        {"XDG_CACHE_HOME": str(tmp_path / "xdg")},
        {"HF_HOME": str(tmp_path / "hf-home"), "XDG_CACHE_HOME": str(tmp_path / "xdg")},
        {"HUGGINGFACE_HUB_CACHE": str(tmp_path / "legacy"), "HF_HOME": str(tmp_path / "hf-home")},
        {"HF_HUB_CACHE": str(tmp_path / "hub"), "HUGGINGFACE_HUB_CACHE": str(tmp_path / "legacy")},
        {"HF_HUB_CACHE": "~/somewhere/hub"},
    ]
    for case in cases:
        env = base | case
        theirs = huggingface_hub("result = huggingface_hub.constants.HF_HUB_CACHE", env)
        assert str(hub_cache(env)) == theirs, case


def test_create_from_a_snapshot_follows_its_links_and_records_the_origin(tmp_path: Path, snapshot: Path) -> None:
    home = cli_home(tmp_path)
    p = cli(home, "create", str(snapshot), "--license", "Apache-2.0", "-o", str(tmp_path / "tiny.toml"), "-q")
    assert p.returncode == 0, p.stderr
    assert f"from Hugging Face {REPO} at {COMMIT} (main)" in p.stdout
    m = load_manifest(tmp_path / "tiny.toml")
    files = _repo_files()
    assert m.name == "tiny-llama"  # the repo's name, not the commit folder's
    assert {f.path: f.sha256 for f in m.files} == {k: hashlib.sha256(v).hexdigest() for k, v in files.items()}
    assert m.origin is not None and (m.origin.huggingface, m.origin.revision, m.origin.ref) == (REPO, COMMIT, "main")
    assert set(m.origin.git_files) == {k for k in files if not k.endswith(LFS_SUFFIXES)}
    assert all(p.is_symlink() for p in snapshot.rglob("*") if p.is_file())  # nothing copied or replaced


def test_a_damaged_or_escaping_snapshot_is_refused(tmp_path: Path, snapshot: Path) -> None:
    home = cli_home(tmp_path)
    blob = (snapshot / "model-00002-of-00002.safetensors").resolve()
    data = bytearray(blob.read_bytes())
    data[100] ^= 1
    blob.write_bytes(bytes(data))  # same size, other bytes than its name says
    p = cli(home, "create", str(snapshot), "--license", "MIT", "-o", str(tmp_path / "x.toml"), "-q")
    assert p.returncode != 0 and "the cache is damaged" in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr

    blob.write_bytes(_repo_files()["model-00002-of-00002.safetensors"])
    outside = tmp_path / "elsewhere.txt"
    outside.write_text("not part of the cache")
    (snapshot / "extra.txt").symlink_to(outside)
    p = cli(home, "create", str(snapshot), "--license", "MIT", "-o", str(tmp_path / "x.toml"), "-q")
    assert p.returncode != 0 and "outside the cache" in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert not (tmp_path / "x.toml").exists()


@pytest.mark.slow
def test_seed_in_place_then_fetch_into_another_cache_that_huggingface_hub_loads_offline(
    tmp_path: Path, homes: Homes, snapshot: Path
) -> None:
    a, b, c = homes("a"), homes("b"), homes("c")
    toml = tmp_path / "tiny.toml"
    assert cli(a, "create", str(snapshot), "--license", "Apache-2.0", "-o", str(toml), "-q").returncode == 0
    p = cli(a, "seed", str(toml), "--dir", str(snapshot))
    assert p.returncode == 0, p.stderr
    seeding = DaemonClient(a).status().release("tiny-llama")
    assert seeding is not None and seeding.dir == str(snapshot)  # seeded in place, not copied
    peer_a = f"127.0.0.1:{DaemonClient(a).info['listen_port']}"

    cache_b = tmp_path / "hf-b"
    env_b = hf_env(cache_b)
    p = cli(
        b,
        "fetch",
        str(toml),
        "--hf-cache",
        "--no-convert",
        "--peer",
        peer_a,
        "--ratio",
        "100",
        "--timeout",
        "60",
        env=env_b,
    )
    assert p.returncode == 0, p.stderr
    assert "in the Hugging Face cache as" in p.stderr, p.stderr
    ours = cache_b / f"models--{REPO.replace('/', '--')}" / "snapshots" / COMMIT
    assert Store(b.models_dir).get("tiny-llama").source_dir == ours

    # huggingface_hub, offline, finds the repo and reads every file from our snapshot...
    offline = hf_env(cache_b, offline=True)
    found = huggingface_hub(f"result = huggingface_hub.snapshot_download({REPO!r}, local_files_only=True)", offline)
    assert found == str(ours)
    files = _repo_files()
    for rel, data in files.items():
        path = huggingface_hub(
            f"result = huggingface_hub.hf_hub_download({REPO!r}, {rel!r}, local_files_only=True)", offline
        )
        assert Path(str(path)).read_bytes() == data, rel
    # ...its cache scan sees one whole repo with no warnings, and the blobs have the names the
    # Hub's own download gave them.
    scan = huggingface_hub(
        "info = huggingface_hub.scan_cache_dir()\n"
        "result = {'warnings': [str(w) for w in info.warnings], 'repos': [(r.repo_id, r.size_on_disk, r.nb_files, "
        "sorted(ref for rev in r.revisions for ref in rev.refs)) for r in info.repos]}",
        offline,
    )
    assert scan == {"warnings": [], "repos": [[REPO, sum(map(len, files.values())), len(files), ["main"]]]}, scan
    theirs = {p.name for p in (snapshot.parent.parent / "blobs").iterdir()}
    assert {p.name for p in (ours.parent.parent / "blobs").iterdir()} == theirs
    assert theirs == {
        hashlib.sha256(v).hexdigest() if k.endswith(LFS_SUFFIXES) else git_sha1(v) for k, v in files.items()
    }

    # B seeds from the cache, through its links: a third node gets the release from B alone.
    assert cli(a, "stop", "tiny-llama").returncode == 0
    peer_b = f"127.0.0.1:{DaemonClient(b).info['listen_port']}"
    p = cli(c, "fetch", str(toml), "--no-convert", "--peer", peer_b, "--timeout", "60", env=hf_env(tmp_path / "hf-c"))
    assert p.returncode == 0, p.stderr
    got = Store(c.models_dir).get("tiny-llama").source_dir
    assert all((got / rel).read_bytes() == data for rel, data in files.items())

    # A fetch into the store takes the LFS files from the local Hugging Face cache (their blobs
    # are named by the SHA-256 the manifest pins): linked, checked, not downloaded.
    d = homes("d")
    p = cli(d, "fetch", str(toml), "--no-convert", "--peer", peer_b, "--timeout", "60", env=hf_env(cache_b))
    assert p.returncode == 0, p.stderr
    status = DaemonClient(d).status().release("tiny-llama")
    lfs = {k: v for k, v in files.items() if k.endswith(LFS_SUFFIXES)}
    assert status is not None and status.reused == sum(map(len, lfs.values())), status
    got = Store(d.models_dir).get("tiny-llama").source_dir
    assert all(os.path.samefile(got / rel, ours / rel) for rel in lfs)

    # rm leaves the Hugging Face cache alone: its files are the cache's now.
    assert cli(b, "rm", "tiny-llama").returncode == 0
    assert all((ours / rel).read_bytes() == data for rel, data in files.items())


def test_hf_cache_needs_an_origin(tmp_path: Path, homes: Homes, sample_model: Path) -> None:
    b = homes("b")
    toml = tmp_path / "plain.toml"
    assert cli(b, "create", str(sample_model), "--license", "MIT", "-o", str(toml), "-q").returncode == 0
    p = cli(b, "fetch", str(toml), "--hf-cache", "--no-convert", env=hf_env(tmp_path / "hf"))
    assert p.returncode != 0 and "no [origin] in its manifest" in p.stderr and "Traceback" not in p.stderr, p.stderr


def cli_home(tmp_path: Path) -> Home:
    return Home(tmp_path / "home")
