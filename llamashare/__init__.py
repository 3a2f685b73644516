"""llamashare: share LLM weights peer to peer, verify every byte, convert, quantize and run them.

The installed package maps the repository's folders into one namespace:
``llamashare.manifests`` (release format, create, verify), ``llamashare.p2p`` (torrents and the
swarm), ``llamashare.quant`` (convert and quantize) and ``llamashare.infer`` (inference).
"""

__version__ = "0.1.0"
