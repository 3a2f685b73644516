"""What `llamashare serve` processes of a home are serving, for the dashboard to list.

A server writes ``HOME/serve/PORT.json`` (replaced atomically, about once a second while anything
changes): its pid, URL and every model it offers with whether it is loaded and its running and
waiting requests. The dashboard lists the files whose process is still alive, so a server
killed with SIGKILL disappears from the page without cleaning up; one that stops normally
removes its file. The format lives here, below both, so the daemon never imports the server.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from llamashare.fsio import atomic_write

#: What a served URL may look like to be shown as a link: http, a host, a port.
_URL = re.compile(r"http://(?:[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\]):[0-9]{1,5}")


@dataclass(frozen=True)
class ServedModel:
    id: str
    loaded: bool
    running: int
    waiting: int
    steps: int  # decode steps so far (each one for all the sequences running)


@dataclass(frozen=True)
class Served:
    pid: int
    url: str
    started: float
    models: list[ServedModel] = field(default_factory=list)


def served_dir(home_root: Path) -> Path:
    return home_root / "serve"


def write_served(home_root: Path, port: int, served: Served) -> Path:
    path = served_dir(home_root) / f"{port}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(asdict(served)).encode())
    return path


def read_served(home_root: Path) -> list[Served]:
    """Every server of this home that still runs; unreadable or stale files are skipped."""
    out: list[Served] = []
    folder = served_dir(home_root)
    if not folder.is_dir():
        return out
    for path in sorted(folder.glob("*.json")):
        try:
            doc = json.loads(path.read_text())
            models = [ServedModel(**m) for m in doc.pop("models")]
            served = Served(models=models, **doc)
            os.kill(served.pid, 0)
        except ProcessLookupError:
            continue
        except PermissionError:  # alive, another user's
            pass
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            continue
        if not _URL.fullmatch(served.url):
            continue
        out.append(served)
    return out
