"""Release manifests: the TOML format (``manifest``), hashing, signing, ``create`` and ``verify``."""
