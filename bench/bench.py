"""Benchmark dify-repack's ``pack`` against the classic ``pip download`` + zip, on one machine in one run.

Sections (each prints rows of one table; ``--json FILE`` writes the raw figures):
  1. cold ``pack`` of the example plugin (fresh cache), optionally with its verification (``--with-verify``)
  2. the classic approach for the same plugin and the same targets (amd64 + arm64, CPython 3.12, glibc ≤ 2.28)
  3. warm ``pack`` (same cache again), with the share of the zip write
  4. a batch over a corpus folder with one shared cache, and the bytes that sharing saved
  5. peak memory, and a streaming check of ``write_package`` / ``extract_package`` on a large file

Run: .venv/bin/python bench/bench.py --corpus /work/shared/corpus --with-verify --json /tmp/bench-results.json
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import os
import platform
import re
import resource
import shutil
import struct
import sys
import tempfile
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any, ClassVar, TypeVar
from unittest import mock

import httpx
import yaml
from rich.console import Console

import dify_repack
from dify_repack.errors import DifyRepackError
from dify_repack.http import ProgressCallback
from dify_repack.manifest import Manifest
from dify_repack.package import copy_plugin_dir, extract_package, write_package
from dify_repack.packing import Check, PackOptions, PackResult, pack
from dify_repack.resolve import Artifact
from dify_repack.runner import clean_env, run
from dify_repack.targets import DEFAULT_PYTHON, Target
from dify_repack.uvbin import find_python
from dify_repack.verify import DEFAULT_UV_VERSIONS, VerifyOptions, VerifyReport, require_pass, verify_package
from dify_repack.wheels import WheelCache

# The module whose globals pack() calls: the phase timers wrap them there.
pack_module = importlib.import_module("dify_repack.packing")
MIB = 1024 * 1024
T = TypeVar("T")
REPO = Path(__file__).resolve().parent.parent
DEFAULT_EXAMPLE = REPO / "examples" / "text_toolkit"
# The files a corpus folder may hold that belong in the plugin (SOURCE.txt is provenance, not plugin data).
CORPUS_DATA_FILES = ("manifest.yaml", "requirements.txt", "pyproject.toml", "uv.lock", ".difyignore")
# The same platform tags pack accepts for CPython 3.12 on glibc ≤ 2.28 (targets.Target.tags), so both
# sides choose from the same wheels. pip does not expand manylinux_2_X tags downwards: list each level.
_GLIBC_LEVELS = [f"manylinux_2_{minor}" for minor in range(28, 16, -1)] + ["manylinux2014"]
PIP_PLATFORMS = {
    "amd64": [
        *(f"{level}_x86_64" for level in _GLIBC_LEVELS),
        "manylinux_2_12_x86_64",
        "manylinux2010_x86_64",
        "manylinux_2_5_x86_64",
        "manylinux1_x86_64",
    ],
    "arm64": [f"{level}_aarch64" for level in _GLIBC_LEVELS],
}
TARGETS = {"speedup": 3.0, "warm_seconds": 3.0}
# "Far below the file size": the streaming check fails if writing + extracting grows RSS by a quarter of it.
STREAM_RSS_LIMIT = 0.25


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


def mib(size: int) -> str:
    return f"{size / MIB:.1f} MiB"


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


def median_run(runs: list[T], key: Callable[[T], float]) -> T:
    """The run with the median time (the lower one for an even count), so its breakdown adds up to the figure."""
    return sorted(runs, key=key)[(len(runs) - 1) // 2]


def samples(values: list[float]) -> str:
    return f"median of {len(values)}: {', '.join(secs(value) for value in values)}" if len(values) > 1 else ""


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


def verify_check(cache: Path, timings: list[float]) -> Check:
    """The check the CLI's ``pack --verify`` installs, with its duration recorded."""

    def check(staged: Path, _manifest: Manifest, targets: tuple[Target, ...]) -> VerifyReport:
        with stopwatch() as elapsed:
            try:
                report = verify_package(
                    staged,
                    VerifyOptions(arches=[target.arch for target in targets], python=DEFAULT_PYTHON, cache_dir=cache),
                )
                require_pass(report)
            finally:
                timings.append(elapsed())
        return report

    return check


