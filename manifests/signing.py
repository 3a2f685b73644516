"""ed25519 signatures over a manifest's canonical bytes.

Why: links to weights come from strangers. A publisher who signs their manifests lets users pin
the publisher's public key; then a swapped file list, hash or torrent is refused, not just
noticed. Keys are small text files: the private key in PKCS#8 PEM (mode 0600), the public key as
one line ``ed25519:<64 hex digits>`` that can be pasted into a config file or a command line.
"""

from __future__ import annotations

import fnmatch
import os
import re
import tempfile
from dataclasses import replace
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from llamashare.errors import KeyFileError, OutputExistsError, SignatureError
from llamashare.manifests.manifest import Manifest, Signature, canonical_bytes

PUBLIC_PREFIX = "ed25519:"


def public_key_text(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return PUBLIC_PREFIX + raw.hex()


def generate_keypair(private_path: Path, force: bool = False) -> tuple[Path, str]:
    """Write a new private key (0600) and ``<path>.pub``; return the public key path and text."""
    public_path = private_path.with_name(private_path.name + ".pub")
    for p in (private_path, public_path):
        if p.exists() and not force:
            raise OutputExistsError(p)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    private_path.parent.mkdir(parents=True, exist_ok=True)
    # A fresh file of our own (O_EXCL: never one that is already there, a planted symlink
    # included, whose mode or target someone else chose), 0600 from its first byte.
    fd, tmp = tempfile.mkstemp(dir=private_path.parent, prefix=f".{private_path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(pem)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, private_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    text = public_key_text(key.public_key())
    public_path.write_text(text + "\n")
    return public_path, text


def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise KeyFileError(f"cannot read key file {path}: {exc.strerror}") from None
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{path} is not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path} holds a {type(key).__name__}, not an ed25519 key")
    return key


def parse_public_key(spec: str) -> str:
    """Accept ``ed25519:<hex>``, bare hex, or a path to a file holding either; return the hex."""
    text = spec.strip()
    if not re.fullmatch(rf"({PUBLIC_PREFIX})?[0-9a-fA-F]{{64}}", text):
        path = Path(spec)
        if not path.is_file():
            raise KeyFileError(f"{spec!r} is neither an ed25519 public key (ed25519:<64 hex>) nor a key file")
        try:
            text = path.read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise KeyFileError(f"cannot read public key file {path}: {exc}") from None
        if not re.fullmatch(rf"({PUBLIC_PREFIX})?[0-9a-fA-F]{{64}}", text):
            raise KeyFileError(f"{path} does not hold an ed25519 public key (ed25519:<64 hex>)")
    return text.removeprefix(PUBLIC_PREFIX).lower()


def sign_manifest(manifest: Manifest, key: Ed25519PrivateKey) -> Manifest:
    value = key.sign(canonical_bytes(manifest.unsigned()))
    public = public_key_text(key.public_key()).removeprefix(PUBLIC_PREFIX)
    return replace(manifest, signature=Signature("ed25519", public, value.hex()))


def verify_signature(manifest: Manifest, pinned_key: str | None = None) -> str | None:
    """Check the signature; with ``pinned_key`` (hex), also require that key. Return the signer.

    Unsigned manifests pass only when no key is pinned (and return None).
    """
    sig = manifest.signature
    if sig is None:
        if pinned_key is not None:
            raise SignatureError(
                f"manifest '{manifest.name}' is not signed, but key {PUBLIC_PREFIX}{pinned_key} is pinned"
            )
        return None
    if pinned_key is not None and sig.public_key != pinned_key:
        raise SignatureError(
            f"manifest '{manifest.name}' is signed by {PUBLIC_PREFIX}{sig.public_key}, not the pinned {PUBLIC_PREFIX}{pinned_key}"
        )
    try:
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(sig.public_key)).verify(
            bytes.fromhex(sig.value), canonical_bytes(manifest.unsigned())
        )
    except (InvalidSignature, ValueError):
        raise SignatureError(
            f"manifest '{manifest.name}': the signature does not match its contents (altered after signing?)"
        ) from None
    return sig.public_key


def check_publisher(manifest: Manifest, pins: dict[str, str]) -> str | None:
    """Trust policy for fetch: ``pins`` maps release-name globs (from the config's [publishers],
    or ``*`` for --key) to key hex. A manifest whose name matches a pin must be validly signed by
    one of the matching keys; any other manifest passes if unsigned, and a signature it carries
    must hold. Returns the signer's key hex (or None if unsigned)."""
    # Case-insensitively: "Llama-7b" must not slip past a "llama-*" pin (release names become
    # folder names, and case-insensitive file systems treat the two as one).
    name = manifest.name.casefold()
    keys = {key: pattern for pattern, key in pins.items() if fnmatch.fnmatchcase(name, pattern.casefold())}
    if not keys:
        return verify_signature(manifest)
    sig = manifest.signature
    if sig is not None and sig.public_key in keys:
        return verify_signature(manifest, sig.public_key)
    trusted = ", ".join(f"{PUBLIC_PREFIX}{k} (for {p!r})" for k, p in keys.items())
    found = "is not signed" if sig is None else f"is signed by {PUBLIC_PREFIX}{sig.public_key}"
    raise SignatureError(f"refusing '{manifest.name}': it {found}, but only {trusted} may publish it")
