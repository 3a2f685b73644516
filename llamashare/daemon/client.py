"""Talking to a home's daemon from the CLI: find it, start it, call its API (plain urllib).

The CLI stays synchronous and light: no event loop, no aiohttp import for ``status``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llamashare.daemon.home import Home
from llamashare.errors import DaemonError
from llamashare.p2p.status import DaemonStatus


@dataclass(frozen=True)
class StartOptions:
    """How a daemon that a command starts listens (ignored when one already runs); None and
    empty fall back to the home's config."""

    listen_port: int | None = None
    api_port: int | None = None
    local_only: bool = False
    dht_bootstrap: tuple[str, ...] = ()

    def args(self) -> list[str]:
        """The same options as ``daemon run`` flags."""
        out = [] if self.listen_port is None else ["--listen-port", str(self.listen_port)]
        out += [] if self.api_port is None else ["--api-port", str(self.api_port)]
        out += ["--local-only"] if self.local_only else []
        for node in self.dht_bootstrap:
            out += ["--dht-bootstrap", node]
        return out


class DaemonClient:
    def __init__(self, home: Home) -> None:
        self.home = home
        try:
            self.info = json.loads(home.info_file.read_text())
            self.token = home.token_file.read_text().strip()
        except (OSError, ValueError):
            raise DaemonError(
                f"no daemon is running for {home.root} (start one with: llamashare daemon start)"
            ) from None
        self.base = f"http://127.0.0.1:{self.info['api_port']}/api/v1"

    def call(self, method: str, path: str, body: dict | None = None, timeout: float = 30) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            self.base + path,
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read()).get("error", exc.reason)
            except ValueError:
                message = exc.reason
            raise DaemonError(f"daemon refused {method} {path}: {message}") from None
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            raise DaemonError(f"cannot reach the daemon for {self.home.root}: {getattr(exc, 'reason', exc)}") from None

    def status(self) -> DaemonStatus:
        return DaemonStatus.from_json(self.call("GET", "/status"))


def _alive(pid: int) -> bool:
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False  # our own child, now reaped
    except ChildProcessError:
        pass  # not our child: ask the kernel below
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # an exited child that its parent has not reaped yet (a zombie) is not running
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def running_client(home: Home) -> DaemonClient | None:
    """A client for the home's daemon if one is up and answering, else None."""
    try:
        client = DaemonClient(home)
    except DaemonError:
        return None
    if not _alive(int(client.info.get("pid", 0))):
        return None
    try:
        client.status()
    except DaemonError:
        return None
    return client


def start_daemon(home: Home, start: StartOptions | None = None, timeout: float = 30) -> DaemonClient:
    """Start a detached daemon for ``home`` (if none runs) and wait until its API answers."""
    client = running_client(home)
    if client is not None:
        return client
    home.make()
    home.info_file.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "llamashare", "--home", str(home.root), "daemon", "run"]
    cmd += (start or StartOptions()).args()
    with open(home.log_file, "ab") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = home.log_file.read_text(errors="replace").strip().splitlines()[-1:] or ["(no log)"]
            raise DaemonError(f"the daemon exited at start (code {proc.returncode}): {tail[0]}")
        client = running_client(home)
        if client is not None:
            return client
        time.sleep(0.1)
    raise DaemonError(f"the daemon did not answer within {timeout:.0f}s (see {home.log_file})")


def stop_daemon(home: Home, timeout: float = 30) -> bool:
    """Ask the daemon to save its state and exit; return False if none was running."""
    client = running_client(home)
    if client is None:
        return False
    pid = int(client.info["pid"])
    try:
        client.call("POST", "/shutdown")
    except DaemonError:
        os.kill(pid, 15)
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(pid):
        raise DaemonError(f"the daemon (pid {pid}) did not stop within {timeout:.0f}s")
    return True
