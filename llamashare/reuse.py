"""A release's files that the store already holds: placed from there, not downloaded.

Every release in the store pins each of its files by size and BLAKE3 in its manifest, so the
store's manifests are its content index. Releases of one family share most of their bytes (a v1.1
that only fixes a tokenizer file, a fine-tune shipped with its base's tokenizer, the same shards
under two names): before a download starts, each selected file that another release of the store
has is found by its BLAKE3, checked against it (a file changed behind the store's back is never
passed on), and placed at its path; the node then marks its pieces as had, downloads only the
rest, and seeds every file. Files in the user's Hugging Face cache count too: an LFS blob is
named by its SHA-256, which the manifest pins beside the BLAKE3.

Inside the store a file is placed as a **hard link** (to another stored release's file, or to a
Hugging Face cache blob, which huggingface_hub never edits in place): one copy on disk however many releases use it,
freed only when the last of them is removed (the filesystem counts the links; ``rm`` unlinks one
name, ``list`` and ``info`` read the count). Into or out of a user's own folder (``fetch --dir``),
where a file may be edited in place, it is **copied** instead (a reflink where the filesystem can),
so no edit there reaches another release. Either way a file appears at its path in one step:
``link(2)`` never replaces a path, so a crash leaves the old tree or the new one, never a part.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from llamashare.errors import UnsafePathError
from llamashare.fsio import link_boundary, safe_join
from llamashare.manifests.hashing import Hasher
from llamashare.manifests.hf_cache import hub_cache
from llamashare.manifests.manifest import FileEntry, Manifest
from llamashare.manifests.verify import holds_entry
from llamashare.store import Store

#: Linux's FICLONE ioctl (``_IOW(0x94, 9, int)``): the destination shares the source's blocks,
#: copy-on-write (btrfs, XFS, bcachefs); other filesystems refuse it and get a plain copy.
FICLONE = 0x40049409
COPY_SUFFIX = ".llamashare-copy"


@dataclass(frozen=True)
class Holder:
    """A file of another release in the store that should hold a wanted file's bytes."""

    release: str
    path: Path
    #: Inside the store, or a blob of a Hugging Face cache (never edited in place: huggingface_hub
    #: writes a new blob and renames it), so a hard link is safe; not a user's --dir folder.
    linkable: bool


@dataclass(frozen=True)
class Reused:
    """A file placed from the store instead of downloaded."""

    path: str  # in the new release
    size: int
    source: str  # the release it came from
    linked: bool  # a hard link (one copy on disk), else a copy


def index(store: Store, exclude: str) -> dict[str, list[Holder]]:
    """BLAKE3 → every stored release's file said to hold those bytes (from their manifests)."""
    out: dict[str, list[Holder]] = {}
    for entry in store.entries():
        if entry.key == exclude:
            continue
        try:
            manifest, source = entry.manifest(), entry.source_dir
            linkable = entry.owns_source or link_boundary(source.resolve()) != source.resolve()
        except Exception:  # one unreadable release must not stop another's fetch
            continue
        for f in manifest.files:
            try:
                out.setdefault(f.blake3, []).append(Holder(entry.key, safe_join(source, f.path), linkable))
            except UnsafePathError:
                continue
    return out


def reuse_stored_files(store: Store, manifest: Manifest, target: Path, include: tuple[str, ...] = ()) -> list[Reused]:
    """Place into ``target`` each selected file of ``manifest`` that is missing there and that
    another release of ``store`` holds, checked by size and BLAKE3 first. Paths that exist are
    left alone (the node checks them), and so is a file no release holds intact."""
    wanted = [f for f in manifest.files if f.size and f.selected_by(include)]
    if not wanted:
        return []
    own = store.holding(manifest)
    holders = index(store, exclude=own.key if own else "")
    for f in wanted:  # then the Hugging Face cache: an LFS file's blob is named by its SHA-256
        holders.setdefault(f.blake3, []).extend(
            Holder("the Hugging Face cache", blob, linkable=True) for blob in hf_blobs(f.sha256)
        )
    target_owned = own is not None and target.resolve() == (own.root / "source").resolve()
    placed: list[Reused] = []
    with Hasher() as hasher:
        for f in wanted:
            try:
                dst = safe_join(target, f.path)
            except UnsafePathError:
                continue
            if os.path.lexists(dst):
                continue
            for holder in holders.get(f.blake3, ()):
                linked = _place(hasher, holder.path, f, dst, link=target_owned and holder.linkable)
                if linked is not None:
                    placed.append(Reused(f.path, f.size, holder.release, linked))
                    break
    return placed


def hf_blobs(sha256: str) -> list[Path]:
    """Blobs of any model repo in the Hugging Face cache (``hf_cache.hub_cache``) named ``sha256``."""
    try:
        return sorted(p for p in hub_cache().glob(f"models--*/blobs/{sha256}") if p.is_file())
    except OSError:
        return []


def _place(hasher: Hasher, src: Path, f: FileEntry, dst: Path, link: bool) -> bool | None:
    """Put ``src`` at ``dst`` if it is ``f``'s file: True linked, False copied, None not done."""
    try:
        if src.is_symlink():  # a Hugging Face snapshot's link (safe_join kept it inside its cache)
            src = src.resolve()
        if not src.is_file() or src.stat().st_size != f.size:
            return None
        dst.parent.mkdir(parents=True, exist_ok=True)
        if link:
            if not holds_entry(hasher, src, f):
                return None
            try:
                os.link(src, dst)  # never replaces: a path that appeared meanwhile stays
                return True
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                    raise
        return False if _copy(hasher, src, f, dst) else None
    except OSError:
        return None  # unreadable holder, full disk, …: the node downloads the file instead


def _copy(hasher: Hasher, src: Path, f: FileEntry, dst: Path) -> bool:
    """Copy ``src`` to a temporary name beside ``dst``, check the copy, then link it into place."""
    tmp = dst.with_name(f".{dst.name}{COPY_SUFFIX}")  # ours by name: a crash's leftover is replaced
    tmp.unlink(missing_ok=True)
    try:
        with open(src, "rb") as fin, open(tmp, "xb") as fout:
            try:
                fcntl.ioctl(fout.fileno(), FICLONE, fin.fileno())
            except OSError:
                shutil.copyfileobj(fin, fout, 16 << 20)
            fout.flush()
            os.fsync(fout.fileno())
        if not holds_entry(hasher, tmp, f):
            return False
        os.link(tmp, dst)
        return True
    finally:
        tmp.unlink(missing_ok=True)
