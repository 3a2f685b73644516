"""Terminal presentation: progress bars and messages on stderr, results on stdout.

Kept apart from the CLI so commands stay "parse → call → print" and library code only ever
sees a plain ``progress(nbytes)`` callback.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

err = Console(stderr=True, highlight=False, soft_wrap=True)  # one error = one line, however long


@contextmanager
def byte_progress(description: str, total: int, quiet: bool = False) -> Iterator[ByteBar]:
    """A bytes progress bar (rate, ETA) on stderr; silent with ``quiet`` or off a terminal.
    With ``total`` 0 the bar stays hidden until ``set_total`` (a step that fails while checking
    its input then prints only its error)."""
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err,
        disable=quiet,
        transient=False,
    )
    with bar:
        task = bar.add_task(description, total=total, visible=total > 0)
        yield ByteBar(bar, task)


class ByteBar:
    def __init__(self, bar: Progress, task: TaskID) -> None:
        self._bar, self._task = bar, task

    def advance(self, nbytes: int) -> None:
        self._bar.update(self._task, advance=nbytes)

    def describe(self, text: str) -> None:
        self._bar.update(self._task, description=text)

    def set_total(self, total: int) -> None:
        self._bar.update(self._task, total=total, visible=True)


def human_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


@contextmanager
def fetch_view(name: str, quiet: bool = False) -> Iterator[FetchView]:
    """One live line per release: bytes, rate, ETA, peers, files verified, state."""
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[peers]} peers · {task.fields[files]} verified · {task.fields[state]}"),
        console=err,
        disable=quiet,
    )
    with bar:
        task = bar.add_task(name, total=None, peers=0, files="0/0", state="starting")
        yield FetchView(bar, task)


class Transfer(Protocol):
    """What a fetch line shows of a release (the swarm's ReleaseStatus has these; the terminal
    layer does not import the swarm)."""

    @property
    def size(self) -> int: ...
    @property
    def done(self) -> int: ...
    @property
    def peers(self) -> int: ...
    @property
    def verified(self) -> int: ...
    @property
    def selected(self) -> int: ...
    @property
    def state(self) -> str: ...


class FetchView:
    def __init__(self, bar: Progress, task: TaskID) -> None:
        self._bar, self._task = bar, task

    def update(self, s: Transfer) -> None:
        self._bar.update(
            self._task,
            total=s.size,
            completed=s.done,
            peers=s.peers,
            files=f"{s.verified}/{s.selected}",
            state=str(s.state),
        )


class StepLog:
    """A multi-step flow (the pipeline, the demo) told one step at a time: ``==> what and where``,
    its progress bar, then ``done in N s`` or why it was skipped. Lines go to ``echo``."""

    def __init__(self, echo: Callable[[str], None] | None = None, quiet: bool = False) -> None:
        self.echo = echo or (lambda text: err.print(text, markup=False, highlight=False))
        self.quiet = quiet

    @contextmanager
    def step(self, title: str) -> Iterator[None]:
        self.echo(f"==> {title}")
        start = time.perf_counter()
        yield
        self.echo(f"    done in {time.perf_counter() - start:.1f} s")

    def skip(self, title: str, why: str) -> None:
        self.echo(f"==> {title}: skipped, {why}")

    def note(self, text: str) -> None:
        self.echo(f"    {text}")

    def bar(self, description: str) -> AbstractContextManager[ByteBar]:
        return byte_progress(description, 0, self.quiet)

    def follow(self, name: str) -> AbstractContextManager[FetchView]:
        return fetch_view(name, self.quiet)
