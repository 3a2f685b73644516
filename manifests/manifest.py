"""The release manifest: typed, immutable, validated on the way in, deterministic on the way out.

A manifest is one TOML file that fully describes a model release, so ``llamashare fetch`` needs
nothing else: what the files are (path, size, BLAKE3, SHA-256), how to get them (the hybrid
torrent itself, trackers, web seeds), what they are (name, version, license, full or delta and
the base model a delta applies to), and optionally who vouches for them (an ed25519 signature).

Parsing is strict because manifests come from strangers: every key is checked for type and
range, unknown keys are refused (a typo must not silently drop a field), and the embedded
torrent must list exactly the manifest's files under the declared info-hashes. Every problem is
one :class:`ManifestError` naming the field. See ``manifests/example.toml`` for a commented file.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import hashlib
import json
import re
import tomllib
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any

import tomli_w

from llamashare.errors import ManifestError, TorrentError
from llamashare.manifests.torrent import info_hash_v1, is_valid_piece_size, read_torrent, v1_companion
from llamashare.text import UNSAFE_CHARS

FORMAT_VERSION = 1
KINDS = ("full", "delta")
MAX_MANIFEST_BYTES = 64 * 1024 * 1024  # a torrent for a 1 TB release with 16 MiB pieces is ~4 MB
MAX_FILES = 100_000
MAX_PATH_BYTES = 4096
MAX_COMPONENT_BYTES = 255

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
_HEX = {"blake3": 64, "sha256": 64, "info_hash_v1": 40, "v1_twin": 40, "info_hash_v2": 64, "manifest_sha256": 64}
_WINDOWS_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)), *(f"lpt{i}" for i in range(1, 10))}


@dataclass(frozen=True)
class FileEntry:
    """One file of the release, at ``path`` (POSIX, relative to the release folder)."""

    path: str
    size: int
    blake3: str
    sha256: str

    def mismatch(self, size: int, blake3: str | None, sha256: str | None = None) -> str | None:
        """Why a file of ``size`` bytes with these digests is not this entry's file, or None
        if it is. The one definition of "verified", for ``fetch`` (BLAKE3 while it downloads)
        and ``verify``/``seed`` (BLAKE3 and SHA-256): a digest not given is not compared."""
        if size != self.size:
            return f"{size} bytes, expected {self.size}"
        bad = [
            name
            for name, got in (("blake3", blake3), ("sha256", sha256))
            if got is not None and got != getattr(self, name)
        ]
        if bad:
            return f"{' and '.join(bad)} differ; got blake3 {(blake3 or '?')[:16]}…, expected {self.blake3[:16]}…"
        return None

    def selected_by(self, include: tuple[str, ...]) -> bool:
        """Whether ``fetch --include`` globs take this file (no globs: every file)."""
        return not include or any(fnmatch.fnmatchcase(self.path, g) for g in include)


@dataclass(frozen=True)
class TorrentRef:
    """The hybrid torrent: its info-hashes and the .torrent bytes (embedded or a sibling file)."""

    info_hash_v1: str
    info_hash_v2: str
    piece_size: int
    data: bytes | None = None  # the whole .torrent, when embedded (``data`` key, base64)
    file: str | None = None  # a sibling .torrent's file name, when not embedded
    v1_twin: str | None = None  # info-hash of the v1-only twin (manifests.torrent.v1_companion), if published


@dataclass(frozen=True)
class Origin:
    """Where a release's files came from on the Hugging Face Hub (a cache snapshot it was made
    from), so a fetcher can put them into its own Hugging Face cache (``fetch --hf-cache``)."""

    huggingface: str  # the repo id, ORG/NAME (or NAME)
    revision: str  # the commit: 40 hex digits
    ref: str | None = None  # the branch or tag that named that commit when published (e.g. main)
    #: Files kept in git rather than LFS: their cache blob is named by their git blob SHA-1,
    #: every other file's by its SHA-256.
    git_files: tuple[str, ...] = ()


@dataclass(frozen=True)
class BaseRef:
    """The release a delta applies to: its name and the SHA-256 of its canonical manifest bytes."""

    name: str
    manifest_sha256: str


@dataclass(frozen=True)
class Signature:
    """An ed25519 signature over :func:`canonical_bytes` and the public key that made it."""

    algorithm: str
    public_key: str  # 64 hex digits
    value: str  # 128 hex digits


@dataclass(frozen=True)
class Manifest:
    name: str
    version: str
    license: str
    description: str
    files: tuple[FileEntry, ...]
    torrent: TorrentRef
    kind: str = "full"
    homepage: str | None = None
    trackers: tuple[tuple[str, ...], ...] = ()
    web_seeds: tuple[str, ...] = ()
    base: BaseRef | None = None
    recommended_quant: str | None = None
    origin: Origin | None = None
    signature: Signature | None = None
    format_version: int = FORMAT_VERSION

    @property
    def license_line(self) -> str:
        """The license's first line: its SPDX id, or the title of custom terms (what lists show)."""
        return self.license.splitlines()[0]

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)

    def unsigned(self) -> Manifest:
        return replace(self, signature=None)


