"""The HTTP side of `llamashare serve` (aiohttp): OpenAI's and Ollama's APIs over the Schedulers.

    GET  /v1/models, /v1/models/{id}     the models this server offers
    POST /v1/chat/completions            messages → the model's chat template → a reply
    POST /v1/completions                 a raw prompt → its continuation
    GET  /api/version, /api/tags         Ollama: version, the models offered
    POST /api/chat, /api/generate        Ollama: chat and generate (NDJSON streams by default)
    POST /api/show                       Ollama: a model's details and template
    GET  /, /static/…                    a chat page (public files; its requests carry the key)
    GET  /llamashare/status              the models, and each one's running and waiting requests

Streams are server-sent events ending in ``data: [DONE]`` (OpenAI) or one JSON object per line
(Ollama). A client that goes away cancels its request at the next decode step. Errors are JSON in
each API's own shape, never a traceback or an HTML page. ``Host`` must name the address served
(so a web page cannot reach a loopback server through DNS rebinding), and with an API key every
request needs ``Authorization: Bearer KEY``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web

from llamashare import __version__
from llamashare.errors import LlamashareError
from llamashare.infer.chat import prompt_tokens, render
from llamashare.serve import requests
from llamashare.serve.models import Loaded, Models, UnknownModel
from llamashare.serve.requests import BadRequest, Generation
from llamashare.serve.scheduler import Constraint, Event, Request

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
log = logging.getLogger("llamashare.serve")
#: The chat page and its script and style (package files; the page loads nothing from elsewhere).
WEB = Path(__file__).resolve().parent / "web"


class Refused(Exception):
    """An HTTP error with a status, reported in the API's own JSON shape."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", code: str | None = None):
        super().__init__(message)
        self.status, self.kind, self.code = status, kind, code


def _is_ollama(request: web.Request) -> bool:
    return request.path.startswith("/api/")


def error_response(request: web.Request, status: int, message: str, kind: str, code: str | None) -> web.Response:
    if _is_ollama(request):
        return web.json_response({"error": message}, status=status)
    return web.json_response({"error": {"message": message, "type": kind, "param": None, "code": code}}, status=status)


