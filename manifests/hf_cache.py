"""The Hugging Face Hub cache, both ways: publish a snapshot in place, and put a fetched release
where huggingface_hub, transformers and the tools built on them look for it offline.

huggingface_hub keeps each model repo in ``HUB/models--ORG--NAME/``::

    blobs/<etag>               one file per distinct content: an LFS file's etag is its SHA-256,
                               a file kept in git is named by its git blob SHA-1
    snapshots/<commit>/<path>  a relative symlink to ../../blobs/<etag> for each file of that commit
    refs/<branch>              the commit the branch named when it was last downloaded

So a snapshot's SHA-256-named blobs carry their own check: :func:`origin_of` compares each name
with the hash ``create`` computed in its one read of the file (and a git-named blob with its git
SHA-1), and refuses a damaged cache. :func:`install` turns a fetched, verified snapshot folder of
regular files into that layout: each file becomes a blob (a hard link: no copy) and its path a
symlink to it, swapped in by ``rename(2)``, so a crash leaves the file or the link, never neither.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from llamashare.errors import SourceDirError
from llamashare.fsio import atomic_write, link_boundary
from llamashare.manifests.manifest import FileEntry, Manifest, Origin

_SHA256 = re.compile(r"[0-9a-f]{64}")
_SHA1 = re.compile(r"[0-9a-f]{40}")
LINK_SUFFIX = ".llamashare-link"


def hub_cache(environ: dict[str, str] | None = None) -> Path:
    """The cache folder huggingface_hub uses: ``HF_HUB_CACHE``, else the older
    ``HUGGINGFACE_HUB_CACHE``, else ``HF_HOME/hub``, where ``HF_HOME`` defaults to
    ``$XDG_CACHE_HOME/huggingface`` (``~/.cache/huggingface``)."""
    env = os.environ if environ is None else environ
    home = env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    default = os.path.join(os.path.expanduser(home), "hub")
    chosen = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE") or default
    return Path(os.path.expandvars(os.path.expanduser(chosen)))


def repo_folder(hub: Path, repo_id: str) -> Path:
    return hub / ("models--" + repo_id.replace("/", "--"))


@dataclass(frozen=True)
class Snapshot:
    """A folder ``…/models--ORG--NAME/snapshots/<commit>`` of a Hugging Face cache."""

    path: Path
    repo_id: str
    revision: str

    @property
    def repo(self) -> Path:
        return self.path.parent.parent


def snapshot_at(folder: Path) -> Snapshot | None:
    """The snapshot ``folder`` is, or None for any other folder."""
    path = folder.resolve()
    if link_boundary(path) == path or not _SHA1.fullmatch(path.name):
        return None
    return Snapshot(path, path.parent.parent.name.removeprefix("models--").replace("--", "/"), path.name)


def git_blob_sha1(path: Path) -> str:
    """Git's object id of a file: SHA-1 over ``blob <size>\\0`` and the bytes."""
    sha = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as f:
        return hashlib.file_digest(f, lambda: sha).hexdigest()


def origin_of(snapshot: Snapshot, files: tuple[FileEntry, ...]) -> Origin:
    """Check each linked file's blob name against its hash (just computed by ``create``), and
    say where the release came from: repo, commit, the branch naming that commit, git files."""
    git_files = []
    for f in files:
        link = snapshot.path / f.path
        if not link.is_symlink():
            continue  # a cache made without symlinks holds plain files: no blob name to check
        etag = link.resolve().name
        if _SHA256.fullmatch(etag):
            if etag != f.sha256:
                raise SourceDirError(
                    f"{link}: its blob is named {etag[:16]}… but its SHA-256 is {f.sha256[:16]}…; the cache "
                    "is damaged (remove that repo with `hf cache delete` and download it again)"
                )
        elif _SHA1.fullmatch(etag):
            if git_blob_sha1(link) != etag:
                raise SourceDirError(
                    f"{link}: its blob is named {etag[:16]}… but holds other bytes; the cache is damaged"
                )
            git_files.append(f.path)
        else:
            raise SourceDirError(f"{link} links to {etag!r}, which is not a Hugging Face cache blob")
    refs = snapshot.repo / "refs"
    names = sorted((p for p in refs.rglob("*") if p.is_file()), key=lambda p: (p.name != "main", str(p)))
    ref = next((p.relative_to(refs).as_posix() for p in names if _read_ref(p) == snapshot.revision), None)
    return Origin(snapshot.repo_id, snapshot.revision, ref, tuple(sorted(git_files)))


def _read_ref(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None


@dataclass
class Installed:
    """What :func:`install` did."""

    snapshot: Path
    linked: list[str] = field(default_factory=list)  # files now cache links to their blob
    kept: list[str] = field(default_factory=list)  # left as plain files (a blob of that name holds other bytes)
    ref_note: str | None = None  # why refs/<ref> was not written, if it was not


def install(manifest: Manifest, snapshot: Path) -> Installed:
    """Put the verified files of ``manifest`` at ``snapshot`` (its ``…/snapshots/<commit>``
    folder) into the cache layout and point ``refs/<ref>`` at the commit if it names none."""
    origin = manifest.origin
    if origin is None:
        raise SourceDirError(f"{manifest.name} does not say which Hugging Face repo it is ([origin] in its manifest)")
    repo = snapshot.parent.parent
    blobs = repo / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    done = Installed(snapshot)
    git = set(origin.git_files)
    for f in manifest.files:
        path = snapshot / f.path
        if path.is_symlink() or not path.is_file():
            continue  # already a link (a re-run), or skipped by --include
        etag = git_blob_sha1(path) if f.path in git else f.sha256
        blob = blobs / etag
        try:
            os.link(path, blob)
        except FileExistsError:
            pass  # another snapshot of the repo has these bytes already
        if not os.path.samefile(path, blob) and not _blob_holds(blob, f, etag, f.path in git):
            done.kept.append(f.path)
            continue
        tmp = path.with_name(f".{path.name}{LINK_SUFFIX}")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(os.path.relpath(blob, path.parent))
        os.replace(tmp, path)  # the verified file stays whole in its blob
        done.linked.append(f.path)
    if origin.ref is not None:
        ref = repo / "refs" / origin.ref
        have = _read_ref(ref) if ref.exists() else None
        if have is None and not ref.exists():
            atomic_write(ref, origin.revision.encode())
        elif have != origin.revision:
            done.ref_note = (
                f"refs/{origin.ref} of {origin.huggingface} names another commit in this cache; "
                f"load it with revision={origin.revision!r}"
            )
    return done


def _blob_holds(blob: Path, f: FileEntry, etag: str, git: bool) -> bool:
    """Whether an existing blob is the file it is named for (size, then its SHA-256 or git SHA-1)."""
    try:
        if blob.is_symlink() or blob.stat().st_size != f.size:
            return False
        if git:
            return git_blob_sha1(blob) == etag
        with open(blob, "rb") as fh:
            return hashlib.file_digest(fh, "sha256").hexdigest() == etag
    except OSError:
        return False
