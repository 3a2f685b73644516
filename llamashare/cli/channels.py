"""Releases without a host: ``follow``/``unfollow`` a publisher's channel, ``discover`` the LAN."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

import click

from llamashare.cli.base import CONTEXT, cli, network_options
from llamashare.cli.fetching import RESOLVED, fetch
from llamashare.ui import human_size

if TYPE_CHECKING:
    from llamashare.daemon.client import StartOptions
    from llamashare.daemon.home import Home
    from llamashare.p2p.lan import Offer


@cli.command(context_settings=CONTEXT)
@click.argument("address", required=False)
@click.option("--quant", metavar="TYPE", help="Quantization to build for each version (as for fetch).")
@click.option("--no-convert", is_flag=True, help="Only download and verify each version (no GGUF).")
@click.option("--accept-license", is_flag=True, help="Accept the first version's custom license terms (as for fetch).")
@click.option("--ratio", type=click.FloatRange(0, 1e9), help="Seed each version until this ratio [default: config].")
@click.option("--seed-time", metavar="DURATION", help="Or until seeded this long (90s, 30m, 2h, 1d).")
@click.option("--include", multiple=True, metavar="GLOB", help="Only files matching; repeat for more.")
@click.option(
    "--timeout", type=click.FloatRange(0), metavar="SECONDS", help="Stop waiting for the first version after this long."
)
@network_options
@click.option("-q", "--quiet", is_flag=True, help="No live progress bars.")
@click.pass_context
def follow(
    ctx: click.Context,
    address: str | None,
    quant: str | None,
    no_convert: bool,
    accept_license: bool,
    ratio: float | None,
    seed_time: str | None,
    include: tuple[str, ...],
    timeout: float | None,
    start: StartOptions,
    quiet: bool,
) -> None:
    """Fetch the release a publisher's ADDRESS names now (as `fetch ADDRESS` does), then let the
    daemon check it every `follow_every` (config; default 10 minutes) and fetch each new version
    by itself: same checks, same steps, a log in the home's logs/. Every version is a release of
    its own (NAME, then NAME@VERSION) and keeps seeding to its own target; `run NAME` takes the
    newest. Without ADDRESS: list what this node follows.

    \b
    Examples:
      llamashare follow ed25519:3b6a27bc…/llama-7b --quant Q4_K_M
      llamashare follow            # what is followed, the version last fetched, errors
      llamashare unfollow ed25519:3b6a27bc…/llama-7b
    """
    from llamashare.daemon.client import running_client
    from llamashare.daemon.home import parse_duration
    from llamashare.errors import DaemonError
    from llamashare.manifests.channel import parse_address

    obj: Home = ctx.obj
    if address is None:
        _list_follows(obj)
        return
    addr = parse_address(address)
    ctx.invoke(
        fetch,
        manifest=Path(str(addr)),
        quant=quant,
        no_convert=no_convert,
        accept_license=accept_license,
        ratio=ratio,
        seed_time=seed_time,
        include=include,
        timeout=timeout,
        listen_port=start.listen_port,
        api_port=start.api_port,
        local_only=start.local_only,
        dht_bootstrap=start.dht_bootstrap,
        quiet=quiet,
    )
    sha256, version = ctx.meta[RESOLVED]
    client = running_client(obj)
    if client is None:
        raise DaemonError("the daemon stopped before the follow could be recorded; run follow again")
    body = {
        "address": str(addr),
        "manifest_sha256": sha256,
        "version": version,
        "quant": quant,
        "convert": not no_convert,
        "ratio": ratio,
        "seed_time": parse_duration(seed_time) if seed_time else None,
        "include": list(include),
    }
    client.call("POST", "/follows", body)
    every = obj.config().follow_every
    click.echo(f"following {addr}: checked every {every:g}s, each new version fetched (llamashare follow lists it)")


def _list_follows(home: Home) -> None:
    from llamashare.daemon.client import running_client
    from llamashare.text import printable

    client = running_client(home)
    follows = client.call("GET", "/follows")["follows"] if client is not None else []
    if client is None:
        click.echo(f"no daemon running for {home.root}: nothing is followed now (llamashare daemon start)")
        return
    if not follows:
        click.echo("this node follows no channel (llamashare follow ed25519:<key>/<name>)")
        return
    for f in follows:
        state = f"fetching {f['fetching']}" if f["fetching"] else f"has {f['version'] or 'nothing yet'}"
        problem = f"; last check: {printable(f['error'], multiline=False)}" if f["error"] else ""
        click.echo(f"{f['address']}  {state}{problem}")


@cli.command(context_settings=CONTEXT)
@click.argument("address")
@click.pass_obj
def unfollow(home: Home, address: str) -> None:
    """Stop following ADDRESS; the versions already fetched stay, seeding to their own targets.

    \b
    Example:
      llamashare unfollow ed25519:3b6a27bc…/llama-7b
    """
    from llamashare.daemon.client import DaemonClient
    from llamashare.manifests.channel import parse_address

    addr = parse_address(address)
    DaemonClient(home).call("DELETE", f"/follows?address={quote(str(addr), safe='')}")
    click.echo(f"no longer following {addr}")


@cli.command(context_settings=CONTEXT)
@click.option(
    "--wait", type=click.FloatRange(0.1, 60), default=2.0, show_default=True, help="Seconds to listen for offers."
)
@network_options
@click.pass_obj
def discover(home: Home, wait: float, start: StartOptions) -> None:
    """List the releases that llamashare daemons on the local network offer: each daemon offers
    every release it seeds whole on LAN multicast (as BEP 14 local service discovery announces
    torrents) and answers this search at once. `fetch NAME --lan` then takes one from them.

    \b
    Example:
      llamashare discover && llamashare fetch llama-7b --lan
    """
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from llamashare.daemon.submit import lan_offers
    from llamashare.text import printable

    offers = lan_offers(home, start, wait)
    if not offers:
        click.echo(f"no daemon on the local network offered a release within {wait:g}s")
        return
    table = Table("name", "version", "size", "license", "signer", "seeders", "from", box=None)
    by_manifest: dict[str, list[Offer]] = {}
    for o in offers:
        by_manifest.setdefault(o.manifest_sha256, []).append(o)
    for group in sorted(by_manifest.values(), key=lambda g: (g[0].name, g[0].version)):
        o = group[0]
        cells = [
            o.name,
            printable(o.version, multiline=False),
            human_size(o.size),
            printable(o.license, multiline=False)[:30],
            f"ed25519:{o.signer[:16]}…" if o.signer else "unsigned",
            str(len({x.node for x in group})),
            ", ".join(sorted({f"{x.host}:{x.port}" for x in group})),
        ]
        table.add_row(*(Text(c) for c in cells))  # Text: what a peer sent is never markup
    Console(width=None if sys.stdout.isatty() else 200, markup=False, highlight=False).print(table)
