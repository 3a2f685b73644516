"""Peer addresses as users give them (``--peer``, the API's ``peers``): checked before anything
is saved, so a bad one is refused at once and can never trip a restarted daemon. No libtorrent
here, so the CLI can check a flag without loading it."""

from __future__ import annotations

import ipaddress
import re

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


_NODE = re.compile(r"(?:[A-Za-z0-9][A-Za-z0-9.-]{0,252}|\[[0-9A-Fa-f:.]+\]):[0-9]{1,5}")


def parse_dht_node(text: str) -> str:
    """A DHT bootstrap node, ``HOST:PORT``: a host name or an address (libtorrent resolves names,
    and a bootstrap node is commonly named, e.g. router.bittorrent.com:6881)."""
    if not _NODE.fullmatch(text) or not 0 < int(text.rpartition(":")[2]) < 65536:
        raise ReleaseError(f"DHT node {text!r} is not HOST:PORT (port 1–65535)")
    return text
