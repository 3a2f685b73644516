"""Continuous batching: requests join and leave between decode steps.

One engine thread runs every kernel of the process (``Engine``): numba's OpenMP pool is fast
only on the thread that first used it — from any other thread a generated token took 2.6× as
long (SmolLM2 Q8_0: 24 against 64 tok/s on AMD EPYC, 2 cores) — so models are also loaded there,
and each model's ``Scheduler`` takes its turns there. Each turn a scheduler admits waiting requests (at most
``parallel`` run at once, each with its own KV cache), takes one chunk of one request's prompt
(``PREFILL_CHUNK`` tokens, so a long prompt never stalls the streams already running) and one
token for every running request, and passes them all through the model at once (``Llama.step``:
the weights are read once a turn, not once for the chunk and again for the tokens). That needs
a model whose every matrix is multiplied on its blocks, each row as it would be alone; for one
with float32 copies (F32, Q2_K, Q3_K), whose batch sums depend on the batch, the chunk goes
through its own pass first and the tokens through ``Llama.decode``. Either way a request's
numbers do not depend on its neighbours (a prompt is always cut into the same chunks, and every
generated row is computed as alone), so greedy output under load is the output alone.

Tokens go back to the asyncio side through ``Request.emit`` (called in the engine thread; the
HTTP layer hands in a ``loop.call_soon_threadsafe`` wrapper). A request whose client went away
is marked ``cancelled`` and dropped at the next step.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Protocol, TypeVar, cast

import numpy as np

from llamashare.errors import InferenceError
from llamashare.infer.model import KVCache, Llama
from llamashare.infer.sampling import Sampler, SamplingParams
from llamashare.infer.tokenizer import GGUFTokenizer, TextStream

T = TypeVar("T")

#: Prompt tokens fed per loop turn: small enough that running streams keep flowing, large enough
#: that a prompt batch still reuses each weight many times.
PREFILL_CHUNK = 64


@dataclass
class Event:
    """What a request's stream receives: text as it completes, then one final event."""

    text: str = ""
    done: bool = False
    finish_reason: str = ""  # "stop" or "length" (with done)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str = ""  # set (with done) when the request failed


class Constraint(Protocol):
    """What limits a reply's tokens (constrain.Constraint: a JSON schema)."""

    def mask(self, logits: np.ndarray) -> np.ndarray: ...

    def advance(self, token: int) -> None: ...

    @property
    def finished(self) -> bool: ...


@dataclass
class Request:
    prompt: list[int]
    max_tokens: int
    sampling: SamplingParams
    emit: Callable[[Event], None]
    stop: tuple[str, ...] = ()
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    constraint: Constraint | None = None
    cancelled: bool = False
    # worker state
    cache: KVCache | None = None
    fed: int = 0
    logits: np.ndarray | None = None
    generated: list[int] = field(default_factory=list)
    sampler: Sampler | None = None
    stream: TextStream | None = None
    held: str = ""  # text kept back while it may be the start of a stop string
    started: float = field(default_factory=time.monotonic)

    def cancel(self) -> None:
        self.cancelled = True


def hold_back(text: str, stops: tuple[str, ...]) -> tuple[str, str, bool]:
    """Split ``text`` into (what can be sent, what must wait, whether a stop string was hit). On
    a hit, what can be sent ends before the stop string and nothing waits; else the longest end of
    ``text`` that begins some stop string waits for the next token."""
    hits = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    if hits:
        return text[: min(hits)], "", True
    keep = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:n]):
                keep = max(keep, n)
                break
    return text[: len(text) - keep], text[len(text) - keep :], False


class Engine:
    """The thread that loads models and runs their schedulers' turns, one model after another."""

    def __init__(self) -> None:
        self.jobs: deque[tuple[Callable[[], object], Future[object]]] = deque()
        self.schedulers: list[Scheduler] = []
        self.wake = threading.Condition()
        self.closing = False
        self.thread = threading.Thread(target=self._loop, name="llamashare-engine", daemon=True)
        self.thread.start()

    def call(self, job: Callable[[], T]) -> T:
        """Run ``job`` on the engine thread and return its result (or raise its exception)."""
        if threading.current_thread() is self.thread:
            return job()
        done: Future[object] = Future()
        with self.wake:
            if self.closing:
                raise InferenceError("the server is shutting down")
            self.jobs.append((job, done))
            self.wake.notify()
        return cast(T, done.result())

    def notify(self) -> None:
        with self.wake:
            self.wake.notify()

    def close(self) -> None:
        with self.wake:
            self.closing = True
            self.wake.notify()
        self.thread.join(timeout=30)

    def _loop(self) -> None:
        while True:
            with self.wake:
                while not self.closing and not self.jobs and not any(s.has_work() for s in self.schedulers):
                    self.wake.wait()
                if self.closing:
                    for s in self.schedulers:
                        s.fail("the server is shutting down")
                    for _, done in self.jobs:
                        done.set_exception(InferenceError("the server is shutting down"))
                    return
                jobs, self.jobs = list(self.jobs), deque()
            for job, done in jobs:
                try:
                    done.set_result(job())
                except BaseException as e:  # handed to the caller, which reports it
                    done.set_exception(e)
            for s in list(self.schedulers):
                if s.has_work():
                    s.turn()