def bench_verify(example: Path, work: Path, cache: Path) -> Section:
    """pack with verification on a warm cache, so the difference to the warm run is the verification."""
    section = Section("1b pack verification")
    timings: list[float] = []
    options = PackOptions(output_dir=work / "out-verify", cache_dir=cache, check=verify_check(cache, timings))
    try:
        verified = timed_pack(example, options)
    except DifyRepackError as error:
        section.row("verification", secs(timings[0]) if timings else "-", f"FAILED: {error.message}")
        section.data.update(ok=False, error=error.message, check_seconds=timings[0] if timings else None)
        return section
    section.row(
        "verification (pack's check hook)",
        secs(timings[0]),
        f"every daemon install profile replayed offline with uv {' and '.join(DEFAULT_UV_VERSIONS)} and pip; "
        "includes fetching those uv binaries into the bench's fresh cache",
    )
    section.row("pack + verify, warm cache", secs(verified.seconds))
    section.data.update(ok=True, check_seconds=timings[0], seconds=verified.seconds)
    return section


# --------------------------------------------------------------------------------------------- 2: classic


@dataclass
class Step:
    name: str
    seconds: float
    ok: bool
    detail: str = ""


def pip_env() -> dict[str, str]:
    """No pip config file and no PIP_* settings (as pack's subprocesses get), only the machine's trust roots.

    The CA bundle is kept because without it this host cannot reach the index at all; it does not change
    what pip resolves or downloads.
    """
    env = clean_env()
    cert = os.environ.get("PIP_CERT")
    if cert:
        env["PIP_CERT"] = cert
    return env


def make_pip(work: Path) -> tuple[Path, str]:
    """A throwaway venv with the newest pip (a careful user's pip), on the target's CPython when present."""
    base = find_python(DEFAULT_PYTHON) or Path(sys.executable)
    venv = work / "pip-venv"
    env = pip_env()
    created = run([base, "-m", "venv", venv], env=env, timeout=300)
    python = venv / "bin" / "python"
    if created.returncode != 0:
        raise RuntimeError(f"could not create a venv for pip: {created.tail(3)}")
    upgraded = run(
        [python, "-m", "pip", "install", "--quiet", "--no-cache-dir", "--upgrade", "pip"], env=env, timeout=600
    )
    version = run([python, "-m", "pip", "--version"], env=env, timeout=60).stdout.split(" from ")[0]
    note = "" if upgraded.returncode == 0 else " (upgrade failed; bundled pip)"
    return python, f"{version} on Python {run([python, '-V'], env=env, timeout=60).stdout.split()[-1]}{note}"


def pip_download_argv(python: Path, requirements: Path, dest: Path, arch: str) -> list[str | Path]:
    platforms = [arg for name in PIP_PLATFORMS[arch] for arg in ("--platform", name)]
    return [
        python, "-m", "pip", "download", "-r", requirements, "-d", dest,
        # Lets the resolver use wheels built from sdists in an earlier step (they are in dest).
        "--find-links", dest,
        "--only-binary=:all:", *platforms,
        "--python-version", DEFAULT_PYTHON, "--implementation", "cp",
        "--no-cache-dir", "--progress-bar", "off",
    ]  # fmt: skip


def timed_run(name: str, argv: list[str | Path], cwd: Path) -> tuple[Step, str]:
    with stopwatch() as elapsed:
        result = run(argv, cwd=cwd, env=pip_env(), timeout=1800)
    detail = "" if result.returncode == 0 else result.tail(2)
    return Step(name, elapsed(), result.returncode == 0, detail), result.output


def sdist_only(output: str) -> list[str]:
    """Requirements pip could not satisfy with wheels: the candidates for a separate ``pip wheel`` build."""
    return re.findall(r"No matching distribution found for (\S+)", output)


def zip_dir(root: Path, output: Path) -> int:
    """What a user's script does: every file deflated, wheels included."""
    with zipfile.ZipFile(output, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(root).as_posix())
    return output.stat().st_size


