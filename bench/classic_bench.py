"""Section 2: the classic ``pip download`` per architecture + ``pip wheel`` + zip, for comparison."""

from __future__ import annotations

import os
import re
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from common import TARGETS, Section, dir_bytes, median_run, samples, secs, stopwatch
from dify_repack.package import copy_plugin_dir
from dify_repack.render import mib
from dify_repack.runner import clean_env, run
from dify_repack.targets import DEFAULT_PYTHON
from dify_repack.uvbin import find_python

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
