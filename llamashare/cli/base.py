"""The root of the ``llamashare`` command line: the group, its one error table, shared options.

Known errors become one line on stderr and an exit code (2 = bad input, 1 = failure) through
the single table in :func:`main`; a traceback means a bug.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING

import click
import platformdirs

from llamashare import __version__
from llamashare.errors import EXIT_FAILURE, LlamashareError
from llamashare.text import printable
from llamashare.ui import err, human_size

if TYPE_CHECKING:
    from llamashare.manifests.manifest import Manifest

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def default_key_path() -> Path:
    return Path(platformdirs.user_config_dir("llamashare")) / "publisher.key"


class Commands(click.Group):
    """The one error table: known errors become one line and an exit code, never a traceback."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except LlamashareError as exc:
            err.print(f"error: {printable(exc, multiline=False)}", markup=False)
            ctx.exit(exc.exit_code)
        except OSError as exc:  # disk full, permission denied... outside any known check
            where = f" {exc.filename}:" if exc.filename else ""
            err.print(printable(f"error:{where} {exc.strerror or exc}", multiline=False), markup=False)
            ctx.exit(EXIT_FAILURE)
        except KeyboardInterrupt:
            err.print("interrupted")
            ctx.exit(130)


@click.group(cls=Commands, context_settings=CONTEXT)
@click.version_option(__version__, "-V", "--version", prog_name="llamashare")
@click.option(
    "--home",
    type=click.Path(path_type=Path, file_okay=False),
    envvar="LLAMASHARE_HOME",
    help="This node's folder: daemon, state, config, logs [env LLAMASHARE_HOME; default: user data dir].",
)
@click.pass_context
def cli(ctx: click.Context, home: Path | None) -> None:
    """Share LLM weights peer to peer, verify every byte, and make them runnable.

    \b
    Publish:   llamashare create ./my-model --license Apache-2.0 -o my-model.toml
    Seed it:   llamashare seed my-model.toml --dir ./my-model
    Fetch it:  llamashare fetch my-model.toml --dir ./models/my-model
    Check:     llamashare verify my-model.toml --dir ./my-model
    Try it:    llamashare demo
    """
    from llamashare.daemon.home import Home, default_home

    ctx.obj = Home((home or default_home()).absolute())


def network_options(f):  # type: ignore[no-untyped-def]
    """--listen-port / --api-port / --local-only / --dht-bootstrap, for commands that may start
    the daemon; the command receives them as one ``start: StartOptions``."""

    @functools.wraps(f)
    def command(*args, listen_port, api_port, local_only, dht_bootstrap, **kwargs):  # type: ignore[no-untyped-def]
        from llamashare.daemon.client import StartOptions

        start = StartOptions(listen_port, api_port, local_only, dht_bootstrap)
        return f(*args, start=start, **kwargs)

    command = click.option(
        "--dht-bootstrap",
        multiple=True,
        metavar="HOST:PORT",
        callback=dht_nodes,
        help="Join the DHT through this node (repeat for more); with --local-only the DHT runs "
        "with these alone [default: config dht_bootstrap].",
    )(command)
    command = click.option(
        "--local-only",
        is_flag=True,
        help="No DHT, local discovery, UPnP or NAT-PMP; listen on 127.0.0.1 (tests, LAN demos).",
    )(command)
    command = click.option(
        "--api-port",
        type=click.IntRange(0, 65535),
        help="Daemon API port on 127.0.0.1 if it starts now [default: config, else any free].",
    )(command)
    command = click.option(
        "--listen-port",
        type=click.IntRange(0, 65535),
        help="BitTorrent port if the daemon starts now [default: config, else 6881].",
    )(command)
    return command


def dht_nodes(_ctx: click.Context, _param: click.Parameter, value: tuple[str, ...]) -> tuple[str, ...]:
    """``--dht-bootstrap``: each must be HOST:PORT, refused here (exit 2)."""
    from llamashare.p2p.address import parse_dht_node

    try:
        return tuple(parse_dht_node(text) for text in value)
    except LlamashareError as exc:
        raise click.BadParameter(str(exc)) from None


def load_and_show(manifest_path: Path) -> Manifest:
    from llamashare.manifests.manifest import load_manifest

    m = load_manifest(manifest_path)
    err.print(f"{m.name} {m.version}: {len(m.files)} files, {human_size(m.total_size)}, license {m.license_line}")
    return m


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="llamashare")


def peer_addresses(_ctx: click.Context, _param: click.Parameter, value: tuple[str, ...]) -> tuple[str, ...]:
    """``--peer``: each must be IP:PORT, refused here (exit 2) before the daemon sees it."""
    from llamashare.p2p.address import parse_peer

    for text in value:
        try:
            parse_peer(text)
        except LlamashareError as exc:
            raise click.BadParameter(str(exc)) from None
    return value


#: ``--peer``, for commands that hand a release to the daemon.
PEER_OPTION = click.option(
    "--peer",
    "peers",
    multiple=True,
    metavar="IP:PORT",
    callback=peer_addresses,
    help="Connect to this peer too; repeat for more.",
)
