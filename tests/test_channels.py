"""Releases that need no host: daemons on 127.0.0.1 form their own DHT; a publisher puts a signed
pointer under its key, and a fetcher with nothing but the address gets the manifest from the
swarm and the files from whoever has them, also once the publisher is gone."""

from __future__ import annotations

import shutil
import socket
import time
from pathlib import Path
from typing import Any, cast

import libtorrent as lt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from llamashare.daemon.client import DaemonClient, stop_daemon
from llamashare.daemon.home import Home
from llamashare.errors import ManifestError
from llamashare.manifests.channel import Address, Pointer, decode_pointer, libtorrent_keys
from llamashare.manifests.channel import manifest_sha256 as real_sha
from llamashare.manifests.create import write_release
from llamashare.manifests.manifest import dumps, load_manifest
from llamashare.manifests.signing import sign_manifest
from llamashare.p2p.channels import Resolution
from llamashare.p2p.node import Node
from llamashare.p2p.settings import NetworkOptions
from llamashare.store import Store
from tests.helpers import Homes, cli, make_release

pytestmark = pytest.mark.slow


def _free_ports(n: int) -> list[int]:
    """Ports free for both TCP and UDP (BitTorrent and the DHT share one)."""
    ports: list[int] = []
    while len(ports) < n:
        with (
            socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t,
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u,
        ):
            t.bind(("127.0.0.1", 0))
            port = t.getsockname()[1]
            try:
                u.bind(("127.0.0.1", port))
            except OSError:
                continue
        if port not in ports:
            ports.append(port)
    return ports


def _dht_homes(homes: Homes, names: list[str], ports: dict[str, int] | None = None) -> dict[str, Home]:
    """One home per name, each listening on its own port and bootstrapping to all the others."""
    ports = ports or dict(zip(names, _free_ports(len(names)), strict=True))
    made = {}
    for name in names:
        others = ", ".join(f'"127.0.0.1:{p}"' for n, p in ports.items() if n != name)
        made[name] = homes(name, f"ratio = 100.0\ndht_bootstrap = [{others}]\n")
        made[name].config_file.write_text(
            made[name].config_file.read_text().replace("listen_port = 0", f"listen_port = {ports[name]}")
        )
    return made


def _publish(tmp_path: Path, home: Home, folder: Path, version: str, key: Path) -> tuple[Path, str]:
    m, torrent = make_release(folder, version=version)
    toml = tmp_path / f"{folder.name}-{version}.toml"
    write_release(m, torrent, toml, force=True)
    p = cli(home, "seed", str(toml), "--dir", str(folder))
    assert p.returncode == 0, p.stderr
    p = cli(home, "publish", str(toml), "--key", str(key))
    assert p.returncode == 0, p.stderr
    address = p.stdout.split("fetch it with: llamashare fetch ")[1].strip()
    return toml, address


