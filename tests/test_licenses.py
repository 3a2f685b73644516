"""Licenses a user can rely on: [policy] licenses refuses before anything is downloaded, and custom
terms are shown and accepted once (on a terminal, or with --accept-license)."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llamashare.daemon.client import running_client
from llamashare.licenses import ACCEPTED_FILE, allowed_by, parse_license
from llamashare.manifests.create import write_release
from llamashare.store import Store
from tests.helpers import Homes, cli, make_release

LLAMA_TERMS = "llama2\nLLAMA 2 COMMUNITY LICENSE AGREEMENT\nVersion Release Date: July 18, 2023\n…"


@pytest.mark.parametrize(
    ("license_text", "policy", "allowed"),
    [
        ("Apache-2.0", ("Apache-2.0",), True),
        ("apache-2.0", ("Apache-2.0",), True),  # SPDX ids are case-insensitive; the list normalises
        ("MIT", ("Apache-2.0",), False),
        ("Apache-2.0 OR GPL-3.0-only", ("Apache-2.0",), True),  # one side of an OR is enough
        ("Apache-2.0 AND GPL-3.0-only", ("Apache-2.0",), False),  # an AND needs both
        ("Apache-2.0 AND MIT", ("MIT", "Apache-2.0"), True),
        (LLAMA_TERMS, ("Apache-2.0",), False),
        (LLAMA_TERMS, ("llama2",), True),  # custom terms: listed by their first line
    ],
)
def test_policy_decides_by_spdx_expression(license_text: str, policy: tuple[str, ...], allowed: bool) -> None:
    assert allowed_by(parse_license(license_text), policy) is allowed


def test_custom_terms_are_not_spdx() -> None:
    assert (
        parse_license("Apache-2.0").spdx == "Apache-2.0"
        and parse_license("gemma").spdx is None
        and parse_license(LLAMA_TERMS).spdx is None
    )


def _release(tmp_path: Path, sample_model: Path, license_text: str) -> Path:
    m, torrent = make_release(sample_model, license=license_text)
    toml = tmp_path / "r.toml"
    write_release(m, torrent, toml, force=True)
    return toml


def test_a_license_outside_the_policy_is_refused_before_anything(
    tmp_path: Path, homes: Homes, sample_model: Path
) -> None:
    home = homes("b", '[policy]\nlicenses = ["MIT"]\n')
    p = cli(home, "fetch", str(_release(tmp_path, sample_model, "Apache-2.0")), "--no-convert")
    assert p.returncode == 2 and "not in your [policy] licenses (MIT)" in p.stderr, p.stderr
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) <= 2, p.stderr
    assert running_client(home) is None and not Store(home.models_dir).entries()


def test_custom_terms_need_acceptance_once(tmp_path: Path, homes: Homes, sample_model: Path) -> None:
    home = homes("b")
    toml = _release(tmp_path, sample_model, LLAMA_TERMS)
    p = cli(home, "fetch", str(toml), "--no-convert")  # no terminal here: refused, with what to do
    assert p.returncode == 2 and "custom terms ('llama2'" in p.stderr and "--accept-license" in p.stderr, p.stderr
    assert running_client(home) is None and not Store(home.models_dir).entries()

    # Accepted: the fetch goes on (to the daemon: no seeder here, so it times out), and the
    # acceptance of these exact terms is recorded; the next fetch does not ask.
    p = cli(home, "fetch", str(toml), "--no-convert", "--accept-license", "--timeout", "1")
    assert "custom terms" not in p.stderr.split("\n")[-2] and "not complete after 1s" in p.stderr, p.stderr
    record = json.loads((home.models_dir / ACCEPTED_FILE).read_text())
    assert [v["license"] for v in record.values()] == ["llama2"]
    p = cli(home, "fetch", str(toml), "--no-convert", "--timeout", "1")
    assert "not complete after 1s" in p.stderr, p.stderr


def test_custom_terms_are_asked_on_a_terminal(tmp_path: Path, homes: Homes, sample_model: Path) -> None:
    home = homes("b")
    toml = _release(tmp_path, sample_model, LLAMA_TERMS + "".join(f"\nclause {i}" for i in range(40)))
    master, slave = pty.openpty()
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llamashare",
            "--home",
            str(home.root),
            "fetch",
            str(toml),
            "--no-convert",
            "--timeout",
            "1",
        ],
        stdin=slave,
        stderr=slave,
        stdout=subprocess.PIPE,
    )
    os.close(slave)
    seen = b""
    deadline = time.monotonic() + 60
    try:
        while b"Accept these terms?" not in seen and time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1)
            if ready:
                seen += os.read(master, 4096)
        assert b"LLAMA 2 COMMUNITY LICENSE AGREEMENT" in seen and b"more lines" in seen, seen
        os.write(master, b"y\n")
        child.wait(timeout=60)
    finally:
        child.kill()
        os.close(master)
    assert (home.models_dir / ACCEPTED_FILE).is_file()
