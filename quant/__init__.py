"""Convert (checkpoints → GGUF) and quantize (GGUF tensor types byte-compatible with llama.cpp).

convert: checkpoint, safetensors_io, torch_pickle, vocab, delta, convert.
quantize: qtype (base class, registry, ggml's C arithmetic) with one class per tensor type in
float_types, legacy_types and k_types; presets (llama.cpp's per-tensor rules); gguf_file (GGUF
headers); quantize (the streaming driver).
"""
