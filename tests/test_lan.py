"""Discovery on the local network, on loopback multicast: daemons offer what they seed, `discover`
lists it, `fetch NAME --lan` takes manifest and files from them; forged offers are refused."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from llamashare.daemon.client import DaemonClient
from llamashare.daemon.home import Home
from llamashare.daemon.submit import FetchOptions, seed
from llamashare.errors import ReleaseError
from llamashare.manifests.manifest import manifest_id
from llamashare.manifests.signing import public_key_text, sign_manifest
from llamashare.p2p.lan import (
    MAX_DATAGRAM,
    LanGroup,
    Offer,
    Search,
    decode,
    encode_offer,
    encode_search,
    pick_offer,
    search,
)
from llamashare.store import Store
from tests.helpers import Homes, cli, make_release

OFFER = Offer("sample-llama", "1.0", 123, "Apache-2.0", "ab" * 32, "cd" * 32, "ef" * 20, 6881, "0123456789abcdef")


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the datagrams ---------------------------------------------------------------------------


def test_offers_and_searches_round_trip_and_junk_is_dropped() -> None:
    group = LanGroup("239.192.152.143", 6772, "127.0.0.1")
    data = encode_offer(OFFER, group)
    assert data.startswith(b"LLAMASHARE-OFFER * HTTP/1.1\r\nHost: 239.192.152.143:6772\r\n")
    assert decode(data, "10.0.0.7") == Offer(**{**OFFER.__dict__, "host": "10.0.0.7"})
    assert decode(encode_search("abcd", group), "10.0.0.7") == Search("abcd")
    long = Offer(**{**OFFER.__dict__, "license": "x" * 5000})
    assert len(encode_offer(long, group)) <= MAX_DATAGRAM  # the license is cut to fit
    bep14 = b"BT-SEARCH * HTTP/1.1\r\nHost: 239.192.152.143:6771\r\nPort: 6881\r\nInfohash: " + b"a" * 40 + b"\r\n\r\n"
    forged = [
        bep14,  # libtorrent's own LSD: not ours
        b"\xff\xfe garbage",
        data.replace(b"Version: 1.0", b"Version: 1.0\x1b[2J"),  # a control character
        data.replace(b"Name: sample-llama", b"Name: ../etc"),
        data.replace(b"Port: 6881", b"Port: 0"),
        data.replace(b"cd" * 32, b"cd" * 31),  # a short hash
        data.replace(b"Size: 123", b"Size: -1"),
        data.replace(b"cookie: 0123456789abcdef", b"cookie: "),
        data + b"x" * MAX_DATAGRAM,
    ]
    assert [decode(d, "10.0.0.7") for d in forged] == [None] * len(forged)


def test_picking_an_offer_names_what_is_ambiguous() -> None:
    other = Offer(**{**OFFER.__dict__, "version": "2.0", "manifest_sha256": "11" * 32, "host": "10.0.0.9"})
    twin = Offer(**{**OFFER.__dict__, "node": "feedfeedfeedfeed", "host": "10.0.0.8"})
    assert pick_offer([OFFER, twin, other], "sample-llama@1.0") == [OFFER, twin]  # both are peers
    with pytest.raises(ReleaseError, match="offers 2 different releases named sample-llama: 1.0 .*; name one"):
        pick_offer([OFFER, other], "sample-llama")
    with pytest.raises(ReleaseError, match=r"offers nothing-here \(heard: sample-llama@1.0\)"):
        pick_offer([OFFER], "nothing-here")


# -- daemons ----------------------------------------------------------------------------------


def _lan_homes(homes: Homes, names: list[str], port: int) -> dict[str, Home]:
    config = f'lan_discovery = true\nlan_group = "239.192.152.143:{port}"\nratio = 100.0\n'
    return {n: homes(n, config) for n in names}


def _flood(group: LanGroup, datagrams: list[bytes], stop: threading.Event) -> None:
    """A hostile node on the LAN: sends its datagrams every 0.2 s until stopped (bounded: 2 min)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
        deadline = time.monotonic() + 120
        while not stop.is_set() and time.monotonic() < deadline:
            for d in datagrams:
                s.sendto(d, (group.host, group.port))
            stop.wait(0.2)


