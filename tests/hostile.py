"""Hostile inputs for tests/test_bombs.py and tests/test_bad_input.py, built on the spot.

A small real model folder whose config or tokenizer is then changed, ``.pth`` archives whose
pickle or tensor views are written by hand (tests/torch_format.py writes honest ones), and raw
pickles with opcodes no honest ``torch.save`` emits.
"""

from __future__ import annotations

import io
import json
import pickle
import struct
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf

from llamashare.quant.gguf_file import SCALAR_FORMATS, TensorInfo, encode_header, read_header
from llamashare.sample import SampleConfig, write_sample_model
from tests.torch_format import _fake_torch, _Persistent, _Pickler

#: A model small enough to convert in a few milliseconds, shaped like the real thing.
SMALL = SampleConfig(
    vocab_size=300,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    shards=1,
)
DELETE = object()  # a config value that removes its key


def hf_model(
    root: Path,
    config: dict[str, Any] | None = None,
    tokenizer: Callable[[dict[str, Any]], None] | None = None,
    cfg: SampleConfig = SMALL,
) -> Path:
    """The sample HF folder at ``root`` with ``config`` merged into config.json (DELETE removes a
    key) and ``tokenizer`` applied to tokenizer.json's document."""
    write_sample_model(root, cfg)
    path = root / "config.json"
    doc = json.loads(path.read_text())
    for key, value in (config or {}).items():
        if value is DELETE:
            doc.pop(key, None)
        else:
            doc[key] = value
    path.write_text(json.dumps(doc))  # json writes NaN / Infinity as Python's json reads them
    if tokenizer is not None:
        tj = root / "tokenizer.json"
        tdoc = json.loads(tj.read_text())
        tokenizer(tdoc)
        tj.write_text(json.dumps(tdoc))
    return root


@dataclass(frozen=True)
class View:
    """One tensor record of a hand-written .pth: a view of storage ``key``."""

    key: str
    numel: int  # the storage's element count, as the persistent id claims it
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    storage: str = "HalfStorage"


def view_pickle(views: dict[str, View]) -> bytes:
    """The data.pkl ``torch.save`` would write for these views (protocol 2, torch's globals)."""
    with _fake_torch() as fake:

        class Record:
            def __init__(self, v: View) -> None:
                self.v = v

            def __reduce__(self) -> tuple:
                v = self.v
                pid = ("storage", fake.storages[v.storage], v.key, "cpu", v.numel)
                return (fake.rebuild, (_Persistent(pid), v.offset, v.shape, v.stride, False, OrderedDict()))

        buf = io.BytesIO()
        _Pickler(buf, protocol=2).dump(OrderedDict((n, Record(v)) for n, v in views.items()))
        return buf.getvalue()


def write_pth(
    path: Path,
    pickle_bytes: bytes | Callable[[io.RawIOBase | Any], None],
    storages: dict[str, bytes] | None = None,
    compress_pickle: bool = False,
) -> None:
    """A torch zip archive: ``<stem>/data.pkl`` (given bytes, or a writer streaming them, so a
    huge decompressed pickle never sits in this process's memory) and stored storages."""
    archive = path.stem
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        kind = zipfile.ZIP_DEFLATED if compress_pickle else zipfile.ZIP_STORED
        info = zipfile.ZipInfo(f"{archive}/data.pkl")
        info.compress_type = kind
        with z.open(info, "w", force_zip64=True) as f:
            if callable(pickle_bytes):
                pickle_bytes(f)
            else:
                f.write(pickle_bytes)
        for key, data in (storages or {}).items():
            z.writestr(zipfile.ZipInfo(f"{archive}/data/{key}"), data)
        z.writestr(f"{archive}/version", "3\n")


def binbytes8(length: int, present: bytes = b"") -> bytes:
    """A pickle whose one BINBYTES8 opcode claims ``length`` bytes; ``present`` follow it."""
    return b"\x80\x04\x8e" + struct.pack("<Q", length) + present + b"."


