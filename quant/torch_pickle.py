"""PyTorch ``.pth`` checkpoints read without torch and without trusting their pickle.

A ``torch.save`` file is a zip: ``<archive>/data.pkl`` (a pickle describing the tensors) and one
uncompressed entry per storage, ``<archive>/data/<key>``. A pickle is a program: loading one
with ``pickle.load`` lets its author run any Python function (``os.system`` included). So the
pickle is run by an unpickler whose ``find_class`` knows only the handful of globals a tensor
checkpoint uses (the tensor and parameter rebuilders, typed storages, ``OrderedDict``); any other
global is refused with :class:`UnsafePickleError` naming it, before anything runs. Tensors come
back as :class:`LazyTensor`: shape, dtype and where the bytes are; ``load()`` memory-maps them.

Format facts from PyTorch's ``torch/serialization.py`` (``_save`` / ``_load``): persistent ids
are ``("storage", storage_type, key, location, numel)``; tensors rebuild through
``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, meta])``.
"""

from __future__ import annotations

import io
import math
import pickle
import pickletools
import struct
import zipfile
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llamashare.errors import CheckpointError, UnsafePickleError

#: The largest data.pkl read: it indexes tensors (about 100 bytes each), so even a checkpoint of
#: 100,000 tensors needs a few MiB.
MAX_PICKLE = 32 * 1024 * 1024


#: Opcodes that store into the unpickler's memo at an index they name.
_MEMO_PUTS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})

#: The largest offset, size or stride (in elements) a view may have: NumPy's byte strides and
#: sizes are int64, and elements are at most 8 bytes.
MAX_INDEX = 2**60


@dataclass(frozen=True)
class StorageType:
    """What ``torch.HalfStorage`` and friends stand for: a storage's element type."""

    name: str  # safetensors-style dtype name
    numpy: type


STORAGES = {
    "HalfStorage": StorageType("F16", np.float16),
    "FloatStorage": StorageType("F32", np.float32),
    "BFloat16Storage": StorageType("BF16", np.uint16),  # raw bf16 bits
    "DoubleStorage": StorageType("F64", np.float64),
    "LongStorage": StorageType("I64", np.int64),
    "IntStorage": StorageType("I32", np.int32),
    "ShortStorage": StorageType("I16", np.int16),
    "CharStorage": StorageType("I8", np.int8),
    "ByteStorage": StorageType("U8", np.uint8),
    "BoolStorage": StorageType("BOOL", np.bool_),
}


@dataclass(frozen=True)
class Storage:
    type: StorageType
    key: str
    numel: int


@dataclass(frozen=True)
class LazyTensor:
    """A tensor of a .pth file, not yet read: ``load()`` maps its bytes from the zip."""

    storage: Storage
    offset: int  # in elements
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    archive: TorchArchive

    @property
    def dtype(self) -> str:
        return self.storage.type.name

    def load(self) -> np.ndarray:
        base = self.archive.storage_array(self.storage)
        if not self.shape:
            return base[self.offset : self.offset + 1].reshape(())
        end = self.offset + sum((n - 1) * s for n, s in zip(self.shape, self.stride)) + 1
        if self.offset < 0 or end > base.size or any(s < 0 for s in self.stride):
            raise CheckpointError(f"a tensor reaches outside its storage {self.storage.key}", self.archive.path)
        item = base.itemsize
        return np.lib.stride_tricks.as_strided(
            base[self.offset :], self.shape, tuple(s * item for s in self.stride), writeable=False
        )


def _view_problem(t: LazyTensor) -> str | None:
    """Why ``t`` is not a plain, non-overlapping view inside its storage (None if it is)."""
    if t.offset < 0 or any(n < 0 for n in t.shape) or any(s < 0 for s in t.stride):
        return "has a negative offset, size or stride"
    if max((t.offset, *t.shape, *t.stride)) > MAX_INDEX:
        return "has an offset, size or stride no array can have"
    if 0 in t.shape:
        return None
    if t.offset + sum((n - 1) * s for n, s in zip(t.shape, t.stride)) + 1 > t.storage.numel:
        return f"reaches outside its storage {t.storage.key}"
    span = 1  # elements covered by the dimensions seen so far, innermost first
    for stride, n in sorted((s, n) for n, s in zip(t.shape, t.stride) if n > 1):
        if stride < span:
            return "is a view whose elements overlap (a stride of 0, or strides that interleave)"
        span = stride * n
    return None


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, *_: Any) -> LazyTensor:
    if not isinstance(storage, _Bound) or not all(isinstance(v, int) for v in (offset, *size, *stride)):
        raise pickle.UnpicklingError("malformed tensor record")
    if len(size) != len(stride):
        raise pickle.UnpicklingError("tensor size and stride differ in length")
    return LazyTensor(storage.storage, offset, tuple(size), tuple(stride), storage.archive)


