"""What a node says about each release: one typed record, the same in the engine, the daemon's
JSON API, the CLI and the dashboard.

The node builds a :class:`ReleaseStatus` per release; the API sends :meth:`ReleaseStatus.to_json`
(the JSON keys are the field names, plus ``verified`` and ``selected``); the CLI's client turns
it back with :meth:`ReleaseStatus.from_json`. No libtorrent here, so ``llamashare status`` does
not load it.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, fields
from typing import Any

from llamashare.errors import StatusFormatError


class State(enum.StrEnum):
    CHECKING = "checking"
    DOWNLOADING = "downloading"
    VERIFYING = "verifying"
    SEEDING = "seeding"
    DONE = "done seeding"  # target reached: stopped, files kept
    PAUSED = "paused"  # stopped by the user until resumed (kept across restarts)
    COMPLETE = "complete"  # verified, not seeding (--no-seed)
    ERROR = "error"


#: States in which a release's selected files are all on disk and verified, or it was paused.
FINISHED = (State.SEEDING, State.DONE, State.COMPLETE, State.PAUSED)


class FileStatus(enum.StrEnum):
    PENDING = "pending"  # downloading, its BLAKE3 cursor following
    VERIFIED = "verified"
    FAILED = "failed"
    SKIPPED = "skipped"  # not selected by --include


@dataclass(frozen=True)
class ReleaseStatus:
    """One release as the node sees it now."""

    name: str
    version: str
    license: str  # first line of the manifest's license
    dir: str  # where its files are
    state: State
    error: str | None
    tracker_error: str | None  # the last tracker's complaint, if any
    size: int  # bytes selected for download
    done: int  # bytes of those on disk and piece-checked
    progress: float  # 0..1
    download_rate: int  # bytes/s (0 for a seed: libtorrent's average decays for seconds)
    upload_rate: int
    downloaded: int  # payload bytes, all time
    uploaded: int
    reused: int  # selected bytes already on disk and verified when added (e.g. linked from the store)
    ratio: float  # uploaded / size
    ratio_target: float | None  # None: seeds until removed
    seed_time: float | None  # seconds of seeding after which it stops
    seeded_seconds: float
    paused: bool
    seed_forever: bool
    initial_seeding: bool  # BEP 16 super-seeding still on
    peers: int
    seeds: int
    via: str  # "hybrid" or "v1 twin": which torrent downloads
    hash_failures: int
    banned_peers: tuple[str, ...]
    files: dict[str, FileStatus]  # path → its verification state
    info_hash_v1: str
    v1_twin: str | None

    @property
    def verified(self) -> int:
        return sum(v is FileStatus.VERIFIED for v in self.files.values())

    @property
    def selected(self) -> int:
        return sum(v is not FileStatus.SKIPPED for v in self.files.values())

    @property
    def finished(self) -> bool:
        """Every selected file verified, and the node done downloading."""
        return self.state in FINISHED and self.verified == self.selected

    @classmethod
    def unrestorable(cls, name: str, why: str) -> ReleaseStatus:
        """A saved release the node could not bring back: listed, so it can be seen and stopped."""
        return cls(
            name=name,
            version="",
            license="",
            dir="",
            state=State.ERROR,
            error=why,
            tracker_error=None,
            size=0,
            done=0,
            progress=0.0,
            download_rate=0,
            upload_rate=0,
            downloaded=0,
            uploaded=0,
            reused=0,
            ratio=0.0,
            ratio_target=None,
            seed_time=None,
            seeded_seconds=0.0,
            paused=False,
            seed_forever=False,
            initial_seeding=False,
            peers=0,
            seeds=0,
            via="hybrid",
            hash_failures=0,
            banned_peers=(),
            files={},
            info_hash_v1="",
            v1_twin=None,
        )

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["banned_peers"] = list(self.banned_peers)
        doc.update(verified=self.verified, selected=self.selected)
        return doc

    @classmethod
    def from_json(cls, doc: object) -> ReleaseStatus:
        if not isinstance(doc, dict):
            raise StatusFormatError(f"a release status must be a JSON object, not {type(doc).__name__}")
        try:
            values = {f.name: doc[f.name] for f in fields(cls)}
            values["state"] = State(values["state"])
            values["files"] = {str(k): FileStatus(v) for k, v in values["files"].items()}
            values["banned_peers"] = tuple(values["banned_peers"])
        except (KeyError, ValueError, AttributeError, TypeError) as exc:
            raise StatusFormatError(f"unreadable release status from the daemon ({exc!r})") from None
        return cls(**values)


@dataclass(frozen=True)
class DaemonStatus:
    """``GET /api/v1/status``: the daemon's own facts and every release it runs."""

    node: dict[str, Any]  # pid, version, listen port, …
    releases: list[ReleaseStatus]

    def release(self, name: str) -> ReleaseStatus | None:
        return next((r for r in self.releases if r.name == name), None)

    @classmethod
    def from_json(cls, doc: object) -> DaemonStatus:
        if (
            not isinstance(doc, dict)
            or not isinstance(doc.get("node"), dict)
            or not isinstance(doc.get("releases"), list)
        ):
            raise StatusFormatError("the daemon's status is not {'node': {...}, 'releases': [...]}")
        return cls(doc["node"], [ReleaseStatus.from_json(r) for r in doc["releases"]])
