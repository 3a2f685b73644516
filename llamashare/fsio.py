"""File-system edges shared by every stage: atomic writes and paths that cannot escape a folder."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from llamashare.errors import OutputExistsError, UnsafePathError


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


def safe_join(root: Path, relpath: str) -> Path:
    """``root / relpath``, refusing anything that would resolve outside ``root``.

    ``relpath`` comes from a manifest that was already validated (relative, no ``..``), but a
    symlink planted inside ``root`` could still lead out of it; resolve and check.
    """
    base = root.resolve()
    target = (base / relpath).resolve()
    if not target.is_relative_to(base):
        raise UnsafePathError(relpath, f"resolves to {target}, outside {base} (a symlink?)")
    return base / relpath