def classic_download(python: Path, plugin: Path, arches: tuple[str, ...], work: Path) -> tuple[list[Step], list[Step]]:
    """pip download per architecture; an sdist-only requirement is built once with ``pip wheel`` and retried.

    Returns (counted steps, uncounted steps): the first failing attempt that reveals the sdist-only
    requirement is reported but left out of the total, as a user who knew it in advance would skip it.
    """
    wheels = plugin / "wheels"
    wheels.mkdir()
    requirements = plugin / "requirements.txt"
    counted: list[Step] = []
    uncounted: list[Step] = []
    built: set[str] = set()
    for arch in arches:
        for _attempt in range(5):
            step, output = timed_run(
                f"pip download {arch}", pip_download_argv(python, requirements, wheels, arch), work
            )
            missing = [name for name in sdist_only(output) if name not in built]
            if step.ok or not missing:
                counted.append(step)
                break
            uncounted.append(Step(f"{step.name} (fails: no wheel for {', '.join(missing)})", step.seconds, False))
            for name in missing:
                build_argv: list[str | Path] = [
                    python,
                    "-m",
                    "pip",
                    "wheel",
                    "--no-deps",
                    "--no-cache-dir",
                    "-w",
                    wheels,
                    name,
                ]
                counted.append(timed_run(f"pip wheel {name} (sdist build)", build_argv, work)[0])
                built.add(name)
    return counted, uncounted


@dataclass
class ClassicRun:
    counted: list[Step]
    uncounted: list[Step]
    files: int
    wheel_bytes: int
    package_bytes: int

    @property
    def seconds(self) -> float:
        return sum(step.seconds for step in self.counted)

    @property
    def ok(self) -> bool:
        return all(step.ok for step in self.counted)


def classic_once(python: Path, example: Path, arches: tuple[str, ...], work: Path) -> ClassicRun:
    plugin = work / "plugin"
    with stopwatch() as elapsed:
        copy_plugin_dir(example, plugin)
    copy_seconds = elapsed()
    counted, uncounted = classic_download(python, plugin, arches, work)
    with stopwatch() as elapsed:
        # The offline install line a user adds so the daemon's pip/uv reads only the shipped wheels.
        requirements = plugin / "requirements.txt"
        requirements.write_text(
            "--no-index --find-links=./wheels/\n" + requirements.read_text(encoding="utf-8"), encoding="utf-8"
        )
        size = zip_dir(plugin, work / "plugin-offline.difypkg")
    counted += [Step("copy plugin", copy_seconds, True), Step("zip (zipfile, deflate)", elapsed(), True)]
    wheels = plugin / "wheels"
    return ClassicRun(counted, uncounted, len(list(wheels.glob("*"))), dir_bytes(wheels), size)


def classic_section(runs: list[ClassicRun], pip_version: str, arches: tuple[str, ...], pack_seconds: float) -> Section:
    section = Section("2 classic pip")
    classic = median_run(runs, lambda run_: run_.seconds)
    section.row(
        "pip",
        pip_version,
        f"--no-cache-dir, PIP_CONFIG_FILE={os.devnull}, no PIP_* settings; platforms as pack's (glibc ≤ 2.28)",
    )
    for step in classic.uncounted:
        section.row(step.name, secs(step.seconds), "not counted in the total (a user who knew would skip it)")
    for step in classic.counted:
        section.row(step.name, secs(step.seconds), "ok" if step.ok else f"FAILED: {step.detail}")
    section.row(
        "total (counted steps)",
        secs(classic.seconds),
        f"{samples([run_.seconds for run_ in runs])}; {classic.files} files in wheels/, {mib(classic.wheel_bytes)}; "
        f"package {mib(classic.package_bytes)}",
    )
    speedup = classic.seconds / pack_seconds
    met = "met" if speedup >= TARGETS["speedup"] else "NOT met"
    section.row(
        "speed-up of cold pack",
        f"{speedup:.1f}×",
        f"{secs(classic.seconds)} / {secs(pack_seconds)} (medians); both for {' + '.join(arches)}, CPython "
        f"{DEFAULT_PYTHON}; target ≥ {TARGETS['speedup']:.0f}×: {met}"
        + ("" if classic.ok else "; classic had FAILED steps"),
    )
    section.row(
        "not equivalent",
        "",
        "classic leaves pyproject.toml/uv.lock/.difyignore untouched and verifies nothing; pack rewrites them",
    )
    section.data.update(
        pip=pip_version,
        steps=[vars(step) for step in classic.counted],
        uncounted_steps=[vars(step) for step in classic.uncounted],
        total_seconds=classic.seconds,
        samples=[run_.seconds for run_ in runs],
        files=classic.files,
        wheel_bytes=classic.wheel_bytes,
        package_bytes=classic.package_bytes,
        speedup=speedup,
        target_met=met == "met",
        ok=classic.ok,
    )
    return section


