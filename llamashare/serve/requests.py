"""Request bodies of the OpenAI and Ollama APIs, checked and turned into one typed record.

Pure functions: a JSON object in, a ``Generation`` (or a ``BadRequest`` naming the field) out.
Defaults follow llama.cpp's server where the OpenAI API leaves them to the server (temperature
0.8, top-k 40, top-p 0.95, min-p 0.05), and Ollama's option names map onto the same fields.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from llamashare.infer.sampling import SamplingParams

#: Largest request body, in bytes (a long conversation is well under this).
MAX_BODY = 8 << 20
#: Most stop strings a request may give, and their length (OpenAI allows 4).
MAX_STOPS, MAX_STOP_CHARS = 16, 256


class BadRequest(ValueError):
    """The request itself is wrong: 400, with this message."""


@dataclass(frozen=True)
class Generation:
    model: str
    messages: list[dict[str, str]] | None  # chat: rendered with the model's template
    prompt: str | None  # completion: used as it is
    max_tokens: int | None  # None: until the context is full
    sampling: SamplingParams
    stop: tuple[str, ...]
    presence_penalty: float
    frequency_penalty: float
    stream: bool
    include_usage: bool = False
    json_schema: dict[str, Any] | bool | None = None  # the reply must be JSON this schema accepts


def _number(body: dict[str, Any], key: str, default: float, low: float, high: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise BadRequest(f"'{key}' must be a number")
    if not low <= value <= high:
        raise BadRequest(f"'{key}' must be between {low:g} and {high:g} (got {value:g})")
    return float(value)


def _integer(body: dict[str, Any], key: str, default: int | None, low: int, high: int) -> int | None:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool):
        raise BadRequest(f"'{key}' must be an integer")
    if not low <= value <= high:
        raise BadRequest(f"'{key}' must be between {low} and {high} (got {value})")
    return value


def _stops(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise BadRequest("'stop' must be a string or a list of strings")
    if len(stops) > MAX_STOPS or any(len(s) > MAX_STOP_CHARS for s in stops):
        raise BadRequest(f"'stop' takes at most {MAX_STOPS} strings of at most {MAX_STOP_CHARS} characters")
    return tuple(s for s in stops if s)


def _content(value: object, where: str) -> str:
    """A message's content: text, or OpenAI's list of parts of which only text ones are taken."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        texts = []
        for part in value:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise BadRequest(f"{where}: only text content parts are supported")
            texts.append(part["text"])
        return "".join(texts)
    if value is None:
        return ""
    raise BadRequest(f"{where}: 'content' must be text")


def messages(value: object) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise BadRequest("'messages' must be a non-empty list")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise BadRequest(f"messages[{i}] must be an object with a 'role'")
        out.append({"role": m["role"], "content": _content(m.get("content"), f"messages[{i}]")})
    return out


def _model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("'model' must name a model (GET /v1/models lists them)")
    return model


def _sampling(body: dict[str, Any], temp_key: str = "temperature") -> SamplingParams:
    seed = _integer(body, "seed", None, -(2**63), 2**64 - 1)
    return SamplingParams(
        temperature=_number(body, temp_key, 0.8, 0.0, 2.0),
        top_k=int(_integer(body, "top_k", 40, 0, 1 << 20) or 0),
        top_p=_number(body, "top_p", 0.95, 1e-9, 1.0),
        min_p=_number(body, "min_p", 0.05, 0.0, 1.0),
        repeat_penalty=_number(body, "repeat_penalty", 1.0, 1e-3, 10.0),
        seed=None if seed is None else seed % 2**64,
    )


def _response_format(fmt: object) -> dict[str, Any] | bool | None:
    """OpenAI's response_format: text (None), json_object (any object) or json_schema."""
    if fmt is None:
        return None
    if not isinstance(fmt, dict):
        raise BadRequest("'response_format' must be an object")
    kind = fmt.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "object"}
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), (dict, bool)):
            raise BadRequest("'response_format.json_schema' must be an object with a 'schema'")
        schema: dict[str, Any] | bool = spec.get("schema", {})
        return schema
    raise BadRequest("'response_format.type' must be text, json_object or json_schema")


def openai(body: object, chat: bool) -> Generation:
    """A POST /v1/chat/completions (``chat``) or /v1/completions body."""
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    if _integer(body, "n", 1, 1, 1) != 1:
        raise BadRequest("'n' must be 1")
    schema = _response_format(body.get("response_format"))
    if chat:
        msgs, prompt = messages(body.get("messages")), None
    else:
        raw = body.get("prompt")
        if isinstance(raw, list) and len(raw) == 1 and isinstance(raw[0], str):
            raw = raw[0]
        if not isinstance(raw, str):
            raise BadRequest("'prompt' must be a string")
        msgs, prompt = None, raw
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise BadRequest("'stream_options' must be an object")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest("'stream' must be true or false")
    return Generation(
        model=_model(body),
        messages=msgs,
        prompt=prompt,
        max_tokens=_integer({"max_tokens": limit}, "max_tokens", None, 1, 1 << 30),
        sampling=_sampling(body),
        stop=_stops(body.get("stop")),
        presence_penalty=_number(body, "presence_penalty", 0.0, -2.0, 2.0),
        frequency_penalty=_number(body, "frequency_penalty", 0.0, -2.0, 2.0),
        stream=stream,
        include_usage=bool(options.get("include_usage")),
        json_schema=schema,
    )


def ollama(body: object, chat: bool) -> Generation:
    """A POST /api/chat (``chat``) or /api/generate body; ``options`` as Ollama names them."""
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    options = body.get("options") or {}
    if not isinstance(options, dict):
        raise BadRequest("'options' must be an object")
    fmt = body.get("format")
    if fmt not in (None, "", "json") and not isinstance(fmt, dict):
        raise BadRequest("'format' must be \"json\" or a JSON schema")
    schema: dict[str, Any] | bool | None = {} if fmt == "json" else fmt or None
    if chat:
        msgs, prompt = messages(body.get("messages")), None
    else:
        raw = body.get("prompt", "")
        if not isinstance(raw, str):
            raise BadRequest("'prompt' must be a string")
        system = body.get("system")
        if system is not None and not isinstance(system, str):
            raise BadRequest("'system' must be a string")
        if body.get("raw"):
            msgs, prompt = None, raw
        else:
            msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": raw}]
            prompt = None
    stream = body.get("stream", True)
    if not isinstance(stream, bool):
        raise BadRequest("'stream' must be true or false")
    n_predict = _integer(options, "num_predict", None, -2, 1 << 30)
    return Generation(
        model=_model(body),
        messages=msgs,
        prompt=prompt,
        max_tokens=None if n_predict is None or n_predict < 0 else max(1, n_predict),
        sampling=_sampling(options),
        stop=_stops(options.get("stop")),
        presence_penalty=_number(options, "presence_penalty", 0.0, -2.0, 2.0),
        frequency_penalty=_number(options, "frequency_penalty", 0.0, -2.0, 2.0),
        stream=stream,
        json_schema=schema,
    )
