"""GGUF headers, read and written fast, with every metadata value kept as its exact bytes.

Why not gguf-py's ``GGUFReader`` here: it builds a NumPy view per value, which for a 49k-token
vocabulary is ~250k objects and seconds of start-up (3–5 s for SmolLM2-135M, longer than
quantizing it); this reader walks the header once with ``struct`` and keeps each key/value as a
byte span of the file, decoding only values asked for. Copying a key to another file is then
copying its bytes — nothing can be re-encoded differently. Constants (type ids, block sizes) still
come from gguf-py. Layout (GGUF v2/v3, little-endian): magic, version, tensor count, KV count;
KVs; tensor infos (name, dims, type, offset); padding to the alignment; tensor data.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

import gguf

from llamashare.errors import QuantizeError

V = gguf.GGUFValueType
#: struct format of each fixed-size metadata value type (little-endian, as GGUF stores them).
SCALAR_FORMATS = {
    V.UINT8: "<B",
    V.INT8: "<b",
    V.UINT16: "<H",
    V.INT16: "<h",
    V.UINT32: "<I",
    V.INT32: "<i",
    V.FLOAT32: "<f",
    V.BOOL: "<?",
    V.UINT64: "<Q",
    V.INT64: "<q",
    V.FLOAT64: "<d",
}
MAX_DIMS = 4
_U64 = struct.Struct("<Q")
MAX_ARRAY_DEPTH = 8


@dataclass(frozen=True)
class TensorInfo:
    name: str
    ne: tuple[int, ...]  # GGML order: ne[0] is the row length
    ggml_type: int
    offset: int  # relative to the data section


@dataclass
class GGUFHeader:
    """A parsed header over a memory-mapped file; ``raw_kv[key]`` is the key's full encoding."""

    path: Path
    version: int
    raw_kv: dict[str, bytes]
    tensors: list[TensorInfo]
    alignment: int
    data_start: int  # absolute offset of the data section
    data: mmap.mmap

    def value(self, key: str, default: object = None) -> object:
        raw = self.raw_kv.get(key)
        if raw is None:
            return default
        (klen,) = struct.unpack_from("<Q", raw, 0)
        return _Cursor(raw, 8 + klen).value()


def _check_depth(depth: int) -> None:
    """Arrays of arrays nest at most MAX_ARRAY_DEPTH deep (llama.cpp reads none; a file nesting
    100,000 deep would otherwise exhaust the stack of this recursive reader)."""
    if depth >= MAX_ARRAY_DEPTH:
        raise ValueError(f"metadata arrays nest more than {MAX_ARRAY_DEPTH} deep")


class _Cursor:
    """Reads GGUF's little-endian encoding from a buffer, raising one clear error at the end."""

    def __init__(self, buf: bytes | mmap.mmap, pos: int = 0) -> None:
        self.buf, self.pos = buf, pos

    def take(self, fmt: str) -> int | float | bool:
        try:
            (v,) = struct.unpack_from(fmt, self.buf, self.pos)
        except struct.error:
            raise EOFError from None
        self.pos += struct.calcsize(fmt)
        return v

    def string(self) -> bytes:
        n = int(self.take("<Q"))
        if self.pos + n > len(self.buf):
            raise EOFError
        s = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        return s

    def strings(self, count: int, keep: bool) -> list[bytes]:
        """``count`` strings in a row (a vocabulary, its merges): one tight loop, not a method
        call per field, since a 49k-token vocabulary is ~100k strings read at every load."""
        buf, pos, end, out = self.buf, self.pos, len(self.buf), []
        length = _U64.unpack_from
        for _ in range(count):
            if pos + 8 > end:
                raise EOFError
            (n,) = length(buf, pos)
            pos += 8
            if pos + n > end:
                raise EOFError
            if keep:
                out.append(bytes(buf[pos : pos + n]))
            pos += n
        self.pos = pos
        return out

    def scalars(self, sub: int, count: int) -> list[int | float | bool]:
        """An array of ``count`` fixed-size values, unpacked at once."""
        fmt = SCALAR_FORMATS[V(sub)]
        size = count * struct.calcsize(fmt)
        if self.pos + size > len(self.buf):
            raise EOFError
        values = list(struct.unpack_from(f"<{count}{fmt[1:]}", self.buf, self.pos))
        self.pos += size
        return values

    def skip_value(self, vtype: int, depth: int = 0) -> None:
        if vtype == V.STRING:
            n = int(self.take("<Q"))
            self.pos += n
        elif vtype == V.ARRAY:
            sub, count = int(self.take("<I")), int(self.take("<Q"))
            if sub in SCALAR_FORMATS:
                self.pos += count * struct.calcsize(SCALAR_FORMATS[V(sub)])
            elif sub == V.STRING:
                self.strings(count, keep=False)
            else:
                _check_depth(depth)
                for _ in range(count):
                    self.skip_value(sub, depth + 1)
                    if self.pos > len(self.buf):
                        raise EOFError
        elif vtype in SCALAR_FORMATS:
            self.pos += struct.calcsize(SCALAR_FORMATS[V(vtype)])
        else:
            raise ValueError(f"unknown metadata value type {vtype}")
        if self.pos > len(self.buf):
            raise EOFError

    def value(self) -> object:
        vtype = int(self.take("<I"))
        return self._typed(vtype)

    def _typed(self, vtype: int, depth: int = 0) -> object:
        if vtype == V.STRING:
            return self.string().decode("utf-8", errors="replace")
        if vtype == V.ARRAY:
            sub, count = int(self.take("<I")), int(self.take("<Q"))
            if sub == V.STRING:
                return [b.decode("utf-8", errors="replace") for b in self.strings(count, keep=True)]
            if sub in SCALAR_FORMATS:
                return self.scalars(sub, count)
            if sub == V.ARRAY:
                _check_depth(depth)
            return [self._typed(sub, depth + 1) for _ in range(count)]
        if vtype in SCALAR_FORMATS:
            return self.take(SCALAR_FORMATS[V(vtype)])
        raise ValueError(f"unknown metadata value type {vtype}")


