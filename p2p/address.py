"""Peer addresses as users give them (``--peer``, the API's ``peers``): checked before anything
is saved, so a bad one is refused at once and can never trip a restarted daemon. No libtorrent
here, so the CLI can check a flag without loading it."""

from __future__ import annotations

import ipaddress

from llamashare.errors import ReleaseError


def parse_peer(text: str) -> tuple[str, int]:
    """``IP:PORT`` or ``[IPv6]:PORT`` (``localhost`` means 127.0.0.1). No name lookups: a peer
    the user names is dialled as given, and libtorrent's connect_peer takes addresses only."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ReleaseError(f"peer {text!r} is not IP:PORT")
    host = host.strip("[]")
    if host == "localhost":
        host = "127.0.0.1"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ReleaseError(f"peer {text!r}: {host!r} is not an IP address (give IP:PORT)") from None
    return host, int(port)
