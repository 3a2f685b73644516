"""llamashare: share LLM weights peer to peer, verify every byte, convert, quantize and run them.

The installed package maps the repository's folders into one namespace:
``llamashare.manifests`` (release format, torrent metadata, create, verify), ``llamashare.p2p``
(the swarm engine), ``llamashare.quant`` (file formats, convert and quantize) and
``llamashare.infer`` (inference). This folder holds the base every layer uses (``errors``,
``fsio``, ``ui``) and the layers above the engine: ``daemon`` (the background service),
``store`` (the model store), ``pipeline``, ``demo`` and ``cli``. Imports point one way, down that
list; ``pyproject.toml``'s import-linter contracts check it (docs/architecture.md).
"""

__version__ = "0.1.0"
