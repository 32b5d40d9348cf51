"""Progress of a long job on a terminal (rich), on stderr; nothing at all when stderr is not a
terminal (a pipe, cron, CI), so scripts read the same output as before."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TaskID, TextColumn

Tick = Callable[[str, int, int], None]


@contextmanager
def phases(console: Console | None = None) -> Iterator[Tick]:
    """Yields tick(phase, done, total): one bar per phase, created on its first tick."""
    console = console or Console(stderr=True)
    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        console=console,
        disable=not console.is_terminal,
        transient=False,
    )
    tasks: dict[str, TaskID] = {}

    def tick(phase: str, done: int, total: int) -> None:
        if phase not in tasks:
            tasks[phase] = progress.add_task(phase, total=total)
        progress.update(tasks[phase], completed=done, total=total)

    with progress:
        yield tick


@contextmanager
def working(message: str, console: Console | None = None) -> Iterator[None]:
    """A spinner for one step whose size is not known in advance."""
    console = console or Console(stderr=True)
    if not console.is_terminal:
        yield
        return
    with console.status(message):
        yield
