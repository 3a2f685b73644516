"""One llamashare node: a libtorrent session plus what libtorrent does not do for us.

libtorrent moves and piece-checks the bytes. On top of it this module:

- verifies each selected file against the manifest's size and BLAKE3 while it downloads (a
  :class:`FileCursor` per file hashes the flushed, contiguous prefix on a worker thread); a file
  is "verified" only when the whole file matches, and a mismatch forces a re-check (bad pieces
  are fetched again) before the release is put in error;
- enforces the share-ratio and seed-time targets (libtorrent's own limits never stop a torrent),
  pausing the release and keeping its files when a target is reached;
- saves resume data atomically, so a restarted node continues where it stood;
- runs a release's v1-only twin torrent (when its manifest pins one) beside the hybrid one, so
  v1-only clients such as aria2 can take part: both seed once the files are verified, and while
  downloading exactly one of them fetches (the twin only when the hybrid swarm has no peers and
  the twin's has). Their pieces are the same bytes (manifests.torrent.v1_companion), so the BLAKE3
  cursors follow whichever has them;
- refuses to write over a file that is in the way with other content.

Single-threaded by contract: call every method from one thread (the daemon's event loop);
verification runs on the node's own worker threads and reports back through :meth:`poll`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path

import blake3
import libtorrent as lt

from llamashare.errors import LlamashareError, ReleaseConflict, ReleaseError, VerificationError
from llamashare.fsio import atomic_write, check_free_space, safe_join
from llamashare.manifests.channel import libtorrent_keys
from llamashare.manifests.hashing import Hasher
from llamashare.manifests.manifest import FileEntry, Manifest, dumps, load_manifest
from llamashare.manifests.signing import load_private_key
from llamashare.manifests.torrent import v1_companion
from llamashare.manifests.verify import verify_release
from llamashare.p2p.address import parse_peer
from llamashare.p2p.channels import Channels
from llamashare.p2p.lan import LanOffers
from llamashare.p2p.settings import NetworkOptions, session_settings
from llamashare.p2p.status import FileStatus, ReleaseStatus, State

log = logging.getLogger("llamashare.node")

#: How long the downloading torrent must have had no peers, while the other one of a hybrid/twin
#: pair has some, before the other one takes over the download.
SWITCH_AFTER = 3.0


@dataclass
class ReleaseSpec:
    """What the user asked for; persisted so a restarted node resumes the same work."""

    name: str
    save_dir: str
    seed_forever: bool = False  # the original uploader: seed until removed
    ratio: float | None = 1.0
    seed_time: float | None = None  # seconds
    include: tuple[str, ...] = ()
    peers: tuple[str, ...] = ()
    no_seed: bool = False
    #: BEP 16 "super-seeding" for a publisher's first copy: offer each peer one piece nobody else
    #: has yet, and the next only once that one shows up elsewhere, so the swarm, not the origin's
    #: uplink, carries the copies. Ends by itself once every piece has been seen at some peer.
    initial_seeding: bool = False
    paused: bool = False  # the user stopped it (dashboard or API); nothing moves until resumed
    added_at: float = field(default_factory=time.time)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> ReleaseSpec:
        d = json.loads(text)
        d["include"], d["peers"] = tuple(d.get("include", ())), tuple(d.get("peers", ()))
        return cls(**d)


class FileCursor:
    """Incremental BLAKE3 over one file, following the download piece by piece, in order.

    libtorrent reports a piece as had once it passes the hash, possibly before its blocks leave
    the write buffer (measured: 97 of 256 pieces read back stale at that moment). So a cursor
    reads only pieces that a completed ``flush_cache`` covers (``safe``); the node asks for a
    flush whenever had pieces lie beyond it. Because the hash follows the download, "verified"
    comes right after the last byte instead of costing one more full read of a multi-GB file.
    A cursor is replaced, never rewound, when a file must be verified anew.
    """

    def __init__(self, entry: FileEntry, path: Path, first_piece: int, piece_size: int) -> None:
        self.entry, self.path = entry, path
        self.first_piece, self.piece_size = first_piece, piece_size
        self.pieces = -(-entry.size // piece_size)
        self.safe = 0  # pieces flushed to disk, from the file's start (main thread)
        self.fed = 0  # pieces hashed (worker thread)
        self._b3 = blake3.blake3(max_threads=blake3.blake3.AUTO)
        self.digest: str | None = None if self.pieces else self._b3.hexdigest()  # empty file
        self.error: str | None = None

    @property
    def complete(self) -> bool:
        return self.digest is not None or self.error is not None

    def frontier(self, have_piece: Callable[[int], bool]) -> int:
        """How many pieces from the file's start libtorrent has, contiguously (main thread)."""
        k = self.safe
        while k < self.pieces and have_piece(self.first_piece + k):
            k += 1
        return k

    def advance_to(self, k: int) -> None:
        """Hash pieces [fed, k) from the file (worker thread; k ≤ a flushed frontier)."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self.fed * self.piece_size)
                while self.fed < k:
                    want = min(self.piece_size, self.entry.size - self.fed * self.piece_size)
                    data = f.read(want)
                    if len(data) != want:
                        raise OSError(f"{self.path} is shorter than its downloaded pieces")
                    self._b3.update(data)
                    self.fed += 1
        except OSError as exc:
            self.error = f"cannot read {self.path}: {exc.strerror or exc}"
            return
        if self.fed == self.pieces:
            self.digest = self._b3.hexdigest()

    def problem(self) -> str | None:
        """Once complete: None if the file is the manifest's file, else why not."""
        if self.error:
            return self.error
        try:
            size = self.path.stat().st_size
        except OSError as exc:
            return f"cannot read {self.path}: {exc.strerror or exc}"
        why = self.entry.mismatch(size, self.digest or "")
        return f"{self.entry.path}: {why}" if why else None


