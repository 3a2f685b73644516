"""libtorrent session settings, chosen deliberately, each with its reason.

libtorrent's defaults suit a desktop client with hundreds of small torrents on a home line. A
llamashare node moves a few multi-GB releases, often over fast links (and in tests, loopback), so
the defaults leave most of the speed on the table: on a 2-core machine, one 1 GiB file over
127.0.0.1 went at 13 MiB/s with defaults and ~120 MiB/s with the settings below (shared/
REFERENCE.md; `bench/swarm.py` measures it again).
"""

from __future__ import annotations

from dataclasses import dataclass

import libtorrent as lt

from llamashare.p2p.lan import LanGroup

MiB = 1024 * 1024


@dataclass(frozen=True)
class NetworkOptions:
    """What differs between nodes and between tests and real use."""

    listen_port: int = 6881
    listen_host: str = "0.0.0.0"
    #: Tests and benchmarks: no DHT, local peer discovery, UPnP or NAT-PMP, so no traffic leaves
    #: loopback and nothing but the test's own tracker or ``--peer`` supplies peers.
    local_only: bool = False
    upload_rate_limit: int = 0  # bytes/s, 0 = unlimited
    download_rate_limit: int = 0
    #: DHT nodes to join through (HOST:PORT). With ``local_only`` the DHT runs only if some are
    #: given, and then only with them (tests and closed networks form their own DHT on loopback).
    dht_bootstrap: tuple[str, ...] = ()
    #: Offer this node's complete releases on the LAN (p2p.lan), on this group; None = off.
    lan: LanGroup | None = None


