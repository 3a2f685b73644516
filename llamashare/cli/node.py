"""This node's daemon: ``status``, ``dashboard``, ``stop`` and ``daemon start|stop|status|run``."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING
from urllib.parse import quote

import click

from llamashare.cli.base import CONTEXT, cli, network_options
from llamashare.errors import EXIT_FAILURE
from llamashare.text import printable
from llamashare.ui import err, human_size

if TYPE_CHECKING:
    from llamashare.daemon.client import StartOptions
    from llamashare.daemon.home import Home


@cli.command(context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def status(home: Home, as_json: bool) -> None:
    """Show every release of this node's daemon: state, progress, rates, ratio, peers.

    \b
    Example:
      llamashare status
    """
    import json

    from llamashare.daemon.client import DaemonClient

    data = DaemonClient(home).status()
    if as_json:
        click.echo(json.dumps({"node": data.node, "releases": [r.to_json() for r in data.releases]}, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("release", "state", "progress", "down", "up", "ratio", "target", "peers", box=None)
    for r in data.releases:
        target = "∞ (publisher)" if r.seed_forever else (f"{r.ratio_target:g}" if r.ratio_target is not None else "-")
        table.add_row(
            f"{r.name} {r.version}",
            r.state + (f": {printable(r.error, multiline=False)}" if r.error else ""),
            f"{100 * r.progress:.1f}% ({r.verified}/{r.selected} files)",
            f"{human_size(r.download_rate)}/s",
            f"{human_size(r.upload_rate)}/s",
            f"{r.ratio:.2f}",
            target,
            str(r.peers),
        )
    node = data.node
    Console(width=None if sys.stdout.isatty() else 200).print(table)
    click.echo(f"daemon pid {node['pid']}, listen port {node['listen_port']}, home {node['home']}")


@cli.command(context_settings=CONTEXT)
@click.option("--open", "open_browser", is_flag=True, help="Also open the link in the default web browser.")
@click.pass_obj
def dashboard(home: Home, open_browser: bool) -> None:
    """Print a one-time link to this node's web dashboard (starting the daemon if needed).

    The page lists every release in the store and the daemon, live: state, progress, rates,
    peers, ratio against its target, GGUF files; it can pause, resume, change targets, remove
    and add releases. The link works once, within five minutes, on this machine only
    (127.0.0.1); it leaves a session cookie in the browser that opened it.

    \b
    Example:
      llamashare dashboard --open
    """
    from llamashare.daemon.client import start_daemon

    url = start_daemon(home).call("POST", "/login-links")["url"]
    click.echo(url)
    if open_browser:
        import webbrowser

        if not webbrowser.open(url):
            err.print("no web browser found here: open the link above yourself", markup=False)


@cli.command(context_settings=CONTEXT)
@click.argument("name")
@click.pass_obj
def stop(home: Home, name: str) -> None:
    """Stop downloading/seeding release NAME in this node's daemon (its files stay).

    \b
    Example:
      llamashare stop llama-7b
    """
    from llamashare.daemon.client import DaemonClient

    DaemonClient(home).call("DELETE", f"/releases/{quote(name, safe='')}")
    click.echo(f"stopped {name}; its files are kept")


@cli.group(context_settings=CONTEXT)
def daemon() -> None:
    """The background daemon that downloads and seeds (one per --home).

    \b
    Example:
      llamashare --home /tmp/node2 daemon start --listen-port 6882
    """


@daemon.command("start", context_settings=CONTEXT)
@network_options
@click.pass_obj
def daemon_start(home: Home, start: StartOptions) -> None:
    """Start the daemon in the background (nothing happens if it already runs).

    \b
    Example:
      llamashare daemon start --listen-port 6881
    """
    from llamashare.daemon.client import start_daemon

    info = start_daemon(home, start).info
    click.echo(
        f"daemon running: pid {info['pid']}, API 127.0.0.1:{info['api_port']}, listen port {info['listen_port']}"
    )


@daemon.command("stop", context_settings=CONTEXT)
@click.pass_obj
def daemon_stop(home: Home) -> None:
    """Save resume data and stop the daemon (releases resume where they stood at the next start).

    \b
    Example:
      llamashare daemon stop
    """
    from llamashare.daemon.client import stop_daemon

    click.echo("daemon stopped" if stop_daemon(home) else "no daemon was running")


@daemon.command("status", context_settings=CONTEXT)
@click.pass_obj
def daemon_status(home: Home) -> None:
    """Say whether the daemon runs (exit 0) or not (exit 1).

    \b
    Example:
      llamashare daemon status || llamashare daemon start
    """
    from llamashare.daemon.client import running_client

    client = running_client(home)
    if client is None:
        click.echo(f"no daemon running for {home.root}")
        sys.exit(EXIT_FAILURE)
    info = client.info
    click.echo(
        f"daemon running: pid {info['pid']}, API 127.0.0.1:{info['api_port']}, listen port {info['listen_port']}, "
        f"{len(client.status().releases)} releases"
    )


@daemon.command("run", context_settings=CONTEXT)
@network_options
@click.pass_obj
def daemon_run(home: Home, start: StartOptions) -> None:
    """Run the daemon in the foreground (what `daemon start` runs in the background), e.g. under
    a service manager; it logs to daemon.log in the home and stops on SIGTERM.

    \b
    Example:
      llamashare --home /srv/llamashare daemon run --listen-port 6881
    """
    from llamashare.daemon.service import run_daemon

    run_daemon(home, start)
