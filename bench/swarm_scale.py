#!/usr/bin/env python3
"""Benchmark: one origin and N llamashare daemons (separate processes) sharing a release on 127.0.0.1.

    python bench/swarm_scale.py [--nodes 16] [--size-mib 256] [--churn 8] [--origin-uplink-mib 32]

Every node is a real daemon in its own home, every peer comes from one real tracker (Debian's
opentracker), and the nodes keep the product's default seeding target (ratio 1.0). The origin
(the publisher's `llamashare seed`) is given a limited uplink, as a real publisher's home line or
small server is; the leechers are not. Three runs by default:

- initial: the origin seeds with BEP 16 initial seeding (`seed --initial-seeding`);
- churn: the same, with K nodes SIGKILLed at random moments while they download and restarted a
  moment later (the release comes back from the daemon's state on disk, re-checked);
- plain: the origin seeds plainly (`seed`'s default), for comparison.

What it is compared with: the central host the swarm replaces, whose origin uploads N × the
release, and plain seeding in the same run. The table gives the origin's upload as a multiple of
the release (target ≤ 2×), each node's completion time, the bytes re-downloaded because of the
kills (pieces a node had when killed but not after its restart's re-check) and an independent
BLAKE3 of every node's files against the manifest. `tests/test_swarm_scale.py` runs the first two
and asserts those figures.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import blake3
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from llamashare.daemon.client import DaemonClient, StartOptions, start_daemon, stop_daemon  # noqa: E402
from llamashare.daemon.home import Home  # noqa: E402
from llamashare.daemon.submit import FetchOptions, release_status, seed  # noqa: E402
from llamashare.errors import DaemonError  # noqa: E402
from llamashare.manifests.create import ReleaseInfo, create_release, write_release  # noqa: E402
from llamashare.manifests.manifest import Manifest  # noqa: E402
from tests.peers import Tracker  # noqa: E402

MiB = 1024 * 1024
POLL = 0.2  # seconds between status polls of every node


@dataclass
class NodeLog:
    """What one leecher did, across its restarts."""

    home: Home
    client: DaemonClient | None = None
    last_done: int = 0
    finished: float | None = None  # seconds from submit to every file verified
    restart_at: float | None = None  # when killed: the moment to start it again
    restarting: Future | None = None
    kills: int = 0
    lost: int = 0  # bytes it had written but had to fetch again after a kill (done before − done after check)
    done_at_kill: int = 0  # bytes it had just before its last kill


@dataclass
class SwarmReport:
    nodes: int
    size: int
    piece: int
    files: int
    origin_uplink: int
    seconds: list[float]
    origin_uploaded: int
    origin_still_initial: bool  # initial seeding did not notice (or save) that the swarm holds every piece
    kills: int
    lost_at_kills: int
    hash_failures: int
    checked_files: int
    bad_files: list[str] = field(default_factory=list)

    @property
    def origin_copies(self) -> float:
        return self.origin_uploaded / self.size


def make_release(work: Path, tracker: Tracker, size: int, piece: int, files: int) -> tuple[Manifest, Path, Path]:
    src = work / "origin-files" / "model"
    rng = np.random.default_rng(7)
    src.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        path = src / f"model-{i + 1:05d}-of-{files:05d}.bin"
        part = size // files + (size % files if i == files - 1 else 0)
        if not (path.exists() and path.stat().st_size == part):
            with open(path, "wb") as f:
                for left in range(part, 0, -64 * MiB):
                    f.write(rng.bytes(min(left, 64 * MiB)))
    m, torrent = create_release(src, ReleaseInfo(name="model", license="MIT", trackers=((tracker.http,),)), piece)
    tracker.allow(m.torrent.info_hash_v1, m.torrent.info_hash_v2)
    manifest_path = work / "model.toml"
    write_release(m, torrent, manifest_path, force=True)  # a new tracker port each run
    return m, src, manifest_path


def fresh_home(work: Path, name: str, extra: str = "") -> Home:
    shutil.rmtree(work / "homes" / name, ignore_errors=True)
    return Home.local_node(work / "homes" / name, extra)


def run_swarm(
    work: Path,
    nodes: int = 16,
    size: int = 256 * MiB,
    piece: int = 1 * MiB,
    files: int = 2,
    churn: int = 0,
    origin_uplink: int = 32 * MiB,
    initial_seeding: bool = True,
    timeout: float = 600,
    seed_value: int = 1,
    say: Callable[[str], None] = print,
) -> SwarmReport:
    """Run one swarm to the end (every node verified) and return what was measured."""
    work.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed_value)
    tracker = Tracker(work / "tracker")
    logs: list[NodeLog] = []
    origin = fresh_home(work, "origin", f"upload_limit = {origin_uplink}\n" if origin_uplink else "")
    try:
        m, src, manifest_path = make_release(work, tracker, size, piece, files)
        seed(
            origin, m, FetchOptions(directory=src, start=StartOptions(local_only=True), initial_seeding=initial_seeding)
        )
        origin_client = DaemonClient(origin)
        logs = [NodeLog(fresh_home(work, f"node{i:02d}")) for i in range(nodes)]
        with ThreadPoolExecutor(4) as pool:  # start the daemons four at a time
            clients = list(pool.map(lambda n: start_daemon(n.home, StartOptions(local_only=True)), logs))
        for log, client in zip(logs, clients):
            log.client = client
        text = manifest_path.read_text()
        outs = [work / "out" / f"node{i:02d}" for i in range(nodes)]
        for out in outs:
            shutil.rmtree(out, ignore_errors=True)
        say(
            f"{nodes} nodes started; fetching {size / MiB:.0f} MiB in {files} files from one origin "
            f"(uplink {origin_uplink / MiB:.0f} MiB/s)" + (f", {churn} SIGKILLs on the way" if churn else "")
        )
        start = time.monotonic()
        for client, out in zip(clients, outs):
            client.call("POST", "/releases", {"manifest": text, "dir": str(out)})
        kills_left, next_kill = churn, start + 1.0
        restarts = ThreadPoolExecutor(4)
        while any(log.finished is None for log in logs):
            now = time.monotonic()
            if now - start > timeout:
                raise SystemExit(
                    f"swarm not done after {timeout:.0f}s: {[(i, log.last_done, log.finished) for i, log in enumerate(logs)]}"
                )
            for log in logs:
                _poll(log, m, start, restarts)
            if kills_left and now >= next_kill:
                victims = [
                    lg
                    for lg in logs
                    if lg.client is not None and lg.finished is None and 0.05 * size < lg.last_done < 0.95 * size
                ]
                if victims:
                    _kill(rng.choice(victims), m, now + rng.uniform(0.5, 2.0))
                    kills_left -= 1
                    next_kill = now + rng.uniform(0.5, 2.0)
            time.sleep(POLL)
        restarts.shutdown()
        time.sleep(2.5)  # libtorrent adds to its byte counters once a second: let them settle
        origin_st = release_status(origin_client, m.name)
        finals = [release_status(_running(log), m.name) for log in logs]
        hash_failures = sum(st.hash_failures for st in finals)
        bad = _independent_check(m, outs)
        return SwarmReport(
            nodes=nodes,
            size=size,
            piece=piece,
            files=files,
            origin_uplink=origin_uplink,
            seconds=[log.finished for log in logs if log.finished is not None],  # all, once the loop ends
            origin_uploaded=origin_st.uploaded,
            origin_still_initial=origin_st.initial_seeding or _spec(origin, m.name)["initial_seeding"],
            kills=sum(log.kills for log in logs),
            lost_at_kills=sum(log.lost for log in logs),
            hash_failures=hash_failures,
            checked_files=nodes * files,
            bad_files=bad,
        )
    finally:
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(_stop_quietly, [origin] + [log.home for log in logs]))
        tracker.close()
        shutil.rmtree(work / "out", ignore_errors=True)  # N copies of the release: gigabytes
        shutil.rmtree(work / "homes", ignore_errors=True)


def _poll(log: NodeLog, m: Manifest, start: float, restarts: ThreadPoolExecutor) -> None:
    if log.client is None:
        if log.restarting is None and log.restart_at is not None and time.monotonic() >= log.restart_at:
            log.restarting = restarts.submit(_restart, log, m)
        elif log.restarting is not None and log.restarting.done():
            log.client = log.restarting.result()
            log.restarting = None
        return
    if log.finished is not None:
        return
    try:
        st = release_status(log.client, m.name)
    except DaemonError:
        return
    log.last_done = st.done
    if st.state == "error":
        raise SystemExit(f"{log.home.root.name}: {st.error}")
    if st.verified == st.selected and st.state in ("seeding", "done seeding"):
        log.finished = time.monotonic() - start


def _restart(log: NodeLog, m: Manifest) -> DaemonClient:
    """Start a killed node again; its release comes back from its state on disk, re-checked.
    The pieces it had at the kill but not after the check (``lost``) must come again."""
    client = start_daemon(log.home, StartOptions(local_only=True))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        st = release_status(client, m.name)
        if st.state != "checking":
            log.lost += max(0, log.done_at_kill - st.done)
            return client
        time.sleep(0.02)
    raise SystemExit(f"{log.home.root.name}: still checking its files 60 s after a restart")


def _kill(log: NodeLog, m: Manifest, restart_at: float) -> None:
    """SIGKILL the node's daemon (no chance to save anything) and schedule its restart.

    What it has is read just before the kill, to compare with what it has after the restart."""
    client = _running(log)
    st = release_status(client, m.name)
    kill_and_reap(int(client.info["pid"]))
    log.done_at_kill = st.done
    log.client, log.restart_at = None, restart_at
    log.kills += 1


def _running(log: NodeLog) -> DaemonClient:
    """The node's daemon, which is running (not between a kill and its restart)."""
    if log.client is None:
        raise SystemExit(f"{log.home.root.name}: its daemon is not running")
    return log.client


