"""Continuous batching for one loaded model: requests join and leave between decode steps.

One worker thread owns the model. Each turn of its loop it admits waiting requests (at most
``parallel`` run at once, each with its own KV cache), feeds one chunk of one request's prompt
(``PREFILL_CHUNK`` tokens, so a long prompt never stalls the streams already running), then
decodes one token for every running request in a single step (``Llama.decode``: the weights are
read once for all of them). A request's numbers do not depend on its neighbours: its prompt is
always cut into the same chunks, and decode computes every row as it would alone, so greedy
output under load is the output alone.

Tokens go back to the asyncio side through ``Request.emit`` (called in the worker thread; the
HTTP layer hands in a ``loop.call_soon_threadsafe`` wrapper). A request whose client went away
is marked ``cancelled`` and dropped at the next step.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from llamashare.errors import InferenceError
from llamashare.infer.model import KVCache, Llama
from llamashare.infer.sampling import Sampler, SamplingParams
from llamashare.infer.tokenizer import GGUFTokenizer, TextStream

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


@dataclass
class Request:
    prompt: list[int]
    max_tokens: int
    sampling: SamplingParams
    emit: Callable[[Event], None]
    stop: tuple[str, ...] = ()
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
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


class Scheduler:
    """The worker for one model: ``submit`` requests from any thread; ``close`` stops it."""

    def __init__(self, model: Llama, tok: GGUFTokenizer, parallel: int = 4) -> None:
        if parallel < 1:
            raise InferenceError("--parallel must be at least 1")
        self.model, self.tok, self.parallel = model, tok, parallel
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.free: list[KVCache] = []
        self.wake = threading.Condition()
        self.closing = False
        self.steps = 0  # decode steps done (for tests and the dashboard)
        self.thread = threading.Thread(target=self._loop, name="llamashare-serve", daemon=True)
        self.thread.start()

    def submit(self, request: Request) -> None:
        n_ctx = self.model.n_ctx
        if not request.prompt:
            raise InferenceError("the prompt is empty")
        if len(request.prompt) >= n_ctx:
            raise InferenceError(
                f"the prompt is {len(request.prompt)} tokens; this model's context holds {n_ctx} (prompt and reply)"
            )
        with self.wake:
            self.waiting.append(request)
            self.wake.notify()

    @property
    def active(self) -> int:
        return len(self.running) + len(self.waiting)

    def close(self) -> None:
        with self.wake:
            self.closing = True
            self.wake.notify()
        self.thread.join(timeout=30)

    # -- the worker -----------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self.wake:
                while not self.closing and not self.waiting and not self.running:
                    self.wake.wait()
                if self.closing:
                    for r in [*self.running, *self.waiting]:
                        r.emit(Event(done=True, error="the server is shutting down"))
                    return
                while self.waiting and len(self.running) < self.parallel:
                    self.running.append(self._start(self.waiting.popleft()))
            try:
                self._turn()
            except Exception as e:  # a bug or a bad model must end its requests, not the worker
                for r in self.running:
                    r.emit(Event(done=True, error=f"generation failed: {str(e)[:200]}"))
                self._release(self.running)

    def _start(self, r: Request) -> Request:
        r.cache = self.free.pop() if self.free else self.model.new_cache()
        r.cache.truncate(0)
        r.sampler = Sampler(r.sampling)
        r.stream = self.tok.streamer()
        return r

    def _turn(self) -> None:
        self._release([r for r in self.running if r.cancelled])
        feeding = next((r for r in self.running if r.fed < len(r.prompt)), None)
        if feeding is not None:
            assert feeding.cache is not None
            chunk = feeding.prompt[feeding.fed : feeding.fed + PREFILL_CHUNK]
            feeding.logits = self.model.forward(chunk, cache=feeding.cache)
            feeding.fed += len(chunk)
        ready = [r for r in self.running if r.fed == len(r.prompt) and r.logits is not None]
        finished: list[Request] = []
        stepping: list[Request] = []
        for r in ready:
            if self._next(r):
                stepping.append(r)
            else:
                finished.append(r)
        self._release(finished)
        if stepping:
            caches = [r.cache for r in stepping if r.cache is not None]
            logits = self.model.decode(caches, [r.generated[-1] for r in stepping])
            for r, row in zip(stepping, logits):
                r.logits = row
            self.steps += 1

    def _next(self, r: Request) -> bool:
        """Sample r's next token from its logits and send its text; False when r is done."""
        assert r.logits is not None and r.sampler is not None and r.stream is not None and r.cache is not None
        logits = r.logits
        if r.generated and (r.presence_penalty or r.frequency_penalty):
            ids, counts = np.unique(np.asarray(r.generated), return_counts=True)
            logits = logits.copy()
            logits[ids] -= r.presence_penalty + r.frequency_penalty * counts
        token = r.sampler(logits, r.cache.tokens)
        if token in self.tok.eog:
            return self._finish(r, "stop", r.stream.flush())
        r.generated.append(token)
        text, r.held, hit = hold_back(r.held + r.stream.push(token), r.stop)
        if hit:
            return self._finish(r, "stop", text, flush=False)
        if text:
            r.emit(Event(text=text))
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
