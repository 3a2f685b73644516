"""Which models `serve` offers, loaded on first use, unloaded least-recently-used.

A model's id is its release name in the store, or the stem of a GGUF path given on the command
line (``smollm2.gguf`` → ``smollm2``). Loading takes seconds (weights and compiled kernels), so
it happens in a thread, once per model, and each loaded model gets its own Scheduler. When
loading another would leave less memory than it needs, the least recently used idle model goes.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from llamashare.daemon.served import ServedModel
from llamashare.errors import InferenceError
from llamashare.infer.model import Llama, available_memory
from llamashare.infer.tokenizer import GGUFTokenizer
from llamashare.serve.scheduler import Engine, Scheduler
from llamashare.store import Store


class UnknownModel(InferenceError):
    """A request named a model the server does not offer."""


@dataclass
class Loaded:
    model: Llama
    tok: GGUFTokenizer
    scheduler: Scheduler
    template: str | None
    used: float = field(default_factory=time.monotonic)
    vocabulary: object = None  # llguidance's view of tok, made on the first JSON-schema request


@dataclass(frozen=True)
class Offer:
    id: str
    path: Path
    created: int  # seconds since the epoch (the file's modification time)
    size: int


def offers(store: Store, models: list[str]) -> dict[str, Offer]:
    """id → what it serves: every MODEL given (release names or GGUF paths), else every release
    in the store that has a GGUF (a name's newest version as NAME, older ones as NAME@VERSION)."""
    found: dict[str, Path] = {}
    if models:
        for m in models:
            path = Path(m)
            if path.suffix == ".gguf" or "/" in m or path.exists():
                if not path.is_file():
                    raise InferenceError(f"{m}: no such GGUF file")
                found[path.stem] = path
            else:
                best = store.get(m).best_gguf()
                if best is None:
                    raise InferenceError(f"{m} has no GGUF file yet (fetched with --no-convert?)")
                found[m] = best
    else:  # a name is its newest version; an older one is NAME@VERSION
        entries = sorted(store.entries(), key=lambda e: e.added, reverse=True)
        for entry in entries:
            best = entry.best_gguf()
            if best is not None:
                found[entry.name if entry.name not in found else f"{entry.name}@{entry.version}"] = best
    out = {}
    for model_id, path in found.items():
        st = path.stat()
        out[model_id] = Offer(model_id, path, int(st.st_mtime), st.st_size)
    return out


class Models:
    """The loaded models behind the offers; thread-safe."""

    def __init__(self, offered: dict[str, Offer], n_ctx: int | None, parallel: int) -> None:
        self.offered, self.n_ctx, self.parallel = offered, n_ctx, parallel
        self.engine = Engine()
        self.loaded: dict[str, Loaded] = {}
        self.lock = threading.Lock()
        self.loading: dict[str, threading.Lock] = {m: threading.Lock() for m in offered}

    def get(self, model_id: str) -> Loaded:
        """The loaded model (loading it now if needed: call from a worker thread)."""
        if model_id not in self.offered:
            have = ", ".join(self.offered) or "none"
            raise UnknownModel(f"the model {model_id!r} does not exist here (this server offers: {have})")
        with self.loading[model_id]:
            with self.lock:
                hit = self.loaded.get(model_id)
            if hit is None:
                self._make_room(self.offered[model_id])
                path = self.offered[model_id].path
                model = self.engine.call(lambda: Llama(path, n_ctx=self.n_ctx))  # its kernels' thread
                tok = GGUFTokenizer(model.file)
                template = model.file.meta("tokenizer.chat_template")
                scheduler = Scheduler(model, tok, self.engine, self.parallel)
                hit = Loaded(model, tok, scheduler, template if isinstance(template, str) else None)
                with self.lock:
                    self.loaded[model_id] = hit
            hit.used = time.monotonic()
            return hit

    def _make_room(self, offer: Offer) -> None:
        """Unload idle models, least recently used first, while the new one's float32 weights
        (about four times its file) would not fit in the memory available."""
        need = 4 * offer.size
        while True:
            free = available_memory()
            with self.lock:
                idle = sorted((m for m in self.loaded.items() if m[1].scheduler.active == 0), key=lambda m: m[1].used)
            if free is None or free >= need or not idle:
                return
            model_id, gone = idle[0]
            with self.lock:
                del self.loaded[model_id]
            gone.scheduler.close()

    def status(self) -> list[ServedModel]:
        """Each offered model: loaded or not, its running and waiting requests, decode steps."""
        with self.lock:
            loaded = dict(self.loaded)
        out = []
        for model_id in self.offered:
            s = loaded[model_id].scheduler if model_id in loaded else None
            out.append(
                ServedModel(
                    model_id,
                    s is not None,
                    len(s.running) if s else 0,
                    len(s.waiting) if s else 0,
                    s.steps if s else 0,
                )
            )
        return out

    def close(self) -> None:
        with self.lock:
            loaded, self.loaded = list(self.loaded.values()), {}
        for m in loaded:
            m.scheduler.close()
        self.engine.close()
