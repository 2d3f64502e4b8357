"""Section 1b: what the example's full default verification costs, and where the time goes."""

from __future__ import annotations

import os
import resource
import statistics
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import Section, samples, secs, stopwatch
from dify_repack import files
from dify_repack.errors import DifyRepackError
from dify_repack.uvbin import fetch_uv
from dify_repack.verify import DEFAULT_UV_VERSIONS, VerifyOptions, VerifyReport, require_pass, verify_package


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _on_disk(package: Path, cache: Path, repeat: int) -> list[float]:
    """Verifications with TMPDIR set, so their work stays in the (disk) temp folder instead of RAM."""
    before = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = tempfile.gettempdir()
    timings = []
    try:
        for _ in range(repeat):
            with stopwatch() as elapsed:
                require_pass(verify_package(package, VerifyOptions(cache_dir=cache)))
            timings.append(elapsed())
        return timings
    finally:
        if before is None:
            del os.environ["TMPDIR"]
        else:
            os.environ["TMPDIR"] = before


def bench_verify(package: Path, cache: Path, repeat: int) -> Section:
    """``verify_package`` with the defaults (every profile, both uv versions, the manifest's arches) on a
    package ``pack`` wrote; the uv binaries are fetched first and timed on their own."""
    section = Section("1b verification")
    with stopwatch() as elapsed, ThreadPoolExecutor(len(DEFAULT_UV_VERSIONS)) as pool:
        list(pool.map(lambda version: fetch_uv(version, cache), DEFAULT_UV_VERSIONS))
    section.row("fetch uv " + " + ".join(DEFAULT_UV_VERSIONS), secs(elapsed()), "once per cache, side by side")
    timings: list[float] = []
    cpu: list[float] = []  # the replays' processor time: what a loaded host cannot hide
    report: VerifyReport | None = None
    try:
        for _ in range(repeat):
            before = _children_cpu()
            with stopwatch() as elapsed:
                report = verify_package(package, VerifyOptions(cache_dir=cache))
            timings.append(elapsed())
            cpu.append(_children_cpu() - before)
            require_pass(report)
    except DifyRepackError as error:
        section.row("full default verification", secs(timings[-1]) if timings else "-", f"FAILED: {error.message}")
        section.data.update(ok=False, error=error.message)
        return section
    assert report is not None
    median = statistics.median(timings)
    live = [check for check in report.checks if check.mode == "live"]
    identical = sum(bool(check.same_as) for check in report.checks)
    shared = sum(any(step.same_as for step in check.steps) and not check.same_as for check in report.checks)
    met = "met" if median < 10 else "NOT met"
    section.row(
        "full default verification",
        secs(median),
        f"{samples(timings)}; {len(live)} live replays + {len(report.checks) - len(live)} static checks, "
        f"{os.cpu_count()} at a time; target < 10 s: {met}",
    )
    section.row(
        "work saved",
        "",
        f"{identical} replays identical to another (run once); {shared} reused import + start of a "
        "byte-identical installed environment",
    )
    cores = os.cpu_count() or 1
    section.row(
        "CPU time of the replays",
        secs(statistics.median(cpu)),
        f"user + system of every child, median; on {cores} idle cores the wall time cannot go below "
        f"{secs(statistics.median(cpu) / cores)}, nor below the slowest replay",
    )
    on_disk = _on_disk(package, cache, repeat)
    section.row(
        "the same with the work on disk",
        secs(statistics.median(on_disk)),
        f"{samples(on_disk)}; TMPDIR={tempfile.gettempdir()}; by default the replays work in {files.scratch_parent(1) or 'the temp folder'} "
        "when it can run programs and has room",
    )
    slowest = max(live, key=lambda check: sum(step.seconds for step in check.steps))
    steps = ", ".join(f"{step.name} {secs(step.seconds)}" for step in slowest.steps)
    section.row("slowest replay", secs(sum(step.seconds for step in slowest.steps)), f"{slowest.profile}: {steps}")
    section.data.update(
        ok=True,
        seconds=median,
        samples=timings,
        cpu_seconds=cpu,
        checks=len(report.checks),
        identical=identical,
        shared_environments=shared,
        target_met=met == "met",
        on_disk_seconds=on_disk,
    )
    return section
