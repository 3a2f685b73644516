"""Convert (checkpoints → GGUF) and quantize (GGUF types compatible with llama.cpp).

Not built yet: see the convert and quantize issues. The folder exists so the installed layout
(``llamashare.quant``) is fixed from the start.
"""
