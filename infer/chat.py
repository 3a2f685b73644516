"""Chat: the model's own template (``tokenizer.chat_template``, Jinja as Hugging Face writes it)
renders the conversation; each turn re-sends it and the KV cache keeps what is unchanged.

The template comes from a downloaded file, so it runs in Jinja's immutable sandbox: no attribute
access to Python internals, no mutation of passed objects — a hostile template can fail, not act;
infer/sandbox.py bounds it in time and size too, so it cannot hang or exhaust memory either.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from jinja2 import TemplateError

from llamashare.errors import InferenceError
from llamashare.infer.generate import Stats, generate
from llamashare.infer.model import Llama
from llamashare.infer.sampling import Sampler
from llamashare.infer.sandbox import RenderError, render_bounded, weight
from llamashare.infer.tokenizer import GGUFTokenizer


def _raise(message: str) -> None:
    raise TemplateError(message)


#: Characters a rendered conversation may reach beyond four times its messages' own text, and
#: the most any one value inside the render may have (see infer/sandbox.py).
RENDER_CHARS = 1 << 20
#: Seconds a render may take (real templates take about a millisecond).
RENDER_SECONDS = 2.0


def _special_tokens(tok: GGUFTokenizer) -> dict[str, str]:
    return {
        name: tok.tokens[i] if i is not None else "" for name, i in (("bos_token", tok.bos), ("eos_token", tok.eos))
    }


def render_limit(messages: list[dict[str, str]], tok: GGUFTokenizer) -> int:
    """Characters a render of ``messages`` may output (and any value inside it may have): what
    the conversation can justify, four times its own text, plus RENDER_CHARS for the template's."""
    return RENDER_CHARS + 4 * (weight(messages, 1 << 62) + sum(map(len, _special_tokens(tok).values())))


def render(
    template: str, messages: list[dict[str, str]], tok: GGUFTokenizer, add_generation_prompt: bool = True
) -> str:
    """The prompt text for ``messages`` (dicts with role and content), rendered in a sandbox
    bounded in time and size: a hostile template fails with one InferenceError."""
    special = _special_tokens(tok)
    limit = render_limit(messages, tok)
    helpers = {"raise_exception": _raise, "strftime_now": lambda fmt: datetime.now().strftime(fmt)}
    variables = {"messages": messages, "add_generation_prompt": add_generation_prompt, **special}
    try:
        return render_bounded(template, variables, helpers, limit, RENDER_SECONDS, trim_blocks=True, lstrip_blocks=True)
    except RenderError as e:
        raise InferenceError(f"the model's chat template failed: {e}") from None


def prompt_tokens(tok: GGUFTokenizer, text: str) -> list[int]:
    """Tokens of a rendered conversation: special tokens parsed; BOS added only if the template
    did not already write it."""
    ids = tok.encode(text, add_special=True, parse_special=True)
    if tok.bos is not None and len(ids) > 1 and ids[0] == ids[1] == tok.bos:
        ids = ids[1:]
    return ids


class Chat:
    """A conversation with ``model``; ``say`` runs one turn and streams the reply to ``emit``."""

    def __init__(
        self, model: Llama, tok: GGUFTokenizer, sampler: Sampler, system: str | None = None, template: str | None = None
    ) -> None:
        self.model, self.tok, self.sampler = model, tok, sampler
        found = template or model.file.meta("tokenizer.chat_template")
        if not isinstance(found, str) or not found:
            raise InferenceError(f"{model.file.path}: has no chat template (tokenizer.chat_template); use -p instead")
        self.template = found
        self.messages: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []

    def say(self, text: str, n_predict: int, emit: Callable[[str], None]) -> Stats:
        self.messages.append({"role": "user", "content": text})
        ids = prompt_tokens(self.tok, render(self.template, self.messages, self.tok))
        stats = Stats()
        reply = []
        try:
            for _, piece in generate(self.model, self.tok, ids, n_predict, self.sampler, stats):
                reply.append(piece)
                emit(piece)
        finally:
            self.messages.append({"role": "assistant", "content": "".join(reply)})
        return stats


def converse(
    session: Chat,
    first: str | None,
    read: Callable[[], str | None],
    n_predict: int,
    emit: Callable[[str], None],
    report: Callable[[Stats], None],
) -> None:
    """The interactive loop of ``run --chat``: ``first`` (if given), then each line ``read``
    returns, until it returns None or an empty line. Ctrl-C stops one reply, not the chat."""
    text = first
    while True:
        if text is None:
            text = read()
        if text is None or not text.strip():
            return
        try:
            stats = session.say(text, n_predict, emit)
        except KeyboardInterrupt:
            emit("\n")
            text = None
            continue
        emit("\n")
        report(stats)
        text = None