def read_header(path: Path) -> GGUFHeader:
    """Parse ``path``'s header; any malformation becomes one QuantizeError naming the file."""
    try:
        with open(path, "rb") as f:
            data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except FileNotFoundError:
        raise QuantizeError(f"{path}: no such file") from None
    except ValueError:  # empty file
        raise QuantizeError(f"{path}: not a GGUF file (empty)") from None
    try:
        return _parse(path, data)
    except EOFError:
        raise QuantizeError(
            f"{path}: not a readable GGUF file: its header is cut short (truncated download?)"
        ) from None
    except (ValueError, UnicodeDecodeError, OverflowError) as e:
        raise QuantizeError(f"{path}: not a readable GGUF file: {e}") from None


def _parse(path: Path, data: mmap.mmap) -> GGUFHeader:
    c = _Cursor(data)
    if data[:4] != b"GGUF":
        raise ValueError("no GGUF magic at the start")
    c.pos = 4
    version = int(c.take("<I"))
    if version not in (2, 3):
        raise ValueError(f"GGUF version {version} (llamashare reads 2 and 3)")
    n_tensors, n_kv = int(c.take("<Q")), int(c.take("<Q"))
    if n_tensors > len(data) // 24 or n_kv > len(data) // 12:
        raise EOFError
    raw_kv: dict[str, bytes] = {}
    for _ in range(n_kv):
        start = c.pos
        key = c.string().decode("utf-8")
        c.skip_value(int(c.take("<I")))
        if key in raw_kv:
            raise ValueError(f"metadata key {key!r} appears twice")
        raw_kv[key] = bytes(data[start : c.pos])
    tensors = []
    for _ in range(n_tensors):
        name = c.string().decode("utf-8")
        n_dims = int(c.take("<I"))
        if not 1 <= n_dims <= MAX_DIMS:
            raise ValueError(f"tensor {name} has {n_dims} dimensions")
        ne = tuple(int(c.take("<Q")) for _ in range(n_dims))
        tensors.append(TensorInfo(name, ne, int(c.take("<I")), int(c.take("<Q"))))
    header = GGUFHeader(path, version, raw_kv, tensors, 32, 0, data)
    alignment = header.value("general.alignment", 32)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise ValueError(f"general.alignment {alignment!r} is not a power of two")
    header.alignment = alignment
    header.data_start = aligned(c.pos, alignment)
    return header


def aligned(n: int, alignment: int) -> int:
    """``n`` rounded up to a multiple of ``alignment`` (where GGUF starts the next tensor)."""
    return -(-n // alignment) * alignment


def encode_kv(key: str, vtype: gguf.GGUFValueType, value: int | float | bool) -> bytes:
    """One scalar key/value in GGUF encoding."""
    k = key.encode()
    return struct.pack("<Q", len(k)) + k + struct.pack("<I", int(vtype)) + struct.pack(SCALAR_FORMATS[vtype], value)


def encode_header(raw_kv: list[bytes], tensors: list[TensorInfo], alignment: int) -> bytes:
    """Header bytes up to the data section (padding included), GGUF version 3."""
    out = bytearray(b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(raw_kv)))
    for kv in raw_kv:
        out += kv
    for t in tensors:
        name = t.name.encode()
        out += struct.pack("<Q", len(name)) + name + struct.pack("<I", len(t.ne))
        out += struct.pack(f"<{len(t.ne)}Q", *t.ne) + struct.pack("<IQ", t.ggml_type, t.offset)
    out += b"\0" * (aligned(len(out), alignment) - len(out))
    return bytes(out)
