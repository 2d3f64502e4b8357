"""What the benchmark sections share: the table, timers, and a few figures' formatting."""

from __future__ import annotations

import functools
import importlib
import os
import platform
import resource
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from unittest import mock

from rich.console import Console

import dify_repack

# The module whose globals pack() calls: the phase timers wrap them there.
pack_module = importlib.import_module("dify_repack.packing")
MIB = 1024 * 1024
T = TypeVar("T")
REPO = Path(__file__).resolve().parent.parent
DEFAULT_EXAMPLE = REPO / "examples" / "text_toolkit"
TARGETS = {"speedup": 3.0, "warm_seconds": 3.0}


# --------------------------------------------------------------------------------------------- reporting


@dataclass
class Section:
    """One block of the table: human rows (already formatted with units) and raw figures for JSON."""

    title: str
    rows: list[tuple[str, str, str]] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)

    def row(self, measure: str, value: str, note: str = "") -> None:
        self.rows.append((measure, value, note))


def secs(value: float) -> str:
    return f"{value:.2f} s"


def print_table(sections: list[Section], console: Console) -> None:
    """Plain fixed-width text: it pastes into issues and logs unwrapped, whatever the terminal width."""
    rows = [("section", "measure", "value", "note")]
    for section in sections:
        rows += [(section.title if index == 0 else "", *row) for index, row in enumerate(section.rows)]
    widths = [max(len(row[column]) for row in rows) for column in range(3)]
    lines = [f"dify-repack {dify_repack.__version__} benchmark"]
    for index, (title, measure, value, note) in enumerate(rows):
        if index == 1 or (index > 1 and title):
            lines.append("-" * (sum(widths) + 6 + 40))
        lines.append(f"{title:<{widths[0]}}  {measure:<{widths[1]}}  {value:>{widths[2]}}  {note}".rstrip())
    console.print("\n".join(lines), markup=False, soft_wrap=True)


# --------------------------------------------------------------------------------------------- measuring


@contextmanager
def stopwatch() -> Iterator[Callable[[], float]]:
    """``with stopwatch() as elapsed:`` — ``elapsed()`` is the wall time so far (and final after the block)."""
    start = time.perf_counter()
    end: list[float] = []
    yield lambda: (end[0] if end else time.perf_counter()) - start
    end.append(time.perf_counter())


def max_rss_bytes(who: int) -> int:
    # Linux reports KiB, macOS bytes.
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(who).ru_maxrss * scale


def union_seconds(intervals: list[tuple[float, float]]) -> float:
    """Wall time covered by possibly overlapping intervals (the per-target resolutions run in parallel)."""
    total, reached = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end > reached:
            total += end - max(start, reached)
            reached = end
    return total


class PhaseTimer:
    """Times pack's steps by wrapping the functions ``pack`` looks up in its module at call time."""

    PHASES = ("load_plugin", "resolve", "fetch_all", "regenerate_lock", "write_package")

    def __init__(self) -> None:
        self.intervals: dict[str, list[tuple[float, float]]] = {name: [] for name in self.PHASES}

    @contextmanager
    def installed(self) -> Iterator[PhaseTimer]:
        with ExitStack() as stack:
            for name in self.PHASES:
                stack.enter_context(mock.patch.object(pack_module, name, self._wrap(name, getattr(pack_module, name))))
            yield self

    def _wrap(self, name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(function)
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.intervals[name].append((start, time.perf_counter()))

        return timed

    def seconds(self) -> dict[str, float]:
        return {name: union_seconds(spans) for name, spans in self.intervals.items()}


def dir_bytes(path: Path) -> int:
    return sum(item.stat().st_size for item in path.rglob("*") if item.is_file()) if path.exists() else 0


def median_run(runs: list[T], key: Callable[[T], float]) -> T:
    """The run with the median time (the lower one for an even count), so its breakdown adds up to the figure."""
    return sorted(runs, key=key)[(len(runs) - 1) // 2]


def samples(values: list[float]) -> str:
    return f"median of {len(values)}: {', '.join(secs(value) for value in values)}" if len(values) > 1 else ""


def host_info() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "dify_repack": dify_repack.__version__,
    }
