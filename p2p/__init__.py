"""The swarm engine: a libtorrent session (``settings``) and the node on top of it (``node``),
which verifies files while they download and enforces seeding targets.

It knows manifests and nothing above them: the daemon that runs a node in the background, its
API and the model store live in ``llamashare.daemon`` and ``llamashare.store``.
"""
