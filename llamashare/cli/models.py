"""The model store: ``list``, ``info``, ``rm`` and ``export``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from llamashare.cli.base import CONTEXT, cli
from llamashare.text import printable
from llamashare.ui import human_size

if TYPE_CHECKING:
    from llamashare.daemon.home import Home
    from llamashare.p2p.status import ReleaseStatus


def _seeding_states(home: Home) -> dict[str, ReleaseStatus]:
    """The daemon's view of each release by name ({} when no daemon runs)."""
    from llamashare.daemon.client import running_client

    client = running_client(home)
    return {r.name: r for r in client.status().releases} if client else {}


def _seeding_text(r: ReleaseStatus | None) -> tuple[str, str]:
    if r is None:
        return "not in the daemon", "-"
    return r.state + (f": {printable(r.error, multiline=False)}" if r.error else ""), f"{r.ratio:.2f}"


@cli.command("list", context_settings=CONTEXT)
@click.pass_obj
def list_(home: Home) -> None:
    """List the releases in the model store: version, license, size on disk, bytes shared with
    other releases (files with the same BLAKE3 are kept once, as hard links), seeding state,
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
    table = Table("name", "version", "license", "on disk", "shared", "seeding", "ratio", "GGUF", box=None)
    for e in entries:
        m = e.manifest()
        state, ratio = _seeding_text(seeding.get(e.key))
        types = ", ".join(p.name.removeprefix(f"{e.name}.").removesuffix(".gguf") for p in e.ggufs().values()) or "-"
        shared = e.shared_bytes()
        table.add_row(
            m.name,
            m.version,
            m.license_line[:30],
            human_size(e.size_on_disk()),
            human_size(shared) if shared else "-",
            state,
            ratio,
            types,
        )
    Console(width=None if sys.stdout.isatty() else 200).print(table)
    click.echo(
        f"{len(entries)} releases, {human_size(store.disk_usage())} on disk (files shared between releases counted once)"
    )


@cli.command(context_settings=CONTEXT)
@click.argument("name")
@click.pass_obj
def info(home: Home, name: str) -> None:
    """Everything the store knows about release NAME: manifest, files, steps, GGUF files, seeding.

    \b
    Example:
      llamashare info smollm2-135m-instruct
    """
    from llamashare.store import Store

    store = Store(home.models_dir)
    e = store.get(name)
    m, rec = e.manifest(), e.record()
    click.echo(f"{m.name} {m.version} ({m.kind}{f', delta on {m.base.name}' if m.base else ''})")
    click.echo(f"license:   {m.license_line}")
    if m.base is not None:
        base_license = store.base_license(m) or "(not in the store)"
        click.echo(f"base:      {m.base.name}, license {base_license}, manifest {m.base.manifest_sha256}")
    if m.description:
        click.echo(f"about:     {m.description}")
    click.echo(
        f"manifest:  {e.manifest_path}"
        + (f" (signed by ed25519:{m.signature.public_key})" if m.signature else " (unsigned)")
    )
    shared = e.shared_bytes()
    click.echo(
        f"source:    {e.source_dir} ({len(m.files)} files, {human_size(m.total_size)}"
        + (f"; {human_size(shared)} shared with other releases, on disk once)" if shared else ")")
    )
    state, ratio = _seeding_text(_seeding_states(home).get(m.name))
    click.echo(f"seeding:   {state}, ratio {ratio}")
    for step_id, path in e.ggufs().items():
        r = e.step(step_id)
        took = f", {r.seconds:.1f} s" if r is not None else ""
        mark = "  (run NAME uses this)" if path.name == rec.get("default") else ""
        click.echo(f"built:     {path} ({human_size(path.stat().st_size)}, {step_id}{took}){mark}")
    if m.recommended_quant:
        click.echo(f"publisher recommends: {m.recommended_quant}")


@cli.command(context_settings=CONTEXT)
@click.argument("name")
@click.option("--keep-source", is_flag=True, help="Keep the fetched source files; remove the rest.")
@click.pass_obj
def rm(home: Home, name: str, keep_source: bool) -> None:
    """Remove release NAME from the store: stop seeding it first, then delete its GGUF files,
    records and (unless --keep-source) its source files.

    \b
    Example:
      llamashare rm llama-7b --keep-source
    """
    from llamashare.pipeline import remove_release

    r = remove_release(home, name, keep_source)
    if r.stopped_seeding:
        click.echo(f"stopped seeding {name}")
    shared = f", {human_size(r.still_shared)} of it still used by other releases" if r.still_shared else ""
    click.echo(
        f"removed {name} ({human_size(r.size_before)} before removal{shared})" + "".join(f"; kept {k}" for k in r.kept)
    )
    if r.foreign:
        click.echo(
            f"left {len(r.foreign)} file(s) llamashare did not write (or that no longer match the release), "
            f"e.g. {r.foreign[0]}"
        )


@cli.command(context_settings=CONTEXT)
@click.argument("model")
@click.option(
    "--to", "to", type=click.Path(path_type=Path, file_okay=False), required=True, help="Folder to export into."
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["ollama", "lmstudio"]),
    default="ollama",
    show_default=True,
    help="ollama: the GGUF and a Modelfile (stop tokens, license) beside it; lmstudio: LM Studio's "
    "models-folder layout, PUBLISHER/NAME-GGUF/FILE.gguf.",
)
@click.pass_obj
def export(home: Home, model: str, to: Path, fmt: str) -> None:
    """Lay out MODEL (a release in the store: the GGUF `run NAME` uses; or a GGUF path) for
    another runtime. The GGUF is hard-linked, not copied, when DIR is on the same filesystem;
    nothing already in DIR is overwritten.

    \b
    Examples:
      llamashare export smollm2-135m-instruct --to ./ollama-smollm2 && \\
          ollama create smollm2 -f ./ollama-smollm2/Modelfile
      llamashare export smollm2-135m-instruct --format lmstudio --to ~/.lmstudio/models
    """
    from llamashare.cli.generate import model_path
    from llamashare.export import export_gguf
    from llamashare.store import Store

    gguf = model_path(home, model)
    name, license_text, publisher = gguf.stem.split(".")[0], None, "llamashare"
    if gguf != Path(model):  # a release name
        m = Store(home.models_dir).get(model).manifest()
        name, license_text = m.name, m.license
        if m.origin is not None and "/" in m.origin.huggingface:
            publisher = m.origin.huggingface.split("/")[0]
    out = export_gguf(gguf, to, fmt, name, license_text, publisher)
    click.echo(f"wrote {out.gguf}" + (" (a hard link: no copy)" if out.linked else " (copied)"))
    if out.modelfile is not None:
        click.echo(f"wrote {out.modelfile} (stop: {', '.join(printable(s, multiline=False) for s in out.stops)})")
    for note in out.notes:
        click.echo(f"note: {note}", err=True)
    click.echo(f"load it with: {out.load}")
