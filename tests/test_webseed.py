"""Web-seed fallback (BEP 19): with no peer online, a release still arrives from a plain HTTP mirror
(a local aiohttp static server), verified — and a mirror serving damaged bytes gets none accepted."""

from __future__ import annotations

import asyncio
import shutil
import threading
from pathlib import Path
from typing import Iterator

import pytest
from aiohttp import web

from llamashare.manifests.create import ReleaseInfo, create_release
from llamashare.manifests.verify import verify_release
from llamashare.p2p.client import DaemonClient
from llamashare.p2p.fetch import FetchError, FetchOptions, fetch, release_status

pytestmark = pytest.mark.slow


class Mirror:
    """An aiohttp static file server on 127.0.0.1 in a background thread, counting bytes served."""

    def __init__(self, root: Path) -> None:
        self.root, self.requests, self.bytes = root, 0, 0
        root.mkdir(parents=True, exist_ok=True)
        self.loop = asyncio.new_event_loop()

        async def count(request: web.Request, response: web.StreamResponse) -> None:
            self.requests += 1  # headers are final here: Content-Length is the range actually sent
            self.bytes += int(response.headers.get("Content-Length", 0))

        app = web.Application()
        app.on_response_prepare.append(count)
        app.router.add_static("/", root)
        self.runner = web.AppRunner(app)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}/"
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[Mirror]:
    m = Mirror(tmp_path / "mirror")
    yield m
    m.close()


def test_fetch_completes_from_a_web_seed_with_no_peers(tmp_path: Path, homes, mirror: Mirror, sample_model: Path) -> None:
    # The mirror holds the release folder under the torrent's name, as BEP 19 multi-file URLs expect.
    shutil.copytree(sample_model, mirror.root / "sample-llama")
    m, _ = create_release(mirror.root / "sample-llama", ReleaseInfo("sample-llama", "Apache-2.0", web_seeds=(mirror.url,)), 65536)
    b = homes("b")
    st = fetch(b, m, FetchOptions(directory=tmp_path / "out", timeout=60))
    assert st["verified"] == st["selected"] == len(m.files) and st["peers"] == 0
    assert all((tmp_path / "out" / f.path).read_bytes() == (sample_model / f.path).read_bytes() for f in m.files)
    assert mirror.requests > 0 and mirror.bytes >= m.total_size  # every byte came over HTTP
    print(f"web seed: {mirror.requests} requests, {mirror.bytes} bytes for a {m.total_size}-byte release")


def test_damaged_mirror_bytes_are_never_accepted(tmp_path: Path, homes, mirror: Mirror, sample_model: Path) -> None:
    shutil.copytree(sample_model, mirror.root / "sample-llama")
    m, _ = create_release(mirror.root / "sample-llama", ReleaseInfo("sample-llama", "Apache-2.0", web_seeds=(mirror.url,)), 65536)
    shard = next(f for f in m.files if f.path.endswith(".safetensors"))
    damaged = mirror.root / "sample-llama" / shard.path
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0xFF  # the mirror now serves one bad byte
    damaged.write_bytes(bytes(data))
    b = homes("b")
    with pytest.raises(FetchError, match="not complete after"):
        fetch(b, m, FetchOptions(directory=tmp_path / "out", timeout=8))
    st = release_status(DaemonClient(b), "sample-llama")
    assert st["files"][shard.path] != "verified" and st["verified"] == len(m.files) - 1
    assert st["hash_failures"] > 0  # libtorrent saw the bad piece and threw it away
    # libtorrent may leave the rejected bytes on disk for a retry, but never calls the file done:
    # llamashare's own check of the output agrees.
    assert {r.entry.path: r.state.value for r in verify_release(m, tmp_path / "out")}[shard.path] == "wrong hash"