@dataclass
class Release:
    spec: ReleaseSpec
    manifest: Manifest
    handle: lt.torrent_handle
    files: dict[str, FileStatus]
    selected_size: int
    priorities: list[int] = field(default_factory=list)  # per torrent file (pad files included)
    renamed: dict[int, str] = field(default_factory=dict)  # torrent file index -> path in the release folder
    twin: lt.torrent_handle | None = None  # the v1-only twin, when the manifest pins one
    via_twin: bool = False  # the twin, not the hybrid, is the one downloading
    stalled_since: float | None = None  # since when the downloading torrent has had no peers
    state: State = State.CHECKING
    error: str | None = None
    tracker_error: str | None = None
    saved_when_seeding: bool = False  # resume data written once the release turned to seeding
    cursors: dict[str, FileCursor] = field(default_factory=dict)
    flushing: list[tuple[FileCursor, int]] | None = None  # cursor targets awaiting cache_flushed_alert
    flushes_pending: int = 0  # cache_flushed_alerts still to come (one per handle)
    sequential: bool = False
    piece_to_file: dict[int, str] = field(default_factory=dict)  # hybrid torrents: one file per piece
    hash_failures: int = 0
    banned: set[str] = field(default_factory=set)  # peers banned for sending data that failed the hash
    rechecks: int = 0
    verified_at: float | None = None
    downloaded_bytes: int = 0
    uploaded_bytes: int = 0
    reused_bytes: int = 0  # selected files on disk and verified when added: not downloaded
    seeded_seconds: float = 0.0  # libtorrent's finished_duration: kept in resume data across restarts
    initial_seeding: bool = False  # in BEP 16 mode now (spec.initial_seeding until the swarm has a copy)
    seen_elsewhere: set[int] = field(default_factory=set)  # initial seeding: pieces seen at some peer
    seen_checked_at: float = 0.0

    @property
    def dir(self) -> Path:
        return Path(self.spec.save_dir)

    @property
    def all_verified(self) -> bool:
        return all(s in (FileStatus.VERIFIED, FileStatus.SKIPPED) for s in self.files.values())

    @property
    def handles(self) -> list[lt.torrent_handle]:
        return [self.handle] if self.twin is None else [self.handle, self.twin]

    @property
    def active(self) -> lt.torrent_handle:
        """The torrent that downloads (the other one only seeds what it has)."""
        return self.twin if self.via_twin and self.twin is not None else self.handle

    def have_piece(self, piece: int) -> bool:
        return any(h.have_piece(piece) for h in self.handles)


def check_files(manifest: Manifest, spec: ReleaseSpec, known: AbstractSet[str] = frozenset()) -> frozenset[str]:
    """What must hold on disk before a release is added; thread-safe (no libtorrent). Returns
    the selected files already there and verified, whose pieces the node then marks as had.

    A publisher's release (``seed_forever``: its pieces will be marked as had without libtorrent
    checking them) must be the manifest's files, BLAKE3 and SHA-256, whoever asked for it. For a
    download, a file already at a target path must be the release's own file, or nothing is
    added: it is never overwritten. ``known``: paths just placed from verified copies (the store's
    other releases, checked by BLAKE3 on the way in), not hashed again."""
    save_dir = Path(spec.save_dir)
    if spec.seed_forever:
        reports = verify_release(manifest, save_dir)
        bad = [r for r in reports if not r.ok]
        if bad:
            detail = f" ({bad[0].detail})" if bad[0].detail else ""
            more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
            raise VerificationError(
                f"refusing to seed {manifest.name}: {bad[0].entry.path} is {bad[0].state.value}{detail}{more}", reports
            )
        return frozenset(f.path for f in manifest.files)
    need = 0  # bytes still to be written: the selected files not on disk yet
    present = set()
    with Hasher() as hasher:
        for entry in manifest.files:
            if not entry.selected_by(spec.include):
                continue
            path = safe_join(save_dir, entry.path)
            if not path.exists():
                need += entry.size
                continue
            if path.is_file() and path.stat().st_size == entry.size:
                if entry.path in known:
                    present.add(entry.path)
                    continue
                digest = hasher.hash_file(path, sha256=False)
                if entry.mismatch(digest.size, digest.blake3) is None:
                    present.add(entry.path)
                    continue
            raise ReleaseConflict(
                f"{path} is in the way: it exists with other content than {manifest.name}'s "
                f"{entry.path}; move it away first (nothing was overwritten)"
            )
    save_dir.mkdir(parents=True, exist_ok=True)
    check_free_space(save_dir, need)
    return frozenset(present)