class Scheduler:
    """Continuous batching for one model, on the engine's thread: ``submit`` from any thread."""

    def __init__(self, model: Llama, tok: GGUFTokenizer, engine: Engine, parallel: int = 4) -> None:
        if parallel < 1:
            raise InferenceError("--parallel must be at least 1")
        self.model, self.tok, self.engine, self.parallel = model, tok, engine, parallel
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.free: list[KVCache] = []
        self.lock = threading.Lock()
        self.steps = 0  # decode steps done (for tests and the dashboard)
        with engine.wake:
            engine.schedulers.append(self)

    def submit(self, request: Request) -> None:
        n_ctx = self.model.n_ctx
        if not request.prompt:
            raise InferenceError("the prompt is empty")
        if len(request.prompt) >= n_ctx:
            raise InferenceError(
                f"the prompt is {len(request.prompt)} tokens; this model's context holds {n_ctx} (prompt and reply)"
            )
        with self.lock:
            self.waiting.append(request)
        self.engine.notify()

    @property
    def active(self) -> int:
        return len(self.running) + len(self.waiting)

    def has_work(self) -> bool:
        return bool(self.running or self.waiting)

    def close(self) -> None:
        """Stop serving: pending requests end with an error; the engine forgets this model."""
        with self.engine.wake:
            if self in self.engine.schedulers:
                self.engine.schedulers.remove(self)
        self.engine.call(lambda: self.fail("the model was unloaded"))

    def fail(self, why: str) -> None:
        with self.lock:
            waiting, self.waiting = list(self.waiting), deque()
        for r in [*self.running, *waiting]:
            r.emit(Event(done=True, error=why))
        self._release(list(self.running))

    # -- on the engine thread -------------------------------------------------------------------

    def turn(self) -> None:
        with self.lock:
            while self.waiting and len(self.running) < self.parallel:
                self.running.append(self._start(self.waiting.popleft()))
        try:
            self._turn()
        except Exception as e:  # a bug or a bad model must end its requests, not the engine
            for r in self.running:
                r.emit(Event(done=True, error=f"generation failed: {str(e)[:200]}"))
            self._release(list(self.running))

    def _start(self, r: Request) -> Request:
        r.cache = self.free.pop() if self.free else self.model.new_cache()
        r.cache.truncate(0)
        r.sampler = Sampler(r.sampling)
        r.stream = self.tok.streamer()
        return r

    def _turn(self) -> None:
        self._release([r for r in self.running if r.cancelled])
        feeding = next((r for r in self.running if r.fed < len(r.prompt)), None)
        chunk: list[int] = []
        if feeding is not None:
            chunk = feeding.prompt[feeding.fed : feeding.fed + PREFILL_CHUNK]
        together = self.model.weights_kind == "blocks"
        if feeding is not None and not together:  # a float32 product's sums depend on the batch
            assert feeding.cache is not None
            feeding.logits = self.model.forward(chunk, cache=feeding.cache)
            feeding.fed += len(chunk)
            feeding = None
        ready = [r for r in self.running if r.fed == len(r.prompt) and r.logits is not None]
        finished: list[Request] = []
        stepping: list[Request] = []
        for r in ready:
            if self._next(r):
                stepping.append(r)
            else:
                finished.append(r)
        self._release(finished)
        runs = [(r, [r.generated[-1]]) for r in stepping]
        if feeding is not None:  # the chunk rides in the same pass: the weights are read once
            runs.insert(0, (feeding, chunk))
        if not runs:
            return
        passes = [(r.cache, toks) for r, toks in runs if r.cache is not None]
        if together:
            logits = self.model.step(passes)
        else:
            logits = self.model.decode([c for c, _ in passes], [toks[0] for _, toks in passes])
        for (r, _), row in zip(runs, logits):
            r.logits = row
        if feeding is not None:
            feeding.fed += len(chunk)
        if stepping:
            self.steps += 1

    def _next(self, r: Request) -> bool:
        """Sample r's next token from its logits and send its text; False when r is done."""
        assert r.logits is not None and r.sampler is not None and r.stream is not None and r.cache is not None
        logits = r.logits if r.constraint is None else r.constraint.mask(r.logits)
        if r.generated and (r.presence_penalty or r.frequency_penalty):
            ids, counts = np.unique(np.asarray(r.generated), return_counts=True)
            logits = logits.copy()
            logits[ids] -= r.presence_penalty + r.frequency_penalty * counts
        token = r.sampler(logits, r.cache.tokens)
        if token in self.tok.eog:
            return self._finish(r, "stop", r.stream.flush())
        if r.constraint is not None:
            r.constraint.advance(token)
        r.generated.append(token)
        text, r.held, hit = hold_back(r.held + r.stream.push(token), r.stop)
        if hit:
            return self._finish(r, "stop", text, flush=False)
        if text:
            r.emit(Event(text=text))
        if r.constraint is not None and r.constraint.finished:
            return self._finish(r, "stop", r.stream.flush())
        if len(r.generated) >= r.max_tokens or len(r.cache) + 1 >= self.model.n_ctx:
            return self._finish(r, "length", r.stream.flush())
        return True

    def _finish(self, r: Request, reason: str, tail: str, flush: bool = True) -> bool:
        text = tail
        if flush:
            text, _, hit = hold_back(r.held + tail, r.stop)
            reason = "stop" if hit else reason
        r.held = ""
        if text:
            r.emit(Event(text=text))
        r.emit(Event(done=True, finish_reason=reason, prompt_tokens=len(r.prompt), completion_tokens=len(r.generated)))
        return False

    def _release(self, requests: list[Request]) -> None:
        for r in requests:
            if r in self.running:
                self.running.remove(r)
            if r.cache is not None:
                self.free.append(r.cache)
                r.cache = None
