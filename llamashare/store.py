"""The local model store: one folder per release, holding what a user needs to see and run it.

::

    MODELS_DIR/KEY/   KEY = NAME, or NAME@VERSION for a further version of a name
        manifest.toml     the release as fetched (what was verified against)
        release.json      where the source files are, the license, and one record per finished step
        source/           the verified files, seeded by the daemon (unless fetched with --dir)
        gguf/             derived files: NAME.f16.gguf, NAME.Q4_K_M.gguf ...

A step record says which inputs and parameters produced which output (a key: SHA-256 over the
verified input hashes, the step's parameters and the llamashare version) and the output's size
and modification time, so a re-run skips a step whose output is still the one it wrote and redoes
one whose inputs, parameters or output changed. ``release.json`` is replaced atomically, and a
step's output only gets a record after it is complete on disk, so a crash loses at most the step
that was running.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator
from collections.abc import Set as AbstractSet
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from llamashare.errors import ManifestError, StoreError, UnsafePathError
from llamashare.fsio import atomic_write, safe_join
from llamashare.manifests.hashing import Hasher
from llamashare.manifests.manifest import (
    FileEntry,
    Manifest,
    choose_key,
    dumps,
    load_manifest,
    manifest_id,
    split_key,
)
from llamashare.manifests.verify import holds_entry


@dataclass(frozen=True)
class StepRecord:
    """A finished step: its key, the output file (in ``gguf/``) and what that file looked like."""

    key: str
    output: str
    size: int
    mtime_ns: int
    seconds: float
    params: dict[str, Any] = field(default_factory=dict)


class Entry:
    """One release (one version of a name) in the store."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.key = root.name  # NAME or NAME@VERSION: the folder, and the release's name in the node
        self.name = split_key(self.key)[0]

    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.toml"

    @property
    def record_path(self) -> Path:
        return self.root / "release.json"

    @property
    def gguf_dir(self) -> Path:
        return self.root / "gguf"

    def exists(self) -> bool:
        return self.manifest_path.is_file()

    def manifest(self) -> Manifest:
        return load_manifest(self.manifest_path)

    @property
    def version(self) -> str:
        return str(self.record().get("version") or self.manifest().version)

    @property
    def added(self) -> float:
        """When the store took it (older stores did not record it: the manifest's write time)."""
        value = self.record().get("added")
        return float(value) if isinstance(value, int | float) else self.manifest_path.stat().st_mtime

    def record(self) -> dict[str, Any]:
        try:
            doc = json.loads(self.record_path.read_text())
        except FileNotFoundError:
            return {"steps": {}}
        except (OSError, ValueError) as exc:
            raise StoreError(f"{self.record_path} is unreadable ({exc}); remove it to start the steps afresh") from None
        return doc if isinstance(doc, dict) and isinstance(doc.get("steps"), dict) else {"steps": {}}

    def _save(self, doc: dict[str, Any]) -> None:
        atomic_write(self.record_path, (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode())

    @property
    def source_dir(self) -> Path:
        return Path(self.record().get("source") or self.root / "source")

    @property
    def owns_source(self) -> bool:
        """True when the source files live inside the store folder (not a user's --dir)."""
        return self.source_dir.resolve() == (self.root / "source").resolve()

    @staticmethod
    def _parse_step(raw: object) -> StepRecord | None:
        try:
            return StepRecord(**raw) if isinstance(raw, dict) else None
        except TypeError:  # written by another version with other fields: redo the step
            return None

    def step(self, step_id: str) -> StepRecord | None:
        return self._parse_step(self.record()["steps"].get(step_id))

    def is_current(self, step_id: str, key: str) -> Path | None:
        """The step's output if it was made with ``key`` and is unchanged since; else None."""
        rec = self.step(step_id)
        return self._unchanged_output(rec) if rec is not None and rec.key == key else None

    def _unchanged_output(self, rec: StepRecord) -> Path | None:
        """``rec``'s output file if its size and modification time are still the recorded ones."""
        out = self.gguf_dir / rec.output
        try:
            st = out.stat()
        except OSError:
            return None
        return out if (st.st_size, st.st_mtime_ns) == (rec.size, rec.mtime_ns) else None

    def finish_step(self, step_id: str, key: str, output: Path, seconds: float, params: dict[str, Any]) -> None:
        st = output.stat()
        doc = self.record()
        doc["steps"][step_id] = asdict(
            StepRecord(key, output.name, st.st_size, st.st_mtime_ns, round(seconds, 3), params)
        )
        self._save(doc)

    @property
    def activity_path(self) -> Path:
        return self.root / "activity.json"

    def set_activity(self, step: str, title: str, done: int, total: int) -> None:
        """What a command is doing to this release now (the dashboard shows it); with the
        command's pid, so a crashed command's leftover is recognised and ignored."""
        doc = {"step": step, "title": title, "done": done, "total": total, "pid": os.getpid(), "updated": time.time()}
        atomic_write(self.activity_path, json.dumps(doc).encode())

    def clear_activity(self) -> None:
        self.activity_path.unlink(missing_ok=True)

    def activity(self) -> dict[str, Any] | None:
        """The running step, or None (none, unreadable, or its command is gone)."""
        try:
            doc = json.loads(self.activity_path.read_text())
            os.kill(int(doc["pid"]), 0)
        except ProcessLookupError:
            return None
        except PermissionError:  # alive, under another user
            return doc
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return doc if isinstance(doc, dict) else None

    def set_default(self, output: Path) -> None:
        """``run NAME`` takes what the last pipeline run made."""
        doc = self.record()
        doc["default"] = output.name
        self._save(doc)

    def ggufs(self) -> dict[str, Path]:
        """Step id → output path, for every step whose output is still what it wrote."""
        out = {}
        for step_id, raw in sorted(self.record()["steps"].items()):  # one read of release.json
            rec = self._parse_step(raw)
            path = self._unchanged_output(rec) if rec is not None else None
            if path is not None:
                out[step_id] = path
        return out

    def best_gguf(self) -> Path | None:
        """The file ``run NAME`` uses: the last one the pipeline made, else any current one."""
        files = self.ggufs()
        default = self.record().get("default")
        for path in files.values():
            if path.name == default:
                return path
        return next(iter(files.values()), None)

    def file_stats(self) -> Iterator[os.stat_result]:
        """Every regular file of the release (its folder, and a user's --dir source), once."""
        roots = [self.root] if self.owns_source else [self.root, self.source_dir]
        for root in roots:
            for p in root.rglob("*"):
                if not p.is_symlink() and p.is_file():
                    yield p.stat()

    def size_on_disk(self) -> int:
        """Bytes of the release's files, each counted in full (shared ones too: see ``shared_bytes``)."""
        return sum(st.st_size for st in self.file_stats())

    def shared_bytes(self) -> int:
        """Bytes of its files that are hard links also used elsewhere (the store's other
        releases): on disk once, and not freed by removing this release."""
        return sum(st.st_size for st in self.file_stats() if st.st_nlink > 1)


class Store:
    """The folder of releases (``models_dir`` in the config; default ``HOME/models``)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def entry(self, key: str) -> Entry:
        try:
            split_key(key)
        except ManifestError:
            raise StoreError(f"{key!r} is not a release name (letters, digits, . _ + -, and @VERSION)") from None
        return Entry(self.root / key)

    def get(self, ref: str, unique: bool = False) -> Entry:
        """The release ``ref`` names, or a one-line error listing what the store has. ``NAME@VERSION``
        (or ``NAME@<manifest id, 12+ hex digits>``) is one version; a plain NAME is its newest (by when it was stored) or, with ``unique`` (for
        what deletes), must be the only one."""
        try:
            name, version = split_key(ref)
        except ManifestError:
            raise StoreError(f"{ref!r} is not a release name (letters, digits, . _ + -, and @VERSION)") from None
        entries = self.entries()
        found = [e for e in entries if e.name == name]
        if version is not None:
            found = [e for e in found if ref in (e.key, f"{e.name}@{e.version}") or _id_matches(e, version)]
        if not found:
            have = ", ".join(e.key for e in entries) or "nothing yet"
            raise StoreError(f"no release {ref!r} in the store {self.root} (it has: {have})")
        if unique and len(found) > 1:
            labels = [f"{e.name}@{e.version}" for e in found]
            # NAME@VERSION where it names one entry and can be typed, else NAME@<manifest id>
            said = [
                label if labels.count(label) == 1 and _is_key(label) else f"{e.name}@{manifest_id(e.manifest())[:12]}"
                for e, label in zip(found, labels, strict=True)
            ]
            raise StoreError(f"the store has {len(found)} versions of {name}: {', '.join(said)}; say which one")
        return max(found, key=lambda e: e.added)

    def holding(self, manifest: Manifest) -> Entry | None:
        """The entry of exactly this release (same canonical manifest), if the store has it."""
        return self.find_base(manifest.name, manifest_id(manifest))

    def disk_usage(self) -> int:
        """Bytes the whole store takes, each file counted once however many releases link it."""
        seen: dict[tuple[int, int], int] = {}
        for entry in self.entries():
            for st in entry.file_stats():
                seen[st.st_dev, st.st_ino] = st.st_size
        return sum(seen.values())

    def entries(self) -> list[Entry]:
        if not self.root.is_dir():
            return []
        return [Entry(p) for p in sorted(self.root.iterdir()) if _is_key(p.name) and (p / "manifest.toml").is_file()]

    def add(self, manifest: Manifest, source: Path | None = None) -> Entry:
        """Record ``manifest`` (files to be fetched into ``source``, default the entry's own
        ``source/``). The same release again is a no-op; another version of a name gets an entry
        of its own (the next free key). A folder at the entry's place that the store did not
        make is refused (it is never adopted, so ``rm`` can never delete what is in it)."""
        entry = self.holding(manifest)
        if entry is not None:
            if source is not None and source.resolve() != entry.source_dir.resolve():
                raise StoreError(
                    f"{entry.key} is already in the store with its files in {entry.source_dir}, not {source}"
                )
            return entry
        versions = [(e.key, e.version) for e in self.entries() if e.name == manifest.name]
        entry = self.entry(choose_key(manifest, versions))
        strangers = _foreign_files(entry.root, allowed={f"source/{f.path}" for f in manifest.files})
        if strangers:
            raise StoreError(
                f"{entry.root} already exists and is not a release of this store (it holds {strangers[0]}"
                f"{f' and {len(strangers) - 1} more' if len(strangers) > 1 else ''}); "
                "move it away or set another models_dir"
            )
        entry.root.mkdir(parents=True, exist_ok=True)
        doc: dict[str, Any] = {
            "steps": {},
            "license": manifest.license,
            "version": manifest.version,
            "signed_by": manifest.signature.public_key if manifest.signature else None,
            "source": str((source or entry.root / "source").resolve()),
            "added": time.time(),
        }
        entry._save(doc)
        atomic_write(entry.manifest_path, dumps(manifest).encode())  # last: an entry exists once its manifest does
        return entry

    def find_base(self, name: str, manifest_sha256: str) -> Entry | None:
        """The stored release a delta names, if it is the exact one (same canonical manifest)."""
        for entry in self.entries():
            if entry.name == name and manifest_id(entry.manifest()) == manifest_sha256:
                return entry
        return None

    def base_license(self, manifest: Manifest) -> str | None:
        """For a delta: the license line of the release it applies to, if the store has it."""
        base = self.find_base(manifest.base.name, manifest.base.manifest_sha256) if manifest.base else None
        return base.manifest().license_line if base is not None else None

    @contextmanager
    def lock(self, entry: Entry) -> Iterator[None]:
        """Hold the release for one command: two fetches of one release would race on its steps."""
        entry.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(entry.root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StoreError(
                    f"another llamashare command is working on {entry.key}; wait for it to finish"
                ) from None
            yield
        finally:
            os.close(fd)

    def remove(self, entry: Entry, keep_source: bool) -> Removal:
        """Delete a release from the store: only what the store wrote (its records, the GGUF
        files its steps made) and, unless ``keep_source``, the release's own source files —
        each one only if it still is the manifest's file (size and BLAKE3: a user's file of the
        same size may sit at the path). Anything else stays where it is and is reported."""
        manifest, source, owned = entry.manifest(), entry.source_dir, entry.owns_source
        removal = Removal()
        steps = entry.record()["steps"]
        outputs = {raw.get("output") for raw in steps.values() if isinstance(raw, dict)}
        entry.manifest_path.unlink()  # first: from here on the store no longer lists it
        for name in ("release.json", "activity.json", ".lock"):
            (entry.root / name).unlink(missing_ok=True)
        for name in sorted(n for n in outputs if isinstance(n, str) and "/" not in n):
            for path in (entry.gguf_dir / name, entry.gguf_dir / f"{name}.partial"):
                if path.is_file() and not path.is_symlink():
                    path.unlink()
        if keep_source:
            removal.kept.append(source)
        else:
            with Hasher() as hasher:
                for f in manifest.files:
                    try:
                        path = safe_join(source, f.path)
                    except UnsafePathError:
                        continue
                    # Always by hash: a file of the user's with the release's size may sit at the
                    # path, in the store's folder too (a refused fetch is rolled back through here).
                    if _is_release_file(hasher, path, f):
                        shared = path.stat().st_nlink > 1  # another release links it: not freed
                        path.unlink()
                        if shared:
                            removal.shared_bytes += f.size
                        else:
                            removal.deleted_bytes += f.size
                    elif path.exists():
                        removal.foreign.append(path)
            if owned:
                _prune_empty(source, stop=entry.root)
            else:  # a user's folder: only the release's own subfolders, once empty
                parents = {
                    source.joinpath(*Path(f.path).parts[:i])
                    for f in manifest.files
                    for i in range(1, len(Path(f.path).parts))
                }
                for folder in sorted(parents, key=lambda d: len(d.parts), reverse=True):
                    if folder.is_dir() and not folder.is_symlink() and not any(folder.iterdir()):
                        folder.rmdir()
        _prune_empty(entry.gguf_dir, stop=entry.root)
        _prune_empty(entry.root, stop=self.root)
        if entry.root.exists():
            removal.foreign += [entry.root / rel for rel in _foreign_files(entry.root)]
        return removal


@dataclass
class Removal:
    """What ``Store.remove`` left: folders kept on request, files it did not write."""

    kept: list[Path] = field(default_factory=list)
    foreign: list[Path] = field(default_factory=list)  # not the release's (another size or hash): untouched
    deleted_bytes: int = 0  # source bytes freed
    shared_bytes: int = 0  # source files unlinked whose bytes other releases still use


#: What the store itself may leave in an entry's folder before the entry exists (a lock).
_OWN_LEFTOVERS = {".lock"}


def _foreign_files(root: Path, allowed: AbstractSet[str] = frozenset()) -> list[str]:
    """Files under ``root`` (relative, sorted) other than the store's own leftovers and the
    ``allowed`` paths (a release's own source files, kept by ``rm --keep-source``: the node
    checks their bytes against the manifest before using them, and never overwrites them)."""
    if not root.is_dir():
        return []
    return sorted(
        rel
        for p in root.rglob("*")
        if not p.is_dir() and (rel := p.relative_to(root).as_posix()) not in _OWN_LEFTOVERS | allowed
    )


def _id_matches(entry: Entry, text: str) -> bool:
    """Whether ``text`` (12 or more hex digits) begins the entry's manifest id."""
    return (
        12 <= len(text) <= 64
        and all(c in "0123456789abcdef" for c in text)
        and (manifest_id(entry.manifest()).startswith(text))
    )


def _is_key(name: str) -> bool:
    try:
        split_key(name)
    except ManifestError:
        return False
    return True


def _is_release_file(hasher: Hasher, path: Path, entry: FileEntry) -> bool:
    """Whether ``path`` is still the release's own file (a regular file, not a link: ``rm``
    never deletes through one)."""
    return not path.is_symlink() and holds_entry(hasher, path, entry)


def _prune_empty(folder: Path, stop: Path) -> None:
    """Remove empty folders under and including ``folder``, never ``stop`` or above it."""
    if not folder.is_dir() or folder.is_symlink():
        return
    for sub in sorted((p for p in folder.rglob("*") if p.is_dir() and not p.is_symlink()), reverse=True):
        try:
            sub.rmdir()
        except OSError:
            pass
    if folder.resolve() != stop.resolve():
        try:
            folder.rmdir()
        except OSError:
            pass
