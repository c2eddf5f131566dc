"""Progress reporting that long work can call without knowing who is watching.

Library code takes a `Reporter`; the CLI hands it a rich one for humans (drawn on
stderr, so stdout stays clean for `--format json`) or a silent one for machines.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

Advance = Callable[[int], None]


class Reporter:
    """Silent by default; see RichReporter."""

    @contextmanager
    def task(self, description: str, total: int) -> Iterator[Advance]:
        yield lambda completed: None

    def log(self, message: str) -> None:
        pass


class RichReporter(Reporter):
    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)

    @contextmanager
    def task(self, description: str, total: int) -> Iterator[Advance]:
        columns = (
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=self.console, transient=False) as progress:
            handle = progress.add_task(description, total=total)
            yield lambda completed: progress.update(handle, completed=completed)

    def log(self, message: str) -> None:
        self.console.print(message)


class SharedProgress(Reporter):
    """One rich live display for the whole batch: a bar per suspect, a bar per key audit.

    RichReporter opens one live display per task, and rich allows one at a time; nested
    tasks (the batch bar around each audit's key bar) need them to share one.
    """

    def __init__(self, console) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        )

    def __enter__(self) -> SharedProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    @contextmanager
    def task(self, description: str, total: int):
        handle = self.progress.add_task(description, total=total)
        try:
            yield lambda completed: self.progress.update(handle, completed=completed)
        finally:
            self.progress.remove_task(handle)

    def outer(self, description: str, total: int):
        """A bar that stays on screen when done (the batch-level one)."""
        handle = self.progress.add_task(description, total=total)
        return lambda completed: self.progress.update(handle, completed=completed)

    def log(self, message: str) -> None:
        self.progress.console.print(message)
