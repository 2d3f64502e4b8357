"""Find processes by a marker in their command line: proof that no child outlived a run."""

from __future__ import annotations

import time
from pathlib import Path


def alive(marker: str) -> list[int]:
    """Pids of running processes whose command line holds ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def gone(marker: str, within: float = 2.0) -> bool:
    """Whether every process carrying ``marker`` ended (zombies too are reaped by then) within ``within`` s."""
    deadline = time.monotonic() + within
    while alive(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not alive(marker)
