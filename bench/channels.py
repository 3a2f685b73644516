#!/usr/bin/env python3
"""Benchmark: resolving a release by its address alone (issue 27), on 127.0.0.1.

    python bench/channels.py [--nodes 8] [--runs 5] [--dir /tmp/llamashare-bench-channels]

NODES nodes (one publisher, the rest bystanders) form their own DHT on loopback, bootstrapping
from each other as ``dht_bootstrap`` makes daemons do. The publisher puts a release's signed
pointer (BEP 44) and seeds its manifest as a one-file torrent. Then, RUNS times, a fresh node
joins and resolves ``ed25519:<key>/<name>``: the mutable get, then the manifest by BEP 9 from the
swarm, hash and signature checked. The peer it is compared with: a fresh node fetching the same
manifest torrent by magnet link alone (libtorrent's DHT get_peers + BEP 9), what a published
magnet link would cost. Each resolver's DHT traffic is libtorrent's own counters
(``dht.dht_bytes_in``/``out``); the publisher's is measured around its put.

On loopback every hop is immediate, so the times are the protocols' round trips and libtorrent's
timers, not network latency; on the internet each DHT hop adds a real round trip.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from pathlib import Path

import libtorrent as lt
import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from llamashare.manifests.channel import Address, libtorrent_keys  # noqa: E402
from llamashare.manifests.create import ReleaseInfo, create_release  # noqa: E402
from llamashare.manifests.manifest import dumps  # noqa: E402
from llamashare.manifests.signing import sign_manifest  # noqa: E402
from llamashare.p2p.node import Node  # noqa: E402
from llamashare.p2p.settings import NetworkOptions  # noqa: E402
from tests.test_channels import _free_ports  # noqa: E402  (ports free for TCP and UDP alike)

TIMEOUT = 120.0


def dht_bytes(node: Node) -> tuple[int, int]:
    """(in, out) bytes of DHT traffic so far, from libtorrent's session counters."""
    node.session.post_session_stats()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        for alert in node.session.pop_alerts():
            if isinstance(alert, lt.session_stats_alert):
                values = alert.values
                return int(values["dht.dht_bytes_in"]), int(values["dht.dht_bytes_out"])
            node._on_alert(alert)  # what poll would have done with it
        time.sleep(0.01)
    raise SystemExit("libtorrent posted no session stats")


def poll(nodes: list[Node], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for n in nodes:
            n.poll()
        time.sleep(0.02)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=8, help="DHT nodes before the resolvers join")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/llamashare-bench-channels"))
    args = ap.parse_args()
    shutil.rmtree(args.dir, ignore_errors=True)
    folder = args.dir / "release" / "bench-model"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(27)
    for i in range(3):  # the release's files are not fetched: only their manifest's size matters
        (folder / f"model-{i}.safetensors").write_bytes(rng.bytes(4 << 20))
    key = Ed25519PrivateKey.generate()
    m, _ = create_release(folder, ReleaseInfo(name="bench-model", license="Apache-2.0"))
    text = dumps(sign_manifest(m, key)).encode()
    public, secret = libtorrent_keys(key)
    address = Address(public.hex(), m.name)

    ports = _free_ports(args.nodes + 2 * args.runs)
    dht_ports, fresh = ports[: args.nodes], ports[args.nodes :]

    def node(i: int, port: int) -> Node:
        boot = tuple(f"127.0.0.1:{p}" for p in dht_ports if p != port)
        return Node(args.dir / f"node{i}", NetworkOptions(port, "127.0.0.1", True, dht_bootstrap=boot))

    swarm = [node(i, p) for i, p in enumerate(dht_ports)]
    publisher = swarm[0]
    results: dict[str, list[tuple[float, int, int]]] = {"address": [], "magnet": []}
    try:
        poll(swarm, 5.0)  # let the routing tables fill
        before = dht_bytes(publisher)
        pointer = publisher.channels.publish(address, text, "unused", public, secret)
        poll(swarm, 5.0)
        after = dht_bytes(publisher)
        put_cost = (after[0] - before[0], after[1] - before[1])
        for run in range(args.runs):
            for how in ("address", "magnet"):
                resolver = node(100 + 2 * run + (how == "magnet"), fresh.pop())
                everyone = [*swarm, resolver]
                poll(everyone, 2.0)  # joined: its bootstrap is done before the clock starts
                start_bytes = dht_bytes(resolver)
                start = time.monotonic()
                if how == "address":
                    r = resolver.channels.resolve(address)
                    while not r.done and time.monotonic() - start < TIMEOUT:
                        poll(everyone, 0.02)
                    ok = r.manifest == text
                else:
                    handle = resolver.channels.fetch_manifest(m.name, pointer)
                    while not handle.status().is_seeding and time.monotonic() - start < TIMEOUT:
                        poll(everyone, 0.02)
                    ok = handle.status().is_seeding
                seconds = time.monotonic() - start
                if not ok:
                    raise SystemExit(f"run {run + 1}: {how} did not resolve within {TIMEOUT:.0f}s")
                end_bytes = dht_bytes(resolver)
                results[how].append((seconds, end_bytes[0] - start_bytes[0], end_bytes[1] - start_bytes[1]))
                resolver.close()
            print(f"round {run + 1}/{args.runs} done", flush=True)
    finally:
        for n in swarm:
            n.close()

    print(f"\n{args.nodes} DHT nodes on 127.0.0.1, {args.runs} fresh resolvers each way; manifest {len(text)} B")
    print(f"publish (put + manifest torrent): DHT {put_cost[0]} B in, {put_cost[1]} B out at the publisher\n")
    print("| how a fresh node gets the manifest | median time | range | DHT bytes in | DHT bytes out |")
    print("|---|---|---|---|---|")
    labels = {
        "address": "`ed25519:<key>/<name>` (BEP 44 get, then BEP 9)",
        "magnet": "magnet link to the manifest torrent (BEP 9 only)",
    }
    for how, rows in results.items():
        times = [r[0] for r in rows]
        print(
            f"| {labels[how]} | {statistics.median(times):.2f} s | {min(times):.2f}–{max(times):.2f} s "
            f"| {statistics.median(r[1] for r in rows):.0f} | {statistics.median(r[2] for r in rows):.0f} |"
        )
    ratio = statistics.median(r[0] for r in results["address"]) / statistics.median(r[0] for r in results["magnet"])
    print(f"\naddress / magnet time: {ratio:.2f}×")


if __name__ == "__main__":
    main()