# --------------------------------------------------------------------------------------------- 4: corpus


MAIN_PY = """from dify_plugin import DifyPluginEnv, Plugin

plugin = Plugin(DifyPluginEnv(MAX_REQUEST_TIMEOUT=120))

if __name__ == "__main__":
    plugin.run()
"""
TOOL_PY = """from collections.abc import Generator
from typing import Any

from dify_plugin import Tool
from dify_plugin.entities.tool import ToolInvokeMessage


class EchoTool(Tool):
    def _invoke(self, tool_parameters: dict[str, Any]) -> Generator[ToolInvokeMessage, None, None]:
        yield self.create_text_message(str(tool_parameters.get("text", "")))
"""
PROVIDER_PY = """from typing import Any

from dify_plugin import ToolProvider


class Provider(ToolProvider):
    def _validate_credentials(self, credentials: dict[str, Any]) -> None:
        return None
"""
ICON_SVG = '<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16"><rect width="16" height="16"/></svg>\n'


def icon_png() -> bytes:
    """A valid 1×1 grey PNG, for manifests whose icon is a .png."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)  # 1 by 1 pixel, 8-bit greyscale
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00\x80")) + chunk(b"IEND", b"")
    )


def write_provider(root: Path, kind: str, relative: str, author: str, icon: str) -> None:
    """A provider YAML at the path the manifest names; tool providers also get one tool."""
    provider = root / relative
    stem = provider.stem
    provider.parent.mkdir(parents=True, exist_ok=True)
    identity = {"author": author, "name": stem, "label": {"en_US": stem}, "icon": icon}
    if kind == "tools":
        (root / "tools").mkdir(exist_ok=True)
        (root / "tools" / "echo.yaml").write_text(
            yaml.safe_dump(
                {
                    "identity": {"name": "echo", "author": author, "label": {"en_US": "Echo"}},
                    "description": {"human": {"en_US": "Echo"}, "llm": "Echo the text"},
                    "parameters": [
                        {"name": "text", "type": "string", "required": True, "form": "llm", "label": {"en_US": "Text"}}
                    ],
                    "extra": {"python": {"source": "tools/echo.py"}},
                }
            ),
            encoding="utf-8",
        )
        (root / "tools" / "echo.py").write_text(TOOL_PY, encoding="utf-8")
        (provider.parent / f"{stem}.py").write_text(PROVIDER_PY, encoding="utf-8")
        data: dict[str, Any] = {
            "identity": identity,
            "tools": ["tools/echo.yaml"],
            "extra": {"python": {"source": f"{provider.parent.name}/{stem}.py"}},
        }
    else:
        # Model, endpoint, agent-strategy ... providers: the shape matters to the daemon, not to packaging.
        data = {"provider": stem, "label": {"en_US": stem}, "icon_small": {"en_US": icon}}
    provider.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")


def build_minimal_plugin(folder: Path, dest: Path) -> None:
    """A plugin directory around a corpus folder's data files: main.py, provider(s), an icon, privacy."""
    dest.mkdir(parents=True)
    for name in CORPUS_DATA_FILES:
        if (folder / name).is_file():
            shutil.copyfile(folder / name, dest / name)
    manifest = yaml.safe_load((folder / "manifest.yaml").read_text(encoding="utf-8")) or {}
    (dest / "main.py").write_text(MAIN_PY, encoding="utf-8")
    icon = str(manifest.get("icon") or "icon.svg")
    assets = dest / "_assets"
    assets.mkdir()
    if icon.endswith(".png"):
        (assets / icon).write_bytes(icon_png())
    else:
        (assets / icon).write_text(ICON_SVG, encoding="utf-8")
    plugins = manifest.get("plugins") if isinstance(manifest.get("plugins"), dict) else {}
    for kind, paths in (plugins or {}).items():
        for relative in paths or []:
            write_provider(dest, str(kind), str(relative), str(manifest.get("author", "bench")), icon)
    if manifest.get("privacy"):
        (dest / str(manifest["privacy"])).write_text("This plugin collects no data.\n", encoding="utf-8")