def _rebuild_parameter(data: Any, *_: Any) -> Any:
    return data


@dataclass(frozen=True)
class _Bound:
    storage: Storage
    archive: TorchArchive


#: What zipfile and the pickle stream raise on damaged or odd archives (encrypted or patched
#: entries, bad compression, impossible offsets): all mean "not a checkpoint we can read".
ZIP_ERRORS = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    NotImplementedError,
    RuntimeError,
    zlib.error,
    ValueError,
    struct.error,
    EOFError,
    OverflowError,
    UnicodeDecodeError,
    KeyError,
)


class _RestrictedUnpickler(pickle.Unpickler):
    ALLOWED = {
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("collections", "OrderedDict"): OrderedDict,
        **{("torch", name): st for name, st in STORAGES.items()},
    }

    def __init__(self, file: Any, archive: TorchArchive) -> None:
        super().__init__(file)
        self.archive = archive

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(f"{module}.{name}", self.archive.path) from None

    def persistent_load(self, pid: Any) -> _Bound:
        if not (
            isinstance(pid, tuple)
            and len(pid) == 5
            and pid[0] == "storage"
            and isinstance(pid[1], StorageType)
            and isinstance(pid[2], str)
            and isinstance(pid[4], int)
        ):
            raise pickle.UnpicklingError(f"unexpected persistent id {str(pid)[:80]}")
        return _Bound(Storage(pid[1], pid[2], pid[4]), self.archive)