@pytest.mark.slow
def test_discover_then_fetch_from_the_lan_and_refuse_forged_offers(
    tmp_path: Path, homes: Homes, sample_model: Path
) -> None:
    port = _free_udp_port()
    group = LanGroup("239.192.152.143", port, "127.0.0.1")
    nodes = _lan_homes(homes, ["a", "b", "c"], port)
    key = Ed25519PrivateKey.generate()
    m, _ = make_release(sample_model)
    m = sign_manifest(m, key)
    other_folder = tmp_path / "other-model"
    shutil.copytree(sample_model, other_folder)
    other, _ = make_release(other_folder, version="0.3", license="MIT")
    seed(nodes["a"], m, FetchOptions(directory=sample_model))
    seed(nodes["b"], m, FetchOptions(directory=sample_model))
    seed(nodes["b"], other, FetchOptions(directory=other_folder))

    heard = search(group, 2.0)
    real = [o for o in heard if o.name == "sample-llama"]
    assert {o.port for o in real} == {DaemonClient(nodes[n]).info["listen_port"] for n in ("a", "b")}
    assert {o.signer for o in real} == {public_key_text(key.public_key()).removeprefix("ed25519:")}
    assert len({o.manifest_sha256 for o in real}) == 1 and real[0].size == m.total_size

    # A forger offers "sample-llama 6.6.6" pointing at the real manifest torrent with another hash,
    # plus junk; nothing it sends may be taken, and the daemons keep answering.
    fake = Offer(**{**real[0].__dict__, "version": "6.6.6", "manifest_sha256": "00" * 32, "node": "baadf00d"})
    junk = [b"\x00" * 50, encode_offer(fake, group).replace(b"6.6.6", b"6.6.6\x07"), b"LLAMASHARE-OFFER * HTTP/1.1\r\n"]
    stop = threading.Event()
    forger = threading.Thread(target=_flood, args=(group, [encode_offer(fake, group), *junk], stop), daemon=True)
    forger.start()
    try:
        p = cli(nodes["c"], "discover")
        assert p.returncode == 0, p.stderr
        rows = {line.split()[0] + " " + line.split()[1]: line for line in p.stdout.splitlines()[1:]}
        assert set(rows) == {"sample-llama 1.0", "sample-llama 6.6.6", "other-model 0.3"}, p.stdout
        assert (
            f"ed25519:{(real[0].signer or '')[:16]}" in rows["sample-llama 1.0"] and " 2 " in rows["sample-llama 1.0"]
        )
        assert "unsigned" in rows["other-model 0.3"] and "MIT" in rows["other-model 0.3"]

        p = cli(nodes["c"], "fetch", "sample-llama", "--lan", "--no-convert")
        assert p.returncode != 0 and "2 different releases named sample-llama" in p.stderr, p.stderr
        p = cli(nodes["c"], "fetch", "sample-llama@6.6.6", "--lan", "--no-convert", "--timeout", "20")
        assert p.returncode != 0 and "not the 0000000000000000… the LAN offer names" in p.stderr, p.stderr
        assert "Traceback" not in p.stderr and Store(nodes["c"].models_dir).entries() == []

        p = cli(nodes["c"], "fetch", "sample-llama@1.0", "--lan", "--no-convert", "--timeout", "60", timeout=120)
        assert p.returncode == 0 and "offered on the LAN by 127.0.0.1" in p.stderr, p.stderr
    finally:
        stop.set()
        forger.join()
    got = Store(nodes["c"].models_dir).get("sample-llama")
    assert manifest_id(got.manifest()) == manifest_id(m)
    assert all((got.source_dir / f.path).read_bytes() == (sample_model / f.path).read_bytes() for f in m.files)
    assert DaemonClient(nodes["a"]).status().release("sample-llama") is not None  # still up


def test_discover_says_when_nothing_answers(homes: Homes) -> None:
    node = _lan_homes(homes, ["lonely"], _free_udp_port())["lonely"]
    p = cli(node, "discover", "--wait", "0.5")
    assert p.returncode == 0 and "no daemon on the local network offered a release" in p.stdout, p.stderr
    p = cli(node, "fetch", "x", "--lan", "--no-convert")
    assert p.returncode != 0 and "no daemon on the local network offers x (heard: no offers at all)" in p.stderr
    node.config_file.write_text('lan_group = "10.0.0.1:6772"\n')
    p = cli(node, "discover")
    assert p.returncode == 2 and "is not MULTICAST-IPV4:PORT" in p.stderr and "Traceback" not in p.stderr