# --------------------------------------------------------------------------- validation helpers


#: Characters no portable file name holds (Windows refuses them; shells and globs trip on them).
_UNPORTABLE_PATH_CHARS = set('<>:"|?*')


def unsafe_char(text: str, multiline: bool = False) -> str | None:
    """The first character of ``text`` that must not reach a terminal, as ``U+XXXX``, or None."""
    found = UNSAFE_CHARS.search(text)  # a manifest's text may never hold these (text.UNSAFE_CHARS)
    if found is None and not multiline and ("\n" in text or "\t" in text):
        return "U+000A" if "\n" in text else "U+0009"
    return f"U+{ord(found.group()):04X}" if found else None


def check_relative_path(path: object, where: str) -> str:
    """A release path must stay inside the release folder on every OS we care about."""
    if not isinstance(path, str) or not path:
        raise ManifestError(where, "must be a non-empty string")
    bad = unsafe_char(path)
    if "\\" in path or bad:
        raise ManifestError(where, f"{path!r} contains a backslash or control character ({bad or 'U+005C'})")
    if path.startswith("/") or re.match(r"^[A-Za-z]:", path):
        raise ManifestError(where, f"{path!r} is absolute; paths must be relative to the release folder")
    if any(c in _UNPORTABLE_PATH_CHARS for c in path):
        raise ManifestError(where, f'{path!r} contains a character no portable file name holds (one of <>:"|?*)')
    if unicodedata.normalize("NFC", path) != path:
        raise ManifestError(where, f"{path!r} is not in Unicode NFC form (macOS would store it under another name)")
    if len(path.encode()) > MAX_PATH_BYTES:
        raise ManifestError(where, f"path is longer than {MAX_PATH_BYTES} bytes")
    for comp in path.split("/"):
        if comp in ("", ".", ".."):
            raise ManifestError(where, f"{path!r} has an empty, '.' or '..' component")
        if len(comp.encode()) > MAX_COMPONENT_BYTES:
            raise ManifestError(where, f"{path!r} has a component longer than {MAX_COMPONENT_BYTES} bytes")
        if comp.split(".")[0].lower() in _WINDOWS_RESERVED or comp.endswith((" ", ".")):
            raise ManifestError(where, f"{path!r} has a component that is not portable ({comp!r})")
    if path.split("/")[0] == ".pad":
        raise ManifestError(where, f"{path!r}: '.pad/' is reserved for torrent pad files")
    return path