def session_settings(opts: NetworkOptions) -> dict:
    """The settings pack for one node."""
    host = opts.listen_host if ":" not in opts.listen_host else f"[{opts.listen_host}]"
    s = {
        "listen_interfaces": f"{host}:{opts.listen_port}",
        "user_agent": "llamashare",
        "alert_mask": lt.alert_category.error
        | lt.alert_category.status
        | lt.alert_category.storage
        | lt.alert_category.tracker
        | lt.alert_category.peer
        # piece_finished_alert: each finished piece wakes the daemon's loop, so the BLAKE3
        # cursors move on at once rather than at the next timed poll.
        | lt.alert_category.piece_progress
        | lt.alert_category.dht,
        "alert_queue_size": 10_000,
        # uTP is a congestion-friendly protocol for shared home links; its user-space pacing caps
        # throughput far below TCP on fast links (the biggest single loss measured on loopback).
        # So we never dial over uTP: with outgoing uTP on, libtorrent tries uTP first for every
        # peer. TCP in and out stays on (libtorrent's default).
        "enable_outgoing_utp": False,
        # But we answer peers that dial us over uTP: qBittorrent (like other libtorrent clients
        # with default settings) dials uTP first, and a seed that ignores its uTP SYN costs it a
        # connect timeout (~5 s measured with qBittorrent 4.5) before it retries over TCP
        # (docs/interop.md). Such a connection stays uTP, slower than TCP on a fast link; the
        # connections we open stay TCP.
        "enable_incoming_utp": True,
        # Bytes uTP's congestion window grows per round trip while it sees no queueing delay
        # (after slow start, which does the ramp-up on long links and ignores this). libtorrent's
        # 3000 is ~2 packets per RTT, above LEDBAT's limit of one (RFC 6817). With loopback's tiny
        # RTT it overshot the receiver's default UDP buffer in bursts: losses, 500 ms timeouts,
        # and qBittorrent pulled 256 MiB from us at ~8 MiB/s. At 500 (~1/3 packet per RTT) few
        # packets were lost and it got ~45-60 MiB/s, CPU bound (2 cores; over TCP ~140 MiB/s).
        "utp_gain_factor": 500,
        # With uTP and TCP peers at once, libtorrent's default (peer_proportional) rate-limits
        # TCP connections to their share of the current throughput (once 5 peers are busy and
        # one is uTP), so uTP peers would throttle the fast TCP ones. prefer_tcp leaves TCP
        # unlimited and lets uTP yield to it, as its delay-based congestion control intends.
        "mixed_mode_algorithm": int(lt.bandwidth_mixed_algo_t.prefer_tcp),
        # Keep enough bytes queued per peer to fill a fast pipe: the default 500 kB watermark
        # stalls a loopback/LAN connection between round trips.
        "send_buffer_watermark": 64 * MiB,
        "send_buffer_low_watermark": 1 * MiB,
        "send_buffer_watermark_factor": 150,
        # Bytes received but not yet written that libtorrent holds before it stops reading from
        # peers (its default: 1 MiB). A deep queue lets received bytes run far ahead of the
        # pieces' own hash checks and writes, all of which "verified" must wait for: 1 GiB over
        # loopback (2 cores) took as long at 4, 8 and 64 MiB (1.8-2.1 s), but the last byte
        # came 0.5-0.9 s before "verified" at 64 MiB and 0.1-0.26 s at 8 MiB.
        "max_queued_disk_bytes": 8 * MiB,
        # Disk and hash work on separate threads: hashing 4–16 MiB pieces is CPU bound and
        # must not wait behind writes.
        "aio_threads": 4,
        "hashing_threads": 2,
        # Many outstanding block requests per peer keep a fast peer busy (the default 500 is
        # below the bandwidth-delay product at >100 MiB/s with 16 KiB blocks).
        "max_out_request_queue": 5000,
        # Upload to two peers at a time (libtorrent's default: 8), each at a larger share of the
        # uplink. Where the uplink is the limit, a piece then reaches its peer sooner and spreads
        # from there, and fewer peers fetch the same piece from the origin at once: behind a 64
        # MiB/s origin, 4 leechers took 6.8-7.7 s (origin sent 1.9x the release) at 8 slots and
        # 5.0-6.0 s (1.1-1.4x) at 2, one leecher 5.0 s; 16 daemons (bench/swarm_scale.py, 32
        # MiB/s origin) finished in 15.2 s instead of 17.9, the origin sending 1.63x, not 2.16x.
        # One slot starved the leechers of each other (30 s).
        "unchoke_slots_limit": 2,
        # Every peer of a loopback swarm, and of a LAN behind one NAT, shares one IP address.
        "allow_multiple_connections_per_ip": True,
        # A few large releases, not hundreds of small torrents: do not queue them away.
        "active_downloads": -1,
        "active_seeds": -1,
        "active_limit": -1,
        "dont_count_slow_torrents": False,
        # Announce to every tracker tier at once; release trackers are few and any may be gone.
        "announce_to_all_tiers": True,
        "announce_to_all_trackers": True,
        # Reconnect quickly to peers that dropped (restarts, crashes) instead of waiting a minute.
        "min_reconnect_time": 2,
        # Ratio and seed-time targets are enforced by llamashare itself: libtorrent's own
        # share_ratio_limit/seed_time_limit only lower a torrent's queue priority and never stop
        # it, and our torrents are not auto-managed, so its queue does not apply to them.
        "upload_rate_limit": opts.upload_rate_limit,
        "download_rate_limit": opts.download_rate_limit,
        "enable_dht": not opts.local_only or bool(opts.dht_bootstrap),
        "enable_lsd": not opts.local_only,
        "enable_upnp": not opts.local_only,
        "enable_natpmp": not opts.local_only,
    }
    if opts.dht_bootstrap:
        given = ",".join(opts.dht_bootstrap)
        s["dht_bootstrap_nodes"] = (
            given if opts.local_only else f"{given},{lt.default_settings()['dht_bootstrap_nodes']}"
        )
    if opts.local_only:
        # Loopback tests run many peers on one address and need quick retries and no
        # bans for "too many connections from one IP".
        s["peer_connect_timeout"] = 3
        s["min_announce_interval"] = 1
        if opts.dht_bootstrap:
            # A DHT of nodes that all live on 127.0.0.1 (or one LAN): libtorrent would keep one
            # node per /24 in its routing table and in each search, and insist on node ids
            # derived from a public address (BEP 42); none of that can hold on loopback.
            s["dht_restrict_routing_ips"] = False
            s["dht_restrict_search_ips"] = False
            s["dht_prefer_verified_node_ids"] = False
            s["dht_enforce_node_id"] = False
            # Announce each torrent to the DHT every few seconds rather than every 15 minutes: a
            # closed network is small and changes quickly (a node that has just finished a
            # download must be findable by the next one now).
            s["dht_announce_interval"] = 5
            # libtorrent blocks an IP that sends it more than 5 DHT packets a second, for 5
            # minutes. On loopback every node is one IP (127.0.0.1), so a few lookups at once
            # would cut the whole DHT apart.
            s["dht_block_ratelimit"] = 10_000
            s["dht_upload_rate_limit"] = 1 << 20
            s["dht_ignore_dark_internet"] = False
    return s
