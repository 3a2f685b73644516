"""Real peers for swarm tests: Debian's opentracker (and, later, aria2c), on loopback only."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest


def free_port() -> int:
    """A port free for both TCP and UDP on 127.0.0.1 (trackers and nodes listen on both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                    udp.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")


#: program → Debian package: peers for the swarm tests, and the dashboard tests' real browser.
DEBIAN_PEERS = {
    "opentracker": "opentracker",
    "aria2c": "aria2",
    "mktorrent": "mktorrent",
    "chromium": "chromium",
    "chromedriver": "chromium-driver",
}
_install_tried = False


def require(program: str) -> str:
    """Path of a system program the test needs. The README's test command must work on a fresh
    machine, so when a peer is missing and we may (root, apt-get), install them all once."""
    global _install_tried
    path = shutil.which(program)
    if path is None and not _install_tried and os.geteuid() == 0 and shutil.which("apt-get"):
        _install_tried = True
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=600)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *DEBIAN_PEERS.values()],
            env=env,
            capture_output=True,
            timeout=600,
        )
        path = shutil.which(program)
    if path is None:
        pytest.fail(f"{program} is not installed: apt-get install {' '.join(DEBIAN_PEERS.values())} (as .ci/run does)")
    return path


class Tracker:
    """opentracker on 127.0.0.1:PORT (HTTP and UDP), whitelist mode as Debian builds it."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.dir = workdir
        # opentracker drops privileges to "nobody": the whitelist and its folder must be readable.
        workdir.mkdir(parents=True, exist_ok=True)
        os.chmod(workdir, 0o755)
        for parent in workdir.parents:
            if str(parent).startswith("/tmp/"):
                os.chmod(parent, os.stat(parent).st_mode | 0o005)
        self.whitelist = workdir / "whitelist.txt"
        self.whitelist.write_text("")
        os.chmod(self.whitelist, 0o644)
        self.proc = subprocess.Popen(
            [
                require("opentracker"),
                "-i",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-P",
                str(self.port),
                "-w",
                str(self.whitelist),
            ],
            cwd=workdir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                assert self.proc.stderr is not None  # stderr=PIPE
                raise RuntimeError(f"opentracker exited: {self.proc.stderr.read().decode(errors='replace')}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("opentracker did not start listening")

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}/announce"

    @property
    def udp(self) -> str:
        return f"udp://127.0.0.1:{self.port}/announce"

    def allow(self, info_hash_v1: str, info_hash_v2: str | None = None) -> None:
        """Whitelist a torrent (a hybrid one announces its v1 hash and its truncated v2 hash)."""
        lines = [info_hash_v1] + ([info_hash_v2[:40]] if info_hash_v2 else [])
        with open(self.whitelist, "a") as f:
            f.write("".join(h + "\n" for h in lines))
        self.proc.send_signal(signal.SIGHUP)
        time.sleep(0.2)

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