def zero_bytes_pickle(n: int) -> Callable[[Any], None]:
    """A writer of a valid pickle of ``n`` zero bytes (highly compressible), in 1 MiB pieces."""

    def write(f: Any) -> None:
        f.write(b"\x80\x04\x8e" + struct.pack("<Q", n))
        chunk = bytes(1 << 20)
        left = n
        while left:
            f.write(chunk[: min(left, len(chunk))])
            left -= min(left, len(chunk))
        f.write(b".")

    return write


def meta_stride0(root: Path, dim: int, n_vocab: int, n_layers: int = 1, ff: int | None = None) -> Path:
    """A Meta-layout checkpoint whose every tensor is a stride-0 view of one 1-element storage:
    a few KB on disk that claim full-size matrices. A real SentencePiece tokenizer sits beside it."""
    from tests.checkpoints import write_sentencepiece

    ff = ff or 2 * dim
    shapes = {"tok_embeddings.weight": (n_vocab, dim), "norm.weight": (dim,), "output.weight": (n_vocab, dim)}
    for i in range(n_layers):
        p = f"layers.{i}."
        shapes |= {
            p + "attention_norm.weight": (dim,),
            p + "attention.wq.weight": (dim, dim),
            p + "attention.wk.weight": (dim, dim),
            p + "attention.wv.weight": (dim, dim),
            p + "attention.wo.weight": (dim, dim),
            p + "ffn_norm.weight": (dim,),
            p + "feed_forward.w1.weight": (ff, dim),
            p + "feed_forward.w2.weight": (dim, ff),
            p + "feed_forward.w3.weight": (ff, dim),
        }
    views = {n: View("0", 1, 0, s, (0,) * len(s)) for n, s in shapes.items()}
    root.mkdir(parents=True)
    write_pth(root / "consolidated.00.pth", view_pickle(views), {"0": struct.pack("<e", 0.5)})
    (root / "params.json").write_text(json.dumps({"dim": dim, "n_layers": n_layers, "n_heads": 4, "norm_eps": 1e-5}))
    write_sentencepiece(root / "tokenizer.model", vocab_size=min(n_vocab, 400))
    return root


def pickle_of(obj: Any) -> bytes:
    return pickle.dumps(obj, protocol=2)


# -- GGUF files with chosen metadata or tensor table ---------------------------------------------

V = gguf.GGUFValueType


def gguf_value(vtype: int, value: Any) -> bytes:
    """``value`` in GGUF's encoding; arrays are (element type, items)."""
    if vtype == V.STRING:
        data = value.encode("utf-8", "surrogatepass")  # lone surrogates become invalid UTF-8, on purpose
        return struct.pack("<Q", len(data)) + data
    if vtype == V.ARRAY:
        sub, items = value
        return struct.pack("<IQ", sub, len(items)) + b"".join(gguf_value(sub, x) for x in items)
    return struct.pack(SCALAR_FORMATS[V(vtype)], value)


def gguf_kv(key: str, vtype: int, value: Any) -> bytes:
    k = key.encode()
    return struct.pack("<Q", len(k)) + k + struct.pack("<I", vtype) + gguf_value(vtype, value)


def rewrite_gguf(
    src: Path, dst: Path, kv: dict[str, bytes | None] | None = None, tensors: list[TensorInfo] | None = None
) -> Path:
    """``src`` with metadata keys replaced (raw encodings from gguf_kv; None removes a key) and
    optionally another tensor table; the data section is copied as is."""
    h = read_header(src)
    raw = dict(h.raw_kv)
    for key, value in (kv or {}).items():
        if value is None:
            raw.pop(key, None)
        else:
            raw[key] = value
    header = encode_header(list(raw.values()), tensors if tensors is not None else h.tensors, h.alignment)
    dst.write_bytes(header + bytes(h.data[h.data_start :]))
    h.data.close()
    return dst


def gguf_value_of(path: Path, key: str) -> Any:
    h = read_header(path)
    try:
        return h.value(key)
    finally:
        h.data.close()
