"""Real peers for swarm tests, on loopback only: Debian's opentracker, aria2c and qBittorrent-nox."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
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
    "qbittorrent-nox": "qbittorrent-nox",
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


class QBittorrent:
    """qBittorrent-nox (Debian 12: 4.5.2 on libtorrent 2.0.8) with its default settings, except
    what keeps it on loopback and lets a test drive it headless: a fresh ``--profile`` folder,
    the legal notice accepted, BitTorrent and WebUI bound to 127.0.0.1 on free ports, WebUI
    without login for localhost, no DHT, PeX, LSD, UPnP/NAT-PMP or GeoIP download, and a log
    file (``log()``) to print when a test fails. Peer protocol (uTP first) etc. stay default."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.profile = workdir / "profile"
        self.downloads = workdir / "downloads"
        self.logs = workdir / "logs"
        self.port = free_port()
        self.webui_port = free_port()
        conf = self.profile / "qBittorrent" / "config" / "qBittorrent.conf"
        conf.parent.mkdir(parents=True)
        self.downloads.mkdir(parents=True)
        # QSettings INI: [Group] then keys with "\" for the deeper levels of "Group/Key/Sub".
        conf.write_text(
            "[LegalNotice]\nAccepted=true\n\n"
            "[BitTorrent]\n"
            f"Session\\Port={self.port}\n"
            "Session\\InterfaceAddress=127.0.0.1\n"
            "Session\\DHTEnabled=false\n"
            "Session\\PeXEnabled=false\n"
            "Session\\LSDEnabled=false\n"
            f"Session\\DefaultSavePath={self.downloads}\n\n"
            "[Network]\nPortForwardingEnabled=false\n\n"
            "[Preferences]\n"
            "WebUI\\Address=127.0.0.1\n"
            f"WebUI\\Port={self.webui_port}\n"
            "WebUI\\LocalHostAuth=false\n"
            "Connection\\ResolvePeerCountries=false\n\n"
            "[Application]\n"
            "FileLogger\\Enabled=true\n"
            f"FileLogger\\Path={self.logs}\n"
        )
        self.version = "(not started)"
        self.output = open(workdir / "stdout.txt", "wb")
        self.proc = subprocess.Popen(
            [require("qbittorrent-nox"), f"--profile={self.profile}"],
            stdin=subprocess.DEVNULL,
            stdout=self.output,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"qbittorrent-nox exited with {self.proc.returncode}:\n{self.log()}")
                try:
                    self.version = self.api("app/version").decode()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"qbittorrent-nox's WebUI did not answer in 30 s:\n{self.log()}") from None
                    time.sleep(0.1)
            prefs = json.loads(self.api("app/preferences"))
            isolated = {"dht": False, "pex": False, "lsd": False, "upnp": False, "listen_port": self.port}
            wrong = {k: prefs.get(k) for k, v in isolated.items() if prefs.get(k) != v}
            if wrong or prefs.get("current_interface_address") != "127.0.0.1":
                raise RuntimeError(f"qbittorrent-nox ignored the loopback-only settings: {wrong}")
        except BaseException:
            self.close()
            raise

    def api(self, method: str, fields: dict[str, str] | None = None, files: dict[str, bytes] | None = None) -> bytes:
        """Call /api/v2/METHOD: GET without arguments, else POST (multipart when files are given)."""
        url = f"http://127.0.0.1:{self.webui_port}/api/v2/{method}"
        if files:
            boundary = uuid.uuid4().hex
            parts = [
                f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
                for k, v in (fields or {}).items()
            ]
            for i, (name, data) in enumerate(files.items()):
                parts.append(
                    f'--{boundary}\r\nContent-Disposition: form-data; name="torrents"; filename="{i}-{name}"\r\n'
                    "Content-Type: application/x-bittorrent\r\n\r\n".encode()
                    + data
                    + b"\r\n"
                )
            body = b"".join(parts) + f"--{boundary}--\r\n".encode()
            req = urllib.request.Request(url, body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})
        elif fields is not None:
            req = urllib.request.Request(url, urllib.parse.urlencode(fields).encode())
        else:
            req = urllib.request.Request(url)
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.read()

    def add(self, torrent: bytes, save_path: Path) -> None:
        """Add a .torrent (started at once; qBittorrent checks any files already in save_path)."""
        answer = self.api("torrents/add", {"savepath": str(save_path)}, {"release.torrent": torrent})
        if answer.strip() != b"Ok.":
            raise RuntimeError(f"qBittorrent refused the torrent: {answer!r}")

    def torrents(self) -> list[dict]:
        return json.loads(self.api("torrents/info"))

    def add_peer(self, torrent_hash: str, port: int) -> None:
        self.api("torrents/addPeers", {"hashes": torrent_hash, "peers": f"127.0.0.1:{port}"})

    def log(self) -> str:
        """qBittorrent's own log (its file logger) and whatever it printed."""
        texts = [p.read_text(errors="replace") for p in sorted(self.logs.glob("*.log"))]
        if (self.dir / "stdout.txt").exists():
            texts.append((self.dir / "stdout.txt").read_text(errors="replace"))
        # (Its stdout also says "QtSingleCoreApplication: listen on local socket failed" when the
        # profile path is too long for a Unix socket: only its single-instance check, harmless.)
        return "\n".join(texts)[-6000:]

    def describe(self) -> str:
        """For a failing test: its torrents as the API shows them (if it still answers) and its log."""
        try:
            torrents = json.dumps(self.torrents(), indent=1)
        except (OSError, ValueError) as exc:
            torrents = f"(WebUI did not answer: {exc})"
        return f"qBittorrent {self.version}, torrents: {torrents}\n--- its log ---\n{self.log()}"

    def close(self) -> None:
        """Ask it to quit through the API; terminate, then kill, if it does not within 10 s."""
        if self.proc.poll() is None:
            try:
                self.api("app/shutdown", {})
            except (OSError, urllib.error.URLError):
                self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.output.close()
