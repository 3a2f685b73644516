"""Write PyTorch zip checkpoints without torch, the way ``torch.save`` lays them out.

Only for tests: it stands in real module paths (``torch._utils._rebuild_tensor_v2``,
``torch.HalfStorage``) while pickling, so the pickle names exactly the globals a real checkpoint
names, and stores each storage uncompressed at ``<archive>/data/<key>``, 64-byte aligned.
"""

from __future__ import annotations

import pickle
import sys
import types
import zipfile
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

STORAGE_NAMES = {np.dtype(np.float32): "FloatStorage", np.dtype(np.float16): "HalfStorage"}


@contextmanager
def _fake_torch() -> Iterator[types.SimpleNamespace]:
    assert "torch" not in sys.modules, "tests write checkpoints without torch"
    # stand-in modules, their attributes set here (hence Any)
    torch: Any = types.ModuleType("torch")
    utils: Any = types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args: Any) -> None: ...

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    storages = {}
    for name in STORAGE_NAMES.values():
        cls = type(name, (), {"__module__": "torch", "__qualname__": name})
        setattr(torch, name, cls)
        storages[name] = cls
    torch._utils = utils
    sys.modules["torch"], sys.modules["torch._utils"] = torch, utils
    try:
        yield types.SimpleNamespace(rebuild=_rebuild_tensor_v2, storages=storages)
    finally:
        del sys.modules["torch"], sys.modules["torch._utils"]


class _TensorRecord:
    def __init__(self, fake: types.SimpleNamespace, key: str, array: np.ndarray) -> None:
        self.fake, self.key, self.array = fake, key, array

    def __reduce__(self) -> tuple:
        stride = tuple(s // self.array.itemsize for s in self.array.strides)
        storage = ("storage", self.fake.storages[STORAGE_NAMES[self.array.dtype]], self.key, "cpu", self.array.size)
        return (self.fake.rebuild, (_Persistent(storage), 0, self.array.shape, stride, False, OrderedDict()))


class _Persistent:
    def __init__(self, pid: tuple) -> None:
        self.pid = pid


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj: Any) -> Any:
        return obj.pid if isinstance(obj, _Persistent) else None


def save_pth(path: Path, state: dict[str, np.ndarray], payload: Any = None) -> None:
    """``torch.save(state, path)`` for float tensors; ``payload`` replaces the pickle (hostile tests)."""
    import io

    arrays = {name: np.ascontiguousarray(a) for name, a in state.items()}
    with _fake_torch() as fake:
        buf = io.BytesIO()
        obj = (
            payload
            if payload is not None
            else OrderedDict((n, _TensorRecord(fake, str(i), a)) for i, (n, a) in enumerate(arrays.items()))
        )
        _Pickler(buf, protocol=2).dump(obj)
    archive = path.stem
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        assert z.fp is not None  # open for writing
        z.writestr(f"{archive}/data.pkl", buf.getvalue())
        for i, a in enumerate(arrays.values()):
            info = zipfile.ZipInfo(f"{archive}/data/{i}")
            # torch pads the local header's extra field so that data starts on a 64-byte boundary
            pad = -(z.fp.tell() + 30 + len(info.filename)) % 64
            pad += 64 if 0 < pad < 4 else 0
            if pad:
                info.extra = b"FB" + (pad - 4).to_bytes(2, "little") + b"Z" * (pad - 4)
            z.writestr(info, a.tobytes())
        z.writestr(f"{archive}/version", "3\n")
