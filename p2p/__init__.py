"""The swarm: hybrid torrent metadata (``torrent``), and — as the swarm issue lands — libtorrent
sessions, the seeding daemon and its control API."""