class TorchArchive:
    """One ``torch.save`` zip file: its tensors by name, mapped on demand."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._zip = zipfile.ZipFile(path)
        except ZIP_ERRORS:
            raise CheckpointError(
                "not a zip-format PyTorch checkpoint (legacy pre-1.6 .pth files are not supported; "
                "re-save it with a recent PyTorch or use safetensors)",
                path,
            ) from None
        except OSError as exc:
            raise CheckpointError(f"cannot read: {exc.strerror or exc}", path) from None
        pkls = [n for n in self._zip.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pkls) != 1:
            raise CheckpointError("no <archive>/data.pkl inside: not a PyTorch checkpoint", path)
        self.prefix = pkls[0][: -len("data.pkl")]
        self._starts: dict[Storage, int] = {}
        try:
            raw = self._read_pickle(pkls[0])
            obj = _RestrictedUnpickler(io.BytesIO(raw), self).load()
        except (UnsafePickleError, CheckpointError):
            raise
        except (pickle.UnpicklingError, TypeError, AttributeError, IndexError, OSError, *ZIP_ERRORS) as exc:
            raise CheckpointError(f"its pickle is malformed or its zip damaged: {exc}", path) from None
        if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
            obj = obj["model"]  # some trainers wrap the state dict
        if not isinstance(obj, dict) or not all(
            isinstance(k, str) and isinstance(v, LazyTensor) for k, v in obj.items()
        ):
            raise CheckpointError("is not a state dict (a mapping of names to tensors)", path)
        self.tensors: dict[str, LazyTensor] = dict(obj)
        self._check_views()

    def _read_pickle(self, name: str) -> bytes:
        """data.pkl's bytes, only if stored as ``torch.save`` stores it (uncompressed) and no
        larger than MAX_PICKLE; then every length an opcode claims is checked against the bytes
        that follow it (pickletools walks the opcodes without building anything), because the
        unpickler allocates what a BINBYTES8 claims (2^44 bytes, say) before it reads, and every
        memo index against the pickle's size (a memo holds at most one object per opcode)."""
        info = self._zip.getinfo(name)
        if info.compress_type != zipfile.ZIP_STORED:
            raise CheckpointError(
                f"{name} is compressed; torch.save never compresses it (refused: a compressed pickle can "
                "claim any size)",
                self.path,
            )
        if info.file_size > MAX_PICKLE:
            raise CheckpointError(
                f"{name} is {info.file_size} bytes; a checkpoint's tensor index is far smaller (at most "
                f"{MAX_PICKLE >> 20} MiB here)",
                self.path,
            )
        raw = self._zip.read(name)  # stored: as many bytes as the entry holds, CRC checked
        try:
            for op, arg, _ in pickletools.genops(raw):
                # the unpickler grows its memo table to the index a PUT names (2^27 → 2 GB)
                if op.name in _MEMO_PUTS and isinstance(arg, int) and arg > len(raw):
                    raise CheckpointError(f"its pickle stores an object at memo index {arg}", self.path)
        except CheckpointError:
            raise
        except (ValueError, struct.error, EOFError, OverflowError) as exc:
            raise CheckpointError(f"its pickle is malformed: {exc}", self.path) from None
        return raw

    def _check_views(self) -> None:
        """Every tensor a plain view of bytes that are there: its storage's zip entry exists, is
        stored and holds exactly what the pickle claims; the view stays inside it, and no two of
        its elements share a place (no stride 0, no overlapping strides), since a torch.save'd
        weight stores every element once. Across tensors, views may repeat a storage at most as a
        tied copy does: what the tensors claim in all is at most twice the bytes the storages hold,
        so what a converter writes is bounded by the file it read."""
        claimed = 0
        held: dict[str, int] = {}  # bytes per zip entry
        for name, t in self.tensors.items():
            s = t.storage
            itemsize = np.dtype(s.type.numpy).itemsize
            if s.numel < 0:
                raise CheckpointError(f"tensor {name}: its storage claims {s.numel} elements", self.path)
            if s.numel and s not in self._starts:  # each (entry, type, count) a pickle claims is checked
                self._starts[s] = self._locate(s)
            held[s.key] = s.numel * itemsize
            problem = _view_problem(t)
            if problem:
                raise CheckpointError(f"tensor {name} {problem}", self.path)
            claimed += math.prod(t.shape) * itemsize
        if claimed > 2 * sum(held.values()):
            raise CheckpointError(
                f"its tensors claim {claimed} bytes but its storages hold {sum(held.values())}: views repeat "
                "the same bytes (a tensor checkpoint stores each weight once)",
                self.path,
            )

    def storage_array(self, storage: Storage) -> np.ndarray:
        """The storage's elements, memory-mapped straight from the (uncompressed) zip entry.
        A fresh mapping each call: it is unmapped (and leaves RSS) when the caller drops it."""
        if storage.numel == 0:
            return np.zeros(0, storage.type.numpy)
        if storage not in self._starts:
            self._starts[storage] = self._locate(storage)
        return np.memmap(
            self.path, dtype=storage.type.numpy, mode="r", offset=self._starts[storage], shape=(storage.numel,)
        )

    def _locate(self, storage: Storage) -> int:
        """Byte offset of a storage's data in the file, after checking its zip entry."""
        name = f"{self.prefix}data/{storage.key}"
        try:
            info = self._zip.getinfo(name)
        except KeyError:
            raise CheckpointError(f"storage {name} is missing", self.path) from None
        if info.compress_type != zipfile.ZIP_STORED:
            raise CheckpointError(f"storage {name} is compressed; PyTorch stores them uncompressed", self.path)
        itemsize = np.dtype(storage.type.numpy).itemsize
        if info.file_size != storage.numel * itemsize:
            raise CheckpointError(
                f"storage {name} has {info.file_size} bytes, expected {storage.numel * itemsize}", self.path
            )
        with open(self.path, "rb") as f:
            f.seek(info.header_offset)
            local = f.read(30)
        if len(local) != 30 or local[:4] != b"PK\x03\x04":
            raise CheckpointError(f"storage {name} has a damaged zip header", self.path)
        name_len, extra_len = struct.unpack("<HH", local[26:30])
        start = info.header_offset + 30 + name_len + extra_len
        if start + info.file_size > self.path.stat().st_size:
            raise CheckpointError(f"storage {name} is cut short: truncated file", self.path)
        return start

    def close(self) -> None:
        self._zip.close()
