"""``llamashare create``: turn a folder of shards into a manifest and its hybrid torrent.

Each file is read once; the same bytes feed BLAKE3, SHA-256 and the torrent's v1/v2 piece
hashes (see :mod:`llamashare.manifests.hashing`). Nothing here writes files: the caller decides
where the manifest and torrent go (see :func:`write_release`).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, replace
from pathlib import Path

from llamashare.errors import ManifestError, OutputExistsError, SourceDirError
from llamashare.fsio import atomic_write, link_boundary
from llamashare.manifests.hashing import Hasher, Progress
from llamashare.manifests.hf_cache import origin_of, snapshot_at
from llamashare.manifests.manifest import (
    BaseRef,
    FileEntry,
    Manifest,
    TorrentRef,
    check_relative_path,
    dumps,
    from_dict,
    load_manifest,
    manifest_id,
    to_dict,
)
from llamashare.manifests.torrent import (
    TorrentFile,
    build_torrent,
    canonical_order,
    default_piece_size,
    info_hash_v1,
    is_valid_piece_size,
    read_torrent,
    v1_companion,
)

#: Top-level folders that are tooling, not release content (git checkouts, huggingface_hub caches).
SKIPPED_DIRS = (".git", ".cache")


@dataclass(frozen=True)
class ReleaseInfo:
    """What the publisher says about the release; hashes and torrent are computed."""

    name: str
    license: str
    version: str = "1.0"
    description: str | None = None
    homepage: str | None = None
    trackers: tuple[tuple[str, ...], ...] = ()
    web_seeds: tuple[str, ...] = ()
    base: BaseRef | None = None
    recommended_quant: str | None = None


def list_release_files(root: Path, exclude: AbstractSet[Path] = frozenset()) -> list[tuple[str, int]]:
    """(relative POSIX path, size) of every regular file under ``root``, in torrent order.

    Symlinks and special files are refused rather than followed: a release must be exactly the
    bytes in the folder, and a link could pull in anything on the machine. The one exception is a
    Hugging Face cache snapshot, whose files are links into its repo's ``blobs/``: links to
    regular files inside that repo folder are followed (``fsio.link_boundary``), others refused.
    """
    if not root.is_dir():
        raise SourceDirError(f"{root} is not a directory")
    bound = link_boundary(root.resolve())
    followed = bound != root.resolve()
    excluded = {p.resolve() for p in exclude}
    found: dict[str, int] = {}
    for dirpath, dirnames, filenames in os.walk(root, onerror=_raise_walk_error):
        here = Path(dirpath)
        if here == root:
            dirnames[:] = [d for d in dirnames if d not in SKIPPED_DIRS]
        for d in dirnames:
            if (here / d).is_symlink():
                raise SourceDirError(f"{here / d} is a symlink; publish real files, not links")
        for name in filenames:
            path = here / name
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                if not followed or not path.resolve().is_relative_to(bound / "blobs"):
                    where = f"outside the cache's {bound / 'blobs'}" if followed else "publish real files, not links"
                    raise SourceDirError(f"{path} is a symlink; {where}")
                try:
                    st = path.stat()
                except OSError:
                    raise SourceDirError(f"{path} links to a missing blob (an interrupted download?)") from None
            if not stat.S_ISREG(st.st_mode):
                raise SourceDirError(f"{path} is not a regular file")
            if path.resolve() in excluded:
                continue
            rel = path.relative_to(root).as_posix()
            try:
                check_relative_path(rel, rel)
            except ManifestError as exc:
                raise SourceDirError(f"cannot publish {path}: {exc.problem}") from None
            found[rel] = st.st_size
    if not found:
        raise SourceDirError(f"{root} has no files to publish")
    return [(p, found[p]) for p in canonical_order(found)]


def _raise_walk_error(exc: OSError) -> None:
    raise SourceDirError(f"cannot read {exc.filename}: {exc.strerror}")


def create_release(
    root: Path,
    info: ReleaseInfo,
    piece_size: int | None = None,
    exclude: AbstractSet[Path] = frozenset(),
    progress: Progress | None = None,
    on_file: Callable[[str, int], None] | None = None,
    embed_torrent: bool = True,
    files: list[tuple[str, int]] | None = None,
    v1_twin: bool = False,
) -> tuple[Manifest, bytes]:
    """Hash ``root`` and return the validated manifest and the .torrent bytes.

    ``files`` is :func:`list_release_files`'s answer when the caller already has it. ``v1_twin``
    also pins the v1-only twin torrent (for v1-only clients such as aria2) in the manifest.
    """
    files = files if files is not None else list_release_files(root, exclude)
    total = sum(size for _, size in files)
    piece_size = piece_size or default_piece_size(total)
    if not is_valid_piece_size(piece_size):
        raise SourceDirError(f"--piece-size {piece_size} must be a power of two between 16 KiB and 64 MiB")
    entries: list[FileEntry] = []
    torrent_files: list[TorrentFile] = []
    with Hasher() as hasher:
        for rel, size in files:
            if on_file:
                on_file(rel, size)
            try:
                digest = hasher.hash_file(root / rel, piece_size, progress, pad_v1=len(files) > 1)
            except OSError as exc:
                raise SourceDirError(f"cannot read {root / rel}: {exc.strerror or exc}") from None
            entries.append(FileEntry(rel, digest.size, digest.blake3, digest.sha256))
            torrent_files.append(
                TorrentFile(tuple(rel.split("/")), digest.size, digest.v1_pieces, digest.v2_layer, digest.v2_root)
            )
    snapshot = snapshot_at(root)  # a Hugging Face cache snapshot: its blob names are checked too
    origin = origin_of(snapshot, tuple(entries)) if snapshot is not None else None
    torrent = build_torrent(info.name, piece_size, torrent_files, info.trackers, info.web_seeds)
    meta = read_torrent(torrent)
    ref = TorrentRef(
        info_hash_v1=meta.info_hash_v1,
        info_hash_v2=meta.info_hash_v2,
        piece_size=piece_size,
        data=torrent,
        v1_twin=info_hash_v1(v1_companion(torrent)) if v1_twin else None,
    )
    manifest = Manifest(
        name=info.name,
        version=info.version,
        kind="delta" if info.base else "full",
        license=info.license,
        description=info.description or f"{info.name} model weights",
        homepage=info.homepage,
        trackers=info.trackers,
        web_seeds=info.web_seeds,
        base=info.base,
        recommended_quant=info.recommended_quant,
        origin=origin,
        files=tuple(entries),
        torrent=ref,
    )
    # Round-trip through the parser: whatever create writes, fetch must accept.
    checked = from_dict(to_dict(manifest))
    if not embed_torrent:
        checked = replace(checked, torrent=replace(ref, data=None, file=f"{info.name}.torrent"))
    return checked, torrent


def write_release(manifest: Manifest, torrent: bytes, manifest_path: Path, force: bool = False) -> list[Path]:
    """Write the manifest, ``<name>.torrent`` and (if pinned) the v1 twin ``<name>.v1.torrent``
    beside it, atomically; return the torrent paths."""
    outputs = {manifest_path.with_name(manifest.torrent.file or f"{manifest.name}.torrent"): torrent}
    if manifest.torrent.v1_twin is not None:
        outputs[manifest_path.with_name(f"{manifest.name}.v1.torrent")] = v1_companion(torrent)
    if not force:
        for p in (manifest_path, *outputs):
            if p.exists():
                raise OutputExistsError(p)
    for path, data in outputs.items():
        atomic_write(path, data)
    atomic_write(manifest_path, dumps(manifest).encode("utf-8"))
    return list(outputs)


def base_ref(base_manifest: Path, name: str | None = None) -> BaseRef:
    """How a delta release pins its base: the base's name (``name`` overrides it) and the
    SHA-256 of the base's canonical manifest, so a fetcher can tell the exact base apart."""
    parent = load_manifest(base_manifest)
    return BaseRef(name or parent.name, manifest_id(parent))