def _spec(home: Home, name: str) -> dict:
    """The release's saved spec (what a restarted daemon would do)."""
    return json.loads((home.state_dir / "releases" / name / "spec.json").read_text())


def kill_and_reap(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z":
                break
        except OSError:
            break
        time.sleep(0.02)


def _stop_quietly(home: Home) -> None:
    try:
        stop_daemon(home)
    except DaemonError:
        pass


def _independent_check(m: Manifest, outs: list[Path]) -> list[str]:
    """BLAKE3 every node's files here, apart from the daemons' own verification."""
    bad = []
    for out in outs:
        for entry in m.files:
            h = blake3.blake3(max_threads=blake3.blake3.AUTO)
            h.update_mmap(out / entry.path)
            if h.hexdigest() != entry.blake3:
                bad.append(str(out / entry.path))
    return bad


def table(runs: dict[str, SwarmReport]) -> str:
    """One column per run; the central host (N copies from the origin) is the comparison."""

    def col(r: SwarmReport) -> list[str]:
        q = statistics.quantiles(r.seconds, n=10, method="inclusive") if len(r.seconds) > 1 else r.seconds * 9
        return [
            f"{r.nodes} + 1",
            f"{min(r.seconds):.1f} / {statistics.median(r.seconds):.1f} / {q[8]:.1f} / {max(r.seconds):.1f}",
            f"**{r.origin_copies:.2f}×** ({r.origin_uploaded / MiB:.0f} MiB)",
            f"{r.kills}",
            f"{r.lost_at_kills / MiB:.1f} MiB" if r.kills else "–",
            f"{r.hash_failures}",
            f"{r.checked_files - len(r.bad_files)} of {r.checked_files}"
            + (f" BAD: {r.bad_files[:2]}" if r.bad_files else ""),
        ]

    first = next(iter(runs.values()))
    rows = [
        "nodes (separate daemons) + origin",
        "completion, s: min / median / p90 / max",
        f"origin upload ÷ release (central host: {first.nodes}×; target ≤ 2×)",
        "SIGKILL + restart",
        "re-downloaded after the kills (pieces had at the kill, gone after the re-check)",
        "pieces failing their hash",
        "files whose BLAKE3 (computed here, apart from the daemons) matches the manifest",
    ]
    cols = [col(r) for r in runs.values()]
    lines = [
        f"{first.nodes} nodes + 1 origin on 127.0.0.1, one tracker (opentracker); release {first.size / MiB:.0f} MiB "
        f"in {first.files} files, {first.piece / MiB:g} MiB pieces; origin uplink "
        f"{first.origin_uplink / MiB:.0f} MiB/s, leechers unlimited, ratio target 1.0 (the default)",
        "",
        "| | " + " | ".join(runs) + " |",
        "|---" * (len(runs) + 1) + "|",
    ]
    lines += [f"| {name} | " + " | ".join(c[i] for c in cols) + " |" for i, name in enumerate(rows)]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=16)
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--piece-mib", type=float, default=1.0)
    ap.add_argument("--files", type=int, default=2)
    ap.add_argument(
        "--churn", type=int, default=8, help="in the churn run: SIGKILL + restart this many downloading nodes"
    )
    ap.add_argument("--origin-uplink-mib", type=float, default=32, help="0 = unlimited")
    ap.add_argument("--timeout", type=float, default=600, help="per run")
    ap.add_argument(
        "--runs",
        default="initial,churn,plain",
        help="initial: seed --initial-seeding; churn: the same with SIGKILLs; plain: plain seeding (seed's default)",
    )
    ap.add_argument("--dir", type=Path, default=Path("/tmp/llamashare-bench-swarm-scale"))
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    kinds = {
        "initial": ("initial seeding", 0, True),
        "churn": ("initial seeding + churn", args.churn, True),
        "plain": ("plain seeding", 0, False),
    }
    runs: dict[str, SwarmReport] = {}
    for kind in args.runs.split(","):
        label, churn, initial = kinds[kind]
        runs[label] = run_swarm(
            args.dir,
            args.nodes,
            args.size_mib * MiB,
            int(args.piece_mib * MiB),
            args.files,
            churn,
            int(args.origin_uplink_mib * MiB),
            initial,
            args.timeout,
        )
    print(table(runs))
    if args.json:
        args.json.write_text(
            json.dumps({k: asdict(r) | {"origin_copies": r.origin_copies} for k, r in runs.items()}, indent=2)
        )
    if any(r.bad_files for r in runs.values()):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