def make_app(models: Models, hosts: set[str], api_key: str | None = None) -> web.Application:
    """The server for ``models``; ``hosts`` are the Host header values accepted (the address
    and port served, with localhost's names when that is loopback), read at each request."""

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            if request.host not in hosts:
                answers = sorted(hosts)[0] if hosts else "its own address"
                raise Refused(403, f"Host {request.host!r} refused: this server answers to {answers}")
            if api_key is not None and not (request.path == "/" or request.path.startswith("/static/")):
                sent = request.headers.get("Authorization", "")
                if not hmac.compare_digest(sent.encode(), f"Bearer {api_key}".encode()):
                    raise Refused(
                        401,
                        "invalid API key (send 'Authorization: Bearer KEY')",
                        "authentication_error",
                        "invalid_api_key",
                    )
            return await handler(request)
        except Refused as e:
            return error_response(request, e.status, str(e), e.kind, e.code)
        except UnknownModel as e:
            return error_response(request, 404, str(e), "invalid_request_error", "model_not_found")
        except (BadRequest, LlamashareError) as e:
            return error_response(request, 400, str(e), "invalid_request_error", None)
        except web.HTTPException as e:
            if e.status == 413:
                return error_response(
                    request, 413, f"the request body is over {requests.MAX_BODY} bytes", "invalid_request_error", None
                )
            return error_response(request, e.status, e.reason, "invalid_request_error", None)
        except ConnectionError:
            raise  # the client went away mid-stream: nobody to answer
        except Exception as e:  # a bug: one JSON line for the client, the traceback for the log
            log.exception("%s %s failed", request.method, request.path)
            return error_response(request, 500, f"internal error: {type(e).__name__}", "server_error", None)

    app = web.Application(middlewares=[guard], client_max_size=requests.MAX_BODY)

    async def body(request: web.Request) -> object:
        try:
            return await request.json(loads=lambda text: json.loads(text, parse_constant=_no_constant))
        except (ValueError, UnicodeDecodeError) as e:
            raise BadRequest(f"the body is not JSON: {str(e)[:100]}") from None

    async def load(model_id: str) -> Loaded:
        return await asyncio.get_running_loop().run_in_executor(None, models.get, model_id)

    # -- OpenAI ---------------------------------------------------------------------------------

    def model_card(model_id: str) -> dict[str, Any]:
        offer = models.offered[model_id]
        return {"id": model_id, "object": "model", "created": offer.created, "owned_by": "llamashare"}

    async def list_models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [model_card(m) for m in models.offered]})

    async def one_model(request: web.Request) -> web.Response:
        model_id = request.match_info["model"]
        if model_id not in models.offered:
            raise UnknownModel(f"the model {model_id!r} does not exist here")
        return web.json_response(model_card(model_id))

    async def chat_completions(request: web.Request) -> web.StreamResponse:
        return await openai_generation(request, requests.openai(await body(request), chat=True), chat=True)

    async def completions(request: web.Request) -> web.StreamResponse:
        return await openai_generation(request, requests.openai(await body(request), chat=False), chat=False)

    async def openai_generation(request: web.Request, g: Generation, chat: bool) -> web.StreamResponse:
        loaded = await load(g.model)
        ids = prompt_of(loaded, g)
        limit = await constraint_for(loaded, g)
        rid, created = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}", int(time.time())
        kind = "chat.completion" if chat else "text_completion"

        def choice(text: str, finish: str | None, delta: bool) -> dict[str, Any]:
            if not chat:
                return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
            key = "delta" if delta else "message"
            message = {"role": "assistant", "content": text} if not delta or text or finish is None else {}
            return {"index": 0, key: message, "logprobs": None, "finish_reason": finish}

        def usage(ev: Event) -> dict[str, int]:
            return {
                "prompt_tokens": ev.prompt_tokens,
                "completion_tokens": ev.completion_tokens,
                "total_tokens": ev.prompt_tokens + ev.completion_tokens,
            }

        if not g.stream:
            text, last = [], Event()
            async with aclosing(run(loaded, ids, g, limit)) as events:
                async for ev in events:
                    text.append(ev.text)
                    last = ev
            failed(last)
            return web.json_response(
                {
                    "id": rid,
                    "object": kind,
                    "created": created,
                    "model": g.model,
                    "choices": [choice("".join(text), last.finish_reason, delta=False)],
                    "usage": usage(last),
                }
            )
        events = run(loaded, ids, g, limit)
        response = await start_stream(request, "text/event-stream")
        chunk_kind = f"{kind}.chunk" if chat else kind

        async def send(payload: dict[str, Any] | str) -> None:
            data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
            await response.write(f"data: {data}\n\n".encode())

        def chunk(choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
            return {"id": rid, "object": chunk_kind, "created": created, "model": g.model, "choices": choices, **extra}

        async with aclosing(events):
            if chat:
                await send(chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]))
            async for ev in events:
                if ev.error:
                    await send({"error": {"message": ev.error, "type": "server_error", "param": None, "code": None}})
                    break
                if ev.text:
                    await send(chunk([choice(ev.text, None, delta=True)]))
                if ev.done:
                    await send(chunk([choice("", ev.finish_reason, delta=True)]))
                    if g.include_usage:
                        await send(chunk([], usage=usage(ev)))
        await send("[DONE]")
        await response.write_eof()
        return response

    # -- Ollama ---------------------------------------------------------------------------------

    def details(loaded: Loaded | None, model_id: str) -> dict[str, Any]:
        arch = loaded.model.cfg.arch if loaded else ""
        return {
            "format": "gguf",
            "family": arch,
            "families": [arch] if arch else None,
            "parameter_size": "",
            "quantization_level": "",
        }

    async def version(request: web.Request) -> web.Response:
        return web.json_response({"version": __version__})

    async def tags(request: web.Request) -> web.Response:
        out = []
        for model_id, offer in models.offered.items():
            modified = datetime.fromtimestamp(offer.created, UTC).isoformat()
            loaded = models.loaded.get(model_id)
            out.append(
                {
                    "name": model_id,
                    "model": model_id,
                    "modified_at": modified,
                    "size": offer.size,
                    "details": details(loaded, model_id),
                }
            )
        return web.json_response({"models": out})

    async def show(request: web.Request) -> web.Response:
        doc = await body(request)
        if not isinstance(doc, dict):
            raise BadRequest("the body must be a JSON object")
        name = doc.get("model", doc.get("name"))
        if not isinstance(name, str):
            raise BadRequest("'model' must name a model")
        loaded = await load(name)
        cfg = loaded.model.cfg
        info = {
            "general.architecture": cfg.arch,
            f"{cfg.arch}.context_length": cfg.n_ctx_train,
            f"{cfg.arch}.embedding_length": cfg.n_embd,
            f"{cfg.arch}.block_count": cfg.n_layer,
        }
        return web.json_response(
            {
                "modelfile": f"FROM {models.offered[name].path}\n",
                "parameters": "",
                "template": loaded.template or "",
                "details": details(loaded, name),
                "model_info": info,
                "capabilities": ["completion"],
            }
        )

    async def ollama_chat(request: web.Request) -> web.StreamResponse:
        return await ollama_generation(request, requests.ollama(await body(request), chat=True), chat=True)

    async def ollama_generate(request: web.Request) -> web.StreamResponse:
        return await ollama_generation(request, requests.ollama(await body(request), chat=False), chat=False)

    async def ollama_generation(request: web.Request, g: Generation, chat: bool) -> web.StreamResponse:
        t0 = time.monotonic_ns()
        loaded = await load(g.model)
        loaded_at = time.monotonic_ns()
        ids = prompt_of(loaded, g)
        limit = await constraint_for(loaded, g)

        def line(text: str, ev: Event | None) -> dict[str, Any]:
            out: dict[str, Any] = {"model": g.model, "created_at": datetime.now(UTC).isoformat()}
            if chat:
                out["message"] = {"role": "assistant", "content": text}
            else:
                out["response"] = text
            out["done"] = ev is not None
            if ev is not None:
                now = time.monotonic_ns()
                out |= {
                    "done_reason": ev.finish_reason,
                    "total_duration": now - t0,
                    "load_duration": loaded_at - t0,
                    "prompt_eval_count": ev.prompt_tokens,
                    "eval_count": ev.completion_tokens,
                    "eval_duration": now - loaded_at,
                }
            return out

        events = run(loaded, ids, g, limit)
        if not g.stream:
            text, last = [], Event()
            async with aclosing(events):
                async for ev in events:
                    text.append(ev.text)
                    last = ev
            failed(last)
            return web.json_response(line("".join(text), last))
        response = await start_stream(request, "application/x-ndjson")
        async with aclosing(events):
            async for ev in events:
                if ev.error:
                    await response.write((json.dumps({"error": ev.error}) + "\n").encode())
                    break
                if ev.text:
                    await response.write((json.dumps(line(ev.text, None), ensure_ascii=False) + "\n").encode())
                if ev.done:
                    await response.write((json.dumps(line("", ev)) + "\n").encode())
        await response.write_eof()
        return response

    # -- shared ---------------------------------------------------------------------------------

    def prompt_of(loaded: Loaded, g: Generation) -> list[int]:
        tok = loaded.tok
        if g.messages is not None:
            if loaded.template is None:
                if g.prompt is None and all(m["role"] != "system" for m in g.messages) and len(g.messages) == 1:
                    text = g.messages[0]["content"]  # Ollama's generate without a template: the prompt as is
                    return tok.encode(text, add_special=True, parse_special=False)
                raise BadRequest(f"{g.model} has no chat template; use the completions endpoint with a raw prompt")
            return prompt_tokens(tok, render(loaded.template, g.messages, tok))
        assert g.prompt is not None
        return tok.encode(g.prompt, add_special=True, parse_special=False)

    async def constraint_for(loaded: Loaded, g: Generation) -> Constraint | None:
        if g.json_schema is None:
            return None
        from llamashare.serve import constrain  # llguidance loads only for JSON replies

        loop = asyncio.get_running_loop()
        if loaded.vocabulary is None:
            loaded.vocabulary = await loop.run_in_executor(None, constrain.vocabulary, loaded.tok)
        try:
            schema = constrain.schema_of(g.json_schema)
            return constrain.constraint(loaded.vocabulary, schema, loaded.model.cfg.n_vocab)  # type: ignore[arg-type]
        except ValueError as e:
            raise BadRequest(str(e)) from None

    def run(
        loaded: Loaded, ids: list[int], g: Generation, constraint: Constraint | None = None
    ) -> AsyncGenerator[Event, None]:
        """Submit the generation (refusing a prompt that leaves no room before anything is sent)
        and return its events as they come."""
        n_ctx = loaded.model.n_ctx
        if len(ids) >= n_ctx:
            raise BadRequest(f"the prompt is {len(ids)} tokens; this model's context holds {n_ctx} (prompt and reply)")
        room = n_ctx - len(ids)
        max_tokens = room if g.max_tokens is None else min(g.max_tokens, room)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Event] = asyncio.Queue()
        req = Request(
            prompt=ids,
            max_tokens=max_tokens,
            sampling=g.sampling,
            emit=lambda ev: _forget(loop.call_soon_threadsafe(queue.put_nowait, ev)),
            stop=g.stop,
            presence_penalty=g.presence_penalty,
            frequency_penalty=g.frequency_penalty,
            constraint=constraint,
        )
        loaded.scheduler.submit(req)

        async def events() -> AsyncGenerator[Event, None]:
            try:
                while True:
                    ev = await queue.get()
                    yield ev
                    if ev.done:
                        return
            finally:
                req.cancel()  # the client went away (or the stream ended): the worker drops it

        return events()

    def failed(ev: Event) -> None:
        if ev.error:
            raise Refused(500, ev.error, "server_error")

    async def start_stream(request: web.Request, content_type: str) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": content_type, "Cache-Control": "no-cache"})
        await response.prepare(request)
        return response

    async def not_found(request: web.Request) -> web.Response:
        raise Refused(404, f"no such endpoint: {request.method} {request.path}")

    async def page(request: web.Request) -> web.FileResponse:
        return web.FileResponse(WEB / "chat.html", headers={"Cache-Control": "no-store"})

    async def static(request: web.Request) -> web.FileResponse:
        name = request.match_info["name"]
        if name not in ("chat.js", "chat.css"):
            raise Refused(404, f"no such file: {name}")
        return web.FileResponse(WEB / name)

    async def status(request: web.Request) -> web.Response:
        return web.json_response({"models": [asdict(m) for m in models.status()]})

    app.router.add_get("/", page)
    app.router.add_get("/static/{name}", static)
    app.router.add_get("/llamashare/status", status)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{model}", one_model)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_get("/api/version", version)
    app.router.add_get("/api/tags", tags)
    app.router.add_post("/api/show", show)
    app.router.add_post("/api/chat", ollama_chat)
    app.router.add_post("/api/generate", ollama_generate)
    app.router.add_route("*", "/{tail:.*}", not_found)
    return app


def _forget(_: object) -> None:
    """Drop a value (the handle call_soon_threadsafe returns)."""


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def allowed_hosts(host: str, port: int) -> set[str]:
    """Host header values a server bound to ``host``:``port`` answers to."""
    if host in ("127.0.0.1", "localhost", "::1"):
        return {f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"}
    shown = f"[{host}]" if ":" in host else host
    return {f"{shown}:{port}"}
