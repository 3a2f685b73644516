"""Publishing: ``create``, ``verify``, ``keygen``, ``sign`` and ``seed``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from llamashare.cli.base import CONTEXT, PEER_OPTION, cli, default_key_path, load_and_show, network_options
from llamashare.errors import EXIT_FAILURE, ManifestError
from llamashare.ui import byte_progress, err, human_size

if TYPE_CHECKING:
    from llamashare.daemon.client import StartOptions
    from llamashare.daemon.home import Home


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

    Top-level .git/ and .cache/ folders are skipped; symlinks are refused, except in a Hugging
    Face cache snapshot (models--ORG--NAME/snapshots/REV), whose links into its blobs/ are
    followed, each blob checked against its name (SHA-256 or git SHA-1). The manifest then
    records the repo and commit, and `seed` seeds the snapshot in place.

    \b
    Examples:
      llamashare create ./llama-7b --license llama2 --version 2023-02 \\
          --tracker udp://tracker.example.org:6969/announce -o llama-7b.toml
      llamashare create ~/.cache/huggingface/hub/models--HuggingFaceTB--SmolLM2-135M/snapshots/* \\
          --license Apache-2.0
    """
    from llamashare.manifests.create import ReleaseInfo, base_ref, create_release, list_release_files, write_release
    from llamashare.manifests.hf_cache import snapshot_at
    from llamashare.manifests.manifest import check_name

    snapshot = snapshot_at(directory)
    name = name or (snapshot.repo_id.rpartition("/")[2] if snapshot else directory.resolve().name)
    output = output or Path(f"{name}.toml")
    if base_name and base_manifest is None:
        raise click.UsageError("--base-name needs --base-manifest (the base release's manifest)")
    base = base_ref(base_manifest, base_name) if base_manifest is not None else None
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
    if manifest.origin is not None:
        o = manifest.origin
        click.echo(f"from Hugging Face {o.huggingface} at {o.revision}" + (f" ({o.ref})" if o.ref else ""))
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
    click.echo(f"{good} of {len(reports)} files ok ({m.name} {m.version}, license {m.license_line})")
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
    assert signed.signature is not None  # sign_manifest always attaches one
    click.echo(f"signed {output or manifest} as ed25519:{signed.signature.public_key}")


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
@PEER_OPTION
@click.option(
    "--initial-seeding",
    is_flag=True,
    help="BEP 16 super-seeding until every piece has been seen in the swarm: each piece leaves your uplink "
    "about once and the swarm copies it on. For a slow uplink and many downloaders; a lone downloader "
    "gets it far slower (bench/swarm_scale.py).",
)
@network_options
@click.pass_obj
def seed(
    home: Home,
    manifest: Path,
    directory: Path,
    peers: tuple[str, ...],
    initial_seeding: bool,
    start: StartOptions,
) -> None:
    """Seed a release you have (as its publisher): verify every file (BLAKE3 and SHA-256), then
    hand it to the background daemon, which seeds it until you `llamashare stop` it.

    \b
    Example:
      llamashare seed llama-7b.toml --dir ./llama-7b
    """
    from llamashare.daemon.submit import FetchOptions
    from llamashare.daemon.submit import seed as do_seed

    m = load_and_show(manifest)
    status = do_seed(
        home,
        m,
        FetchOptions(
            directory=directory,
            peers=peers,
            start=start,
            initial_seeding=initial_seeding,
        ),
    )
    click.echo(f"{m.name}: {status.selected} files verified; seeding from {directory} until stopped")


@cli.command(context_settings=CONTEXT)
@click.argument("manifest", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option(
    "--key",
    "key_file",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="Your private key file [default: publisher.key in the user config folder].",
)
@network_options
@click.pass_obj
def publish(home: Home, manifest: Path, key_file: Path | None, start: StartOptions) -> None:
    """Publish MANIFEST under your key in the DHT, so that `llamashare fetch ed25519:<key>/<name>`
    finds it with no web page, tracker or file in hand. The manifest must be signed by that key
    (an unsigned one is signed now, in place). The daemon seeds the manifest itself as a small
    torrent and keeps the DHT item alive while it runs; publish a new version the same way.
    Seed the release's files too (`llamashare seed`), or nobody can download them.

    \b
    Example:
      llamashare seed llama-7b.toml --dir ./llama-7b && llamashare publish llama-7b.toml --key ~/keys/me.key
    """
    from llamashare.daemon.submit import publish as do_publish
    from llamashare.fsio import atomic_write
    from llamashare.manifests.manifest import dumps, load_manifest
    from llamashare.manifests.signing import load_private_key, public_key_text, sign_manifest

    key_file = key_file or default_key_path()
    key = load_private_key(key_file)
    m = load_manifest(manifest)
    if m.torrent.data is None or m.torrent.file is not None:
        raise ManifestError("torrent", "must be embedded to publish in the DHT (create it without --no-embed)")
    if m.signature is None:
        m = sign_manifest(m, key)
        atomic_write(manifest, dumps(m).encode("utf-8"))
        click.echo(f"signed {manifest} as {public_key_text(key.public_key())}")
    address = do_publish(home, m, key_file, start)
    click.echo(f"published {m.name} {m.version}: {address}")
    click.echo(f"fetch it with: llamashare fetch {address}")