def _require(table: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in table:
        raise ManifestError(where + key, "is missing")
    return _typed(table[key], kind, where + key)


def _typed(value: Any, kind: type | tuple[type, ...], where: str) -> Any:
    # bool is an int in Python; a manifest's "size = true" is still wrong.
    if isinstance(value, bool) and kind is not bool or not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise ManifestError(where, f"must be of type {_TOML_TYPE.get(names, names)}, not {_toml_type(value)}")
    return value


_TOML_TYPE = {"str": "string", "int": "integer", "list": "array", "dict": "table", "bool": "boolean"}


def _toml_type(value: Any) -> str:
    return _TOML_TYPE.get(type(value).__name__, type(value).__name__)


def _optional(table: Mapping[str, Any], key: str, kind: type, where: str) -> Any:
    return _typed(table[key], kind, where + key) if key in table else None


def _no_unknown(table: Mapping[str, Any], allowed: set[str], where: str) -> None:
    for key in table:
        if key not in allowed:
            raise ManifestError(where + key, "is not a known field (typo, or a newer format?)")


def _hex(value: Any, key: str, where: str) -> str:
    value = _typed(value, str, where)
    if len(value) != _HEX[key] or not re.fullmatch(r"[0-9a-f]+", value):
        raise ManifestError(where, f"must be {_HEX[key]} lowercase hex digits")
    return value


def _text(table: Mapping[str, Any], key: str, where: str, limit: int, multiline: bool = True) -> str:
    value = _require(table, key, str, where)
    if not value.strip():
        raise ManifestError(where + key, "must not be empty")
    if len(value) > limit:
        raise ManifestError(where + key, f"is longer than {limit} characters")
    bad = unsafe_char(value, multiline)
    if bad:
        raise ManifestError(where + key, f"contains a control or bidi character ({bad}); it would be printed raw")
    return value


def _url(value: Any, where: str, schemes: tuple[str, ...]) -> str:
    value = _typed(value, str, where)
    if not re.match(rf"^({'|'.join(schemes)})://[^\s/]+", value) or len(value) > 2048 or unsafe_char(value):
        raise ManifestError(where, f"{value!r} is not a {'/'.join(schemes)} URL")
    return value


def check_name(value: Any, where: str) -> str:
    """Release names become folder and torrent names: keep them short, plain and portable."""
    value = _typed(value, str, where)
    if not _NAME_RE.match(value):
        raise ManifestError(
            where, f"{value!r} must be 1–128 of letters, digits, '.', '_', '+', '-', starting with a letter or digit"
        )
    return value


# --------------------------------------------------------------------------- parse


def parse_manifest(text: str | bytes, source: str | Path | None = None, torrent_dir: Path | None = None) -> Manifest:
    """Parse and fully validate a manifest. ``torrent_dir`` is where a sibling .torrent lives."""
    if isinstance(text, bytes):
        if len(text) > MAX_MANIFEST_BYTES:
            raise ManifestError("(file)", f"is larger than {MAX_MANIFEST_BYTES} bytes", source)
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ManifestError("(file)", f"is not UTF-8 text ({exc.reason} at byte {exc.start})", source) from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ManifestError("(file)", f"is not valid TOML: {exc}", source) from None
    try:
        return from_dict(doc, torrent_dir)
    except ManifestError as exc:
        raise ManifestError(exc.field, exc.problem, source) from None


def load_manifest(path: Path) -> Manifest:
    """Read a manifest file; a sibling .torrent named in it is read from the same folder."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ManifestError("(file)", f"cannot be read: {exc.strerror}", path) from None
    return parse_manifest(data, source=path, torrent_dir=path.parent)


def from_dict(doc: Mapping[str, Any], torrent_dir: Path | None = None) -> Manifest:
    top = {
        "format_version",
        "name",
        "version",
        "kind",
        "license",
        "description",
        "homepage",
        "trackers",
        "web_seeds",
        "base",
        "recommended_quant",
        "origin",
        "torrent",
        "files",
        "signature",
    }
    version = _require(doc, "format_version", int, "")
    if version != FORMAT_VERSION:
        raise ManifestError(
            "format_version", f"is {version}; this llamashare understands only {FORMAT_VERSION} (upgrade llamashare?)"
        )
    _no_unknown(doc, top, "")
    name = check_name(_require(doc, "name", str, ""), "name")
    kind = doc.get("kind", "full")
    if kind not in KINDS:
        raise ManifestError("kind", f"must be one of {', '.join(KINDS)}")
    base = _parse_base(doc) if "base" in doc else None
    if kind == "delta" and base is None:
        raise ManifestError("base", 'is required when kind = "delta"')
    if kind == "full" and base is not None:
        raise ManifestError("base", 'is only allowed when kind = "delta"')
    homepage = _url(doc["homepage"], "homepage", ("http", "https")) if "homepage" in doc else None
    quant = _optional(doc, "recommended_quant", str, "")
    if quant is not None and not re.fullmatch(r"[A-Za-z0-9_]{1,16}", quant):
        raise ManifestError("recommended_quant", f"{quant!r} is not a quantization type name")
    files = _parse_files(_require(doc, "files", list, ""))
    torrent = _parse_torrent(_require(doc, "torrent", dict, ""), torrent_dir)
    manifest = Manifest(
        format_version=version,
        name=name,
        version=_text(doc, "version", "", 64, multiline=False),
        kind=kind,
        license=_text(doc, "license", "", 100_000),
        description=_text(doc, "description", "", 100_000),
        homepage=homepage,
        trackers=_parse_trackers(doc.get("trackers", [])),
        web_seeds=tuple(
            _url(u, f"web_seeds[{i}]", ("http", "https"))
            for i, u in enumerate(_typed(doc.get("web_seeds", []), list, "web_seeds"))
        ),
        base=base,
        recommended_quant=quant,
        files=files,
        torrent=torrent,
        origin=_parse_origin(_typed(doc["origin"], dict, "origin"), files) if "origin" in doc else None,
        signature=_parse_signature(_typed(doc["signature"], dict, "signature")) if "signature" in doc else None,
    )
    check_torrent_matches(manifest)
    return manifest


def _parse_files(items: list) -> tuple[FileEntry, ...]:
    if not items:
        raise ManifestError("files", "must list at least one file")
    if len(items) > MAX_FILES:
        raise ManifestError("files", f"lists more than {MAX_FILES} files")
    seen: dict[str, str] = {}
    out = []
    for i, item in enumerate(items):
        where = f"files[{i}]."
        _typed(item, dict, f"files[{i}]")
        _no_unknown(item, {"path", "size", "blake3", "sha256"}, where)
        path = check_relative_path(_require(item, "path", str, where), where + "path")
        size = _require(item, "size", int, where)
        if size < 0:
            raise ManifestError(where + "size", f"is negative ({size})")
        if size >= 1 << 50:
            raise ManifestError(where + "size", f"is implausibly large ({size} bytes)")
        # Case-insensitive file systems (Windows, macOS) would write both paths to one file.
        folded = path.casefold()
        if folded in seen:
            raise ManifestError(
                where + "path", f"{path!r} duplicates {seen[folded]!r} (paths must differ beyond letter case)"
            )
        seen[folded] = path
        out.append(
            FileEntry(
                path,
                size,
                _hex(_require(item, "blake3", str, where), "blake3", where + "blake3"),
                _hex(_require(item, "sha256", str, where), "sha256", where + "sha256"),
            )
        )
    # A file cannot also be a folder of another file ("a" and "a/b").
    folders = {str(p) for e in out for p in PurePosixPath(e.path.casefold()).parents if str(p) != "."}
    for i, e in enumerate(out):
        if e.path.casefold() in folders:
            raise ManifestError(f"files[{i}].path", f"{e.path!r} is both a file and a folder of another file")
    return tuple(out)


def _parse_torrent(table: Mapping[str, Any], torrent_dir: Path | None) -> TorrentRef:
    _no_unknown(table, {"info_hash_v1", "info_hash_v2", "piece_size", "data", "file", "v1_twin"}, "torrent.")
    v1 = _hex(_require(table, "info_hash_v1", str, "torrent."), "info_hash_v1", "torrent.info_hash_v1")
    twin = (
        _hex(_typed(table["v1_twin"], str, "torrent.v1_twin"), "v1_twin", "torrent.v1_twin")
        if "v1_twin" in table
        else None
    )
    v2 = _hex(_require(table, "info_hash_v2", str, "torrent."), "info_hash_v2", "torrent.info_hash_v2")
    piece_size = _require(table, "piece_size", int, "torrent.")
    if not is_valid_piece_size(piece_size):
        raise ManifestError("torrent.piece_size", f"{piece_size} is not a power of two between 16 KiB and 64 MiB")
    if ("data" in table) == ("file" in table):
        raise ManifestError("torrent", "needs exactly one of 'data' (base64 .torrent) or 'file' (sibling .torrent)")
    if "data" in table:
        encoded = _typed(table["data"], str, "torrent.data")
        try:
            data = base64.b64decode("".join(encoded.split()), validate=True)
        except (binascii.Error, ValueError):
            raise ManifestError("torrent.data", "is not valid base64") from None
        return TorrentRef(v1, v2, piece_size, data=data, v1_twin=twin)
    name = _typed(table["file"], str, "torrent.file")
    if "/" in name or "\\" in name or name in ("", ".", "..") or not name.endswith(".torrent"):
        raise ManifestError(
            "torrent.file", f"{name!r} must be a plain file name ending in .torrent, beside the manifest"
        )
    sibling: bytes | None = None
    if torrent_dir is not None:
        try:
            sibling = (torrent_dir / name).read_bytes()
        except OSError as exc:
            raise ManifestError("torrent.file", f"{name!r} cannot be read: {exc.strerror}") from None
    return TorrentRef(v1, v2, piece_size, data=sibling, file=name, v1_twin=twin)


def _parse_trackers(value: Any) -> tuple[tuple[str, ...], ...]:
    tiers = []
    for i, tier in enumerate(_typed(value, list, "trackers")):
        # A flat list of URLs is accepted as one tier per URL (the common announce-list shape).
        urls = [tier] if isinstance(tier, str) else _typed(tier, list, f"trackers[{i}]")
        if not urls:
            raise ManifestError(f"trackers[{i}]", "is an empty tier")
        tiers.append(tuple(_url(u, f"trackers[{i}]", ("http", "https", "udp")) for u in urls))
    return tuple(tiers)


#: A Hugging Face repo id: an optional namespace and a name, each what the Hub allows.
_HF_REPO_RE = re.compile(r"(?:[A-Za-z0-9][A-Za-z0-9._-]{0,95}/)?[A-Za-z0-9][A-Za-z0-9._-]{0,95}")
_GIT_REF_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,127}")


def _parse_origin(table: Mapping[str, Any], files: tuple[FileEntry, ...]) -> Origin:
    _no_unknown(table, {"huggingface", "revision", "ref", "git_files"}, "origin.")
    repo = _require(table, "huggingface", str, "origin.")
    if not _HF_REPO_RE.fullmatch(repo) or "--" in repo or ".." in repo:
        raise ManifestError("origin.huggingface", f"{repo!r} is not a Hugging Face repo id (ORG/NAME)")
    revision = _require(table, "revision", str, "origin.")
    if not re.fullmatch(r"[0-9a-f]{40}", revision):
        raise ManifestError("origin.revision", "must be a commit: 40 lowercase hex digits")
    ref = _optional(table, "ref", str, "origin.")
    if ref is not None and (not _GIT_REF_RE.fullmatch(ref) or ".." in ref or ref.endswith("/")):
        raise ManifestError("origin.ref", f"{ref!r} is not a branch or tag name")
    paths = {f.path for f in files}
    git_files = []
    for i, path in enumerate(_typed(table.get("git_files", []), list, "origin.git_files")):
        if not isinstance(path, str) or path not in paths:
            raise ManifestError(f"origin.git_files[{i}]", "must be the path of one of the release's files")
        git_files.append(path)
    return Origin(repo, revision, ref, tuple(sorted(set(git_files))))


def _parse_base(doc: Mapping[str, Any]) -> BaseRef:
    table = _typed(doc["base"], dict, "base")
    _no_unknown(table, {"name", "manifest_sha256"}, "base.")
    return BaseRef(
        name=check_name(_require(table, "name", str, "base."), "base.name"),
        manifest_sha256=_hex(
            _require(table, "manifest_sha256", str, "base."), "manifest_sha256", "base.manifest_sha256"
        ),
    )


def _parse_signature(table: Mapping[str, Any]) -> Signature:
    _no_unknown(table, {"algorithm", "public_key", "value"}, "signature.")
    algorithm = _require(table, "algorithm", str, "signature.")
    if algorithm != "ed25519":
        raise ManifestError("signature.algorithm", f"{algorithm!r} is not supported (only ed25519)")
    key = _require(table, "public_key", str, "signature.")
    value = _require(table, "value", str, "signature.")
    if not re.fullmatch(r"[0-9a-f]{64}", key):
        raise ManifestError("signature.public_key", "must be 64 lowercase hex digits")
    if not re.fullmatch(r"[0-9a-f]{128}", value):
        raise ManifestError("signature.value", "must be 128 lowercase hex digits")
    return Signature(algorithm, key, value)


def check_torrent_matches(manifest: Manifest) -> None:
    """The embedded torrent must be the one the manifest declares, listing exactly its files."""
    ref = manifest.torrent
    if ref.data is None:
        return  # a sibling .torrent that was not read (parsing text alone); fetch reads it
    try:
        meta = read_torrent(ref.data)
    except TorrentError as exc:
        raise ManifestError("torrent", str(exc)) from None
    if meta.info_hash_v1 != ref.info_hash_v1:
        raise ManifestError("torrent.info_hash_v1", f"is {ref.info_hash_v1} but the torrent's is {meta.info_hash_v1}")
    if meta.info_hash_v2 != ref.info_hash_v2:
        raise ManifestError("torrent.info_hash_v2", f"is {ref.info_hash_v2} but the torrent's is {meta.info_hash_v2}")
    if meta.piece_size != ref.piece_size:
        raise ManifestError("torrent.piece_size", f"is {ref.piece_size} but the torrent's is {meta.piece_size}")
    if meta.name != manifest.name:
        raise ManifestError("torrent", f"the torrent is named {meta.name!r}, not {manifest.name!r}")
    ours = sorted((f.path, f.size) for f in manifest.files)
    theirs = sorted(meta.files)
    if ours != theirs:
        missing = sorted(set(ours) - set(theirs))
        extra = sorted(set(theirs) - set(ours))
        detail = f"not in torrent: {missing[0]}" if missing else f"only in torrent: {extra[0]}"
        raise ManifestError("torrent", f"its file list differs from [[files]] ({detail})")
    if ref.v1_twin is not None and (twin := info_hash_v1(v1_companion(ref.data))) != ref.v1_twin:
        raise ManifestError("torrent.v1_twin", f"is {ref.v1_twin} but the torrent's v1 twin is {twin}")


# --------------------------------------------------------------------------- serialize


def to_dict(manifest: Manifest, include_signature: bool = True) -> dict[str, Any]:
    """The manifest as plain TOML-able data, keys in a fixed reading order, optional ones omitted."""
    m = manifest
    doc: dict[str, Any] = {
        "format_version": m.format_version,
        "name": m.name,
        "version": m.version,
        "kind": m.kind,
        "license": m.license,
        "description": m.description,
    }
    if m.homepage is not None:
        doc["homepage"] = m.homepage
    if m.recommended_quant is not None:
        doc["recommended_quant"] = m.recommended_quant
    doc["trackers"] = [list(t) for t in m.trackers]
    doc["web_seeds"] = list(m.web_seeds)
    if m.base is not None:
        doc["base"] = {"name": m.base.name, "manifest_sha256": m.base.manifest_sha256}
    if m.origin is not None:
        o = m.origin
        doc["origin"] = {"huggingface": o.huggingface, "revision": o.revision}
        if o.ref is not None:
            doc["origin"]["ref"] = o.ref
        doc["origin"]["git_files"] = list(o.git_files)
    t = m.torrent
    torrent: dict[str, Any] = {
        "info_hash_v1": t.info_hash_v1,
        "info_hash_v2": t.info_hash_v2,
        "piece_size": t.piece_size,
    }
    if t.v1_twin is not None:
        torrent["v1_twin"] = t.v1_twin
    if t.file is not None:
        torrent["file"] = t.file
    elif t.data is not None:
        torrent["data"] = base64.b64encode(t.data).decode("ascii")
    doc["torrent"] = torrent
    doc["files"] = [{"path": f.path, "size": f.size, "blake3": f.blake3, "sha256": f.sha256} for f in m.files]
    if include_signature and m.signature is not None:
        s = m.signature
        doc["signature"] = {"algorithm": s.algorithm, "public_key": s.public_key, "value": s.value}
    return doc


HEADER = "# llamashare release manifest (format {v}). Check files with: llamashare verify THIS.toml --dir DIR\n"


def dumps(manifest: Manifest) -> str:
    return HEADER.format(v=manifest.format_version) + tomli_w.dumps(to_dict(manifest))


def canonical_bytes(manifest: Manifest) -> bytes:
    """The bytes a signature covers and a manifest id hashes: independent of TOML layout.

    Compact JSON with sorted keys of every field except the signature, so re-formatting the TOML
    or adding comments does not invalidate a signature, while changing any value does.
    """
    return json.dumps(
        to_dict(manifest, include_signature=False), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode("utf-8")


def manifest_id(manifest: Manifest) -> str:
    """SHA-256 of the canonical bytes: what a delta's ``base.manifest_sha256`` names."""
    return hashlib.sha256(canonical_bytes(manifest)).hexdigest()


#: A key names one release (one version) in a store and a node: ``NAME`` or ``NAME@VERSION``.
_KEY_RE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._+-]{0,127})(?:@([A-Za-z0-9][A-Za-z0-9._+-]{0,63}))?$")


def choose_key(manifest: Manifest, others: Iterable[tuple[str, str]]) -> str:
    """The key a release takes beside ``others`` (the (key, version) of each other release of its
    name): its plain name if free (the first version of a name keeps what earlier llamashare
    called it), else ``NAME@VERSION`` if that names no other release and the version is
    folder-safe, else ``NAME@<manifest id>`` (a second release with that version string, or a
    version with spaces or slashes)."""
    others = list(others)
    taken = {key for key, _ in others} | {f"{manifest.name}@{version}" for _, version in others}
    for key in (manifest.name, f"{manifest.name}@{manifest.version}"):
        if key not in taken and _KEY_RE.match(key):
            return key
    return f"{manifest.name}@{manifest_id(manifest)[:12]}"


def split_key(key: str) -> tuple[str, str | None]:
    """``NAME[@VERSION]`` → (name, version or None); ManifestError if it is neither."""
    match = _KEY_RE.match(key)
    if match is None:
        raise ManifestError("name", f"{key!r} is not NAME or NAME@VERSION (letters, digits, . _ + -)")
    return match[1], match[2]
