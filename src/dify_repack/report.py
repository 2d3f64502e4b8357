"""Progress reporting: the core calls a small Reporter protocol and never prints; the CLI chooses the look.

On a terminal, ``ConsoleReporter`` keeps one live view at the bottom of the screen (every running download,
build and replay on its own line) and prints steps above it; elsewhere it prints plain lines.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Protocol

from .redaction import redact

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID

Advance = Callable[[int], None]
Update = Callable[[str], None]


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


class Reporter(Protocol):
    def step(self, message: str) -> None:
        """A stage of the work starts or ends (resolving, downloading, a replay's result, ...)."""

    def warn(self, message: str) -> None:
        """Something the user should know that does not stop the work."""

    @contextmanager
    def task(self, description: str, total: int | None = None, *, unit: str = "") -> Iterator[Advance]:
        """A long piece of work with a known total (bytes when ``unit`` is "bytes"); yields ``advance(n)``."""
        yield lambda _n: None

    @contextmanager
    def activity(self, description: str) -> Iterator[Update]:
        """Work without a total shown while it runs (a resolution, a build, a replay); several may run at once.

        Yields ``update(detail)`` to say what it is doing now (e.g. ``install``).
        """
        yield lambda _detail: None


class NullReporter:
    """For library use: silent. Other reporters may derive from it to get the newer methods."""

    def step(self, message: str) -> None:
        pass

    def warn(self, message: str) -> None:
        pass

    @contextmanager
    def task(self, description: str, total: int | None = None, *, unit: str = "") -> Iterator[Advance]:
        yield lambda _n: None

    @contextmanager
    def activity(self, description: str) -> Iterator[Update]:
        yield lambda _detail: None


class ConsoleReporter:
    """Human output on stderr: a live view on a terminal, plain lines otherwise, nothing but warnings when quiet."""

    def __init__(self, console: Console, *, quiet: bool = False) -> None:
        self.console = console
        self.quiet = quiet
        self.live = console.is_terminal and not console.is_dumb_terminal
        self._lock = threading.Lock()
        self._progress: Progress | None = None
        self._open = 0

    def step(self, message: str) -> None:
        if not self.quiet:
            self.console.print(f"[bold blue]•[/] {_escape(message)}", highlight=False)

    def warn(self, message: str) -> None:
        self.console.print(f"[bold yellow]warning:[/] {_escape(message)}", highlight=False)

    @contextmanager
    def task(self, description: str, total: int | None = None, *, unit: str = "") -> Iterator[Advance]:
        if self.quiet or not self.live:
            yield lambda _n: None
            return
        with self._line(description, total, unit) as (progress, task_id):
            yield lambda n: progress.advance(task_id, n)

    @contextmanager
    def activity(self, description: str) -> Iterator[Update]:
        if self.quiet:
            yield lambda _detail: None
        elif not self.live:
            self.step(f"{description}…")
            yield lambda _detail: None
        else:
            with self._line(description, None, "") as (progress, task_id):
                yield lambda detail: progress.update(task_id, detail=detail)

    @contextmanager
    def _line(self, description: str, total: int | None, unit: str) -> Iterator[tuple[Progress, TaskID]]:
        """One line of the live view; the view starts with its first line and ends with its last."""
        with self._lock:
            if self._progress is None:
                self._progress = _live_view(self.console)
                self._progress.start()
            progress = self._progress
            task_id = progress.add_task(_escape(description), total=total, unit=unit, detail="")
            self._open += 1
        try:
            yield progress, task_id
        finally:
            with self._lock:
                progress.remove_task(task_id)
                self._open -= 1
                if self._open == 0:
                    progress.stop()
                    self._progress = None


def _escape(text: str) -> str:
    """Every line the core reports may quote a source or index URL: redacted here, whoever wrote it."""
    from rich.markup import escape

    return escape(redact(text))


def _live_view(console: Console) -> Progress:
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        ProgressColumn,
        SpinnerColumn,
        Task,
        TextColumn,
        TimeElapsedColumn,
    )
    from rich.text import Text

    class Bar(BarColumn):
        """A bar for work with a total; none for activities."""

        def render(self, task: Task) -> Text:  # type: ignore[override]
            return super().render(task) if task.total is not None else Text("")  # type: ignore[return-value]

    class Amount(ProgressColumn):
        """Bytes or items done of the total, or what an activity is doing now."""

        def __init__(self) -> None:
            super().__init__()
            self.download = DownloadColumn()

        def render(self, task: Task) -> Text:
            if task.total is None:
                return Text(str(task.fields.get("detail", "")), style="dim", overflow="ellipsis", no_wrap=True)
            if task.fields.get("unit") == "bytes":
                return self.download.render(task)
            return Text(f"{int(task.completed)}/{int(task.total)}")

    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        Bar(bar_width=30),
        Amount(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )


class PrefixedReporter(NullReporter):
    """For plugins packed side by side: every line names its plugin."""

    def __init__(self, inner: Reporter, prefix: str) -> None:
        self.inner = inner
        self.prefix = prefix

    def step(self, message: str) -> None:
        self.inner.step(f"{self.prefix}: {message}")

    def warn(self, message: str) -> None:
        self.inner.warn(f"{self.prefix}: {message}")

    @contextmanager
    def task(self, description: str, total: int | None = None, *, unit: str = "") -> Iterator[Advance]:
        with self.inner.task(f"{self.prefix}: {description}", total, unit=unit) as advance:
            yield advance

    @contextmanager
    def activity(self, description: str) -> Iterator[Update]:
        with self.inner.activity(f"{self.prefix}: {description}") as update:
            yield update
