"""File-system edges shared by every stage: atomic writes and paths that cannot escape a folder."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from llamashare.errors import (
    InsufficientSpaceError,
    LlamashareError,
    OutputExistsError,
    OutputWriteError,
    UnsafePathError,
)

#: errno values that mean "no room": the message then says so and what to do.
SPACE_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}


def atomic_write(path: Path, data: bytes, mode: int = 0o644, force: bool = True) -> None:
    """Write ``data`` to a temp file beside ``path``, fsync, then rename over it.

    A crash leaves either the old file or the new one, never half of one. With ``force=False``
    an existing file is never replaced.
    """
    if not force and path.exists():
        raise OutputExistsError(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".incomplete", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        if force:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # fails if path appeared meanwhile; never clobbers
            os.unlink(tmp)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)


def check_free_space(folder: Path, need: int) -> None:
    """Refuse, before writing, an output that cannot fit in ``folder``'s file system."""
    free = shutil.disk_usage(folder).free
    if free < need:
        raise InsufficientSpaceError(folder, need, free)


@contextmanager
def partial_output(out: Path) -> Iterator[Path]:
    """Yield ``OUT.partial`` to write; when the block ends normally, fsync it and rename it to
    ``OUT``. On any error (disk full, a bad tensor, Ctrl-C) the partial file is removed, so no
    file that looks finished is ever left, and an existing ``OUT`` is untouched until the rename.

    A write that fails for room (ENOSPC, EFBIG, EDQUOT) or permission becomes one clear
    ``OutputWriteError`` naming ``OUT``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    try:
        yield partial
        fd = os.open(partial, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(partial, out)
    except BaseException as exc:
        partial.unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, LlamashareError):
            # NumPy's tofile reports a short write with no errno ("8192 requested and 4968
            # written"); on a regular file that is the disk or a limit running out, as ENOSPC is.
            short = exc.errno is None and "written" in str(exc)
            why = exc.strerror or (f"short write, {exc}" if short else str(exc))
            if exc.errno in SPACE_ERRNOS or short:
                why += " (disk full, quota or file size limit: free space and run it again)"
            raise OutputWriteError(out, why) from None
        raise
    _fsync_dir(out.parent)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def link_boundary(folder: Path) -> Path:
    """Where the symlinks of a release folder may lead: inside the folder itself, or, for a
    Hugging Face cache snapshot (``…/models--ORG--NAME/snapshots/REV``, whose files are links
    to ``../../blobs/…``), inside that repo's folder of the cache."""
    repo = folder.parent.parent
    if folder.parent.name == "snapshots" and repo.name.startswith("models--") and (repo / "blobs").is_dir():
        return repo
    return folder


def safe_join(root: Path, relpath: str) -> Path:
    """``root / relpath``, refusing anything that would resolve outside ``root`` (or, for a
    Hugging Face cache snapshot, outside its repo folder: see :func:`link_boundary`).

    ``relpath`` comes from a manifest that was already validated (relative, no ``..``), but a
    symlink planted inside ``root`` could still lead out of it; resolve and check.
    """
    base = root.resolve()
    bound = link_boundary(base)
    target = (base / relpath).resolve()
    if not target.is_relative_to(bound):
        raise UnsafePathError(relpath, f"resolves to {target}, outside {bound} (a symlink?)")
    return base / relpath
