"""The whole flow as users run it: a seeding node, a fetching node with its model store, the real
CLI in separate processes — fetch → verify → (delta) → convert → quantize → run, re-runs, kills,
removal while seeding."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gguf import GGUFReader

from llamashare.daemon.client import DaemonClient, running_client
from llamashare.daemon.home import Home
from llamashare.daemon.submit import FetchOptions, seed
from llamashare.errors import ConfigError, StoreError
from llamashare.manifests.create import ReleaseInfo, create_release, write_release
from llamashare.manifests.manifest import load_manifest
from llamashare.pipeline import choose_quant
from llamashare.quant.convert import convert
from llamashare.quant.delta import make_delta
from llamashare.sample import SampleConfig, write_sample_model
from llamashare.store import Store
from tests.helpers import Homes, cli

pytestmark = pytest.mark.slow


def publish(folder: Path, manifest_path: Path, **info: Any) -> None:
    """``info``: ReleaseInfo's fields, over a name (the folder's) and a license."""
    fields: dict[str, Any] = {"name": folder.name, "license": "Apache-2.0"} | info
    m, torrent = create_release(folder, ReleaseInfo(**fields))
    write_release(m, torrent, manifest_path)


def seeder(homes: Homes, *releases: tuple[Path, Path]) -> str:
    """Node A seeds each (manifest, folder); returns its HOST:PORT for --peer."""
    a = homes("a")
    for manifest_path, folder in releases:
        seed(a, load_manifest(manifest_path), FetchOptions(directory=folder))
    return f"127.0.0.1:{DaemonClient(a).info['listen_port']}"


def test_fetch_builds_and_runs_then_rerun_skips_every_step(tmp_path: Path, homes: Homes, sample_model: Path) -> None:
    publish(sample_model, tmp_path / "sample.toml", recommended_quant="Q8_0")
    peer = seeder(homes, (tmp_path / "sample.toml", sample_model))
    b = homes("b")
    p = cli(b, "fetch", str(tmp_path / "sample.toml"), "--peer", peer, "--timeout", "60", "-q")
    assert p.returncode == 0, p.stderr
    entry = Store(b.models_dir).get("sample-llama")
    built = entry.gguf_dir / "sample-llama.Q8_0.gguf"  # the manifest's recommendation
    assert "ready: llamashare run sample-llama" in p.stdout and str(built) in p.stdout
    for step in ("fetch sample-llama 1.0", "license Apache-2.0", "convert", "quantize to Q8_0", str(entry.source_dir)):
        assert step in p.stderr, step
    m = load_manifest(tmp_path / "sample.toml")
    assert all((entry.source_dir / f.path).read_bytes() == (sample_model / f.path).read_bytes() for f in m.files)
    assert GGUFReader(built).fields["general.file_type"].contents() == 7  # MOSTLY_Q8_0
    stamps = {p.name: p.stat().st_mtime_ns for p in entry.gguf_dir.iterdir()}

    # Again: every step is skipped, nothing is rewritten, the daemon still seeds.
    p = cli(b, "fetch", str(tmp_path / "sample.toml"), "--peer", peer, "--timeout", "60", "-q")
    assert p.returncode == 0, p.stderr
    assert p.stderr.count("skipped") == 2 and "convert" in p.stderr and "quantize" in p.stderr, p.stderr
    assert {p.name: p.stat().st_mtime_ns for p in entry.gguf_dir.iterdir()} == stamps
    state = {r.name: r.state for r in DaemonClient(b).status().releases}
    assert state["sample-llama"] in ("seeding", "done seeding")

    # Another quantization is one more step; the F16 conversion is reused.
    p = cli(b, "fetch", str(tmp_path / "sample.toml"), "--peer", peer, "--quant", "Q4_0", "-q")
    assert p.returncode == 0 and "convert" in p.stderr and p.stderr.count("skipped") == 1, p.stderr
    assert sorted(entry.ggufs()) == ["convert:f16", "quantize:Q4_0", "quantize:Q8_0"]

    # `run NAME` picks the last build; list and info tell what is there.
    p = cli(b, "run", "sample-llama", "-p", "hello", "-n", "4", "--temp", "0")
    assert p.returncode == 0 and "sample-llama.Q4_0.gguf" in p.stderr and "generation: 4 tokens" in p.stderr, p.stderr
    listing = cli(b, "list").stdout
    assert "sample-llama" in listing and "F16, Q4_0, Q8_0" in listing and "seeding" in listing, listing
    info = cli(b, "info", "sample-llama").stdout
    assert "license:   Apache-2.0" in info and "(run NAME uses this)" in info and "Q8_0.gguf" in info, info

    # A GGUF changed behind the store's back is rebuilt, not trusted.
    with open(built, "r+b") as f:
        f.seek(-1, os.SEEK_END)
        f.write(b"\x01")
    p = cli(b, "fetch", str(tmp_path / "sample.toml"), "--peer", peer, "--quant", "Q8_0", "-q")
    assert p.returncode == 0 and p.stderr.count("skipped") == 1 and "quantize to Q8_0 (" in p.stderr, p.stderr


def test_killed_mid_step_rerun_completes(
    tmp_path: Path, homes: Homes, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # Big enough (~100 MB of float32) that converting and quantizing take a moment to interrupt.
    model = tmp_path / "mid-llama"
    write_sample_model(model, SampleConfig(hidden_size=512, intermediate_size=1408, num_hidden_layers=8, shards=2))
    publish(model, tmp_path / "mid.toml")
    peer = seeder(homes, (tmp_path / "mid.toml", model))
    b = homes("b")
    p = cli(b, "fetch", str(tmp_path / "mid.toml"), "--peer", peer, "--no-convert", "--timeout", "60", "-q")
    assert p.returncode == 0, p.stderr
    gguf_dir = Store(b.models_dir).get("mid-llama").gguf_dir

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llamashare",
            "--home",
            str(b.root),
            "fetch",
            str(tmp_path / "mid.toml"),
            "--peer",
            peer,
            "--quant",
            "Q4_K_M",
            "-q",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    partial = None
    deadline = time.monotonic() + 60
    while partial is None and proc.poll() is None and time.monotonic() < deadline:
        partial = next(iter(gguf_dir.glob("*.partial")), None) if gguf_dir.is_dir() else None
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert partial is not None, "the pipeline finished before it could be interrupted"
    print(f"killed while writing {partial.name}")
    finished = {p.name for p in gguf_dir.glob("*.gguf")}
    assert partial.name.removesuffix(".partial") not in finished  # nothing half-written under a final name

    p = cli(b, "fetch", str(tmp_path / "mid.toml"), "--peer", peer, "--quant", "Q4_K_M", "-q")
    assert p.returncode == 0, p.stderr
    out = gguf_dir / "mid-llama.Q4_K_M.gguf"
    assert out.is_file() and not list(gguf_dir.glob("*.partial"))
    assert len(GGUFReader(out).tensors) == 3 + 9 * 8  # complete and readable
    p = cli(b, "run", "mid-llama", "-p", "hi", "-n", "2", "--temp", "0", "-q")
    assert p.returncode == 0, p.stderr


def test_delta_release_end_to_end(tmp_path: Path, homes: Homes) -> None:
    base, target, delta = tmp_path / "base-llama", tmp_path / "target", tmp_path / "delta-llama"
    write_sample_model(base, SampleConfig(vocab_size=512, seed=1))
    write_sample_model(target, SampleConfig(vocab_size=513, seed=2))  # one added token, as Vicuna's 32001
    make_delta(target, base, delta)
    publish(base, tmp_path / "base.toml")
    m_base = load_manifest(tmp_path / "base.toml")
    from llamashare.manifests.manifest import BaseRef, manifest_id

    publish(delta, tmp_path / "delta.toml", base=BaseRef("base-llama", manifest_id(m_base)), recommended_quant="F16")
    peer = seeder(homes, (tmp_path / "base.toml", base), (tmp_path / "delta.toml", delta))
    b = homes("b")

    p = cli(b, "fetch", str(tmp_path / "delta.toml"), "--peer", peer, "--timeout", "60", "-q")
    assert p.returncode == 2 and "not in the store" in p.stderr and "--base" in p.stderr, p.stderr
    p = cli(b, "fetch", str(tmp_path / "delta.toml"), "--base", str(tmp_path / "delta.toml"), "--peer", peer, "-q")
    assert p.returncode == 2 and "is not the base" in p.stderr, p.stderr

    p = cli(
        b,
        "fetch",
        str(tmp_path / "delta.toml"),
        "--base",
        str(tmp_path / "base.toml"),
        "--peer",
        peer,
        "--timeout",
        "60",
        "-q",
    )
    assert p.returncode == 0, p.stderr
    assert "fetch the base base-llama" in p.stderr and "apply the delta to base-llama" in p.stderr, p.stderr
    store = Store(b.models_dir)
    assert {e.name for e in store.entries()} == {"base-llama", "delta-llama"}
    info = cli(b, "info", "delta-llama").stdout
    assert f"base:      base-llama, license Apache-2.0, manifest {manifest_id(m_base)}" in info, info
    built = store.get("delta-llama").best_gguf()
    assert built is not None
    direct = tmp_path / "target.gguf"
    convert(target, direct, "f16")
    ours = {t.name: np.asarray(t.data, dtype=np.float32) for t in GGUFReader(built).tensors}
    ref = {t.name: np.asarray(t.data, dtype=np.float32) for t in GGUFReader(direct).tensors}
    assert ours.keys() == ref.keys() and ours["token_embd.weight"].shape[0] == 513
    for name in ref:  # base + (target − base) in float32, then f16: within one f16 step of the target
        np.testing.assert_allclose(ours[name], ref[name], rtol=2e-3, atol=1e-6, err_msg=name)
    # With the base now in the store, --base is not needed again.
    p = cli(b, "fetch", str(tmp_path / "delta.toml"), "--peer", peer, "-q")
    assert p.returncode == 0 and "skipped" in p.stderr, p.stderr


def test_rm_while_seeding_stops_seeding_first(tmp_path: Path, homes: Homes, sample_model: Path) -> None:
    publish(sample_model, tmp_path / "sample.toml")
    peer = seeder(homes, (tmp_path / "sample.toml", sample_model))
    b = homes("b")
    assert (
        cli(
            b, "fetch", str(tmp_path / "sample.toml"), "--peer", peer, "--quant", "F16", "--ratio", "100", "-q"
        ).returncode
        == 0
    )
    entry = Store(b.models_dir).get("sample-llama")
    assert {r.name for r in DaemonClient(b).status().releases} == {"sample-llama"}

    p = cli(b, "rm", "sample-llama", "--keep-source")
    assert p.returncode == 0 and "stopped seeding sample-llama" in p.stdout, p.stdout + p.stderr
    assert DaemonClient(b).status().releases == []
    assert (entry.source_dir / "config.json").is_file() and not entry.gguf_dir.exists() and not entry.exists()
    assert "is empty" in cli(b, "list").stdout

    # Fetch it back (the kept files are found complete), then remove everything.
    assert cli(b, "fetch", str(tmp_path / "sample.toml"), "--peer", peer, "--quant", "F16", "-q").returncode == 0
    p = cli(b, "rm", "sample-llama")
    assert p.returncode == 0 and not entry.root.exists(), p.stderr
    p = cli(b, "rm", "sample-llama")
    assert p.returncode == 2 and "no release 'sample-llama'" in p.stderr
    assert running_client(b) is not None  # the daemon itself keeps running


def test_store_keeps_versions_side_by_side_and_refuses_concurrent_commands(tmp_path: Path, sample_model: Path) -> None:
    for d, version in (("1", "1"), ("2", "2"), ("3", "2 beta/x"), ("4", "1")):
        (tmp_path / d).mkdir()
        publish(sample_model, tmp_path / d / "r.toml", version=version, license="MIT" if d == "4" else "Apache-2.0")
    store = Store(tmp_path / "models")
    entry = store.add(load_manifest(tmp_path / "1" / "r.toml"))
    assert store.add(load_manifest(tmp_path / "1" / "r.toml")).root == entry.root  # the same release: fine
    assert entry.key == "sample-llama"  # the first version of a name keeps the plain name
    two = store.add(load_manifest(tmp_path / "2" / "r.toml"))
    odd = store.add(load_manifest(tmp_path / "3" / "r.toml"))  # a version that is no folder name
    again = store.add(load_manifest(tmp_path / "4" / "r.toml"))  # version 1 again, other content
    assert two.key == "sample-llama@2" and odd.key.startswith("sample-llama@") and len(odd.key) == 25
    assert again.key not in {"sample-llama", "sample-llama@1"} and again.key != odd.key
    assert [e.manifest().version for e in (entry, two, odd, again)] == ["1", "2", "2 beta/x", "1"]
    assert store.get("sample-llama").key == again.key  # a plain name is its newest version
    assert store.get("sample-llama@2").key == two.key
    assert store.get(odd.key).key == odd.key
    with pytest.raises(
        StoreError, match="has 4 versions of sample-llama: sample-llama@[0-9a-f]{12}, sample-llama@2, "
    ) as refused:
        store.get("sample-llama", unique=True)
    for said in str(refused.value).split(": ", 1)[1].split("; ")[0].split(", "):  # each names one entry
        assert store.get(said, unique=True).key in {entry.key, two.key, odd.key, again.key}
    with pytest.raises(StoreError, match="no release 'sample-llama@9'"):
        store.get("sample-llama@9")
    (store.root / "not a key").mkdir()  # a folder of someone else's: not listed, not touched
    (store.root / "not a key" / "manifest.toml").write_text("x")
    assert len(store.entries()) == 4
    with store.lock(entry):
        with pytest.raises(StoreError, match="another llamashare command is working on sample-llama"):
            with store.lock(entry):
                pass
    with pytest.raises(StoreError, match="not a release name"):
        store.entry("../etc")
    (entry.record_path).write_text("{not json")
    with pytest.raises(StoreError, match="unreadable"):
        entry.record()


def test_config_sets_store_and_quantization_defaults(tmp_path: Path, sample_model: Path) -> None:
    home = Home(tmp_path / "h")
    home.root.mkdir()
    home.config_file.write_text('models_dir = "elsewhere"\ndefault_quant = "q6_k"\n')
    assert home.models_dir == home.root / "elsewhere"
    publish(sample_model, tmp_path / "m.toml", recommended_quant="Q8_0")
    m = load_manifest(tmp_path / "m.toml")
    assert choose_quant(None, home.config().default_quant, m).name == "Q6_K"  # the user's config first
    assert choose_quant(None, None, m).name == "Q8_0"  # then the publisher
    assert choose_quant("q4_k", "q6_k", m).name == "Q4_K_M"  # the flag over both
    home.config_file.write_text("default_quant = 4\n")
    with pytest.raises(ConfigError, match="default_quant must be a non-empty string"):
        home.config()


def test_two_fetches_of_one_release_at_once(tmp_path: Path, homes: Homes, sample_model: Path) -> None:
    """The second command says who holds the release instead of racing the first on its files."""
    publish(sample_model, tmp_path / "sample.toml")
    b = homes("b")  # no seeder anywhere: the first fetch waits for peers, holding the release
    first = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llamashare",
            "--home",
            str(b.root),
            "fetch",
            str(tmp_path / "sample.toml"),
            "--timeout",
            "30",
            "-q",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        started = b.models_dir / "sample-llama" / "release.json"  # the store entry exists: the lock is held
        deadline = time.monotonic() + 20
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        p = cli(b, "fetch", str(tmp_path / "sample.toml"), "--timeout", "5", "-q")
        assert p.returncode == 2 and "another llamashare command is working on sample-llama" in p.stderr, p.stderr
        assert first.poll() is None  # the first one carries on
    finally:
        first.send_signal(signal.SIGINT)
        first.wait(20)
    p = cli(b, "fetch", str(tmp_path / "sample.toml"), "--timeout", "2", "-q")  # the lock went with the process
    assert "another llamashare command" not in p.stderr and "not complete after 2s" in p.stderr, p.stderr


def test_refused_fetch_leaves_no_store_entry_and_rm_cannot_touch_the_users_file(
    tmp_path: Path, homes: Homes, sample_model: Path
) -> None:
    """A file of the user's at a target path (same size, other bytes) makes fetch refuse; the
    store then has no entry, so a later ``rm`` has nothing to delete, and the file is intact."""
    publish(sample_model, tmp_path / "sample.toml")
    peer = seeder(homes, (tmp_path / "sample.toml", sample_model))
    b = homes("b")
    mine = tmp_path / "mydata"
    mine.mkdir()
    victim = load_manifest(tmp_path / "sample.toml").files[-1]
    (mine / victim.path).parent.mkdir(parents=True, exist_ok=True)
    theirs = bytes(reversed((sample_model / victim.path).read_bytes())) + b"!"  # other content
    (mine / victim.path).write_bytes(theirs[: victim.size])
    p = cli(b, "fetch", str(tmp_path / "sample.toml"), "--dir", str(mine), "--peer", peer, "--timeout", "30", "-q")
    assert p.returncode != 0 and "in the way" in p.stderr, p.stderr
    assert Store(b.models_dir).entries() == []
    r = cli(b, "rm", "sample-llama")
    assert r.returncode == 2 and "no release 'sample-llama'" in r.stderr
    assert (mine / victim.path).read_bytes() == theirs[: victim.size]


def test_store_never_adopts_a_folder_it_did_not_make(tmp_path: Path, sample_model: Path) -> None:
    publish(sample_model, tmp_path / "sample.toml")
    store = Store(tmp_path / "models")
    own = tmp_path / "models" / "sample-llama" / "my-own-weights.bin"
    own.parent.mkdir(parents=True)
    own.write_bytes(b"user data" * 1000)
    with pytest.raises(StoreError, match="is not a release of this store .*my-own-weights.bin"):
        store.add(load_manifest(tmp_path / "sample.toml"))
    assert own.read_bytes() == b"user data" * 1000 and store.entries() == []


def test_rm_deletes_only_the_releases_own_matching_files(tmp_path: Path, sample_model: Path) -> None:
    """In a --dir outside the store, a release file the user replaced (same size, other bytes)
    and files the manifest never listed stay; the release's own files and records go."""
    publish(sample_model, tmp_path / "sample.toml")
    m = load_manifest(tmp_path / "sample.toml")
    outside = tmp_path / "outside"
    shutil.copytree(sample_model, outside)
    changed = outside / m.files[0].path
    changed.write_bytes(bytes(reversed(changed.read_bytes())))
    (outside / "notes.txt").write_text("mine")
    store = Store(tmp_path / "models")
    entry = store.add(m, outside)
    (entry.gguf_dir).mkdir()
    (entry.gguf_dir / "hand-made.gguf").write_bytes(b"GGUF mine")  # no step record: not the store's
    removal = store.remove(entry, keep_source=False)
    assert changed.exists() and (outside / "notes.txt").read_text() == "mine"
    assert all(not (outside / f.path).exists() for f in m.files[1:])
    assert changed in removal.foreign and (entry.gguf_dir / "hand-made.gguf") in removal.foreign
    assert (entry.gguf_dir / "hand-made.gguf").read_bytes() == b"GGUF mine" and store.entries() == []


