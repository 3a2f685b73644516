"""Signatures: a pinned key refuses unsigned, re-signed and altered manifests."""

from __future__ import annotations

import os
import stat
from dataclasses import replace
from pathlib import Path

import pytest

from llamashare.daemon.home import Home
from llamashare.errors import KeyFileError, OutputExistsError, SignatureError
from llamashare.manifests.manifest import Manifest, dumps, parse_manifest
from llamashare.manifests.signing import (
    check_publisher,
    generate_keypair,
    load_private_key,
    parse_public_key,
    sign_manifest,
    verify_signature,
)
from tests.helpers import Homes, cli, make_release

#: A signed manifest of the sample model, its signer's public key (hex) and the folder of its key file.
Signed = tuple[Manifest, str, Path]


@pytest.fixture
def signed(sample_model: Path, tmp_path: Path) -> Signed:
    m, _ = make_release(sample_model)
    _, public = generate_keypair(tmp_path / "k.key")
    return sign_manifest(m, load_private_key(tmp_path / "k.key")), parse_public_key(public), tmp_path


def test_key_files_modes_and_refusal_to_overwrite(tmp_path: Path) -> None:
    pub_path, text = generate_keypair(tmp_path / "keys" / "me.key")
    assert stat.S_IMODE(os.stat(tmp_path / "keys" / "me.key").st_mode) == 0o600
    assert pub_path.read_text().strip() == text and text.startswith("ed25519:")
    with pytest.raises(OutputExistsError):
        generate_keypair(tmp_path / "keys" / "me.key")
    _, text2 = generate_keypair(tmp_path / "keys" / "me.key", force=True)
    assert text2 != text


def test_signature_survives_toml_round_trip(signed: Signed) -> None:
    m, key, _ = signed
    again = parse_manifest(dumps(m))
    assert verify_signature(again, key) == key
    assert verify_signature(again) == key


def test_altered_manifest_is_refused(signed: Signed) -> None:
    m, key, _ = signed
    tampered = replace(m, files=(replace(m.files[0], blake3="0" * 64),) + m.files[1:])
    with pytest.raises(SignatureError, match="does not match"):
        verify_signature(parse_manifest(dumps(tampered)), key)
    with pytest.raises(SignatureError, match="does not match"):
        verify_signature(replace(m, license="proprietary"))  # even with no key pinned


def test_pinned_key_refuses_unsigned_and_other_signers(signed: Signed) -> None:
    m, key, tmp = signed
    with pytest.raises(SignatureError, match="not signed"):
        verify_signature(m.unsigned(), key)
    assert verify_signature(m.unsigned()) is None
    generate_keypair(tmp / "other.key")
    resigned = sign_manifest(m, load_private_key(tmp / "other.key"))
    with pytest.raises(SignatureError, match="not the pinned"):
        verify_signature(resigned, key)


def test_public_key_forms(tmp_path: Path) -> None:
    pub, text = generate_keypair(tmp_path / "k")
    hexkey = text.removeprefix("ed25519:")
    assert parse_public_key(text) == parse_public_key(hexkey) == parse_public_key(str(pub)) == hexkey
    assert parse_public_key(hexkey.upper()) == hexkey
    (tmp_path / "junk.pub").write_text("hello")
    for bad in ("ed25519:1234", str(tmp_path / "junk.pub"), str(tmp_path / "missing.pub")):
        with pytest.raises(KeyFileError):
            parse_public_key(bad)


def test_bad_private_key_files(tmp_path: Path) -> None:
    (tmp_path / "junk").write_text("not a key")
    with pytest.raises(KeyFileError, match="not an unencrypted PEM"):
        load_private_key(tmp_path / "junk")
    with pytest.raises(KeyFileError, match="cannot read"):
        load_private_key(tmp_path / "missing")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (tmp_path / "ec.key").write_bytes(pem)
    with pytest.raises(KeyFileError, match="not an ed25519"):
        load_private_key(tmp_path / "ec.key")


