"""Section 5: peak memory, and a streaming check of ``write_package`` / ``extract_package``."""

from __future__ import annotations

import os
import re
import resource
import shutil
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from common import MIB, Section, max_rss_bytes, secs, stopwatch
from dify_repack.package import extract_package, write_package
from dify_repack.render import mib

# "Far below the file size": the streaming check fails if writing + extracting grows RSS by a quarter of it.
STREAM_RSS_LIMIT = 0.25


# --------------------------------------------------------------------------------------------- 5: memory


def reset_peak_rss() -> bool:
    """Reset this process's RSS high-water mark (Linux >= 4.0); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5", encoding="ascii")
    except OSError:
        return False
    return True


def proc_status_bytes(field_name: str) -> int | None:
    match = re.search(
        rf"^{field_name}:\s+(\d+) kB", Path("/proc/self/status").read_text(encoding="ascii"), re.MULTILINE
    )
    return int(match.group(1)) * 1024 if match else None


def stream_check(big_mb: int, work: str) -> dict[str, Any]:
    """Write and extract a package holding one big file, measuring this (fresh) process's peak RSS.

    ru_maxrss survives fork and exec on Linux, so a child would inherit the bench's own peak; the
    high-water mark in /proc (VmHWM), reset before each step, is this code's alone. Falls back to ru_maxrss.
    """
    root, package, extracted = Path(work) / "big-plugin", Path(work) / "big.difypkg", Path(work) / "big-extracted"
    (root / "_assets").mkdir(parents=True)
    (root / "manifest.yaml").write_text("name: big\n", encoding="utf-8")
    # One random MiB repeated: incompressible for deflate (its window is 32 KiB), cheap to generate.
    chunk = os.urandom(MIB)
    with (root / "_assets" / "weights.bin").open("wb") as handle:
        for _ in range(big_mb):
            handle.write(chunk)
    del chunk
    figures: dict[str, Any] = {"file_bytes": big_mb * MIB}
    for step, action in (
        ("write", lambda: write_package(root, package)),
        ("extract", lambda: extract_package(package, extracted)),
    ):
        exact = reset_peak_rss() and proc_status_bytes("VmHWM") is not None
        figures[f"{step}_baseline_rss"] = proc_status_bytes("VmRSS") if exact else max_rss_bytes(resource.RUSAGE_SELF)
        with stopwatch() as elapsed:
            action()
        figures[f"{step}_seconds"] = elapsed()
        figures[f"{step}_peak_rss"] = proc_status_bytes("VmHWM") if exact else max_rss_bytes(resource.RUSAGE_SELF)
        figures["rss_method"] = "VmHWM after reset" if exact else "ru_maxrss (may include the parent's inherited peak)"
    figures["package_bytes"] = package.stat().st_size
    figures["extracted_bytes"] = (extracted / "_assets" / "weights.bin").stat().st_size
    figures["ru_maxrss"] = max_rss_bytes(resource.RUSAGE_SELF)
    return figures


def bench_streaming(big_mb: int, work: Path) -> Section:
    section = Section("5b streaming")
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        figures = pool.submit(stream_check, big_mb, str(work)).result()
    size = figures["file_bytes"]
    intact = figures["extracted_bytes"] == size
    growth = {step: figures[f"{step}_peak_rss"] - figures[f"{step}_baseline_rss"] for step in ("write", "extract")}
    ok = intact and all(grown < STREAM_RSS_LIMIT * size for grown in growth.values())
    for step, function in (("write", "write_package"), ("extract", "extract_package")):
        seconds = figures[f"{step}_seconds"]
        section.row(
            function,
            secs(seconds),
            f"{mib(size)} file, {size / MIB / seconds:.0f} MiB/s; peak RSS {mib(figures[f'{step}_peak_rss'])} = "
            f"+{mib(growth[step])} over {mib(figures[f'{step}_baseline_rss'])} before it ({growth[step] / size:.1%} of the file)",
        )
    section.row(
        "RSS stays far below the file",
        "PASS" if ok else "FAIL",
        f"growth limit {STREAM_RSS_LIMIT:.0%} of the file; package {mib(figures['package_bytes'])}, "
        f"extracted size intact: {intact}; measured by {figures['rss_method']}",
    )
    section.data.update(figures, rss_growth_bytes=growth, ok=ok)
    for path in (work / "big-plugin", work / "big-extracted"):
        shutil.rmtree(path, ignore_errors=True)
    (work / "big.difypkg").unlink(missing_ok=True)
    return section


def memory_section(snapshots: list[tuple[str, int, int]]) -> Section:
    section = Section("5 peak memory")
    for label, own, children in snapshots:
        section.row(
            f"after {label}", f"{mib(own)} / {mib(children)}", "max RSS self / largest child (uv, pip, …) so far"
        )
    section.data["snapshots"] = [
        {"after": label, "self_bytes": own, "children_bytes": children} for label, own, children in snapshots
    ]
    return section