def test_convert_reads_only_the_verified_files_of_the_manifest(tmp_path: Path, homes: Homes) -> None:
    """A shard planted in --dir beside the release (no index, so shards are found by name) and a
    tokenizer one folder up must not reach the GGUF: convert sees the manifest's files only."""
    from safetensors.numpy import save_file

    model = tmp_path / "flat-llama"
    write_sample_model(model, SampleConfig(shards=1))
    (model / "model.safetensors.index.json").unlink()  # one shard, found by its name
    publish(model, tmp_path / "flat.toml")
    peer = seeder(homes, (tmp_path / "flat.toml", model))
    mine = tmp_path / "user" / "flat"
    mine.mkdir(parents=True)
    width = json.loads((model / "config.json").read_text())["hidden_size"]
    save_file({"model.norm.weight": np.full(width, 7.0, np.float32)}, str(mine / "zz-old.safetensors"))
    (mine.parent / "tokenizer.model").write_bytes(b"not a tokenizer")
    b = homes("b")
    p = cli(b, "fetch", str(tmp_path / "flat.toml"), "--dir", str(mine), "--peer", peer, "--quant", "F16", "-q")
    assert p.returncode == 0, p.stderr
    gguf = Store(b.models_dir).get("flat-llama").gguf_dir / "flat-llama.F16.gguf"
    norm = next(t for t in GGUFReader(gguf).tensors if t.name == "output_norm.weight")
    assert not np.any(np.asarray(norm.data) == 7.0)  # the release's norm, not the planted one
    assert (mine / "zz-old.safetensors").is_file()  # and the user's file is still there