class Node:
    def __init__(self, state_dir: Path, net: NetworkOptions) -> None:
        self.state_dir = state_dir
        (state_dir / "releases").mkdir(parents=True, exist_ok=True)
        self.net = net
        # The binding takes a settings dict (its stubs list only settings_pack and session_params).
        self.session = lt.session(session_settings(net))  # type: ignore[call-overload]
        self.session.add_extension("smart_ban")  # ban peers whose data fails the hash check
        if net.upload_rate_limit or net.download_rate_limit:
            # libtorrent exempts LAN/loopback peers from rate limits by default; a user who sets a
            # limit means every peer, so put all addresses in the global (limited) peer class.
            everyone = lt.ip_filter()
            everyone.add_rule("0.0.0.0", "255.255.255.255", 1 << lt.session.global_peer_class_id)
            everyone.add_rule("::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 1 << lt.session.global_peer_class_id)
            self.session.set_peer_class_filter(everyone)
        self.releases: dict[str, Release] = {}
        #: Saved releases that could not be restored, by name → why; shown in ``status`` as errors.
        self.broken: dict[str, str] = {}
        self._by_hash: dict[str, str] = {}
        self._hasher = Hasher(piece_workers=1)
        self._verify_pool = ThreadPoolExecutor(1, thread_name_prefix="verify")
        self._pending_resume = 0
        self._wakeup: Callable[[], None] | None = None
        #: Signed channels in the DHT (publish, resolve) and the manifest torrents they carry.
        self.channels = Channels(self.session, state_dir / "channels")
        #: LAN discovery: this node's complete releases offered on multicast (None: off).
        self.lan: LanOffers | None = None
        if net.lan is not None:
            try:
                self.lan = LanOffers(
                    net.lan,
                    state_dir / "lan",
                    self.listen_port,
                    self.channels.seed_manifest,
                    self.channels.forget_manifest,
                )
            except OSError as exc:  # no multicast route, the port refused...: the node runs without
                log.warning(
                    "LAN discovery off: cannot join %s:%d on %s (%s)",
                    net.lan.host,
                    net.lan.port,
                    net.lan.interface,
                    exc,
                )

    def set_wakeup(self, wakeup: Callable[[], None], alert_fd: int) -> None:
        """Let an event loop poll at once instead of on a timer: libtorrent writes a byte to
        ``alert_fd`` (a non-blocking pipe) when alerts arrive, and finished hash jobs call
        ``wakeup`` from their thread. (Not ``set_alert_notify``: its Python callback needs the
        GIL on libtorrent's thread, which deadlocks with a session being destroyed.)"""
        self._wakeup = wakeup
        self.session.set_alert_fd(alert_fd)

    def _hash_then_wake(self, cursor: FileCursor, k: int) -> None:
        cursor.advance_to(k)
        if self._wakeup is not None:
            self._wakeup()

    # ------------------------------------------------------------------ lifecycle

    @property
    def listen_port(self) -> int:
        return self.session.listen_port()

    def restore(self) -> list[str]:
        """Re-add every release saved in the state dir (after a restart or crash)."""
        self.channels.restore(key_pair)
        restored = []
        for folder in sorted((self.state_dir / "releases").iterdir()):
            for stray in folder.glob(".*.incomplete"):  # an atomic write cut short by a crash
                stray.unlink(missing_ok=True)
            try:
                spec = ReleaseSpec.from_json((folder / "spec.json").read_text())
                manifest = load_manifest(folder / "manifest.toml")
                resume, twin_resume = _read_resume(folder / "resume.dat"), _read_resume(folder / "resume-v1.dat")
                self._add(manifest, spec, resume, twin_resume)
                restored.append(spec.name)
            except Exception as exc:  # one bad release must never keep the daemon, or the others, down
                log.error("cannot restore %s: %s", folder.name, exc)
                self.broken[folder.name] = f"cannot be restored ({exc}); llamashare stop {folder.name} forgets it"
        return restored

    def close(self) -> None:
        """Save resume data for every release, then stop the session."""
        self.save_resume_data(wait=True)
        if self.lan is not None:
            self.lan.close()
        self._verify_pool.shutdown(wait=True, cancel_futures=True)
        self._hasher.close()
        self.session.pause()
        del self.session

    # ------------------------------------------------------------------ adding and removing

    def add(self, manifest: Manifest, spec: ReleaseSpec, present: AbstractSet[str] | None = None) -> Release:
        """Start fetching (or seeding) a release. Raises ReleaseError for conflicts.

        ``present``: what :func:`check_files` returned for it, when it already ran (the daemon
        runs it on a worker thread, so hashing gigabytes never holds up its event loop)."""
        if spec.name in self.releases:
            raise ReleaseConflict(f"release {spec.name!r} is already in this node")
        if manifest.torrent.data is None:
            raise ReleaseError(f"manifest for {manifest.name!r} has no torrent data")
        for peer in spec.peers:
            parse_peer(peer)  # refused now, before anything is saved that a restart would trip on
        save_dir = Path(spec.save_dir)
        save_dir.mkdir(parents=True, exist_ok=True)
        if present is None:
            present = check_files(manifest, spec)
        folder = self.state_dir / "releases" / spec.name
        atomic_write(folder / "manifest.toml", dumps(manifest).encode())
        atomic_write(folder / "spec.json", spec.to_json().encode())
        try:
            return self._add(manifest, spec, None, present=present)
        except Exception as exc:  # libtorrent's own errors included: nothing of it may stay saved
            self._forget_state(spec.name)
            if isinstance(exc, LlamashareError):
                raise
            raise ReleaseError(f"{spec.name}: libtorrent refused the release ({exc})") from None

    def _add(
        self,
        manifest: Manifest,
        spec: ReleaseSpec,
        resume: lt.add_torrent_params | None | bool,
        twin_resume: lt.add_torrent_params | None | bool = None,
        present: AbstractSet[str] = frozenset(),
    ) -> Release:
        """Add the release's torrent(s) from their resume data, or from the manifest when there is
        none (``None``) or it was unreadable (``False``: then what is on disk is checked).
        ``present``: files just verified on disk by BLAKE3 (:func:`check_files`)."""
        atp = resume if isinstance(resume, lt.add_torrent_params) else lt.load_torrent_buffer(_torrent(manifest))
        ti = atp.ti
        assert ti is not None  # loaded from the manifest's torrent or from resume data holding it
        fs = ti.layout()
        # Files land at DIR/<path>, not DIR/<torrent name>/<path>: the release folder is DIR.
        prefix = manifest.name + "/"
        renamed = {}
        priorities = []
        files: dict[str, FileStatus] = {}
        by_path = {f.path: f for f in manifest.files}
        for i in range(fs.num_files()):
            path = fs.file_path(i).replace("\\", "/")
            if fs.file_flags(i) & lt.file_storage.flag_pad_file:
                priorities.append(0)
                continue
            rel = path[len(prefix) :] if path.startswith(prefix) else path
            renamed[i] = rel
            wanted = by_path[rel].selected_by(spec.include)
            priorities.append(4 if wanted else 0)
            files[rel] = FileStatus.PENDING if wanted else FileStatus.SKIPPED
        for peer in spec.peers:
            parse_peer(peer)
        # The publisher's files were just verified (BLAKE3 + SHA-256 against the manifest, which
        # pins the torrent): mark every piece as had, so libtorrent neither re-checks the files
        # on add nor re-hashes each piece on first upload (as seed mode would). Not after unreadable
        # resume data: then nothing on disk is trusted, not even a publisher's own files.
        trusted = spec.seed_forever and resume is None and twin_resume is not False
        seeded = [True] * ti.num_pieces() if trusted else None
        # Likewise for a download's files already on disk and verified (linked from the store's
        # other releases, or kept from before): their pieces are had, not re-checked by reading
        # every byte again; libtorrent fetches only the rest.
        on_disk = {rel for rel in present if files.get(rel) is FileStatus.PENDING} if resume is None else set()
        if on_disk and seeded is None:
            seeded = _pieces_within(fs, piece_size=ti.piece_length(), paths=renamed, present=on_disk)
            for rel in on_disk:
                files[rel] = FileStatus.VERIFIED
        handle = self._add_torrent(atp, spec, renamed, priorities, FileStatus.SKIPPED in files.values(), seeded)
        release = Release(
            spec,
            manifest,
            handle,
            files,
            priorities=priorities,
            renamed=renamed,
            selected_size=sum(f.size for f in manifest.files if files[f.path] is not FileStatus.SKIPPED),
            reused_bytes=sum(f.size for f in manifest.files if f.path in on_disk),
        )
        if manifest.torrent.v1_twin is not None:
            twin_atp = (
                twin_resume
                if isinstance(twin_resume, lt.add_torrent_params)
                else lt.load_torrent_buffer(v1_companion(_torrent(manifest)))
            )
            # Until a fetch needs it, the twin only announces and seeds what it has (priority 0).
            watching = priorities if spec.seed_forever else [0] * len(priorities)
            release.twin = self._add_torrent(twin_atp, spec, renamed, watching, True, seeded)
            self._by_hash[manifest.torrent.v1_twin] = spec.name
        if spec.seed_forever:
            release.files = {p: (s if s is FileStatus.SKIPPED else FileStatus.VERIFIED) for p, s in files.items()}
        piece_size = ti.piece_length()
        for i, rel in renamed.items():
            if files[rel] is FileStatus.PENDING and fs.file_size(i):
                first = fs.file_offset(i) // piece_size
                for p in range(first, first + -(-fs.file_size(i) // piece_size)):
                    release.piece_to_file[p] = rel
        if spec.initial_seeding and spec.seed_forever:
            release.initial_seeding = True
            for h in release.handles:
                h.set_flags(lt.torrent_flags.super_seeding)
        self._reset_cursors(release)
        self.releases[spec.name] = release
        self._keep_seeds_connected()
        self._by_hash[str(handle.info_hashes().v1)] = spec.name
        for peer in spec.peers:
            for h in release.handles:
                h.connect_peer(parse_peer(peer))
        return release

    def _add_torrent(
        self,
        atp: lt.add_torrent_params,
        spec: ReleaseSpec,
        renamed: dict[int, str],
        priorities: list[int],
        set_priorities: bool,
        have: list[bool] | None,
    ) -> lt.torrent_handle:
        atp.save_path = spec.save_dir
        atp.renamed_files = renamed
        if set_priorities:
            atp.file_priorities = priorities  # (setting priorities at all would end seed mode)
        atp.flags &= ~lt.torrent_flags.auto_managed
        if spec.paused:
            atp.flags |= lt.torrent_flags.paused
        else:
            atp.flags &= ~lt.torrent_flags.paused
        # libtorrent puts a torrent in upload mode after a disk error and saves that in its
        # resume data; a restart (or retry) is the moment to try writing again.
        atp.flags &= ~lt.torrent_flags.upload_mode
        if have is not None:
            atp.have_pieces = have
        return self.session.add_torrent(atp)

    def _reset_cursors(self, release: Release, only: str | None = None) -> None:
        piece_size = release.manifest.torrent.piece_size
        firsts: dict[str, int] = {}
        for p, rel in sorted(release.piece_to_file.items(), reverse=True):
            firsts[rel] = p
        for entry in release.manifest.files:
            if only is not None and entry.path != only:
                continue
            if release.files.get(entry.path) in (FileStatus.PENDING, FileStatus.FAILED):
                path = safe_join(release.dir, entry.path)
                release.cursors[entry.path] = FileCursor(entry, path, firsts.get(entry.path, 0), piece_size)

    def remove(self, name: str) -> None:
        """Stop a release and forget it; its files stay where they are."""
        if name in self.broken and name not in self.releases:
            self._forget_state(name)
            return
        release = self._get(name)
        for h in release.handles:
            self.session.remove_torrent(h)
        del self.releases[name]
        self._keep_seeds_connected()
        self._forget_state(name)

    def _forget_state(self, name: str) -> None:
        """Delete what this node saved for ``name`` (only its own files, then the empty folder)."""
        self.broken.pop(name, None)
        folder = self.state_dir / "releases" / name
        for f in ("resume.dat", "resume-v1.dat", "spec.json", "manifest.toml"):
            (folder / f).unlink(missing_ok=True)
        try:
            folder.rmdir()
        except OSError:  # not there, or holds something we did not write
            pass

    def retry(self, name: str) -> None:
        """Clear a release's error (disk freed, permissions fixed) and carry on where it stood;
        a paused release is resumed (asking for it again means wanting it)."""
        release = self._get(name)
        if release.spec.paused:
            self.set_paused(name, False)
        if release.state is not State.ERROR:
            return
        release.error, release.state, release.rechecks = None, State.CHECKING, 0
        for h in release.handles:
            h.unset_flags(lt.torrent_flags.upload_mode)
            h.clear_error()
            h.resume()

    def set_targets(self, name: str, ratio: float | None, seed_time: float | None) -> None:
        release = self._get(name)
        release.spec.ratio, release.spec.seed_time = ratio, seed_time
        self._save_spec(release)
        if release.state is State.DONE and not release.spec.paused and not self._target_reached(release):
            for h in release.handles:
                h.resume()
            release.state = State.SEEDING

    def set_paused(self, name: str, paused: bool) -> None:
        """Stop a release's transfers until resumed; saved, so a restarted daemon keeps it so.
        Resuming hands it back to the loop, which works out its state again (seeding, done, …)."""
        release = self._get(name)
        if release.spec.paused == paused:
            return
        if release.state is State.ERROR:
            raise ReleaseError(f"{name} is in error ({release.error}); fetch it again to retry")
        release.spec.paused = paused
        self._save_spec(release)
        for h in release.handles:
            h.pause() if paused else h.resume()
        release.state = State.PAUSED if paused else State.CHECKING
        log.info("%s: %s by the user", name, "paused" if paused else "resumed")

    def _save_spec(self, release: Release) -> None:
        atomic_write(self.state_dir / "releases" / release.spec.name / "spec.json", release.spec.to_json().encode())

    def key_of(self, manifest: Manifest) -> str | None:
        """The name under which this node has exactly this release (same torrent), if it does."""
        want = manifest.torrent.info_hash_v1
        return next((k for k, r in self.releases.items() if r.manifest.torrent.info_hash_v1 == want), None)

    def _get(self, name: str) -> Release:
        if name not in self.releases:
            raise ReleaseError(f"no release named {name!r} in this node")
        return self.releases[name]

    # ------------------------------------------------------------------ the loop

    def poll(self) -> None:
        """Handle libtorrent's alerts, finished verifications and seeding targets. Call often."""
        for alert in self.session.pop_alerts():
            self._on_alert(alert)
        for release in self.releases.values():
            self._collect_verifications(release)
            self._update_state(release)
        self.channels.tick()
        if self.lan is not None:
            self.lan.tick(
                {
                    k: r.manifest
                    for k, r in self.releases.items()
                    if r.state is State.SEEDING and not r.spec.include  # whole, and uploading
                }
            )

    def _release_for(self, alert: lt.alert) -> Release | None:
        handle = getattr(alert, "handle", None)
        if handle is None or not handle.is_valid():
            return None
        name = self._by_hash.get(str(handle.info_hashes().v1))
        return self.releases.get(name) if name else None

    def _on_alert(self, alert: lt.alert) -> None:
        if isinstance(alert, (lt.dht_mutable_item_alert, lt.dht_put_alert)):
            self.channels.on_alert(alert)
            return
        release = self._release_for(alert)
        if isinstance(alert, lt.save_resume_data_alert):
            self._pending_resume -= 1
            if release:
                data = lt.write_resume_data_buf(alert.params)
                name = "resume-v1.dat" if alert.handle == release.twin else "resume.dat"
                atomic_write(self.state_dir / "releases" / release.spec.name / name, data)
        elif isinstance(alert, lt.save_resume_data_failed_alert):
            self._pending_resume -= 1
        if release is None:
            return
        if isinstance(alert, lt.cache_flushed_alert):
            release.flushes_pending -= 1
            if release.flushes_pending > 0:
                return
            for cursor, k in release.flushing or ():
                if release.cursors.get(cursor.entry.path) is cursor:  # not replaced by a re-check
                    cursor.safe = k
                    self._verify_pool.submit(self._hash_then_wake, cursor, k)
            release.flushing = None
        elif isinstance(alert, lt.hash_failed_alert):
            release.hash_failures += 1
        elif isinstance(alert, lt.peer_ban_alert):
            release.banned.add("{}:{}".format(*alert.endpoint))
            log.warning("%s: banned peer %s:%d (sent corrupt data)", release.spec.name, *alert.endpoint)
        elif isinstance(alert, lt.tracker_error_alert):
            reason = alert.error.message() if alert.error.value() else ""
            said = alert.error_message()  # the tracker's own failure reason, if it answered
            release.tracker_error = f"tracker {alert.tracker_url()}: " + "; ".join(x for x in (reason, said) if x)
        elif isinstance(alert, lt.tracker_reply_alert):
            release.tracker_error = None
        elif isinstance(alert, (lt.file_error_alert, lt.torrent_error_alert)):
            release.state = State.ERROR
            release.error = _storage_message(alert, release.dir)
            log.error("%s: %s", release.spec.name, release.error)

    def _collect_verifications(self, release: Release) -> None:
        """Move cursors along the download; judge every file whose cursor is complete."""
        if release.state in (State.ERROR, State.CHECKING):
            return
        pending = [(rel, c) for rel, c in release.cursors.items() if release.files.get(rel) is FileStatus.PENDING]
        if release.flushing is None:
            targets = [(c, k) for _, c in pending if (k := c.frontier(release.have_piece)) > c.safe]
            if targets:
                release.flushing = targets
                release.flushes_pending = len(release.handles)
                for h in release.handles:
                    h.flush_cache()
        for rel, cursor in pending:
            if not cursor.complete:
                continue
            problem = cursor.problem()
            if problem is None:
                release.files[rel] = FileStatus.VERIFIED
                continue
            release.files[rel] = FileStatus.FAILED
            log.warning("%s: %s", release.spec.name, problem)
            if release.rechecks < 2:
                # Re-check the pieces against the torrent: damaged ones are fetched again.
                release.rechecks += 1
                release.files[rel] = FileStatus.PENDING
                self._reset_cursors(release, only=rel)
                for h in release.handles:
                    h.force_recheck()
            else:
                release.state = State.ERROR
                release.error = (
                    f"{problem} (pieces match the torrent but not the manifest: the manifest is inconsistent)"
                )

    def _update_state(self, release: Release) -> None:
        if release.state is State.ERROR:
            return
        statuses = [h.status() for h in release.handles]
        release.downloaded_bytes = sum(s.all_time_download for s in statuses)
        release.uploaded_bytes = sum(s.all_time_upload for s in statuses)
        release.seeded_seconds = max(_seconds(s.finished_duration) for s in statuses)
        if release.spec.paused:
            release.state = State.PAUSED
            return
        if release.state in (State.DONE, State.COMPLETE):
            return
        st = statuses[release.via_twin]
        if st.state in (lt.torrent_status.checking_files, lt.torrent_status.checking_resume_data):
            release.state = State.CHECKING
        elif not release.all_verified:
            release.state = State.VERIFYING if st.is_finished else State.DOWNLOADING
            if release.twin is not None:
                self._pick_downloader(release, statuses)
            # Rarest-first keeps a swarm healthy only while peers hold different pieces. When every
            # connected peer is a seed, any order is as good for the swarm, and in-order lets the
            # BLAKE3 cursors follow the download instead of hashing whole files at the end.
            sequential = 0 < st.num_peers == st.num_seeds
            if sequential != release.sequential:
                release.sequential = sequential
                (release.active.set_flags if sequential else release.active.unset_flags)(
                    lt.torrent_flags.sequential_download
                )
        else:
            if release.verified_at is None:
                release.verified_at = time.time()
            if release.spec.no_seed:
                for h in release.handles:
                    h.pause()
                release.state = State.COMPLETE
                self._save_one(release)
                return
            if not release.saved_when_seeding:
                release.saved_when_seeding = True
                if release.twin is not None and not release.spec.seed_forever:
                    self._seed_both(release)
                self._save_one(release)
            release.state = State.SEEDING
            if release.initial_seeding:
                self._end_initial_seeding_when_copied(release)
            if self._target_reached(release):
                for h in release.handles:
                    h.pause()
                release.state = State.DONE
                self._save_one(release)
                log.info("%s: seeding target reached (ratio %.2f)", release.spec.name, self.ratio(release))

    def _pick_downloader(self, release: Release, statuses: list[lt.torrent_status]) -> None:
        """Hand the download to the other torrent of the pair when the downloading one has had
        no connected peer for SWITCH_AFTER seconds while the other one knows some (e.g. a swarm
        of aria2 seeds on the v1 twin). The one that stops keeps its pieces and seeds them."""
        active, other = statuses[release.via_twin], statuses[not release.via_twin]
        if active.num_peers or not other.list_peers:
            release.stalled_since = None
            return
        now = time.monotonic()
        if release.stalled_since is None:
            release.stalled_since = now
        if now - release.stalled_since < SWITCH_AFTER:
            return
        release.active.prioritize_files([0] * len(release.priorities))
        release.active.unset_flags(lt.torrent_flags.sequential_download)
        release.via_twin, release.stalled_since, release.sequential = not release.via_twin, None, False
        release.active.prioritize_files(release.priorities)
        log.info(
            "%s: downloading through the %s torrent (no peers on the other)",
            release.spec.name,
            "v1 twin" if release.via_twin else "hybrid",
        )

    def _end_initial_seeding_when_copied(self, release: Release) -> None:
        """Once every piece has been seen at some peer, the swarm holds a whole copy without the
        origin: holding pieces back would only slow the last leechers down, so seed plainly.

        A union over time, sampled once a second; peers that complete stay connected meanwhile
        (see _keep_seeds_connected), so a swarm that finishes between two samples is still seen."""
        now = time.monotonic()
        if now - release.seen_checked_at < 1.0:
            return
        release.seen_checked_at = now
        info = release.active.torrent_file()
        if info is None:  # metadata always comes with the manifest; never None here
            return
        pieces = info.num_pieces()
        for h in release.handles:
            for peer in h.get_peer_info():
                if peer.flags & lt.peer_info.seed:
                    release.seen_elsewhere.update(range(pieces))
                    break
                release.seen_elsewhere.update(i for i, have in enumerate(peer.pieces) if have)
        if len(release.seen_elsewhere) < pieces:
            return
        release.initial_seeding = release.spec.initial_seeding = False
        self._save_spec(release)  # a restarted daemon must not start holding pieces back again
        for h in release.handles:
            h.unset_flags(lt.torrent_flags.super_seeding)
        self._keep_seeds_connected()
        log.info("%s: every piece is in the swarm; initial seeding ends", release.spec.name)

    def _keep_seeds_connected(self) -> None:
        """While a release is initial seeding, keep connections to peers that have completed.

        libtorrent closes a connection between two seeds at once; when a whole swarm finished
        within a second, the origin never saw its last pieces anywhere and held pieces back for
        good (it happened in a CI run of tests/test_swarm_scale.py). Idle seed connections cost a slot each and
        are closed after inactivity_timeout; plain seeding closes them as usual."""
        keep = any(r.initial_seeding for r in self.releases.values())
        self.session.apply_settings({"close_redundant_connections": not keep})

    def _seed_both(self, release: Release) -> None:
        """Once every file is verified, let both torrents of the pair seed it all.

        The one that did not download lacks those pieces; its files are now verified against
        the manifest, which pins both torrents, so re-add it with the pieces marked had instead
        of re-reading gigabytes in a re-check. Its transfer totals carry over."""
        for twin in (False, True):
            old = release.twin if twin else release.handle
            if old is None or all(old.have_piece(p) for p in release.piece_to_file):
                continue
            st = old.status()
            data = _torrent(release.manifest)
            atp = lt.load_torrent_buffer(v1_companion(data) if twin else data)
            atp.total_uploaded, atp.total_downloaded = st.all_time_upload, st.all_time_download
            assert atp.ti is not None
            have = [p in release.piece_to_file for p in range(atp.ti.num_pieces())]
            self.session.remove_torrent(old)
            new = self._add_torrent(atp, release.spec, release.renamed, release.priorities, True, have)
            if twin:
                release.twin = new
            else:
                release.handle = new

    def ratio(self, release: Release) -> float:
        return release.uploaded_bytes / max(1, release.selected_size)

    def _target_reached(self, release: Release) -> bool:
        spec = release.spec
        if spec.seed_forever:
            return False
        if spec.ratio is not None and self.ratio(release) >= spec.ratio:
            return True
        return spec.seed_time is not None and release.seeded_seconds >= spec.seed_time

    # ------------------------------------------------------------------ resume data

    def _save_one(self, release: Release) -> None:
        for h in release.handles:
            h.save_resume_data(lt.torrent_handle.save_info_dict)
            self._pending_resume += 1

    def save_resume_data(self, wait: bool = False, timeout: float = 10.0) -> None:
        for release in self.releases.values():
            self._save_one(release)
        deadline = time.monotonic() + timeout
        while wait and self._pending_resume > 0 and time.monotonic() < deadline:
            self.session.wait_for_alert(100)
            for alert in self.session.pop_alerts():
                self._on_alert(alert)

    # ------------------------------------------------------------------ status

    def status(self) -> list[ReleaseStatus]:
        out = []
        for name, r in sorted(self.releases.items()):
            statuses = [h.status() for h in r.handles]
            st = statuses[r.via_twin]
            out.append(
                ReleaseStatus(
                    name=name,
                    version=r.manifest.version,
                    license=r.manifest.license_line,
                    dir=r.spec.save_dir,
                    state=r.state,
                    error=r.error,
                    tracker_error=r.tracker_error,
                    size=r.selected_size,
                    done=st.total_wanted_done,
                    progress=st.progress,
                    # libtorrent's rate is an average that decays for seconds after the last byte; a
                    # seed downloads nothing, so it says 0 rather than a made-up trickle.
                    download_rate=sum(s.download_payload_rate for s in statuses if not s.is_seeding),
                    upload_rate=sum(s.upload_payload_rate for s in statuses),
                    downloaded=r.downloaded_bytes,
                    reused=r.reused_bytes,
                    uploaded=r.uploaded_bytes,
                    ratio=self.ratio(r),
                    ratio_target=None if r.spec.seed_forever else r.spec.ratio,
                    seed_time=r.spec.seed_time,
                    seeded_seconds=round(r.seeded_seconds, 1),
                    paused=r.spec.paused,
                    seed_forever=r.spec.seed_forever,
                    initial_seeding=r.initial_seeding,
                    peers=sum(s.num_peers for s in statuses),
                    seeds=sum(s.num_seeds for s in statuses),
                    via="v1 twin" if r.via_twin else "hybrid",
                    hash_failures=r.hash_failures,
                    banned_peers=tuple(sorted(r.banned)),
                    files=dict(r.files),
                    info_hash_v1=r.manifest.torrent.info_hash_v1,
                    v1_twin=r.manifest.torrent.v1_twin,
                )
            )
        out += [ReleaseStatus.unrestorable(name, why) for name, why in sorted(self.broken.items())]
        return out


def key_pair(path: Path) -> tuple[bytes, bytes]:
    """A publisher's key file as libtorrent's DHT takes it: (public key, expanded secret)."""
    return libtorrent_keys(load_private_key(path))


def _read_resume(path: Path) -> lt.add_torrent_params | None | bool:
    """Saved resume data; ``None`` if there is none, ``False`` if it cannot be read (then the
    files are checked from scratch: slower, never wrong)."""
    if not path.exists():
        return None
    try:
        return lt.read_resume_data(path.read_bytes())
    except (RuntimeError, OSError) as exc:
        log.warning("%s: resume data unreadable (%s): re-checking the files instead", path, exc)
        return False


def _pieces_within(fs: lt.file_storage, piece_size: int, paths: dict[int, str], present: set[str]) -> list[bool]:
    """Per piece: whether every file it holds bytes of is in ``present`` (pad files aside)."""
    have = [True] * -(-fs.total_size() // piece_size)
    for i, rel in paths.items():
        if rel in present or not fs.file_size(i):
            continue
        first, last = fs.file_offset(i) // piece_size, (fs.file_offset(i) + fs.file_size(i) - 1) // piece_size
        have[first : last + 1] = [False] * (last + 1 - first)
    return have


def _seconds(duration: timedelta | float) -> float:
    """libtorrent reports durations as timedelta in some builds and as seconds in others."""
    return duration.total_seconds() if isinstance(duration, timedelta) else float(duration)


def _torrent(manifest: Manifest) -> bytes:
    """The release's .torrent bytes (a manifest loaded for a node always carries them)."""
    if manifest.torrent.data is None:
        raise ReleaseError(f"{manifest.name}: the manifest carries no torrent (load it with its .torrent beside it)")
    return manifest.torrent.data


_SPACE_ERRORS = ("file too large", "file too short", "no space left on device", "disk quota exceeded")


def _storage_message(alert: lt.alert, folder: Path) -> str:
    """One line: where, what libtorrent said, and the likely cause when it is about space."""
    error = getattr(alert, "error", None)
    text = error.message() if error is not None and hasattr(error, "message") else alert.message()
    filename = getattr(alert, "filename", None)
    where = (filename() if callable(filename) else filename) or str(folder)
    if text.lower() in _SPACE_ERRORS:
        text += " (disk full, quota or file size limit: free space, then `llamashare fetch` again resumes)"
    return f"{where}: {text}"
