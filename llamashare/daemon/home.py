"""A node's home: where its daemon, state, logs and config live.

One home = one independent node (its own daemon, listen port and API port), so tests, benchmarks
and the demo run a seeder and leechers side by side with ``--home`` (or ``LLAMASHARE_HOME``).
The default is the user's XDG data folder.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import platformdirs

from llamashare.errors import ConfigError, ReleaseError

if TYPE_CHECKING:
    from llamashare.p2p.lan import LanGroup


def default_home() -> Path:
    env = os.environ.get("LLAMASHARE_HOME")
    return Path(env) if env else Path(platformdirs.user_data_dir("llamashare"))


@dataclass(frozen=True)
class Config:
    """``config.toml`` in the home; every key optional. Command-line options override it."""

    ratio: float = 1.0  # seed until uploaded / size reaches this
    seed_time: float | None = None  # or until this many seconds of seeding, whichever first
    listen_port: int = 6881  # BitTorrent port (0 = any free port)
    api_port: int = 0  # daemon control API on 127.0.0.1 (0 = any free port)
    upload_limit: int = 0  # bytes per second, 0 = unlimited
    download_limit: int = 0
    local_only: bool = False  # no DHT / local peer discovery / UPnP / NAT-PMP
    models_dir: str | None = None  # the model store [default: HOME/models]
    default_quant: str | None = None  # what fetch quantizes to [default: the manifest's recommendation, else Q4_K_M]
    #: [publishers] table: release-name glob → trusted key (hex); matching releases must be signed by it
    publishers: dict[str, str] = field(default_factory=dict)
    #: DHT nodes (HOST:PORT) to join through; with local_only, the DHT runs with these alone
    dht_bootstrap: tuple[str, ...] = ()
    #: seconds between checks of each followed channel (``llamashare follow``)
    follow_every: float = 600.0
    #: offer complete releases on the LAN and answer `discover` (None: on unless local_only)
    lan_discovery: bool | None = None
    lan_group: str = "239.192.152.143:6772"  # multicast group and port (BEP 14's group, next port)
    #: the interface's IPv4 address to offer on [default: the default route's; 127.0.0.1 if local_only]
    lan_interface: str | None = None
    #: [policy] licenses: the only licenses fetch takes (SPDX ids, or a custom license's first line)
    licenses: tuple[str, ...] | None = None

    def lan(self, local_only: bool, asked: bool = False) -> LanGroup | None:
        """Where LAN discovery runs (None: off), from these keys; ``asked``: a command that
        searches the LAN (``discover``, ``fetch --lan``) was told to, so it runs even if off."""
        from llamashare.p2p.lan import LanGroup, parse_group

        on = self.lan_discovery if self.lan_discovery is not None else not local_only
        if not (on or asked):
            return None
        host, port = parse_group(self.lan_group)
        return LanGroup(host, port, self.lan_interface or ("127.0.0.1" if local_only else "0.0.0.0"))


@dataclass(frozen=True)
class Home:
    root: Path

    @property
    def config_file(self) -> Path:
        return self.root / "config.toml"

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def lock_file(self) -> Path:
        return self.root / "daemon.lock"

    @property
    def info_file(self) -> Path:
        """Written by a running daemon: pid, API and listen ports."""
        return self.root / "daemon.json"

    @property
    def token_file(self) -> Path:
        return self.root / "daemon.token"

    @property
    def log_file(self) -> Path:
        return self.root / "daemon.log"

    @property
    def models_dir(self) -> Path:
        """The local model store: one folder per release (see llamashare.store)."""
        configured = self.config().models_dir
        return (
            self.root / Path(configured).expanduser() if configured else self.root / "models"
        )  # relative: to the home

    @classmethod
    def local_node(cls, root: Path, extra_config: str = "") -> Home:
        """A fresh home for a loopback-only node on any free port (demo, tests, benchmarks)."""
        home = cls(root)
        home.make()
        home.config_file.write_text("local_only = true\nlisten_port = 0\n" + extra_config)
        return home

    def make(self) -> None:
        """Create the home, readable by its owner only (0700): it holds the API token, the
        ports, the log and the list of releases. A home an older version made (it has our token)
        is tightened the same way; any other existing folder given as --home is left as it is."""
        created = not self.root.exists()
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        st = self.root.stat()
        if (created or self.token_file.exists()) and st.st_mode & 0o077 and st.st_uid == os.getuid():
            self.root.chmod(0o700)

    def config(self) -> Config:
        if not self.config_file.exists():
            return Config()
        try:
            doc = tomllib.loads(self.config_file.read_text())
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{self.config_file}: {exc}") from None
        known = {f.name: f for f in fields(Config) if f.name != "licenses"} | {"policy": None}
        values: dict[str, Any] = {}
        for key, value in doc.items():
            if key not in known:
                raise ConfigError(f"{self.config_file}: unknown key {key!r} (known: {', '.join(known)})")
            if key in ("seed_time", "follow_every") and isinstance(value, str):
                value = parse_duration(value)
            if key == "publishers":
                values[key] = self._publishers(value)
                continue
            if key == "dht_bootstrap":
                values[key] = self._nodes(value)
                continue
            if key in ("lan_group", "lan_interface") and isinstance(value, str):
                from llamashare.p2p.lan import parse_group, parse_interface

                try:
                    parse_group(value) if key == "lan_group" else parse_interface(value)
                except ReleaseError as exc:
                    raise ConfigError(f"{self.config_file}: {key}: {exc}") from None
            if key == "policy":
                values["licenses"] = self._policy(value)
                continue
            kinds: dict[str, type | tuple[type, ...]] = {
                "ratio": (int, float),
                "seed_time": (int, float),
                "follow_every": (int, float),
                "local_only": bool,
                "lan_discovery": bool,
                "lan_group": str,
                "lan_interface": str,
                "models_dir": str,
                "default_quant": str,
            }
            kind = kinds.get(key, int)
            if kind is str:
                if not isinstance(value, str) or not value.strip():
                    raise ConfigError(f"{self.config_file}: {key} must be a non-empty string")
            elif (
                isinstance(value, bool) != (kind is bool)
                or not isinstance(value, kind)
                or (isinstance(value, int | float) and kind is not bool and not 0 <= value <= MAX_TARGET)  # NaN too
            ):
                raise ConfigError(
                    f"{self.config_file}: {key} must be "
                    + ("true or false" if kind is bool else f"a finite number from 0 to {MAX_TARGET:g}")
                )
            values[key] = value
        return Config(**values)

    def _policy(self, table: object) -> tuple[str, ...] | None:
        if not isinstance(table, dict) or set(table) - {"licenses"}:
            raise ConfigError(f'{self.config_file}: [policy] holds only licenses = ["Apache-2.0", ...]')
        licenses = table.get("licenses")
        if licenses is None:
            return None
        if not isinstance(licenses, list) or not all(isinstance(v, str) and v.strip() for v in licenses):
            raise ConfigError(f"{self.config_file}: policy.licenses must be a list of license names")
        return tuple(v.strip() for v in licenses)

    def _nodes(self, value: object) -> tuple[str, ...]:
        from llamashare.p2p.address import parse_dht_node

        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f'{self.config_file}: dht_bootstrap must be a list of "HOST:PORT" strings')
        try:
            return tuple(parse_dht_node(v) for v in value)
        except ReleaseError as exc:
            raise ConfigError(f"{self.config_file}: dht_bootstrap: {exc}") from None

    def _publishers(self, table: object) -> dict[str, str]:
        from llamashare.errors import KeyFileError
        from llamashare.manifests.signing import parse_public_key

        if not isinstance(table, dict):
            raise ConfigError(f'{self.config_file}: [publishers] must be a table of "name-glob" = "ed25519:<hex>"')
        out = {}
        for pattern, key in table.items():
            if not isinstance(key, str):
                raise ConfigError(f'{self.config_file}: publishers.{pattern} must be a string "ed25519:<hex>"')
            try:
                out[pattern] = parse_public_key(key)
            except KeyFileError as exc:
                raise ConfigError(f"{self.config_file}: publishers.{pattern}: {exc}") from None
        return out


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


#: Largest ratio or seed time (seconds) a config or flag may set: finite, ~31 years of seeding.
MAX_TARGET = 1e9


def parse_duration(text: str) -> float:
    """'90', '90s', '30m', '2h', '1d', '1w', '1h30m' → seconds."""
    text = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        if not float(text) <= MAX_TARGET:
            raise ConfigError(f"{text!r} is longer than any seeding target ({MAX_TARGET:g} s)")
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)([smhdw])", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ConfigError(f"{text!r} is not a duration (e.g. 90s, 30m, 2h, 1d, 1h30m)")
    seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if not seconds <= MAX_TARGET:
        raise ConfigError(f"{text!r} is longer than any seeding target ({MAX_TARGET:g} s)")
    return seconds
