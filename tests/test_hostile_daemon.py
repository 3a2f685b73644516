"""Hostile input to the daemon (round two): each of these broke it before; each must now be one
clear refusal, and never stop the daemon or its other releases."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from llamashare.daemon.client import DaemonClient, start_daemon, stop_daemon
from llamashare.daemon.submit import FetchOptions, release_status, seed
from llamashare.manifests.create import ReleaseInfo, create_release, write_release
from llamashare.manifests.manifest import Manifest, dumps, load_manifest
from llamashare.p2p.status import State
from tests.helpers import Homes, cli
from tests.test_swarm import make_payload

pytestmark = pytest.mark.slow


def _release(tmp_path: Path, name: str, sizes: dict[str, int]) -> tuple[Manifest, Path, Path]:
    src = tmp_path / name
    make_payload(src, sizes)
    m, torrent = create_release(src, ReleaseInfo(name=name, license="MIT"), 64 * 1024)
    write_release(m, torrent, tmp_path / f"{name}.toml")
    return load_manifest(tmp_path / f"{name}.toml"), src, tmp_path / f"{name}.toml"


def _call(client: DaemonClient, method: str, path: str, body: bytes) -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {client.token}", "Content-Type": "application/json"}
    req = urllib.request.Request(client.base + path, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        assert exc.headers["Content-Type"].startswith("application/json"), exc.headers["Content-Type"]
        return exc.code, json.loads(exc.read())


def test_a_peer_that_is_not_an_address_is_refused_and_leaves_nothing_saved(tmp_path: Path, homes: Homes) -> None:
    m, src, path = _release(tmp_path, "good", {"a.bin": 300_000})
    node = homes("n")
    seed(node, m, FetchOptions(directory=src))
    _, _, other = _release(tmp_path, "other", {"b.bin": 100_000})
    p = cli(node, "fetch", str(other), "--dir", str(tmp_path / "out"), "--peer", "peer.example:6881", "--no-convert")
    assert p.returncode == 2 and "'peer.example' is not an IP address" in p.stderr, p.stderr
    assert "Traceback" not in p.stderr
    # The API refuses it too (another client, or an older CLI), with nothing saved.
    body = {"manifest": dumps(load_manifest(other)), "dir": str(tmp_path / "out"), "peers": ["peer.example:6881"]}
    code, doc = _call(DaemonClient(node), "POST", "/releases", json.dumps(body).encode())
    assert code == 400 and "not an IP address" in doc["error"], doc
    # A restart restores what is there; the refused release was never saved.
    assert stop_daemon(node)
    client = start_daemon(node)
    assert [r.name for r in client.status().releases] == ["good"]


def test_a_saved_release_that_cannot_be_restored_does_not_stop_the_daemon(tmp_path: Path, homes: Homes) -> None:
    m, src, _ = _release(tmp_path, "good", {"a.bin": 300_000})
    node = homes("n")
    seed(node, m, FetchOptions(directory=src))
    assert stop_daemon(node)
    broken = node.state_dir / "releases" / "broken"  # what an older version could leave behind
    broken.mkdir(parents=True)
    (broken / "manifest.toml").write_text(dumps(m))
    (broken / "spec.json").write_text(json.dumps({"name": "broken", "save_dir": str(src), "peers": ["localhost:x"]}))
    client = start_daemon(node)
    status = {r.name: r for r in client.status().releases}
    assert status["good"].state in (State.CHECKING, State.SEEDING)
    assert status["broken"].state is State.ERROR and "cannot be restored" in (status["broken"].error or "")
    p = cli(node, "stop", "broken")
    assert p.returncode == 0, p.stderr
    assert [r.name for r in client.status().releases] == ["good"] and not broken.exists()


@pytest.mark.parametrize(
    "body",
    [
        b'{"ratio": NaN}',
        b'{"ratio": Infinity}',
        b'{"seed_time": -1}',
        b'{"ratio": 1' + b"0" * 400 + b"}",
        b"[" * 100_000,
        b'{"paused": "yes"}',
    ],
    ids=["nan", "infinity", "negative", "400-digits", "deep-nesting", "paused-string"],
)
def test_patch_refuses_what_is_not_a_finite_target(tmp_path: Path, homes: Homes, body: bytes) -> None:
    m, src, _ = _release(tmp_path, "good", {"a.bin": 100_000})
    node = homes("n")
    seed(node, m, FetchOptions(directory=src))
    client = DaemonClient(node)
    code, doc = _call(client, "PATCH", "/releases/good", body)
    assert code == 400 and isinstance(doc.get("error"), str), (code, doc)
    raw = urllib.request.urlopen(
        urllib.request.Request(client.base + "/status", headers={"Authorization": f"Bearer {client.token}"}),
        timeout=10,
    ).read()
    json.loads(raw, parse_constant=lambda c: pytest.fail(f"status holds {c}, which is not JSON"))


def test_infinite_ratio_is_refused_by_flag_and_config(tmp_path: Path, homes: Homes) -> None:
    _, _, path = _release(tmp_path, "good", {"a.bin": 100_000})
    node = homes("n")
    p = cli(node, "fetch", str(path), "--ratio", "inf", "--no-convert")
    assert p.returncode == 2 and "--ratio" in p.stderr, p.stderr
    node.config_file.write_text("ratio = inf\n")
    p = cli(node, "fetch", str(path), "--no-convert")
    assert p.returncode == 2 and "ratio must be a finite number" in p.stderr, p.stderr


@pytest.mark.parametrize("node", ["127.0.0.1", "127.0.0.1:0", "host:99999", "a b:1", "-x:5"])
def test_bad_dht_node_is_refused_by_flag_and_config(tmp_path: Path, homes: Homes, node: str) -> None:
    _, _, path = _release(tmp_path, "good", {"a.bin": 100_000})
    home = homes("n")
    p = cli(home, "fetch", str(path), "--dht-bootstrap", node, "--no-convert")
    assert p.returncode == 2 and "is not HOST:PORT" in p.stderr and "Traceback" not in p.stderr, p.stderr
    home.config_file.write_text(f'dht_bootstrap = ["{node}"]\n')
    p = cli(home, "fetch", str(path), "--no-convert")
    assert p.returncode == 2 and "dht_bootstrap" in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert not home.info_file.exists()  # no daemon was started


def test_an_api_caller_cannot_have_unhashed_files_seeded(tmp_path: Path, homes: Homes) -> None:
    """A manifest listing someone's private file with made-up hashes, sent as a publisher's
    release: the daemon hashes the file itself and refuses; nothing is seeded."""
    secret = tmp_path / "home" / ".ssh" / "id_ed25519"
    secret.parent.mkdir(parents=True)
    secret.write_bytes(b"-----BEGIN OPENSSH PRIVATE KEY----- not really\n" * 20)
    decoy, _, _ = _release(tmp_path, "decoy", {"id_ed25519": secret.stat().st_size})  # right size, other bytes
    node = homes("n")
    client = start_daemon(node)
    body = {"manifest": dumps(decoy), "dir": str(secret.parent), "seed_forever": True}
    code, doc = _call(client, "POST", "/releases", json.dumps(body).encode())
    assert code == 400 and "refusing to seed decoy: id_ed25519 is wrong hash" in doc["error"], doc
    assert client.status().releases == []
    with pytest.raises(Exception, match="no longer has"):
        release_status(client, "decoy")


def test_a_release_larger_than_the_free_space_is_refused_up_front(tmp_path: Path, homes: Homes) -> None:
    """A manifest claiming more than the target's file system can hold (here a real 1 MiB tmpfs)
    is refused when it is added, before anything is written or saved."""
    from tests.test_data_safety import small_disk

    _, _, path = _release(tmp_path, "big", {"a.bin": 3 << 20})
    node = homes("n")
    with small_disk(tmp_path / "small", 1 << 20) as disk:
        p = cli(node, "fetch", str(path), "--dir", str(disk / "big"), "--no-convert", "--timeout", "20")
        assert p.returncode == 1 and "not enough free space" in p.stderr, p.stderr
        assert list((disk / "big").iterdir()) == []
    assert DaemonClient(node).status().releases == []


@pytest.mark.parametrize("name", ["good?x=1", "a b", "good/../good", "%2e%2e"])
def test_stop_takes_the_name_literally(tmp_path: Path, homes: Homes, name: str) -> None:
    """`stop "good?x=1"` once stopped `good` (the name went into the URL unquoted)."""
    m, src, _ = _release(tmp_path, "good", {"a.bin": 100_000})
    node = homes("n")
    seed(node, m, FetchOptions(directory=src))
    p = cli(node, "stop", name)
    assert p.returncode == 1 and "no release named" in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert [r.name for r in DaemonClient(node).status().releases] == ["good"]


def test_versions_get_their_own_key_and_one_torrent_is_held_once(tmp_path: Path, homes: Homes) -> None:
    """A second version of a name is NAME@VERSION beside the first; a release with the very
    files (torrent) of one the node holds, under another key, is refused, not confused with it."""
    m, src, _ = _release(tmp_path, "good", {"a.bin": 100_000})
    other_src = tmp_path / "v2" / "good"
    make_payload(other_src, {"a.bin": 100_001})
    v2, _ = create_release(other_src, ReleaseInfo(name="good", license="MIT", version="2.0"), 64 * 1024)
    relabelled, _ = create_release(src, ReleaseInfo(name="good", license="Apache-2.0", version="1.1"), 64 * 1024)
    client = start_daemon(homes("n"))

    def add(manifest: Manifest, folder: Path, **extra: str) -> tuple[int, dict]:
        body = {"manifest": dumps(manifest), "dir": str(folder), "seed_forever": True, **extra}
        return _call(client, "POST", "/releases", json.dumps(body).encode())

    assert add(m, src) == (201, {"name": "good", "added": True, "reused": []})
    code, doc = add(v2, other_src)
    assert code == 201 and doc["name"] == "good@2.0", doc
    code, doc = add(relabelled, src, key="good@1.1")
    assert code == 409 and "the very files of good" in doc["error"] and "llamashare stop good" in doc["error"], doc
    assert sorted(r.name for r in client.status().releases) == ["good", "good@2.0"]
