"""Data safety: a full disk, a failed write, a folder without rights, a daemon killed while it
writes its state. Each case: one clear line, a non-zero exit, nothing verified lost or corrupted,
and the next run recovers."""

from __future__ import annotations

import ctypes
import os
import random
import resource
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from llamashare.daemon.client import DaemonClient, start_daemon
from llamashare.daemon.submit import FetchOptions, release_status, seed
from llamashare.manifests.manifest import load_manifest
from llamashare.manifests.verify import verify_release
from llamashare.store import Store
from tests.helpers import Homes, cli
from tests.test_pipeline import publish, seeder

pytestmark = pytest.mark.slow


@contextmanager
def small_disk(mountpoint: Path, size: int) -> Iterator[Path]:
    """A real file system of ``size`` bytes (tmpfs) at ``mountpoint``. Needs root (CI runs as
    root); elsewhere the test fails with the reason rather than pretending."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    p = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mountpoint)], capture_output=True, text=True
    )
    if p.returncode != 0:
        pytest.fail(f"cannot mount a small tmpfs for the full-disk test (needs root): {p.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True)


def file_limit(nbytes: int) -> Callable[[], None]:
    """preexec_fn: writes past ``nbytes`` fail with EFBIG, as on a disk that fills up mid-write."""
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))


def last_line(p: subprocess.CompletedProcess) -> str:
    return p.stderr.strip().splitlines()[-1]


@pytest.fixture
def f16(tmp_path: Path, homes: Homes, sample_model: Path) -> Path:
    out = tmp_path / "sample.F16.gguf"
    p = cli(homes("x"), "convert", str(sample_model), "-o", str(out), "-q")
    assert p.returncode == 0, p.stderr
    return out


def test_a_disk_too_small_is_refused_before_writing(
    tmp_path: Path, homes: Homes, sample_model: Path, f16: Path
) -> None:
    home = homes("x")
    with small_disk(tmp_path / "small", f16.stat().st_size // 2) as disk:
        p = cli(home, "convert", str(sample_model), "-o", str(disk / "out.gguf"), "-q")
        assert p.returncode != 0 and "not enough free space" in last_line(p), p.stderr
        p2 = cli(home, "quantize", str(f16), str(disk / "q.gguf"), "Q8_0", "-q")
        assert p2.returncode != 0 and "not enough free space" in last_line(p2), p2.stderr
        assert list(disk.iterdir()) == []  # not even a partial file
        print(last_line(p))


@pytest.mark.parametrize("step", ["convert", "quantize"])
def test_a_write_failing_halfway_leaves_no_file_and_keeps_the_old_output(
    tmp_path: Path, homes: Homes, sample_model: Path, f16: Path, step: str
) -> None:
    home = homes("x")
    out = tmp_path / "out" / "model.gguf"
    args = (
        ["convert", str(sample_model), "-o", str(out)]
        if step == "convert"
        else ["quantize", str(f16), str(out), "Q8_0"]
    )
    assert cli(home, *args, "-q").returncode == 0
    good = out.read_bytes()
    # Again with --force, on a "disk" that fills up once half the file is written.
    p = cli(home, *args, "-q", "--force", preexec_fn=file_limit(len(good) // 2))
    assert p.returncode == 1, p.stderr
    line = last_line(p)
    assert line.startswith(f"error: cannot write {out}: ") and "(disk full, quota or file size limit" in line, line
    assert line.endswith("nothing was left under that name")
    assert out.read_bytes() == good  # the previous output is untouched
    assert sorted(f.name for f in out.parent.iterdir()) == ["model.gguf"]  # no .partial left behind
    print(line)


def without_root_rights() -> None:
    """preexec_fn: drop the capabilities that let root ignore file permissions (a no-op for an
    ordinary user), so the CLI meets a locked folder as any user does."""
    if os.geteuid() == 0:
        libc = ctypes.CDLL(None, use_errno=True)
        for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
            if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


PR_CAPBSET_DROP, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 24, 1, 2  # <linux/prctl.h>, <linux/capability.h>


def test_a_folder_without_write_permission(tmp_path: Path, homes: Homes, f16: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    os.chmod(locked, 0o555)
    p = cli(homes("x"), "quantize", str(f16), str(locked / "q.gguf"), "Q8_0", "-q", preexec_fn=without_root_rights)
    assert p.returncode == 1, p.stderr
    assert (
        last_line(p) == f"error: cannot write {locked / 'q.gguf'}: Permission denied; nothing was left under that name"
    )
    assert list(locked.iterdir()) == []
    print(last_line(p))


def test_fetch_whose_convert_runs_out_of_room_keeps_the_release_and_the_rerun_finishes(
    tmp_path: Path, homes: Homes, sample_model: Path
) -> None:
    publish(sample_model, tmp_path / "sample.toml", recommended_quant="Q8_0")
    peer = seeder(homes, (tmp_path / "sample.toml", sample_model))
    b = homes("b")
    start_daemon(b)  # the daemon (which downloads) has room; the CLI (which converts) does not
    p = cli(
        b,
        "fetch",
        str(tmp_path / "sample.toml"),
        "--peer",
        peer,
        "--timeout",
        "60",
        "-q",
        preexec_fn=file_limit(1024 * 1024),
    )
    assert p.returncode == 1, p.stderr
    assert "(disk full, quota or file size limit" in last_line(p), p.stderr
    entry = Store(b.models_dir).get("sample-llama")
    m = load_manifest(tmp_path / "sample.toml")
    assert all(r.ok for r in verify_release(m, entry.source_dir))  # the verified download is whole
    assert entry.ggufs() == {} and not any(entry.gguf_dir.glob("*.partial"))
    print(last_line(p))

    # Room again: the same command picks up where it failed, without downloading again.
    p = cli(b, "fetch", str(tmp_path / "sample.toml"), "--peer", peer, "--timeout", "60", "-q")
    assert p.returncode == 0, p.stderr
    assert sorted(entry.ggufs()) == ["convert:f16", "quantize:Q8_0"]
    assert release_status(DaemonClient(b), "sample-llama").downloaded <= 1.05 * m.total_size


def test_daemon_killed_while_writing_state_restarts_with_everything(
    tmp_path: Path, homes: Homes, sample_model: Path
) -> None:
    """SIGKILL at random moments while the daemon rewrites a release's spec as fast as it can
    (every target change is an atomic write); after each restart every release is back, intact."""
    publish(sample_model, tmp_path / "sample.toml")
    m = load_manifest(tmp_path / "sample.toml")
    a = homes("a")
    seed(a, m, FetchOptions(directory=sample_model))
    rng = random.Random(5)
    kills = 12
    sent: list[float] = []
    for _ in range(kills):
        client = start_daemon(a)
        assert [r.name for r in client.status().releases] == ["sample-llama"]
        st = release_status(client, "sample-llama")
        assert st.state in ("checking", "seeding") and st.seed_forever
        if sent:
            assert st.ratio_target is None  # a publisher's release stays seed-forever...
        deadline = time.monotonic() + rng.uniform(0.2, 0.8)
        while time.monotonic() < deadline:  # ...while its targets are rewritten over and over
            sent.append(round(rng.uniform(1, 9), 3))
            client.call("PATCH", "/releases/sample-llama", {"ratio": sent[-1]})
        os.kill(int(client.info["pid"]), signal.SIGKILL)
        time.sleep(0.1)
    client = start_daemon(a)
    st = release_status(client, "sample-llama")
    spec = (a.state_dir / "releases" / "sample-llama" / "spec.json").read_text()
    assert f'"ratio": {sent[-1]}' in spec or any(f'"ratio": {r}' in spec for r in sent[-3:])
    assert st.verified == st.selected
    print(f"{kills} SIGKILLs during {len(sent)} state writes: the release came back every time")

    # What a non-atomic writer would have left: a torn resume file and a stray temp file. The
    # daemon says so, re-checks the files instead, and clears the temp file.
    folder = a.state_dir / "releases" / "sample-llama"
    os.kill(int(client.info["pid"]), signal.SIGKILL)
    time.sleep(0.1)
    resume = folder / "resume.dat"
    resume.write_bytes(resume.read_bytes()[: resume.stat().st_size // 2])
    (folder / ".spec.json.x1y2.incomplete").write_text('{"name": "sample-ll')
    client = start_daemon(a)
    deadline = time.monotonic() + 30
    while release_status(client, "sample-llama").state == "checking" and time.monotonic() < deadline:
        time.sleep(0.1)
    st = release_status(client, "sample-llama")
    assert st.state == "seeding" and st.verified == st.selected, st
    assert not list(folder.glob(".*.incomplete"))
    assert "resume data unreadable" in a.log_file.read_text()
