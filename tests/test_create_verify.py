"""create + verify on a generated sharded model; every kind of damage is reported per file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from llamashare.errors import OutputExistsError, SourceDirError
from llamashare.manifests.create import ReleaseInfo, create_release, list_release_files, write_release
from llamashare.manifests.manifest import load_manifest
from llamashare.manifests.verify import FileReport, FileState, extra_files, verify_release
from tests.helpers import make_release


def states(reports: list[FileReport]) -> dict[str, FileState]:
    return {r.entry.path: r.state for r in reports}


def test_sample_model_is_a_sharded_hf_folder(sample_model: Path) -> None:
    import json

    from safetensors import safe_open

    index = json.loads((sample_model / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert shards == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    for shard in shards:
        with safe_open(str(sample_model / shard), "np") as f:
            assert set(f.keys()) == {k for k, v in index["weight_map"].items() if v == shard}
    cfg = json.loads((sample_model / "config.json").read_text())
    assert cfg["num_key_value_heads"] < cfg["num_attention_heads"]
    assert 2_000_000 < sum(p.stat().st_size for p in sample_model.iterdir()) < 10_000_000


def test_create_then_verify_ok(sample_model: Path, tmp_path: Path) -> None:
    m, torrent = make_release(sample_model, web_seeds=("http://127.0.0.1:1/x/",))
    assert [f.path for f in m.files] == sorted(p.name for p in sample_model.iterdir())
    write_release(m, torrent, tmp_path / "out" / "m.toml")
    loaded = load_manifest(tmp_path / "out" / "m.toml")
    assert loaded == m
    assert (tmp_path / "out" / f"{m.name}.torrent").read_bytes() == torrent
    assert all(r.ok for r in verify_release(loaded, sample_model))
    assert extra_files(loaded, sample_model) == []


def test_verify_reports_each_kind_of_damage(sample_model: Path) -> None:
    m, _ = make_release(sample_model)
    shard1, shard2 = sample_model / m.files[2].path, sample_model / m.files[3].path
    (sample_model / "config.json").unlink()
    data = bytearray(shard1.read_bytes())
    data[-1] ^= 1
    shard1.write_bytes(bytes(data))
    with open(shard2, "ab") as f:
        f.write(b"x")
    (sample_model / "stray.txt").write_text("hi")
    got = states(verify_release(m, sample_model))
    assert got["config.json"] is FileState.MISSING
    assert got[m.files[2].path] is FileState.WRONG_HASH
    assert got[m.files[3].path] is FileState.WRONG_SIZE
    assert got["tokenizer.json"] is FileState.OK
    assert extra_files(m, sample_model) == ["stray.txt"]


def test_verify_never_follows_a_symlink_out(sample_model: Path, tmp_path: Path) -> None:
    m, _ = make_release(sample_model)
    outside = tmp_path / "outside.json"
    os.replace(sample_model / "config.json", outside)
    (sample_model / "config.json").symlink_to(outside)
    assert states(verify_release(m, sample_model))["config.json"] is FileState.UNSAFE


def test_create_refuses_links_and_empty_folders(sample_model: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceDirError, match="no files"):
        list_release_files(tmp_path / "empty")
    with pytest.raises(SourceDirError, match="not a directory"):
        list_release_files(tmp_path / "nope")
    (sample_model / "link.json").symlink_to(sample_model / "config.json")
    with pytest.raises(SourceDirError, match="symlink"):
        list_release_files(sample_model)


def test_create_skips_git_and_excluded_outputs(sample_model: Path) -> None:
    (sample_model / ".git").mkdir()
    (sample_model / ".git" / "HEAD").write_text("ref")
    (sample_model / "m.toml").write_text("old manifest")
    paths = [p for p, _ in list_release_files(sample_model, exclude={sample_model / "m.toml"})]
    assert ".git/HEAD" not in paths and "m.toml" not in paths and "config.json" in paths


def test_create_refuses_bad_piece_size(sample_model: Path) -> None:
    with pytest.raises(SourceDirError, match="power of two"):
        create_release(sample_model, ReleaseInfo(name="x", license="MIT"), piece_size=10_000)


def test_write_release_never_clobbers_without_force(sample_model: Path, tmp_path: Path) -> None:
    m, torrent = make_release(sample_model)
    (tmp_path / "m.toml").write_text("keep me")
    with pytest.raises(OutputExistsError):
        write_release(m, torrent, tmp_path / "m.toml")
    assert (tmp_path / "m.toml").read_text() == "keep me"
    assert not (tmp_path / f"{m.name}.torrent").exists()
    write_release(m, torrent, tmp_path / "m.toml", force=True)
    assert load_manifest(tmp_path / "m.toml") == m


def test_unreadable_source_file_is_a_clear_error(sample_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Root (as in CI) reads anything, so make the read itself fail as EACCES would.
    real_open = open

    def deny(path: Any, *args: Any, **kwargs: Any) -> Any:  # stands in for builtins.open
        if str(path).endswith("config.json"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", deny)
    with pytest.raises(SourceDirError, match="cannot read .*config.json: Permission denied"):
        make_release(sample_model)


def test_no_embed_references_sibling_torrent(sample_model: Path, tmp_path: Path) -> None:
    m, torrent = create_release(sample_model, ReleaseInfo(name="s", license="MIT"), embed_torrent=False)
    assert m.torrent.data is None and m.torrent.file == "s.torrent"
    write_release(m, torrent, tmp_path / "s.toml")
    assert "data =" not in (tmp_path / "s.toml").read_text()
    loaded = load_manifest(tmp_path / "s.toml")
    assert loaded.torrent.data == torrent and all(r.ok for r in verify_release(loaded, sample_model))
