"""Helpers shared by tests: reference torrents from libtorrent itself, release building."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any, Protocol

import libtorrent as lt

from llamashare.daemon.home import Home
from llamashare.manifests.create import ReleaseInfo, create_release
from llamashare.manifests.manifest import Manifest


class Homes(Protocol):
    """The ``homes`` fixture (conftest.py): a node home named ``name``, with ``config`` as its config.toml."""

    def __call__(self, name: str, config: str = "") -> Home: ...


def libtorrent_reference(folder: Path, piece_size: int) -> bytes:
    """libtorrent's own hybrid torrent of ``folder`` with no creation date or creator."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        fs = lt.file_storage()
        lt.add_files(fs, str(folder))
        ct = lt.create_torrent(fs, piece_size)
        lt.set_piece_hashes(ct, str(folder.parent))
    entry = ct.generate()
    entry.pop(b"creation date", None)
    entry.pop(b"created by", None)
    return lt.bencode(entry)


def make_release(folder: Path, piece_size: int | None = None, **info: Any) -> tuple[Manifest, bytes]:
    """``info``: ReleaseInfo's fields, over a name (the folder's) and a license."""
    fields: dict[str, Any] = {"name": folder.name, "license": "Apache-2.0"} | info
    return create_release(folder, ReleaseInfo(**fields), piece_size)


def cli(home: Home, *args: str, timeout: float = 120, **popen: Any) -> subprocess.CompletedProcess[str]:
    """The real CLI in its own process (``popen``: e.g. a ``preexec_fn`` setting limits)."""
    return subprocess.run(
        [sys.executable, "-m", "llamashare", "--home", str(home.root), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        **popen,
    )
