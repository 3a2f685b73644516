"""Inference (``llamashare run``): a NumPy LLaMA engine over GGUF.

Not built yet: see the inference issue. The folder exists so the installed layout
(``llamashare.infer``) is fixed from the start.
"""
