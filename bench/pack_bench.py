"""Sections 1 and 3: cold and warm ``pack()`` of the example, with a phase breakdown."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from common import TARGETS, PhaseTimer, Section, dir_bytes, median_run, samples, secs, stopwatch
from dify_repack.packing import PackOptions, PackResult, pack
from dify_repack.render import mib

# --------------------------------------------------------------------------------------------- 1 + 3: pack


@dataclass
class PackRun:
    seconds: float
    result: PackResult
    phases: dict[str, float]
    check_seconds: float | None = None


def timed_pack(source: Path, options: PackOptions) -> PackRun:
    timer = PhaseTimer()
    with timer.installed(), stopwatch() as elapsed:
        result = pack(source, options)
    return PackRun(elapsed(), result, timer.seconds())


def phase_note(run_: PackRun) -> str:
    phases = run_.phases
    other = run_.seconds - sum(phases.values())
    return (
        f"resolve {secs(phases['resolve'])} (2 targets in parallel), download+build {secs(phases['fetch_all'])}, "
        f"uv lock {secs(phases['regenerate_lock'])}, zip write {secs(phases['write_package'])}, "
        f"copy {secs(phases['load_plugin'])}, other {secs(other)}"
    )


def cold_section(runs: list[PackRun], cache: Path) -> Section:
    section = Section("1 cold pack")
    cold = median_run(runs, lambda run_: run_.seconds)
    result = cold.result
    downloaded = dir_bytes(cache / "files")
    section.row("wall time (no verify)", secs(cold.seconds), samples([run_.seconds for run_ in runs]))
    section.row("phases of that run", "", phase_note(cold))
    section.row(
        "package",
        mib(result.stats.compressed_bytes),
        f"{result.wheels} wheels for {', '.join(map(str, result.targets))}; built: {', '.join(result.built) or 'none'}",
    )
    section.row(
        "downloaded into the cache",
        mib(downloaded),
        f"cache files/; uv metadata cache {mib(dir_bytes(cache / 'uv-cache'))} on disk",
    )
    section.data.update(
        seconds=cold.seconds,
        samples=[run_.seconds for run_ in runs],
        phases=cold.phases,
        wheels=result.wheels,
        packages=result.packages,
        targets=[str(target) for target in result.targets],
        built=list(result.built),
        compressed_bytes=result.stats.compressed_bytes,
        downloaded_bytes=downloaded,
    )
    return section


def bench_warm(example: Path, work: Path, cache: Path) -> Section:
    section = Section("3 warm pack")
    warm = timed_pack(example, PackOptions(output_dir=work / "out-warm", cache_dir=cache))
    zip_seconds = warm.phases["write_package"]
    met = "met" if warm.seconds < TARGETS["warm_seconds"] else "NOT met"
    section.row("wall time (same cache)", secs(warm.seconds), f"target < {secs(TARGETS['warm_seconds'])}: {met}")
    section.row(
        "of which zip write",
        secs(zip_seconds),
        f"{zip_seconds / warm.seconds:.0%} of the run; write_package of {mib(warm.result.stats.uncompressed_bytes)} "
        f"({warm.result.stats.files} files)",
    )
    section.row("phases", "", phase_note(warm))
    # A cached resolution is reused for a day; after that (or with --refresh) a warm run resolves again.
    fresh = timed_pack(example, PackOptions(output_dir=work / "out-refresh", cache_dir=cache, refresh=True))
    section.row("wall time, refresh=True", secs(fresh.seconds), f"warm wheels, resolved again: {phase_note(fresh)}")
    section.data.update(
        seconds=warm.seconds,
        zip_seconds=zip_seconds,
        phases=warm.phases,
        target_met=met == "met",
        refresh_seconds=fresh.seconds,
        refresh_phases=fresh.phases,
    )
    return section
