"""The background seeding daemon: one per home, owning the node and serving the control API.

Started by ``llamashare daemon start`` (or by ``fetch`` when none runs) as a detached process
running ``llamashare daemon run``. It holds an exclusive lock on ``daemon.lock`` (one daemon
per home), restores every release from the state folder, polls the node, saves resume data every
``RESUME_EVERY`` seconds and on SIGTERM/SIGINT, and logs to ``daemon.log``.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import secrets
import signal
import socket
import time

from aiohttp import web

from llamashare import __version__
from llamashare.daemon.api import make_app
from llamashare.daemon.client import StartOptions
from llamashare.daemon.dashboard import DASHBOARD_KEY
from llamashare.daemon.follow import Follower
from llamashare.daemon.home import Home
from llamashare.errors import DaemonRunningError
from llamashare.fsio import atomic_write
from llamashare.p2p.node import Node
from llamashare.p2p.settings import NetworkOptions
from llamashare.store import Store

POLL_EVERY = 0.05  # at the latest; alerts and finished hash jobs wake the loop sooner
MIN_POLL_GAP = 0.005  # at the earliest: a burst of alerts is handled in one poll
RESUME_EVERY = 30.0
log = logging.getLogger("llamashare.daemon")


def run_daemon(home: Home, start: StartOptions | None = None) -> None:
    """Run in the foreground until SIGTERM/SIGINT or an API shutdown; ``start`` overrides the config."""
    start = start or StartOptions()
    home.make()
    lock = open(home.lock_file, "a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise DaemonRunningError(f"a daemon is already running for {home.root}") from None
    logging.basicConfig(
        filename=home.log_file, level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    cfg = home.config()
    local_only = start.local_only or cfg.local_only
    net = NetworkOptions(
        listen_port=cfg.listen_port if start.listen_port is None else start.listen_port,
        local_only=local_only,
        upload_rate_limit=cfg.upload_limit,
        download_rate_limit=cfg.download_limit,
        listen_host="127.0.0.1" if local_only else "0.0.0.0",
        dht_bootstrap=start.dht_bootstrap or cfg.dht_bootstrap,
        lan=cfg.lan(local_only),
    )
    token = secrets.token_urlsafe(32)
    atomic_write(home.token_file, token.encode(), mode=0o600)
    try:
        asyncio.run(_serve(home, net, token, cfg.api_port if start.api_port is None else start.api_port))
    finally:
        home.info_file.unlink(missing_ok=True)
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()


async def _serve(home: Home, net: NetworkOptions, token: str, api_port: int) -> None:
    node = Node(home.state_dir, net)
    restored = node.restore()
    follower = Follower(home, node.channels, max(home.config().follow_every, 1.0))
    stop = asyncio.Event()
    tick = asyncio.Event()  # set by libtorrent alerts, finished hash jobs and stop
    loop = asyncio.get_running_loop()

    def request_stop() -> None:
        stop.set()
        tick.set()

    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)

    def on_alerts() -> None:
        try:
            while os.read(wake_r, 4096):
                pass
        except BlockingIOError:
            pass
        tick.set()

    loop.add_reader(wake_r, on_alerts)

    def wake() -> None:
        loop.call_soon_threadsafe(tick.set)

    node.set_wakeup(wake, wake_w)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, request_stop)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", api_port))
    port = sock.getsockname()[1]
    info = {
        "pid": os.getpid(),
        "api_port": port,
        "listen_port": node.listen_port,
        "version": __version__,
        "home": str(home.root),
        "started_at": time.time(),
    }
    app = make_app(node, token, port, request_stop, info, Store(home.models_dir), follower)
    dashboard = app[DASHBOARD_KEY]
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    atomic_write(home.info_file, json.dumps(info).encode())
    log.info(
        "daemon %s up: api 127.0.0.1:%d, listen port %d, restored %s",
        __version__,
        port,
        node.listen_port,
        restored or "nothing",
    )
    last_resume = last_sample = time.monotonic()
    try:
        while not stop.is_set():
            tick.clear()
            node.poll()
            follower.tick()
            now = time.monotonic()
            if now - last_resume > RESUME_EVERY:
                node.save_resume_data()
                last_resume = now
            if now - last_sample >= 1.0:
                dashboard.sample()  # the page's rate charts
                last_sample = now
            try:
                await asyncio.wait_for(tick.wait(), POLL_EVERY)
            except TimeoutError:
                pass
            await asyncio.sleep(MIN_POLL_GAP)
    finally:
        log.info("daemon stopping: saving resume data")
        home.info_file.unlink(missing_ok=True)
        dashboard.close()
        follower.close()
        await runner.cleanup()
        loop.remove_reader(wake_r)
        node.close()
        os.close(wake_r)
        os.close(wake_w)
        log.info("daemon stopped")