def _wait_for(client: DaemonClient, key: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.status().release(key)
        if status is not None and status.finished:
            return
        time.sleep(0.5)
    pytest.fail(f"{key} was not fetched within {timeout:.0f}s: {client.status().release(key)}")


def test_fetch_follow_and_fetch_without_the_publisher(tmp_path: Path, homes: Homes, sample_model: Path) -> None:
    """Publish v1; one node fetches it by address alone and follows the channel; publish v2: the
    follower moves to it by itself and seeds both; with the publisher gone, a late fetcher gets
    v2's manifest and files from the follower."""
    # A fourth node that only takes part in the DHT: a node never asks itself for peers, so with
    # the publisher gone, two nodes alone could not find each other's announces.
    names = ["publisher", "first", "late", "bystander"]
    ports = dict(zip(names, _free_ports(len(names)), strict=True))
    nodes = _dht_homes(homes, names, ports)
    with nodes["first"].config_file.open("a") as config:
        config.write("follow_every = 1\n")
    # The late node's daemon is started by its fetch, given the DHT on the command line alone.
    nodes["late"].config_file.write_text(f"local_only = true\nratio = 100.0\nlisten_port = {ports['late']}\n")
    for name, h in nodes.items():  # start the others, so the DHT exists before the put
        if name != "late":
            assert cli(h, "daemon", "start").returncode == 0
    key = tmp_path / "me.key"
    assert cli(nodes["publisher"], "keygen", str(key)).returncode == 0
    toml, address = _publish(tmp_path, nodes["publisher"], sample_model, "1.0", key)
    public = (tmp_path / "me.key.pub").read_text().strip().removeprefix("ed25519:")
    assert address == f"ed25519:{public}/sample-llama"
    assert load_manifest(toml).signature is not None  # publish signed it in place

    p = cli(nodes["first"], "follow", address, "--no-convert", "--timeout", "90", timeout=180)
    assert p.returncode == 0 and f"following {address}" in p.stdout, p.stderr
    got = Store(nodes["first"].models_dir).get("sample-llama")
    assert all(
        (got.source_dir / f.path).read_bytes() == (sample_model / f.path).read_bytes() for f in got.manifest().files
    )

    # Version 2: one file more. The follower fetches it by itself and seeds both versions.
    v2 = tmp_path / "v2" / sample_model.name
    shutil.copytree(sample_model, v2)
    (v2 / "NOTES.md").write_text("version 2\n")
    _publish(tmp_path, nodes["publisher"], v2, "2.0", key)
    first = DaemonClient(nodes["first"])
    _wait_for(first, "sample-llama@2.0")
    v1_status = first.status().release("sample-llama")
    assert v1_status is not None and v1_status.state == "seeding", v1_status
    store = Store(nodes["first"].models_dir)
    assert store.get("sample-llama").version == "2.0" and store.get("sample-llama@1.0").key == "sample-llama"
    assert (store.get("sample-llama").source_dir / "NOTES.md").read_text() == "version 2\n"
    # The version counts as fetched once the child fetch has exited 0, a moment after the daemon
    # holds it (the child still reports and exits): look again for up to 30 s.
    deadline = time.monotonic() + 30
    while True:
        listed = cli(nodes["first"], "follow")
        if f"{address}  has 2.0" in listed.stdout or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert f"{address}  has 2.0" in listed.stdout, listed.stdout + listed.stderr

    # The publisher goes away; a late fetcher still gets manifest and files from the others.
    stop_daemon(nodes["publisher"])
    flags = [a for n in ("first", "bystander") for a in ("--dht-bootstrap", f"127.0.0.1:{ports[n]}")]
    p = cli(nodes["late"], "fetch", address, "--no-convert", "--timeout", "90", *flags, timeout=180)
    assert p.returncode == 0 and "sample-llama 2.0, signed by that key" in p.stderr, p.stderr
    late = Store(nodes["late"].models_dir).get("sample-llama")
    assert late.manifest() == store.get("sample-llama").manifest()
    status = DaemonClient(nodes["late"]).status().release("sample-llama")
    assert status is not None and status.finished
    assert cli(nodes["first"], "unfollow", address).returncode == 0
    assert "follows no channel" in cli(nodes["first"], "follow").stdout


def test_unknown_address_fails_in_one_line(tmp_path: Path, homes: Homes) -> None:
    nodes = _dht_homes(homes, ["a", "b"])
    for h in nodes.values():
        assert cli(h, "daemon", "start").returncode == 0
    p = cli(nodes["a"], "fetch", "ed25519:" + "11" * 32 + "/nothing", "--no-convert", "--timeout", "6", timeout=180)
    assert p.returncode != 0 and "no DHT node had a usable item" in p.stderr and "Traceback" not in p.stderr, p.stderr
    p = cli(nodes["a"], "fetch", "ed25519:zz/x", "--no-convert")
    assert p.returncode != 0 and "is not ed25519:<64 hex digits>/<release name>" in p.stderr, p.stderr
    p = cli(nodes["a"], "fetch", "ed25519:zz/x", "--dht-bootstrap", "127.0.0.1:0")
    assert p.returncode == 2 and "is not HOST:PORT" in p.stderr and "Traceback" not in p.stderr, p.stderr


# -- refusals, on in-process nodes (the checks live in the swarm engine, p2p.channels) ----------


def _trio(tmp_path: Path) -> list[Node]:
    """Three nodes in one DHT (with two, an item put by one is stored only at the other, which
    never asks itself)."""
    ports = _free_ports(3)
    return [
        Node(
            tmp_path / f"n{i}",
            NetworkOptions(port, "127.0.0.1", True, dht_bootstrap=tuple(f"127.0.0.1:{p}" for p in ports if p != port)),
        )
        for i, port in enumerate(ports)
    ]


def _resolved(nodes: list[Node], r: Resolution, timeout: float = 60) -> Resolution:
    deadline = time.monotonic() + timeout
    while not r.done and time.monotonic() < deadline:
        for n in nodes:
            n.poll()
        time.sleep(0.05)
    return r


def _settle(nodes: list[Node], seconds: float = 2.0) -> None:
    """Let the nodes work (answer, store, report) for a while."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for n in nodes:
            n.poll()
        time.sleep(0.05)


def _signed(tmp_path: Path, folder: Path, key: Ed25519PrivateKey) -> bytes:
    m, _ = make_release(folder)
    return dumps(sign_manifest(m, key)).encode()


def test_forged_mismatched_and_replayed_items_are_refused(tmp_path: Path, sample_model: Path) -> None:
    nodes = _trio(tmp_path)
    a, b = nodes[0], nodes[1]
    mine, theirs = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    public, secret = libtorrent_keys(mine)

    def release(name: str, key: Ed25519PrivateKey) -> tuple[Address, bytes]:
        """A release of its own name (its own channel), signed by ``key``."""
        folder = tmp_path / "releases" / name
        shutil.copytree(sample_model, folder)
        return Address(public.hex(), name), _signed(tmp_path, folder, key)

    try:
        # A manifest signed by another key, behind an item signed by this one.
        address, text = release("signed-by-another", theirs)
        a.channels.publish(address, text, "unused", public, secret)
        r = _resolved(nodes, b.channels.resolve(address))
        assert r.error is not None and "signed by" in r.error and r.manifest is None, r.error

        # An item whose SHA-256 is not the manifest's.
        address, text = release("mismatched", mine)
        real = a.channels.publish(address, text, "unused", public, secret)
        _settle(nodes)  # one put at a time: each takes the seq the last one left, plus one
        a.session.dht_put_mutable_item(secret, public, Pointer("00" * 32, real.torrent).encode(), address.salt)
        _settle(nodes)
        r = _resolved(nodes, b.channels.resolve(address))
        assert r.error is not None and "not the 00000000" in r.error, r.error

        # A value that is not a llamashare pointer is never followed.
        other = Address(public.hex(), "something-else")
        a.session.dht_put_mutable_item(secret, public, lt.bencode(cast(Any, {b"x": 1})), other.salt)
        _settle(nodes)
        r = _resolved(nodes, b.channels.resolve(other), timeout=5)
        assert not r.done and r.refused == "is not a llamashare release pointer", (r.error, r.refused)
        b.channels.drop(r)

        # A good one resolves; after that, a lower seq than the one taken is a replay.
        address, text = release("good", mine)
        a.channels.publish(address, text, "unused", public, secret)
        r = _resolved(nodes, b.channels.resolve(address))
        assert r.manifest == text and r.seq > 0, (r.error, r.refused)
        b.channels.drop(r)
        assert b.channels.seen[str(address)] == (r.seq, real_sha(text))
        # The same seq naming another manifest than the one taken at that seq: equivocation.
        b.channels.seen[str(address)] = (r.seq, "11" * 32)
        r = _resolved(nodes, b.channels.resolve(address), timeout=5)
        assert not r.done and r.refused is not None and "a forgery" in r.refused, r.refused
        b.channels.drop(r)
        b.channels.seen[str(address)] = (r.seq + 100, real_sha(text))
        r = _resolved(nodes, b.channels.resolve(address), timeout=5)
        assert not r.done and r.refused is not None and "a replay" in r.refused, r.refused
    finally:
        for n in nodes:
            n.close()


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"d1:xi1ee",
        b"i5e",
        b"d10:llamasharei2e8:manifest32:" + b"0" * 32 + b"7:torrent20:" + b"1" * 20 + b"e",
        b"d10:llamasharei1e8:manifest3:abc7:torrent20:" + b"1" * 20 + b"e",
        b"not bencode at all",
    ],
)
def test_an_item_that_is_not_our_pointer_is_refused(value: bytes) -> None:
    with pytest.raises(ManifestError, match="llamashare"):
        decode_pointer(value)


def test_pointer_round_trip_fits_an_item() -> None:
    p = Pointer("ab" * 32, "cd" * 20)
    assert decode_pointer(p.encode()) == p and len(p.encode()) <= 1000


def test_without_a_dht_publish_and_resolve_say_so(tmp_path: Path, homes: Homes, sample_model: Path) -> None:
    solo = homes("solo")  # local_only, no dht_bootstrap: the DHT is off
    key = tmp_path / "k.key"
    assert cli(solo, "keygen", str(key)).returncode == 0
    m, torrent = make_release(sample_model)
    write_release(m, torrent, tmp_path / "s.toml")
    for args in (("publish", str(tmp_path / "s.toml"), "--key", str(key)), ("fetch", "ed25519:" + "22" * 32 + "/x")):
        p = cli(solo, *args)
        assert p.returncode != 0 and "the DHT is off" in p.stderr and "Traceback" not in p.stderr, p.stderr
