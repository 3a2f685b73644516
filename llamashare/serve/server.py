"""Running the app: in the foreground for `llamashare serve`, or in a thread (tests, embedding)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from llamashare.daemon.served import Served, write_served
from llamashare.errors import LlamashareError
from llamashare.serve.app import allowed_hosts, make_app
from llamashare.serve.models import Models

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def check_exposure(host: str, api_key: str | None) -> None:
    """A server reachable from other machines must ask for a key."""
    if host not in LOOPBACK and not api_key:
        raise LlamashareError(f"--host {host} is reachable from other machines: give --api-key too")


async def start(models: Models, host: str, port: int, api_key: str | None) -> tuple[web.AppRunner, int]:
    """Serve on host:port (0: any free port); returns the runner and the port bound. The Host
    check needs the port, which port 0 only knows once bound: the set it reads is filled then."""
    check_exposure(host, api_key)
    hosts: set[str] = set()
    runner = web.AppRunner(make_app(models, hosts, api_key), handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    server = site._server  # aiohttp keeps the listening sockets there
    bound = server.sockets[0].getsockname()[1] if isinstance(server, asyncio.Server) else port
    hosts |= allowed_hosts(host, bound)
    return runner, bound


async def report(home_root: Path, port: int, models: Models, url: str, every: float = 1.0) -> None:
    """Keep ``HOME/serve/PORT.json`` current while serving (the daemon's dashboard lists it):
    rewritten when a model loads or a request starts or ends, and every 30 s; removed at exit."""
    started, last, written_at = time.time(), None, 0.0
    path: Path | None = None
    try:
        while True:
            rows, now = models.status(), time.monotonic()
            if rows != last or now - written_at >= 30:
                path = write_served(home_root, port, Served(os.getpid(), url, started, rows))
                last, written_at = rows, now
            await asyncio.sleep(every)
    finally:
        if path is not None:
            with contextlib.suppress(OSError):
                path.unlink()


def link_url(host: str, port: int) -> str:
    """The URL a browser on this machine opens for a server bound to ``host``."""
    shown = {"0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(host, f"[{host}]" if ":" in host else host)
    return f"http://{shown}:{port}"


@dataclass
class Running:
    """A server started by ``in_thread``: its base URL, and ``stop()``."""

    url: str
    port: int
    stop: Callable[[], None]


def in_thread(models: Models, host: str = "127.0.0.1", port: int = 0, api_key: str | None = None) -> Running:
    loop = asyncio.new_event_loop()
    ready: dict[str, object] = {}
    started = threading.Event()

    def main() -> None:
        asyncio.set_event_loop(loop)
        try:
            ready["runner"], ready["port"] = loop.run_until_complete(start(models, host, port, api_key))
        except BaseException as e:
            ready["error"] = e
            started.set()
            return
        started.set()
        loop.run_forever()
        loop.run_until_complete(ready["runner"].cleanup())  # type: ignore[attr-defined]
        loop.close()

    thread = threading.Thread(target=main, name="llamashare-serve-http", daemon=True)
    thread.start()
    started.wait(30)
    if "error" in ready:
        raise ready["error"]  # type: ignore[misc]
    bound = int(ready["port"])  # type: ignore[call-overload]

    def stop() -> None:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        models.close()

    shown = f"[{host}]" if ":" in host else host
    return Running(f"http://{shown}:{bound}", bound, stop)
