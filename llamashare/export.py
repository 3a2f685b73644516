"""``export``: a GGUF the store built, laid out for the runtimes people already use.

- **Ollama**: ``DIR/NAME.TYPE.gguf`` and a ``DIR/Modelfile`` beside it (``FROM`` the file,
  ``TEMPLATE`` the chat template as a Go template, ``PARAMETER stop`` for every token that ends
  generation, ``LICENSE`` the release's terms), so ``ollama create NAME -f DIR/Modelfile`` imports
  it. The Go template is written only when it renders exactly what the GGUF's Jinja template does
  (``infer.go_template``); otherwise it is left out and Ollama maps the GGUF's own template when it
  imports the file, which is better than a subtly wrong prompt format.
- **LM Studio**: ``DIR/PUBLISHER/NAME-GGUF/NAME.TYPE.gguf``, the layout of LM Studio's models
  folder (``~/.lmstudio/models``); it reads the chat template and stop tokens from the GGUF.

The stop tokens are the ones llama.cpp ends generation on (``GGUFTokenizer.eog``: EOS, EOT, EOM
and the end-of-turn markers it finds by text). The GGUF is hard-linked when it can be (no copy),
else copied to ``.partial`` and renamed; a file already at a target path is used only if it has
the same bytes, and never overwritten.
"""

from __future__ import annotations

import errno
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from llamashare.errors import StoreError
from llamashare.fsio import atomic_write
from llamashare.infer.go_template import ollama_template
from llamashare.infer.tokenizer import GGUFTokenizer, VocabFile
from llamashare.manifests.hashing import Hasher

FORMATS = ("ollama", "lmstudio")


@dataclass(frozen=True)
class Exported:
    """Where the exported files are and how to load them."""

    gguf: Path
    linked: bool  # a hard link to the store's file (no copy), or the file was already there
    modelfile: Path | None
    stops: tuple[str, ...]
    load: str  # the command that loads it into the runtime
    notes: list[str] = field(default_factory=list)


def export_gguf(
    gguf: Path, to: Path, fmt: str, name: str, license_text: str | None, publisher: str = "llamashare"
) -> Exported:
    """Lay ``gguf`` out in ``to`` for runtime ``fmt`` (one of :data:`FORMATS`)."""
    if fmt not in FORMATS:
        raise StoreError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    vocab = VocabFile(gguf)
    tok = GGUFTokenizer(vocab)
    stops = tuple(sorted({tok.tokens[i] for i in tok.eog}))
    notes: list[str] = []
    chat_template = vocab.meta("tokenizer.chat_template")
    go_template = ollama_template(chat_template, tok) if isinstance(chat_template, str) else None
    if fmt == "lmstudio":
        folder = to / _folder_name(publisher) / f"{_folder_name(name)}-GGUF"
        target = folder / gguf.name
        linked = _place(gguf, target)
        return Exported(
            target, linked, None, stops, f"lms import {target}   (or point LM Studio's models folder at {to})"
        )
    to.mkdir(parents=True, exist_ok=True)
    target = to / gguf.name
    linked = _place(gguf, target)
    modelfile = to / "Modelfile"
    if go_template is None:
        notes.append(
            "no TEMPLATE in the Modelfile: the chat template is not one a Go template can restate "
            "exactly; Ollama maps the GGUF's own when it imports the file"
        )
    text = modelfile_text(target.name, stops, license_text, notes, go_template)
    if modelfile.exists() and modelfile.read_text(errors="replace") != text:
        raise StoreError(f"{modelfile} exists with other content; move it away (nothing was overwritten)")
    atomic_write(modelfile, text.encode())
    tag = _folder_name(name).lower()
    return Exported(target, linked, modelfile, stops, f"ollama create {tag} -f {modelfile}", notes)


def modelfile_text(
    gguf_name: str, stops: tuple[str, ...], license_text: str | None, notes: list[str], template: str | None = None
) -> str:
    """An Ollama Modelfile for ``gguf_name`` beside it."""
    lines = ["# Written by llamashare export. Load with: ollama create NAME -f Modelfile", f"FROM ./{gguf_name}"]
    if template is not None:
        lines.append(f'TEMPLATE """{template}"""')
    for stop in stops:
        if _quotable(stop):
            lines.append(f'PARAMETER stop "{stop}"')
        else:
            notes.append(f"stop token {stop!r} cannot be written in a Modelfile; Ollama still stops on it as EOS")
    if license_text:
        if '"""' in license_text:
            notes.append("the license text holds triple quotes and was left out of the Modelfile")
        else:
            lines.append(f'LICENSE """{license_text}"""')
    return "\n".join(lines) + "\n"


def _quotable(text: str) -> bool:
    return bool(text) and not any(c in text for c in '"\\\n\r') and text.isprintable()


def _folder_name(text: str) -> str:
    """A folder name from a release or publisher name (those are plain already; repo ids have a /)."""
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in text).strip(".-") or "model"


def _place(src: Path, dst: Path) -> bool:
    """``dst`` becomes ``src``'s bytes: a hard link if it can, else a copy (renamed into place).
    True if no copy was made. A different file at ``dst`` is refused, never overwritten."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        if os.path.samefile(src, dst):
            return True
        if dst.stat().st_size == src.stat().st_size and _same_bytes(src, dst):
            return True
        raise StoreError(f"{dst} exists with other content; move it away (nothing was overwritten)")
    try:
        os.link(src, dst)
        return True
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
            raise
    partial = dst.with_name(dst.name + ".partial")
    with open(src, "rb") as fin, open(partial, "wb") as fout:
        shutil.copyfileobj(fin, fout, 16 << 20)
        fout.flush()
        os.fsync(fout.fileno())
    try:
        os.link(partial, dst)  # never replaces a file that appeared meanwhile
    finally:
        partial.unlink()
    return False


def _same_bytes(a: Path, b: Path) -> bool:
    with Hasher() as hasher:
        return hasher.hash_file(a, sha256=False).blake3 == hasher.hash_file(b, sha256=False).blake3
