"""The command line as a user meets it: exit codes, one-line errors, help with examples, modes."""

from __future__ import annotations

import inspect
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import click
import libtorrent as lt
import pytest
from click.testing import CliRunner, Result

from llamashare.cli import main


def root_group() -> click.Group:
    """The click group behind the console script (pyproject: ``llamashare = "llamashare.cli:main"``):
    ``main`` itself, or the group the ``main`` function calls."""
    if isinstance(main, click.Group):
        return main
    groups = [v for v in inspect.getclosurevars(main).globals.values() if isinstance(v, click.Group)]
    assert len(groups) == 1, f"main() should call exactly one click group, found {groups}"
    return groups[0]


cli = root_group()


def run(*args: object) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def command_paths(group: click.Group, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command and subcommand under ``group``, as the words that name it."""
    ctx = click.Context(group, info_name="llamashare")
    found: list[tuple[str, ...]] = []
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        assert cmd is not None, name
        found.append((*path, name))
        if isinstance(cmd, click.Group):
            found += command_paths(cmd, (*path, name))
    return found


COMMANDS = command_paths(cli)


def examples(help_text: str) -> list[str]:
    """The command lines under an "Example:" / "Examples:" heading of a --help text: its indented
    lines that run ``llamashare``, up to the next unindented line."""
    found: list[str] = []
    inside = False
    for line in help_text.splitlines():
        text = line.strip()
        if re.fullmatch(r"Examples?:", text):
            inside = True
        elif inside and text and not line.startswith("   "):
            inside = False
        elif inside and "llamashare" in text.split():
            found.append(text)
    return found


def names_command(example: str, path: tuple[str, ...]) -> bool:
    """Whether an example line runs the command ``path`` (its words in order; global options such
    as ``--home DIR`` may come between them)."""
    words = example.split()
    after = iter(words[words.index("llamashare") + 1 :])
    return all(any(w == part for w in after) for part in path)


def test_version() -> None:
    from llamashare import __version__

    assert __version__ in run("--version").output


def test_the_command_list_is_the_real_one() -> None:
    """The walk finds what users type: the commands the top-level help names, and nested ones."""
    assert {("create",), ("verify",), ("fetch",), ("seed",), ("run",), ("quantize",)} <= set(COMMANDS)
    assert any(len(p) == 2 for p in COMMANDS)  # subcommands are walked (daemon start, delta make, …)


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_every_command_has_help_with_an_example(path: tuple[str, ...]) -> None:
    r = CliRunner().invoke(cli, [*path, "--help"])
    assert r.exit_code == 0, r.output
    found = examples(r.output)
    assert any(names_command(e, path) for e in found), (
        f"`llamashare {' '.join(path)} --help` shows no example of itself (examples found: {found})"
    )


def test_create_verify_sign_flow(sample_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "rel.toml"
    r = run(
        "create",
        sample_model,
        "--license",
        "Apache-2.0",
        "--name",
        "sample",
        "-o",
        out,
        "-q",
        "--tracker",
        "udp://127.0.0.1:6969/announce",
        "--piece-size",
        "65536",
        "--v1-twin",
    )
    assert r.exit_code == 0, r.output
    assert "info-hash v2" in r.output and (tmp_path / "sample.torrent").is_file()
    twin = lt.torrent_info(str(tmp_path / "sample.v1.torrent"))  # what aria2c and other v1-only clients load
    assert not twin.info_hashes().has_v2() and f"v1 twin {twin.info_hashes().v1}" in r.output
    assert twin.piece_length() == 65536 and twin.num_files() > 7  # the hybrid's pad files, kept
    r = run("verify", out, "--dir", sample_model, "-q")
    assert r.exit_code == 0 and "7 of 7 files ok" in r.output

    key = tmp_path / "me.key"
    r = run("keygen", key)
    assert r.exit_code == 0
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    public = r.output.strip().splitlines()[-1]
    assert run("sign", out, "--key", key).exit_code == 0
    assert run("verify", out, "--dir", sample_model, "--key", public, "-q").exit_code == 0

    _, other = run("keygen", tmp_path / "other.key").output.strip().rsplit("\n", 1)
    r = run("verify", out, "--dir", sample_model, "--key", other, "-q")
    assert r.exit_code == 2 and "not the pinned" in r.output

    (sample_model / "config.json").write_text("{}")
    r = run("verify", out, "--dir", sample_model, "-q")
    assert r.exit_code == 1
    assert "wrong size  config.json" in r.output and "6 of 7 files ok" in r.output


def test_refuses_to_overwrite_and_bad_names(sample_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "rel.toml"
    out.write_text("precious")
    r = run("create", sample_model, "--license", "MIT", "-o", out, "-q")
    assert r.exit_code == 2 and "already exists" in r.output and out.read_text() == "precious"
    r = run("create", sample_model, "--license", "MIT", "--name", "../x", "-o", tmp_path / "y.toml")
    assert r.exit_code == 2 and "--name" in r.output
    r = run("create", sample_model, "-o", tmp_path / "z.toml")
    assert r.exit_code == 2 and "--license" in r.output


@pytest.mark.parametrize("content,needle", [("name = 1\n", "format_version"), ("[[[", "not valid TOML")])
def test_malformed_manifest_is_one_line_exit_2(tmp_path: Path, content: str, needle: str) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(content)
    (tmp_path / "d").mkdir()
    r = run("verify", bad, "--dir", tmp_path / "d")
    assert r.exit_code == 2
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0]


def test_installed_console_script_maps_errors(tmp_path: Path) -> None:
    """The real entry point (not CliRunner): no traceback, exit code 2 for bad input."""
    exe = Path(sys.executable).with_name("llamashare")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "llamashare"]
    p = subprocess.run(
        [*cmd, "verify", str(tmp_path / "missing.toml"), "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 2
    assert "Traceback" not in p.stderr and "cannot be read" in p.stderr


@pytest.mark.slow
def test_demo_runs(tmp_path: Path) -> None:
    """The README's main job, as its command: a real model published, fetched over BitTorrent,
    converted, quantized and asked a question, offline."""
    exe = Path(sys.executable).with_name("llamashare")
    p = subprocess.run(
        [str(exe), "demo", "--workdir", str(tmp_path / "demo"), "-q"], capture_output=True, text=True, timeout=600
    )
    assert p.returncode == 0, p.stdout + p.stderr
    print(p.stdout)
    assert p.stdout.count("    ok         ") == 5  # the rebuild is byte-identical to the committed manifest
    assert "5 of 5 files verified" in p.stdout and "node A uploaded 258." in p.stdout
    assert "smollm2-135m-instruct> The capital of France is Paris." in p.stdout  # greedy: deterministic
    assert "demo finished" in p.stdout
    # The fetching node is the user's own (here the test's isolated HOME): the next commands a
    # newcomer types work on what the demo fetched.
    listed = subprocess.run([str(exe), "list"], capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0 and "smollm2-135m-instruct" in listed.stdout and "Q8_0" in listed.stdout, listed
    ran = subprocess.run(
        [str(exe), "run", "smollm2-135m-instruct", "-p", "The capital of France is", "-n", "4", "--temp", "0", "-q"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ran.returncode == 0 and "Paris" in ran.stdout, ran
    assert not (tmp_path / "demo" / "node-b").exists()  # no second node of the demo's own
