"""Progress reporting: the core calls a small Reporter protocol and never prints; the CLI chooses the look."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

Advance = Callable[[int], None]


class Reporter(Protocol):
    def step(self, message: str) -> None:
        """A stage of the work starts (resolving, downloading, ...)."""

    def warn(self, message: str) -> None:
        """Something the user should know that does not stop the work."""

    @contextmanager
    def task(self, description: str, total: int | None = None, *, unit: str = "") -> Iterator[Advance]:
        """A long piece of work with a known total (bytes when ``unit`` is "bytes"); yields ``advance(n)``."""
        yield lambda _n: None


class NullReporter:
    """For library use: silent."""

    def step(self, message: str) -> None:
        pass

    def warn(self, message: str) -> None:
        pass

    @contextmanager
    def task(self, description: str, total: int | None = None, *, unit: str = "") -> Iterator[Advance]:
        yield lambda _n: None


class ConsoleReporter:
    """Human output on stderr: plain lines, plus rich progress bars on a terminal."""

    def __init__(self, console: Console, *, quiet: bool = False) -> None:
        self.console = console
        self.quiet = quiet

    def step(self, message: str) -> None:
        if not self.quiet:
            self.console.print(f"[bold blue]•[/] {escape(message)}", highlight=False)

    def warn(self, message: str) -> None:
        self.console.print(f"[bold yellow]warning:[/] {escape(message)}", highlight=False)

    @contextmanager
    def task(self, description: str, total: int | None = None, *, unit: str = "") -> Iterator[Advance]:
        if self.quiet or not self.console.is_terminal:
            yield lambda _n: None
            return
        columns = [TextColumn("  {task.description}"), BarColumn()]
        columns += [DownloadColumn()] if unit == "bytes" else [TextColumn("{task.completed}/{task.total}")]
        with Progress(*columns, TimeRemainingColumn(), console=self.console, transient=True) as progress:
            task_id = progress.add_task(description, total=total)
            yield lambda n: progress.advance(task_id, n)


class PrefixedReporter:
    """For plugins packed side by side: every line names its plugin; live progress bars are left out."""

    def __init__(self, inner: Reporter, prefix: str) -> None:
        self.inner = inner
        self.prefix = prefix

    def step(self, message: str) -> None:
        self.inner.step(f"{self.prefix}: {message}")

    def warn(self, message: str) -> None:
        self.inner.warn(f"{self.prefix}: {message}")

    @contextmanager
    def task(self, description: str, total: int | None = None, *, unit: str = "") -> Iterator[Advance]:
        yield lambda _n: None
