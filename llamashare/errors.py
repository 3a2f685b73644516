"""Every error llamashare raises on purpose, in one place.

Each class subclasses both :class:`LlamashareError` (so the CLI can turn any of them into one
line and an exit code) and the matching built-in (so library callers can catch ``OSError`` or
``ValueError`` as usual). Fields carry the facts a user needs to act on the error.
"""

from __future__ import annotations

from pathlib import Path

#: Exit code for bad input (malformed manifest, bad argument): the user must change something.
EXIT_BAD_INPUT = 2
#: Exit code for a failure while doing the work (hash mismatch, missing file, I/O error).
EXIT_FAILURE = 1


class LlamashareError(Exception):
    """Base of every deliberate llamashare error; ``str()`` is the one-line message."""

    exit_code = EXIT_FAILURE


class ManifestError(LlamashareError, ValueError):
    """A manifest is malformed or hostile; ``field`` names where (e.g. ``files[3].path``)."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, field: str, problem: str, source: str | Path | None = None) -> None:
        self.field = field
        self.problem = problem
        self.source = str(source) if source is not None else None
        where = f"{self.source}: " if self.source else ""
        super().__init__(f"{where}manifest field '{field}': {problem}")


class TorrentError(LlamashareError, ValueError):
    """Torrent metadata is malformed or does not match what the manifest declares."""

    exit_code = EXIT_BAD_INPUT


class SignatureError(LlamashareError, ValueError):
    """A manifest's signature is missing, malformed, made by another key, or does not verify."""

    exit_code = EXIT_BAD_INPUT


class KeyFileError(LlamashareError, ValueError):
    """A key file or key string cannot be read as an ed25519 key."""

    exit_code = EXIT_BAD_INPUT


class UnsafePathError(LlamashareError, ValueError):
    """A path would leave its target directory (absolute, ``..``, or through a symlink)."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"unsafe path {path!r}: {reason}")


class SourceDirError(LlamashareError, OSError):
    """The directory to publish cannot be used (missing, empty, unreadable, special files)."""

    exit_code = EXIT_BAD_INPUT


class OutputExistsError(LlamashareError, FileExistsError):
    """Refusing to overwrite an existing file the user did not ask us to replace."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, path: Path) -> None:
        self.path = path
        super().__init__(f"{path} already exists (use --force to replace it)")


class VerificationError(LlamashareError):
    """One or more files do not match the manifest; ``report`` holds the per-file results."""

    def __init__(self, message: str, report: object = None) -> None:
        self.report = report
        super().__init__(message)


class CheckpointError(LlamashareError, ValueError):
    """A model checkpoint cannot be read or converted: unknown layout or architecture, truncated
    or malformed file, shape or dtype that does not fit. ``path`` names the file when known."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        self.path = str(path) if path is not None else None
        super().__init__(f"{path}: {message}" if path is not None else message)


class UnsafePickleError(CheckpointError):
    """A pickle in a .pth checkpoint asks for a global outside the tensor-checkpoint allow list
    (e.g. ``os.system``): refused before anything runs; ``name`` is the global it asked for."""

    def __init__(self, name: str, path: str | Path | None = None) -> None:
        self.name = name
        super().__init__(
            f"refusing to load: its pickle asks for {name!r}, which a tensor checkpoint never needs "
            "(it could run code); nothing was executed",
            path,
        )


class QuantizeError(LlamashareError, ValueError):
    """A tensor or GGUF file cannot be quantized as asked: unknown type, non-finite weights, an
    input that is already quantized, a row that is not a whole number of blocks."""

    exit_code = EXIT_BAD_INPUT


class InsufficientSpaceError(LlamashareError, OSError):
    """Not enough free disk space for an output, found before writing any of it."""

    def __init__(self, folder: Path, need: int, free: int) -> None:
        self.folder, self.need, self.free = folder, need, free
        super().__init__(
            f"{folder}: not enough free space: the output needs {need / 2**20:.1f} MiB, {free / 2**20:.1f} MiB are free"
        )


class OutputWriteError(LlamashareError, OSError):
    """Writing an output failed halfway (disk full, permission); nothing was left under its name."""

    def __init__(self, out: Path, why: str) -> None:
        self.out = out
        super().__init__(f"cannot write {out}: {why}; nothing was left under that name")


class InferenceError(LlamashareError, ValueError):
    """A model cannot be run as asked: an architecture or tensor type llamashare does not run, a
    truncated file, a prompt longer than the context."""

    exit_code = EXIT_BAD_INPUT


class ConfigError(LlamashareError, ValueError):
    """The home's config.toml (or a flag standing in for it) is malformed: names the key."""

    exit_code = EXIT_BAD_INPUT


class ReleaseError(LlamashareError):
    """The swarm engine cannot add or continue a release (bad peer address, unknown name, storage error)."""


class ReleaseConflict(ReleaseError):
    """The release clashes with what is already there: same name in the node, or a file in the way."""


class StatusFormatError(LlamashareError, ValueError):
    """The daemon sent a status this version cannot read (another llamashare version?)."""


class DaemonError(LlamashareError):
    """The daemon is not running, did not start, or refused a request (message says why)."""


class DaemonRunningError(LlamashareError):
    """Another daemon already owns this home."""


class StoreError(LlamashareError):
    """The store cannot do what was asked: unknown release, a different release under the same
    name, another command working on it, a folder that is not the store's."""

    exit_code = EXIT_BAD_INPUT


class FetchError(LlamashareError):
    """The release could not be fetched (error state, timeout)."""


class LicenseError(LlamashareError):
    """A release's license is not one the user's [policy] allows, or its custom terms were not
    accepted; raised before anything is downloaded."""

    exit_code = EXIT_BAD_INPUT