class RecordingCache(WheelCache):
    """Records every cache file a pack used (looked up or fetched): what a fresh per-plugin cache would download."""

    # Class-level because pack builds its own instance; the bench resets it before each plugin.
    used: ClassVar[set[Path]] = set()

    def lookup(self, artifact: Artifact) -> Path | None:
        path = super().lookup(artifact)
        if path is not None:
            RecordingCache.used.add(path)
        return path

    def fetch(self, client: httpx.Client, artifact: Artifact, advance: ProgressCallback | None = None) -> Path:
        path = super().fetch(client, artifact, advance)
        RecordingCache.used.add(path)
        return path


@dataclass
class CorpusResult:
    name: str
    ok: bool
    seconds: float
    wheels: int = 0
    package_bytes: int = 0
    needed_bytes: int = 0  # sizes of the cache files this plugin used
    added_bytes: int = 0  # bytes the shared cache grew by during this plugin
    built: tuple[str, ...] = ()  # packages built from sdists
    has_sdk: bool = False  # a dify_plugin wheel is inside: without one the plugin cannot start
    error: str = ""


def pack_corpus_plugin(folder: Path, work: Path, cache: Path) -> CorpusResult:
    source = work / "corpus-src" / folder.name
    build_minimal_plugin(folder, source)
    RecordingCache.used = set()
    before = dir_bytes(cache / "files")
    with stopwatch() as elapsed:
        try:
            result: PackResult | None = pack(source, PackOptions(output_dir=work / "corpus-out", cache_dir=cache))
            error = ""
        except DifyRepackError as exc:
            result, error = None, exc.message
        except Exception as exc:  # a bench must report a bug in one plugin and go on with the others
            result, error = None, f"unexpected {type(exc).__name__}: {exc}"
    needed = sum(path.stat().st_size for path in RecordingCache.used if path.is_file())
    added = dir_bytes(cache / "files") - before
    if result is None:
        return CorpusResult(folder.name, False, elapsed(), needed_bytes=needed, added_bytes=added, error=error)
    return CorpusResult(
        folder.name,
        True,
        elapsed(),
        result.wheels,
        result.stats.compressed_bytes,
        needed,
        added,
        result.built,
        ships_sdk(result.output),
    )


def ships_sdk(package: Path) -> bool:
    """A cheap sanity check in place of verification (too slow for a batch): is the plugin SDK in the wheels?"""
    with zipfile.ZipFile(package) as archive:
        return any(re.match(r"wheels/.*dify_plugin-[^/]+\.whl$", name, re.IGNORECASE) for name in archive.namelist())


def bench_corpus(corpus: Path, work: Path) -> Section:
    section = Section("4 corpus batch")
    cache = work / "cache-corpus"
    folders = sorted(path.parent for path in corpus.glob("*/manifest.yaml"))
    results: list[CorpusResult] = []
    with mock.patch.object(pack_module, "WheelCache", RecordingCache), stopwatch() as elapsed:
        for folder in folders:
            results.append(pack_corpus_plugin(folder, work, cache))
    for item in results:
        if item.ok:
            built = f"; built from sdists: {', '.join(item.built)}" if item.built else ""
            note = (
                f"ok: {item.wheels} wheels, {mib(item.package_bytes)}; needed {mib(item.needed_bytes)}, "
                f"downloaded {mib(item.added_bytes)}{built}"
            )
            if not item.has_sdk:
                note += "; WARNING: no dify_plugin wheel in the package (the plugin cannot start)"
        else:
            note = f"error: {item.error[:300]} (needed {mib(item.needed_bytes)} before failing)"
        section.row(item.name, secs(item.seconds), note)
    shared = dir_bytes(cache / "files")
    separate = sum(item.needed_bytes for item in results)
    ok = sum(item.ok for item in results)
    section.row("batch wall time", secs(elapsed()), f"{ok} ok, {len(results) - ok} errors, one shared cache")
    section.row(
        "downloaded, shared cache",
        mib(shared),
        f"growth of the cache's files/; uv metadata cache {mib(dir_bytes(cache / 'uv-cache'))} on disk (not compared)",
    )
    section.row(
        "downloaded, one cache per plugin",
        mib(separate),
        "sum over plugins of the sizes of the cache files each pack looked up or fetched (wheels and sdists, "
        "failed plugins included) = what a fresh cache per plugin would download",
    )
    section.row(
        "saved by sharing", mib(separate - shared), f"{1 - shared / separate:.0%} fewer bytes" if separate else ""
    )
    section.data.update(
        plugins=[vars(item) for item in results],
        seconds=elapsed(),
        shared_download_bytes=shared,
        per_plugin_download_bytes=separate,
    )
    return section


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


