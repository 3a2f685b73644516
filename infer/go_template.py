"""A model's Jinja chat template restated as the Go template Ollama's Modelfile wants (``TEMPLATE``),
when that can be done exactly.

Most chat templates wrap each message in a fixed prefix and suffix for its role, after a fixed
start (BOS, and a default system message some templates add when the conversation has none),
and end with the assistant's header. Those pieces are read off renders of the template on
sentinel messages, then the composition is checked against the Jinja template itself on other
conversations (with and without a system message, one to five turns, contents with spaces,
newlines and template syntax in them); the first difference refuses the template (one that trims
content, folds the system message into the first user turn, numbers turns …), and the caller
leaves ``TEMPLATE`` out, so Ollama maps the GGUF's template by itself.

The Go template uses only text/template's own actions over Ollama's documented data (``.Messages``,
each with ``.Role`` and ``.Content``), so Go's engine renders it the same everywhere
(tests/test_export.py renders it with Go's text/template compiled to WebAssembly).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from llamashare.errors import InferenceError
from llamashare.infer.chat import render
from llamashare.infer.tokenizer import GGUFTokenizer

#: Sentinel contents: characters no chat template writes, to find where each content goes.
_SENTINEL = "\x1e{}\x1f"
#: Contents the composition is checked with: what trimming or reformatting would change.
CHECK_TEXTS = ("Hello! Who are you?", " I am a model.\nTwo lines, spaced. ", "{{ .Not }} a {% template %}")

Message = dict[str, str]


@dataclass(frozen=True)
class Pieces:
    """What a template writes around the messages; roles map to (prefix, suffix)."""

    start: str
    default: str  # written first when the conversation does not open with a system message
    first_system: tuple[str, str]  # a system message that opens the conversation
    wrap: dict[str, tuple[str, str]]  # system (later ones), user, assistant
    gen: str  # the assistant's header that ends every prompt

    def compose(self, convo: list[Message]) -> str:
        """What the Go template renders for ``convo``: the model of it that is checked."""
        out = self.start + ("" if convo and convo[0]["role"] == "system" else self.default)
        for i, m in enumerate(convo):
            pre, post = self.first_system if i == 0 and m["role"] == "system" else self.wrap[m["role"]]
            out += pre + m["content"] + post
        return out + self.gen

    def literals(self) -> list[str]:
        return [
            self.start,
            self.default,
            self.gen,
            *self.first_system,
            *(p for pair in self.wrap.values() for p in pair),
        ]


def ollama_template(chat_template: str, tok: GGUFTokenizer) -> str | None:
    """A Go template that renders every conversation exactly as ``chat_template`` does with
    ``add_generation_prompt``, or None if this template is not of that shape."""
    try:
        fitting = [p for p in _candidates(chat_template, tok) if _fits(p, chat_template, tok)]
    except InferenceError:  # the template refuses a check conversation (e.g. any system message)
        return None
    if not fitting:
        return None
    p = fitting[0]
    start = p.start
    if tok.add_bos and tok.bos is not None:
        start = start.removeprefix(tok.tokens[tok.bos])  # the runtime adds BOS itself
    if any("{{" in x or "}}" in x or '"""' in x for x in p.literals()):
        return None  # Go would read it as an action, or the Modelfile as the end of the block
    out = start
    if p.default:
        out += f'{{{{ if or (not .Messages) (ne (index .Messages 0).Role "system") }}}}{p.default}{{{{ end }}}}'
    out += "{{ range $i, $m := .Messages }}"
    out += '{{ if and (eq $i 0) (eq $m.Role "system") }}' + p.first_system[0] + "{{ $m.Content }}" + p.first_system[1]
    for role, (pre, post) in p.wrap.items():
        out += f'{{{{ else if eq $m.Role "{role}" }}}}{pre}{{{{ $m.Content }}}}{post}'
    return out + "{{ end }}{{ end }}" + p.gen


