"""Run llama.cpp's own ``llama_model_quantize`` (through llama-cpp-python) as a subprocess:
``python tests/llamacpp_quantize.py IN OUT FTYPE [--pure] [--allow-requantize] [--threads N]``. A separate process
keeps llama.cpp's log lines and any abort away from the test runner."""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    import llama_cpp

    src, out, ftype = argv[0], argv[1], int(argv[2])
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.pure = "--pure" in argv
    params.allow_requantize = "--allow-requantize" in argv
    params.nthread = int(argv[argv.index("--threads") + 1]) if "--threads" in argv else 1
    llama_cpp.llama_backend_init()
    return int(llama_cpp.llama_model_quantize(src.encode(), out.encode(), params))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