# --------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--example", type=Path, default=DEFAULT_EXAMPLE, help="plugin for sections 1-3 (default: %(default)s)"
    )
    parser.add_argument("--corpus", type=Path, help="folder of corpus plugins (data files only) for section 4")
    parser.add_argument("--json", type=Path, help="write the raw figures to this file")
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="rounds of cold pack and classic pip; medians are reported (default: %(default)s)",
    )
    parser.add_argument("--skip-classic", action="store_true", help="skip section 2 (pip download + zip)")
    parser.add_argument("--skip-corpus", action="store_true", help="skip section 4 even with --corpus")
    parser.add_argument("--with-verify", action="store_true", help="also time pack's verification (section 1b)")
    parser.add_argument(
        "--big-mb", type=int, default=512, help="size of the streaming check's file in MiB (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.big_mb < 1:
        parser.error("--repeat and --big-mb must be at least 1")
    return args


def host_info() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "dify_repack": dify_repack.__version__,
    }


def run_all(args: argparse.Namespace, work: Path, console: Console) -> list[Section]:
    sections: list[Section] = []
    snapshots: list[tuple[str, int, int]] = []

    def done(section: Section, label: str | None) -> None:
        sections.append(section)
        if label is not None:  # max RSS is a high-water mark: a snapshot says which stage raised it
            snapshots.append((label, max_rss_bytes(resource.RUSAGE_SELF), max_rss_bytes(resource.RUSAGE_CHILDREN)))
        console.print(f"[dim]… {section.title} done[/]")

    # Rounds alternate pack and pip so that a change in network conditions hits both sides alike.
    pip = None if args.skip_classic else make_pip(work)
    colds: list[PackRun] = []
    classics: list[ClassicRun] = []
    for index in range(args.repeat):
        cache = work / f"cache-cold-{index}"
        colds.append(timed_pack(args.example, PackOptions(output_dir=work / f"out-cold-{index}", cache_dir=cache)))
        if pip is not None:
            arches = tuple(target.arch for target in colds[-1].result.targets)
            classics.append(classic_once(pip[0], args.example, arches, work / f"classic-{index}"))
    done(cold_section(colds, cache), "cold pack" if pip is None else "cold pack + classic pip rounds")
    if pip is not None:
        pack_seconds = median_run(colds, lambda run_: run_.seconds).seconds
        done(classic_section(classics, pip[1], arches, pack_seconds), None)
    done(bench_warm(args.example, work, cache), "warm pack")
    if args.with_verify:
        done(bench_verify(args.example, work, cache), "verification")
    if args.corpus and not args.skip_corpus:
        done(bench_corpus(args.corpus, work), "corpus batch")
    done(bench_streaming(args.big_mb, work), "streaming check")
    sections.append(memory_section(snapshots))
    return sections


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(highlight=False, soft_wrap=True)
    with tempfile.TemporaryDirectory(prefix="dify-repack-bench-") as temp:
        sections = run_all(args, Path(temp), console)
    print_table(sections, console)
    streaming = next(section for section in sections if section.title == "5b streaming")
    if args.json:
        payload = {
            "command": [Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])],
            "host": host_info(),
            "sections": {section.title: section.data for section in sections},
        }
        args.json.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
        console.print(f"wrote {args.json}")
    return 0 if streaming.data["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
