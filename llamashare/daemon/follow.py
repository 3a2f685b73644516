"""``follow``: the daemon watches a channel and fetches each new version by itself.

A followed address is checked every ``follow_every`` seconds (config; default 10 minutes): the
node's channels resolve it (the same checks as ``fetch ed25519:…``: signature, hash, name, no
replayed seq). When the manifest it names is not the one last fetched, the daemon writes it to
its state folder and runs ``llamashare fetch FILE`` as a child process, so the new version goes
through the whole pipeline (publisher pins, license policy, download, verify, convert, quantize)
exactly as a user's fetch would, with its log in ``logs/``. The old version is a release of its
own in the store and the node and keeps seeding to its own target.

A version counts as fetched only when that child exits 0: a daemon stopped mid-download resumes
the release at its next start, and the next check starts the fetch again (finished steps are
skipped). One child per followed address at a time.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from llamashare.daemon.home import Home
from llamashare.errors import ManifestError
from llamashare.fsio import atomic_write
from llamashare.manifests.channel import Address, manifest_sha256, parse_address
from llamashare.p2p.channels import Channels, Resolution
from llamashare.text import printable

log = logging.getLogger("llamashare.follow")

#: Longest a check may wait for the DHT and the manifest's swarm before it is tried again later.
CHECK_TIMEOUT = 120.0


@dataclass(frozen=True)
class FollowOptions:
    """How each new version is fetched (the ``fetch`` flags of the same names)."""

    quant: str | None = None
    convert: bool = True
    ratio: float | None = None
    seed_time: float | None = None
    include: tuple[str, ...] = ()

    def args(self) -> list[str]:
        out = ["--no-convert"] if not self.convert else []
        out += ["--quant", self.quant] if self.quant and self.convert else []
        out += ["--ratio", repr(self.ratio)] if self.ratio is not None else []
        out += ["--seed-time", repr(self.seed_time)] if self.seed_time is not None else []
        for pattern in self.include:
            out += ["--include", pattern]
        return out


@dataclass
class Followed:
    """One followed channel: what was last fetched from it, and how the last check went."""

    address: str
    options: FollowOptions
    sha256: str | None = None  # the manifest last fetched completely
    version: str | None = None
    checked: float = 0.0  # wall-clock time of the last finished check
    error: str | None = None  # why the last check or fetch failed
    # in memory only
    resolution: Resolution | None = field(default=None, repr=False)
    child: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    pending: tuple[str, str] | None = field(default=None, repr=False)  # (sha256, version) of the child's
    due: float = field(default=0.0, repr=False)  # monotonic time of the next check

    @property
    def fetching(self) -> str | None:
        """The version a child is fetching now."""
        return self.pending[1] if self.pending else None

    def to_json(self) -> dict:
        return {
            "address": self.address,
            "options": {**asdict(self.options), "include": list(self.options.include)},
            "sha256": self.sha256,
            "version": self.version,
            "checked": self.checked,
            "error": self.error,
            "fetching": self.fetching,
        }


class Follower:
    """Every followed address of one daemon (saved in ``state/follows.json``)."""

    def __init__(self, home: Home, channels: Channels, every: float) -> None:
        self.home = home
        self.channels = channels
        self.every = every
        self.path = home.state_dir / "follows.json"
        self.follows: dict[str, Followed] = {}
        self._load()

    def _load(self) -> None:
        try:
            doc = json.loads(self.path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.error("cannot read %s (%s): no channel is followed", self.path, exc)
            return
        for raw in doc.get("follows", []) if isinstance(doc, dict) else []:
            try:
                opts = dict(raw.pop("options"))
                opts["include"] = tuple(opts.get("include", ()))
                f = Followed(options=FollowOptions(**opts), **{k: raw[k] for k in raw if k != "fetching"})
                parse_address(f.address)
            except (TypeError, KeyError, ValueError, AttributeError, ManifestError) as exc:
                log.error("ignoring a follow in %s: %s", self.path, exc)
                continue
            self.follows[f.address] = f

    def _save(self) -> None:
        doc = {"follows": [f.to_json() for f in self.follows.values()]}
        atomic_write(self.path, (json.dumps(doc, indent=1) + "\n").encode())

    def add(self, address: Address, options: FollowOptions, sha256: str | None, version: str | None) -> Followed:
        """Follow ``address``; ``sha256``: the manifest the caller has just fetched (None: fetch
        whatever the channel names at the first check)."""
        f = Followed(str(address), options, sha256=sha256, version=version, checked=time.time() if sha256 else 0.0)
        old = self.follows.get(f.address)
        if old is not None and old.child is not None:  # a fetch is running: keep it
            f.child, f.pending = old.child, old.pending
        f.due = time.monotonic() + (self.every if sha256 else 0.0)
        self.follows[f.address] = f
        self._save()
        return f

    def remove(self, address: str) -> bool:
        f = self.follows.pop(address, None)
        if f is None:
            return False
        if f.resolution is not None:
            self.channels.drop(f.resolution)
        self._save()  # a running fetch finishes: the version it fetches is a release like any other
        return True

    def tick(self) -> None:
        """Move every follow along (call from the daemon's loop; cheap when nothing is due)."""
        now = time.monotonic()
        for f in list(self.follows.values()):
            try:
                if f.child is not None:
                    self._child_done(f)
                elif f.resolution is not None:
                    self._check_done(f, now)
                elif now >= f.due:
                    f.resolution = self.channels.resolve(parse_address(f.address))
                    f.due = now + CHECK_TIMEOUT
            except Exception as exc:  # one follow's trouble (a full disk...) must not stop the daemon
                log.exception("follow %s", f.address)
                f.child, f.resolution, f.error = None, None, f"{type(exc).__name__}: {exc}"
                f.due = now + self.every

    def _check_done(self, f: Followed, now: float) -> None:
        r = f.resolution
        assert r is not None
        if not r.done and now < f.due:
            return
        f.resolution, f.due, f.checked = None, now + self.every, time.time()
        self.channels.drop(r)
        if r.manifest is None:
            f.error = r.error or f"no answer within {CHECK_TIMEOUT:.0f}s" + (f" ({r.refused})" if r.refused else "")
            log.warning("follow %s: %s", f.address, f.error)
            self._save()
            return
        sha = manifest_sha256(r.manifest)
        if sha == f.sha256:
            f.error = None
            self._save()
            return
        self._start_fetch(f, r.manifest, sha, r.seq)

    def _start_fetch(self, f: Followed, manifest: bytes, sha: str, seq: int) -> None:
        from llamashare.manifests.manifest import parse_manifest

        m = parse_manifest(manifest, source=f.address)  # checked by the resolution already
        folder = self.home.state_dir / "follows"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{m.name}.{sha[:12]}.toml"
        atomic_write(path, manifest)
        log_path = self._log_path(m.name)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "llamashare", "--home", str(self.home.root), "fetch", str(path), "-q"]
        cmd += f.options.args()
        with open(log_path, "ab") as out:
            out.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {m.name} {m.version} (seq {seq})\n".encode())
            out.flush()
            f.child = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
        f.pending = (sha, m.version)
        log.info("follow %s: new version %s (seq %d): fetching, log in %s", f.address, m.version, seq, log_path)
        self._save()

    def _child_done(self, f: Followed) -> None:
        assert f.child is not None
        code = f.child.poll()
        if code is None:
            return
        assert f.pending is not None
        if code == 0:
            (f.sha256, f.version), f.error = f.pending, None
            log.info("follow %s: version %s fetched", f.address, f.version)
        else:
            f.error = f"fetching version {f.fetching} failed (exit {code}): {self._last_line(f)}"
            log.warning("follow %s: %s", f.address, f.error)
        f.child, f.pending = None, None
        self._save()

    def _log_path(self, name: str) -> Path:
        """Where the child fetches of release ``name`` write (appended, one header per version)."""
        return self.home.root / "logs" / f"follow-{name}.log"

    def _last_line(self, f: Followed) -> str:
        try:
            with open(self._log_path(parse_address(f.address).name), "rb") as log_file:
                log_file.seek(max(0, log_file.seek(0, 2) - 4096))  # the end is enough: logs only grow
                lines = log_file.read().decode(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return printable(lines[-1] if lines else "(no output)", multiline=False)[:300]

    def close(self) -> None:
        """At daemon stop: a running fetch loses its daemon and fails; the next start redoes it."""
        for f in self.follows.values():
            if f.child is not None and f.child.poll() is None:
                f.child.terminate()