def test_trusted_publishers_pin_releases_by_name(signed: Signed, sample_model: Path) -> None:
    m, key, tmp = signed
    _, other = generate_keypair(tmp / "other.key")
    other = parse_public_key(other)
    unsigned = m.unsigned()
    assert check_publisher(m, {"sample-*": key}) == key  # pinned and signed by that key
    assert check_publisher(m, {"sample-*": other, "*": key}) == key  # any matching pin will do
    assert check_publisher(unsigned, {"llama-*": key}) is None  # the pin is for other names
    with pytest.raises(SignatureError, match=r"refusing 'sample-llama': it is not signed, but only ed25519:"):
        check_publisher(unsigned, {"sample-*": key})
    with pytest.raises(
        SignatureError, match=rf"is signed by ed25519:{key}, but only ed25519:{other} \(for 'sample-\*'\)"
    ):
        check_publisher(m, {"sample-*": other})
    altered = replace(m, license="MIT")
    with pytest.raises(SignatureError, match="does not match its contents"):
        check_publisher(altered, {"sample-*": key})
    with pytest.raises(SignatureError, match="does not match its contents"):
        check_publisher(altered, {})  # a signature that is there must hold, pinned or not


def test_fetch_refuses_an_unpinned_signer_before_downloading(signed: Signed, tmp_path: Path, homes: Homes) -> None:
    m, key, tmp = signed
    home = homes("node").root  # (stops any daemon a failing check would have started)
    (home / "config.toml").write_text(f'[publishers]\n"sample-*" = "ed25519:{key}"\n')
    (tmp_path / "unsigned.toml").write_text(dumps(m.unsigned()))
    p = cli(Home(home), "fetch", str(tmp_path / "unsigned.toml"), "--timeout", "5")
    assert p.returncode == 2 and "refusing 'sample-llama': it is not signed" in p.stderr, p.stderr
    assert not (home / "models").exists() and not (home / "daemon.json").exists()  # nothing started or written
    (tmp_path / "signed.toml").write_text(dumps(m))
    p = cli(Home(home), "fetch", str(tmp_path / "signed.toml"), "--key", "ed25519:" + "ab" * 32, "--timeout", "5")
    assert p.returncode == 2 and "but only ed25519:abab" in p.stderr, p.stderr
    (home / "config.toml").write_text('[publishers]\n"sample-*" = "not a key"\n')
    p = cli(Home(home), "fetch", str(tmp_path / "signed.toml"))
    assert p.returncode == 2 and "publishers.sample-*" in p.stderr, p.stderr


def test_publisher_pins_ignore_letter_case(signed: Signed) -> None:
    """An unsigned 'Sample-Llama' must not pass a 'sample-*' pin (nor the other way round)."""
    m, key, _ = signed
    shouty = replace(m.unsigned(), name="Sample-LLAMA")
    with pytest.raises(SignatureError, match="refusing 'Sample-LLAMA': it is not signed"):
        check_publisher(shouty, {"sample-*": key})
    with pytest.raises(SignatureError, match="it is not signed"):
        check_publisher(m.unsigned(), {"SAMPLE-*": key})


def test_keygen_never_writes_through_a_planted_temp_file(tmp_path: Path) -> None:
    """A KEY.tmp already there (world-readable, or a symlink to elsewhere) is not used."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("untouched")
    (tmp_path / "k.key.tmp").symlink_to(elsewhere)
    loose = tmp_path / ".k.key.tmp"
    loose.write_text("")
    loose.chmod(0o644)
    generate_keypair(tmp_path / "k.key")
    assert elsewhere.read_text() == "untouched" and loose.read_text() == ""
    assert stat.S_IMODE(os.stat(tmp_path / "k.key").st_mode) == 0o600
    assert load_private_key(tmp_path / "k.key") is not None
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".k.key.") and p != loose]  # no leftovers


def test_a_nodes_home_is_private(homes: Homes) -> None:
    from llamashare.daemon.client import start_daemon

    home = homes("n")
    start_daemon(home)
    assert stat.S_IMODE(os.stat(home.root).st_mode) == 0o700  # token, ports, log, release list
