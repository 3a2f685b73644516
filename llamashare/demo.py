"""``llamashare demo``: the whole path, offline, on a generated sample, one visible step at a time.

Today the path is publish → sign → verify → seed from one local node → fetch over BitTorrent into a
second node (loopback only) → convert the fetched files to GGUF → tamper → verify again;
quantize and run join it as they land. Every step prints what it does, where files go, and its time.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from llamashare.errors import LlamashareError
from llamashare.fsio import atomic_write
from llamashare.manifests.create import ReleaseInfo, create_release, write_release
from llamashare.manifests.manifest import dumps, load_manifest
from llamashare.manifests.signing import generate_keypair, load_private_key, sign_manifest, verify_signature
from llamashare.manifests.verify import FileState, verify_release
from llamashare.p2p.client import DaemonClient, stop_daemon
from llamashare.p2p.fetch import FetchOptions, fetch, seed
from llamashare.p2p.home import Home
from llamashare.quant.convert import convert
from llamashare.sample import write_sample_model

Echo = Callable[[str], None]


@contextmanager
def _step(echo: Echo, title: str) -> Iterator[None]:
    echo(f"==> {title}")
    start = time.perf_counter()
    yield
    echo(f"    done in {time.perf_counter() - start:.2f} s")


def run_demo(workdir: Path | None, echo: Echo = print) -> None:
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="llamashare-demo-") as tmp:
            _run(Path(tmp), echo)
        return
    _run(workdir, echo)


def _run(work: Path, echo: Echo) -> None:
    source = work / "published" / "sample-llama"
    manifest_path = work / "sample-llama.toml"
    key = work / "publisher.key"
    for old in (source, work / "fetched", work / "node-a", work / "node-b"):
        if old.exists():
            shutil.rmtree(old)
    with _step(echo, f"generate a small LLaMA-shaped model in {source}"):
        files = write_sample_model(source)
        echo(f"    {len(files)} files, {sum(f.stat().st_size for f in files)} bytes")
    with _step(echo, f"publish it: hash once (BLAKE3 + SHA-256 + hybrid torrent) → {manifest_path}"):
        info = ReleaseInfo(name="sample-llama", license="Apache-2.0", description="Random weights, LLaMA-shaped, for the demo")
        manifest, torrent = create_release(source, info)
        write_release(manifest, torrent, manifest_path, force=True)
        echo(f"    info-hash v1 {manifest.torrent.info_hash_v1}")
        echo(f"    info-hash v2 {manifest.torrent.info_hash_v2}")
    with _step(echo, "sign the manifest with a fresh ed25519 publisher key"):
        _, public = generate_keypair(key, force=True)
        atomic_write(manifest_path, dumps(sign_manifest(manifest, load_private_key(key))).encode())
        echo(f"    publisher {public}")
    with _step(echo, "load the manifest as a stranger would, pin the key, verify every file"):
        loaded = load_manifest(manifest_path)
        verify_signature(loaded, public.removeprefix("ed25519:"))
        reports = verify_release(loaded, source)
        for r in reports:
            echo(f"    {r.state.value:<10} {r.entry.path}")
        if not all(r.ok for r in reports):
            raise LlamashareError("demo: a freshly published file failed verification")
    fetched = work / "fetched" / "sample-llama"
    with _step(echo, f"seed it from node A and fetch it over BitTorrent into node B ({fetched})"):
        a, b = Home.local_node(work / "node-a"), Home.local_node(work / "node-b")
        try:
            seed(a, loaded, FetchOptions(directory=source))
            peer = f"127.0.0.1:{DaemonClient(a).info['listen_port']}"
            echo(f"    node A seeds on {peer}; node B fetches (127.0.0.1 only, no DHT)")
            st = fetch(b, loaded, FetchOptions(directory=fetched, peers=(peer,), timeout=120))
            echo(f"    node B: {st['verified']} of {st['selected']} files verified against the manifest, now {st['state']}")
        finally:
            for home in (a, b):
                stop_daemon(home)
    gguf_path = work / "sample-llama.f16.gguf"
    with _step(echo, f"convert the fetched, verified files to GGUF for llama.cpp → {gguf_path}"):
        report = convert(fetched, gguf_path, "f16", force=True)
        p = report.params
        echo(f"    {report.tensors} tensors, {report.bytes_written} bytes of f16 weights: {p.n_layer} layers, "
             f"{p.n_head}/{p.n_head_kv} heads, vocabulary {p.n_vocab}")  # fmt: skip
    with _step(echo, "flip one byte in a shard and verify again: the swap must be caught"):
        target = next(f for f in loaded.files if f.path.endswith(".safetensors"))
        shard = fetched / target.path
        data = bytearray(shard.read_bytes())
        data[len(data) // 2] ^= 0xFF
        shard.write_bytes(bytes(data))
        caught = [r for r in verify_release(loaded, fetched) if r.state is FileState.WRONG_HASH]
        if [r.entry.path for r in caught] != [target.path]:
            raise LlamashareError("demo: the tampered shard was not detected")
        echo(f"    {caught[0].state.value:<10} {caught[0].entry.path}  ({caught[0].detail})")
    echo("demo finished: publish, sign, seed, fetch, verify and convert work; quantize and run land next.")
