"""``llamashare verify``: re-hash a release folder and say, per file, whether it is the real one.

Sizes are checked first from ``stat`` (instant), then every file of the right size is hashed
once for both BLAKE3 and SHA-256, on separate threads. A file passes only if both match.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path

from llamashare.errors import UnsafePathError
from llamashare.fsio import safe_join
from llamashare.manifests.hashing import Hasher, Progress
from llamashare.manifests.manifest import FileEntry, Manifest


class FileState(enum.Enum):
    OK = "ok"
    MISSING = "missing"
    WRONG_SIZE = "wrong size"
    WRONG_HASH = "wrong hash"
    UNREADABLE = "unreadable"
    UNSAFE = "unsafe path"


@dataclass(frozen=True)
class FileReport:
    entry: FileEntry
    state: FileState
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.state is FileState.OK


def check_file(hasher: Hasher, root: Path, entry: FileEntry, progress: Progress | None = None) -> FileReport:
    """Verify one manifest entry under ``root``; never raises for a bad file, reports it."""
    try:
        path = safe_join(root, entry.path)
    except UnsafePathError as exc:
        return FileReport(entry, FileState.UNSAFE, exc.reason)
    try:
        st = path.stat()
    except FileNotFoundError:
        return FileReport(entry, FileState.MISSING)
    except OSError as exc:
        return FileReport(entry, FileState.UNREADABLE, exc.strerror or str(exc))
    if not path.is_file():
        return FileReport(entry, FileState.WRONG_SIZE, "not a regular file")
    if st.st_size != entry.size:
        return FileReport(entry, FileState.WRONG_SIZE, f"{st.st_size} bytes, expected {entry.size}")
    try:
        digest = hasher.hash_file(path, progress=progress)
    except OSError as exc:
        return FileReport(entry, FileState.UNREADABLE, exc.strerror or str(exc))
    if digest.size != entry.size:
        return FileReport(entry, FileState.WRONG_SIZE, f"changed to {digest.size} bytes while reading")
    why = entry.mismatch(digest.size, digest.blake3, digest.sha256)
    return FileReport(entry, FileState.WRONG_HASH, why) if why else FileReport(entry, FileState.OK)


def holds_entry(hasher: Hasher, path: Path, entry: FileEntry) -> bool:
    """Whether ``path`` (a link is followed) is a regular file with ``entry``'s size and BLAKE3:
    the quick "is this still that file" check of fetch, the store and rm; never raises for I/O."""
    try:
        if not path.is_file() or path.stat().st_size != entry.size:
            return False
        digest = hasher.hash_file(path, sha256=False)
    except OSError:
        return False
    return entry.mismatch(digest.size, digest.blake3) is None


def verify_release(manifest: Manifest, root: Path, progress: Progress | None = None) -> list[FileReport]:
    """One report per manifest file, in manifest order."""
    with Hasher() as hasher:
        return [check_file(hasher, root, entry, progress) for entry in manifest.files]


def extra_files(manifest: Manifest, root: Path) -> list[str]:
    """Files under ``root`` the manifest does not list (worth a note, not a failure)."""
    if not root.is_dir():
        return []
    known = {f.path for f in manifest.files}
    return sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and p.relative_to(root).as_posix() not in known
    )
