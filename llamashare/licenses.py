"""Licenses a user can rely on: a policy checked before anything is downloaded, and custom terms
accepted once, on purpose.

The weights people share come under licenses that matter (Apache-2.0, Llama's and Gemma's own
terms …). A release's license is the first line of its manifest's ``license``:

- an **SPDX expression** (``Apache-2.0``, ``Apache-2.0 OR MIT``), recognised by the well-kept
  ``license-expression`` library (the SPDX list, case and ``WITH`` exceptions included). With
  ``[policy] licenses = [...]`` in the config, the expression must be satisfiable by the listed
  ones: each ``OR`` needs one allowed side, each ``AND`` both;
- anything else is **custom terms** (``llama2``, ``gemma``, a license text). With a policy it must
  be listed by that exact first line. And it is shown once and must be accepted: on the terminal,
  or with ``--accept-license`` for scripts. The acceptance (of those exact terms: a SHA-256 of the
  whole license text) is recorded in the store, so the next fetch does not ask again.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from llamashare.errors import LicenseError
from llamashare.fsio import atomic_write
from llamashare.manifests.manifest import Manifest

ACCEPTED_FILE = "accepted-licenses.json"


@cache
def _licensing() -> Any:
    from license_expression import get_spdx_licensing

    return get_spdx_licensing()


@dataclass(frozen=True)
class License:
    """A release's license as the policy sees it."""

    first_line: str
    text: str
    spdx: str | None  # the normalised SPDX expression, or None for custom terms

    @property
    def terms_sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()


def parse_license(text: str) -> License:
    """A manifest's ``license`` field: its first line an SPDX expression, or custom terms."""
    first = text.strip().splitlines()[0].strip()
    info = _licensing().validate(first)
    spdx = str(info.normalized_expression) if not info.errors and info.normalized_expression else None
    return License(first, text, spdx)


def allowed_by(lic: License, policy: tuple[str, ...]) -> bool:
    """Whether the policy's licenses satisfy the release's (see the module docstring)."""
    if lic.spdx is None:
        return lic.first_line in policy
    licensing = _licensing()
    ok = {str(licensing.parse(p)) for p in policy if not licensing.validate(p).errors}

    def holds(node: Any) -> bool:
        if isinstance(node, licensing.AND):
            return all(holds(a) for a in node.args)
        if isinstance(node, licensing.OR):
            return any(holds(a) for a in node.args)
        return str(node) in ok or str(getattr(node, "license_symbol", node)) in ok

    return holds(licensing.parse(lic.spdx))


class Acceptances:
    """Custom terms the user accepted, kept in the model store (``accepted-licenses.json``)."""

    def __init__(self, store_root: Path) -> None:
        self.path = store_root / ACCEPTED_FILE

    def _read(self) -> dict[str, Any]:
        try:
            doc = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return doc if isinstance(doc, dict) else {}

    def has(self, lic: License) -> bool:
        return lic.terms_sha256 in self._read()

    def record(self, lic: License, release: str) -> None:
        doc = self._read()
        doc[lic.terms_sha256] = {"license": lic.first_line, "first_release": release, "accepted_at": time.time()}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode())


def check_license(
    manifest: Manifest,
    policy: tuple[str, ...] | None,
    accepted: Acceptances,
    accept_flag: bool,
    ask: Callable[[License], bool] | None,
    where: str,
) -> License:
    """Refuse (LicenseError, one line) before anything is downloaded, or return the license.

    ``ask`` shows custom terms and returns the user's answer (None: no terminal to ask on);
    ``where`` says where the full text is, for the refusal."""
    lic = parse_license(manifest.license)
    if policy is not None and not allowed_by(lic, policy):
        raise LicenseError(
            f"{manifest.name}'s license {lic.first_line!r} is not in your [policy] licenses "
            f"({', '.join(policy) or 'none'}); nothing was downloaded"
        )
    if lic.spdx is not None or accepted.has(lic):
        return lic
    if not accept_flag and (ask is None or not ask(lic)):
        raise LicenseError(
            f"{manifest.name} comes under custom terms ({lic.first_line!r}; the full text is the license in "
            f"{where}); read them, then fetch again with --accept-license. Nothing was downloaded"
        )
    accepted.record(lic, manifest.name)
    return lic