def check_conversations() -> list[list[Message]]:
    """The conversations a derived template must render exactly as the Jinja one."""
    a, b, c = CHECK_TEXTS
    turns = [("user", a), ("assistant", b), ("user", c), ("assistant", a), ("user", b)]
    out = []
    for system in (None, c):
        for n in (1, 2, 3, 5):
            convo = [{"role": r, "content": t} for r, t in turns[:n]]
            out.append(([{"role": "system", "content": system}] if system else []) + convo)
    return out


def _late_system() -> list[Message]:
    return [{"role": "user", "content": CHECK_TEXTS[0]}, {"role": "system", "content": CHECK_TEXTS[1]}]


def _fits(p: Pieces, template: str, tok: GGUFTokenizer) -> bool:
    if any(p.compose(convo) != render(template, convo, tok) for convo in check_conversations()):
        return False
    try:
        want = render(template, _late_system(), tok)
    except InferenceError:
        return True  # the template refuses a system message after the first
    return p.compose(_late_system()) == want


def _candidates(template: str, tok: GGUFTokenizer) -> list[Pieces]:
    """The pieces read off sentinel renders. Where the fixed start ends and a system prefix begins
    is ambiguous, so each plausible split is a candidate (nothing, BOS, all the two share)."""
    s, s2, u1, a1, u2 = (_SENTINEL.format(x) for x in ("S", "S2", "U1", "A1", "U2"))
    user, asst, system = ({"role": r, "content": c} for r, c in (("user", u1), ("assistant", a1), ("system", s)))

    # Without the generation prompt some templates end with EOS instead (Phi-3): that tail is cut.
    one, with_gen = render(template, [user], tok, add_generation_prompt=False), render(template, [user], tok)
    eos = tok.tokens[tok.eos] if tok.eos is not None else ""
    tail = "" if with_gen.startswith(one) else eos
    if not (tail and one.endswith(tail) and with_gen.startswith(one[: len(one) - len(tail)])) and tail:
        return []

    def once(convo: list[Message]) -> str:
        text = render(template, convo, tok, add_generation_prompt=False)
        if not text.endswith(tail):
            raise InferenceError("the template ends a conversation in more than one way")
        return text[: len(text) - len(tail)]

    one = once([user])
    ua, uau = once([user, asst]), once([user, asst, {"role": "user", "content": u2}])
    su = once([system, user])
    if any(x.count(c) != 1 for x, c in ((one, u1), (ua, a1), (uau, u2), (su, s))):
        return []
    gen = with_gen[len(one) :]
    head, user_post = one.split(u1)  # start + default + user prefix | user suffix
    asst_post = ua.split(a1)[1]
    between = uau.split(a1)[1].split(u2)[0]  # assistant suffix + user prefix
    mid = ua.split(u1)[1].split(a1)[0]  # user suffix + assistant prefix
    if not (between.startswith(asst_post) and mid.startswith(user_post)):
        return []
    user_pre, asst_pre = between[len(asst_post) :], mid[len(user_post) :]
    sys_head, rest = su.split(s)  # start + system prefix | system suffix + user prefix + …
    sys_post = rest.split(u1)[0]
    if not (head.endswith(user_pre) and sys_post.endswith(user_pre)):
        return []
    sys_post = sys_post[: len(sys_post) - len(user_pre)]
    lead = head[: len(head) - len(user_pre)]  # start + default
    later = (sys_head, sys_post)  # a later system message, unless the template writes it otherwise
    try:
        us = once([user, {"role": "system", "content": s2}])
        if us.count(s2) == 1 and us.count(u1) == 1 and us.index(u1) < us.index(s2):
            before, after = us.split(s2)
            later = (before.split(u1)[1].removeprefix(user_post), after)
    except InferenceError:
        pass  # the template refuses a system message after the first
    bos = tok.tokens[tok.bos] if tok.bos is not None else ""
    starts = dict.fromkeys(x for x in ("", bos, os.path.commonprefix([lead, sys_head])) if sys_head.startswith(x))
    return [
        Pieces(
            start,
            lead[len(start) :],
            (sys_head[len(start) :], sys_post),
            {
                "system": later if later[0] != sys_head else (sys_head[len(start) :], sys_post),
                "user": (user_pre, user_post),
                "assistant": (asst_pre, asst_post),
            },
            gen,
        )
        for start in starts
        if lead.startswith(start)
    ]
