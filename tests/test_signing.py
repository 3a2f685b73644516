"""Signatures: a pinned key refuses unsigned, re-signed and altered manifests."""

from __future__ import annotations

import os
import stat
from dataclasses import replace
from pathlib import Path

import pytest

from llamashare.errors import KeyFileError, OutputExistsError, SignatureError
from llamashare.manifests.manifest import dumps, parse_manifest
from llamashare.manifests.signing import (
    generate_keypair,
    load_private_key,
    parse_public_key,
    sign_manifest,
    verify_signature,
)
from tests.helpers import make_release


@pytest.fixture
def signed(sample_model: Path, tmp_path: Path):
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


def test_signature_survives_toml_round_trip(signed) -> None:
    m, key, _ = signed
    again = parse_manifest(dumps(m))
    assert verify_signature(again, key) == key
    assert verify_signature(again) == key


def test_altered_manifest_is_refused(signed) -> None:
    m, key, _ = signed
    tampered = replace(m, files=(replace(m.files[0], blake3="0" * 64),) + m.files[1:])
    with pytest.raises(SignatureError, match="does not match"):
        verify_signature(parse_manifest(dumps(tampered)), key)
    with pytest.raises(SignatureError, match="does not match"):
        verify_signature(replace(m, license="proprietary"))  # even with no key pinned


def test_pinned_key_refuses_unsigned_and_other_signers(signed) -> None:
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
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    (tmp_path / "ec.key").write_bytes(pem)
    with pytest.raises(KeyFileError, match="not an ed25519"):
        load_private_key(tmp_path / "ec.key")
