"""Find processes by a marker in their command line, environment or working folder: proof that no child
outlived a run (a killed tree is reparented, so its parent says nothing; what it inherited does)."""

from __future__ import annotations

import os
import time
from pathlib import Path


def alive(marker: str) -> list[int]:
    """Pids of running processes whose argv, environment or working folder holds ``marker``."""
    needle = marker.encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if (
                needle in (entry / "cmdline").read_bytes()
                or needle in (entry / "environ").read_bytes()
                or marker in str((entry / "cwd").readlink())
            ):
                found.append(int(entry.name))
        except OSError:
            continue  # gone meanwhile, or a zombie (which holds nothing any more)
    return found


def gone(marker: str, within: float = 2.0) -> bool:
    """Whether every process carrying ``marker`` ended within ``within`` seconds."""
    deadline = time.monotonic() + within
    while alive(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not alive(marker)
