"""Section 6: the command line as a user runs it: cold and warm ``pack`` with verification, ``--version``."""

from __future__ import annotations

import statistics
import subprocess
import sys
from pathlib import Path

from common import Section, samples, secs, stopwatch
from dify_repack.runner import clean_env

CLI = Path(sys.executable).parent / "dify-repack"


def _timed(argv: list[str]) -> float:
    with stopwatch() as elapsed:
        result = subprocess.run(argv, capture_output=True, text=True, env=clean_env(), check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr[-500:]}")
    return elapsed()


def bench_cli(example: Path, work: Path, repeat: int) -> Section:
    section = Section("6 command line")
    cache = work / "cache-cli"
    argv = [str(CLI), "pack", str(example), "-o", str(work / "out-cli"), "--cache-dir", str(cache)]
    cold = _timed(argv)
    warm = [_timed(argv) for _ in range(repeat)]
    ratio = cold / statistics.median(warm)
    met = "met" if ratio >= 5 else "NOT met"
    section.row(
        "cold `pack` (empty cache, default verification)", secs(cold), "resolve, download, build, lock, zip, verify"
    )
    section.row(
        "warm `pack` (same cache, same input)",
        secs(statistics.median(warm)),
        f"{samples(warm)}; the passed verification of the byte-identical package is remembered",
    )
    section.row("cold / warm", f"{ratio:.0f}×", f"target ≥ 5×: {met}")
    versions = [_timed([str(CLI), "--version"]) for _ in range(max(5, repeat * 3))]
    baseline = [_timed([sys.executable, "-c", "pass"]) for _ in range(5)]
    section.row(
        "`dify-repack --version`",
        secs(statistics.median(versions)),
        f"{samples(versions)}, slowest {secs(max(versions))}; target < 0.30 s; a bare `python -c pass` takes "
        f"{secs(statistics.median(baseline))}",
    )
    section.data.update(
        cold_seconds=cold,
        warm_seconds=warm,
        ratio=ratio,
        target_met=met == "met",
        version_seconds=versions,
        python_seconds=baseline,
    )
    return section
