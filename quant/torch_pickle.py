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

import pickle
import struct
import zipfile
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llamashare.errors import CheckpointError, UnsafePickleError


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
        self._starts: dict[str, int] = {}
        try:
            with self._zip.open(pkls[0]) as f:
                obj = _RestrictedUnpickler(f, self).load()
        except UnsafePickleError:
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

    def storage_array(self, storage: Storage) -> np.ndarray:
        """The storage's elements, memory-mapped straight from the (uncompressed) zip entry.
        A fresh mapping each call: it is unmapped (and leaves RSS) when the caller drops it."""
        if storage.numel == 0:
            return np.zeros(0, storage.type.numpy)
        if storage.key not in self._starts:
            self._starts[storage.key] = self._locate(storage)
        return np.memmap(
            self.path, dtype=storage.type.numpy, mode="r", offset=self._starts[storage.key], shape=(storage.numel,)
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
