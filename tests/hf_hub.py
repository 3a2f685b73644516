"""A Hugging Face cache written by huggingface_hub itself: a tiny stand-in for the Hub's file
endpoint on 127.0.0.1 serves one repo, and ``hf_hub_download`` (in its own process, with
``HF_ENDPOINT`` pointing there) downloads it into a cache folder, as it would from the Hub. So the
tests check llamashare against the cache huggingface_hub makes, not against a copy of its rules.

The endpoint answers what ``hf_hub_download`` asks (``HEAD``/``GET /{repo}/resolve/{rev}/{path}``):
``X-Repo-Commit``, and as etag a file's git blob SHA-1, or for an LFS file (``*.safetensors``,
``*.bin``, as the Hub's default ``.gitattributes`` has it) ``X-Linked-Etag`` with its SHA-256.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

LFS_SUFFIXES = (".safetensors", ".bin")


def git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@contextmanager
def fake_hub(repo_id: str, commit: str, files: dict[str, bytes]) -> Iterator[str]:
    """Serve ``files`` as ``repo_id`` at ``commit`` (also as ``main``); yields the endpoint URL."""

    class Handler(BaseHTTPRequestHandler):
        def _answer(self, body: bool) -> None:
            prefix = f"/{repo_id}/resolve/"
            path = unquote(self.path.split("?")[0])
            rev, _, rel = path.removeprefix(prefix).partition("/")
            if not path.startswith(prefix) or rev not in (commit, "main") or rel not in files:
                self.send_response(404)
                self.send_header("X-Error-Code", "EntryNotFound")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            data = files[rel]
            self.send_response(200)
            self.send_header("X-Repo-Commit", commit)
            if rel.endswith(LFS_SUFFIXES):
                self.send_header("X-Linked-Etag", f'"{hashlib.sha256(data).hexdigest()}"')
                self.send_header("X-Linked-Size", str(len(data)))
            self.send_header("ETag", f'"{git_sha1(data)}"')
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if body:
                self.wfile.write(data)

        def do_HEAD(self) -> None:  # noqa: N802 (http.server's naming)
            self._answer(body=False)

        def do_GET(self) -> None:  # noqa: N802
            self._answer(body=True)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def hf_env(cache: Path, endpoint: str | None = None, offline: bool = False) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(HF_HUB_CACHE=str(cache), HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_XET="1")
    if endpoint:
        env["HF_ENDPOINT"] = endpoint
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    return env


def huggingface_hub(code: str, env: dict[str, str], timeout: float = 60) -> object:
    """Run ``code`` (which sets ``result``) with huggingface_hub in its own process; its JSON."""
    program = f"import json, huggingface_hub, huggingface_hub.constants\n{code}\nprint(json.dumps(result))"
    p = subprocess.run([sys.executable, "-c", program], env=env, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.strip().splitlines()[-1])


def download_repo(cache: Path, repo_id: str, commit: str, files: dict[str, bytes]) -> Path:
    """Download ``files`` of ``repo_id`` into ``cache`` with hf_hub_download; the snapshot folder."""
    with fake_hub(repo_id, commit, files) as endpoint:
        paths = huggingface_hub(
            f"result = [huggingface_hub.hf_hub_download({repo_id!r}, f, revision='main') for f in {sorted(files)!r}]",
            hf_env(cache, endpoint),
        )
    assert isinstance(paths, list) and paths
    snapshot = Path(paths[0]).parents[len(Path(sorted(files)[0]).parts) - 1]
    assert snapshot.name == commit, snapshot
    return snapshot
