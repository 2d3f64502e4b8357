"""``verify``: replay what each daemon version does with a package (DAEMON-FACTS §4), with the network cut off.

Live replay needs the target's CPython and CPU; other architectures get a static check (offline resolution
for their platform with ``--dry-run``). Isolation is a new network namespace; without one the result says so.

It costs what it must: the package is hashed once (the daemon's checksum) and extracted once, the uv versions
are fetched once and side by side, replays that would run the same commands on the same files run once, the
others run in parallel up to the cores, and a passed verification of a package with the same files (the same
checksum and zip entries) and the same settings is remembered.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from . import cancel
from .credentials import Indexes
from .daemon import (
    DEFAULT_UV_VERSIONS,
    INSTALL_IDLE_TIMEOUT,
    INSTALL_TIMEOUT,
    PROFILES,
    START_TIMEOUT,
    UNREACHABLE_MIRROR,
    directory_entries_rejected,
    install_command,
)
from .errors import EnvironmentProblem, NetworkError, PackageError, UsageError, VerificationError
from .files import scratch_folder, write_atomically
from .manifest import Manifest, read_manifest
from .mirror import missing_from_wheelhouse, slim_mirror_url
from .mirror_serve import serve_in_namespace, wheelhouse_server
from .package import extract_package, open_package, zip_checksum
from .replay import (
    Check,
    Environments,
    Limits,
    Replay,
    Step,
    live_replay,
    requirements_missing,
)
from .report import NullReporter, Reporter, plural
from .runner import run
from .static_check import static_check, static_key, static_profile
from .targets import DEFAULT_GLIBC, DEFAULT_PYTHON, Target, host_runs, make_targets
from .uvbin import fetch_uv, own_uv_version, provide_python
from .uvconfig import check_replay_config
from .wheelhouse import read_wheelhouse
from .wheels import WheelCache, default_cache_dir

__all__ = ["DEFAULT_UV_VERSIONS", "PROFILES", "Check", "Step", "VerifyOptions", "VerifyReport", "verify_package"]


@dataclass(frozen=True)
class VerifyReport:
    package: Path
    identifier: str
    isolation: str  # how the network was cut: "unshare -n", "unshare -rn", or "none (uv offline mode)"
    checks: tuple[Check, ...]
    notes: tuple[str, ...] = ()
    remembered: str = ""  # when set: the UTC time of the replay whose pass stands for this package's files

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(check.ok for check in self.checks)

    @property
    def counts(self) -> str:
        """How many checks of each kind ran, as in "9 live replays + 3 static checks"."""
        return _counts(self.checks)

    @property
    def isolated(self) -> bool:
        return not self.isolation.startswith("none")

    @property
    def warnings(self) -> tuple[str, ...]:
        """Steps that passed close to a daemon limit (a near-miss), naming the replay."""
        return tuple(
            f"{check.profile} ({check.uv}, {check.target}): {step.warning}"
            for check in self.checks
            if not check.same_as
            for step in check.steps
            if step.warning
        )

    def to_json(self) -> dict[str, object]:
        return {
            "schema": 1,
            "status": "success" if self.ok else "error",
            "package": str(self.package),
            "identifier": self.identifier,
            "isolation": self.isolation,
            "isolated": self.isolated,
            "remembered": self.remembered or None,
            "notes": list(self.notes),
            "warnings": list(self.warnings),
            "checks": [dict(asdict(check), ok=check.ok) for check in self.checks],
        }


@dataclass(frozen=True)
class VerifyOptions:
    profiles: Sequence[str] = tuple(PROFILES)
    uv_versions: Sequence[str] = DEFAULT_UV_VERSIONS
    arches: Sequence[str] | None = None  # None: the manifest's
    python: str = DEFAULT_PYTHON
    cache_dir: Path | None = None
    start_timeout: float = START_TIMEOUT
    start: bool = True  # start the plugin and wait for its heartbeat
    indexes: Indexes = field(default_factory=Indexes)  # where to fetch uv versions from, with their logins
    glibc: tuple[int, int] = DEFAULT_GLIBC  # for the static checks of other architectures
    install_timeout: float = INSTALL_TIMEOUT  # the daemon's watchdogs (tests shorten them)
    install_idle_timeout: float = INSTALL_IDLE_TIMEOUT
    jobs: int = field(default_factory=lambda: os.cpu_count() or 1)  # replays side by side
    reuse: bool = False  # return a remembered pass of a package with the same files and these settings
    wheelhouse: Path | None = None  # a slim package's wheels, served at its mirror URL inside the namespace
    mirror_server: tuple[str, ...] | None = None  # or a command serving that mirror there (a real index server)


def network_isolation() -> tuple[list[str], str]:
    """The argv prefix that runs a command without network, and its name; empty when none works here."""
    if shutil.which("unshare"):
        for prefix in (["unshare", "-n", "--"], ["unshare", "-rn", "--"]):
            if run([*prefix, "true"], timeout=30).returncode == 0:
                return prefix, " ".join(prefix[:-1])
    return [], "none (uv offline mode)"


@dataclass(frozen=True)
class _Run:
    """One replay to run, or the one it duplicates."""

    profile: str
    version: str  # uv version or "pip"; the uv for static checks
    target: Target
    mode: str  # "live" or "static"
    key: tuple[object, ...]  # replays with equal keys run the same commands on the same files


def verify_package(
    package: Path, options: VerifyOptions | None = None, reporter: Reporter | None = None
) -> VerifyReport:
    options = options or VerifyOptions()
    reporter = reporter or NullReporter()
    unknown = [profile for profile in options.profiles if profile not in PROFILES]
    if unknown:
        raise UsageError(f"unknown profile {unknown[0]!r}; choose from {', '.join(PROFILES)}")
    # Absolute: the replays run uv from the cache while their working folder is the plugin's.
    cache_dir = (options.cache_dir or default_cache_dir()).absolute()
    # A package that is no readable zip is refused before a CPython may be installed for it.
    directories, unpacked = _central_directory(package)
    checksum = zip_checksum(package)  # the daemon's identity of the package: the memory's key and the identifier's
    prefix, isolation = network_isolation()
    try:
        interpreter = provide_python(options.python, reporter.step)
    except (EnvironmentProblem, NetworkError) as problem:
        interpreter = None  # static checks still prove something
        reporter.warn(problem.message)
    memory = _memory_path(checksum, directories, options, isolation, interpreter, cache_dir)
    if options.reuse and memory is not None and (remembered := _recall(memory, package)) is not None:
        reporter.step(
            f"verification: a package with these files passed on {remembered.remembered} (--reverify replays)"
        )
        return remembered
    notes: list[str] = []
    if not prefix:
        notes.append("NO NETWORK ISOLATION: unshare is unavailable, so uv's offline mode stood in; this is not proof")
        reporter.warn(notes[-1])
    # Each replay holds a copy of the files, an installed venv and a uv cache: about three times the package.
    with (
        scratch_folder("dify-repack-verify-", unpacked * (2 + 3 * _most_replays(options))) as work,
        contextlib.ExitStack() as serving,
    ):
        tree = work / "package"
        extract_package(package, tree)
        manifest = read_manifest(tree, origin=str(package))
        # pip and uv follow the package's includes, locations and settings as written: none may lead out of it.
        check_replay_config(tree)
        mirror = slim_mirror_url(tree)
        mirror_checks: list[Check] = []
        if mirror is not None:
            reporter.step(f"serving the wheelhouse at {mirror} inside the network namespace")
            mirror_checks, prefix = _serve_mirror(serving, tree, mirror, options)
            isolation = f"unshare -n -m (the mirror {mirror} served inside)"
        identifier = f"{manifest.plugin_id}:{manifest.version}@{checksum}"
        targets = make_targets(options.python, list(options.arches or manifest.arches), options.glibc)
        live = [target for target in targets if host_runs(target) and interpreter is not None]
        static = [target for target in targets if target not in live]
        if interpreter is None:
            notes.append(f"no CPython {options.python} on this host: static checks only (install one to replay live)")
            reporter.warn(notes[-1])
        if live:
            WheelCache(cache_dir).mark()  # uv versions are kept there; tagged so `cache clean` knows it
        uv_binaries = _fetch_uv_versions(options, cache_dir, reporter) if live else {}
        runs = _plan(tree, options, live, static, uv_binaries, mirror or UNREACHABLE_MIRROR)
        first: dict[tuple[object, ...], _Run] = {}
        for item in runs:
            first.setdefault(item.key, item)
        # The slowest first (pip builds its venv with ensurepip and compiles every file), static checks last.
        order = sorted(first.values(), key=lambda item: (item.mode != "live", item.version != "pip"))
        context = None
        if interpreter is not None:
            limits = Limits(options.install_timeout, options.install_idle_timeout, options.start_timeout, options.start)
            # Fingerprinting an installed venv (hashing every file) pays only when another uv replay may match it.
            shared = sum(item.mode == "live" and item.version != "pip" for item in order) > 1
            environments = Environments() if shared else None
            context = Replay(
                tree, manifest, interpreter, work, prefix, limits, mirror or UNREACHABLE_MIRROR, environments
            )
        total = len(order)
        same = f" ({len(runs) - total} others identical)" if len(runs) > total else ""
        jobs = max(1, min(options.jobs, total))
        reporter.step(f"verifying: {_counts(order)} with the network cut off{same}, {jobs} at a time")

        def execute(number: int, item: _Run) -> Check:
            label = f"{number}/{total} {_describe(item)}"
            root = _daemon_dir(work / item.mode, manifest, f"{item.profile}-{item.version}-{item.target.arch}")
            started = time.monotonic()
            with reporter.activity(label) as update:
                if item.mode == "live":
                    assert context is not None
                    uv = uv_binaries.get(item.version)
                    check = live_replay(context, item.profile, uv, item.version, item.target, root, update)
                else:
                    check = static_check(tree, item.profile, item.target, root, prefix, update, mirror)
            failed = next((step.name for step in check.steps if not step.ok and step.fatal), "")
            reporter.step(f"{label}: {f'FAILED at {failed}' if failed else 'ok'} in {time.monotonic() - started:.1f} s")
            return check

        with cancel.executor(jobs) as pool:
            futures = {item.key: pool.submit(execute, number, item) for number, item in enumerate(order, 1)}
            results = {key: future.result() for key, future in futures.items()}
        checks = _entries_checks(directories) + mirror_checks
        for item in runs:
            check = results[item.key]
            if first[item.key] is not item:
                check = replace(check, profile=item.profile, same_as=first[item.key].profile)
            checks.append(check)
    report = VerifyReport(package, identifier, isolation, tuple(checks), tuple(notes))
    for warning in report.warnings:
        reporter.warn(warning)
    if memory is not None and report.ok and report.isolated:
        _remember(memory, report)
    return report


def _counts(checks: Sequence[Check | _Run]) -> str:
    live = sum(check.mode == "live" for check in checks)
    static = f" + {plural(len(checks) - live, 'static check')}" if len(checks) > live else ""
    return f"{plural(live, 'live replay')}{static}"


def _daemon_dir(work: Path, manifest: Manifest, label: str) -> Path:
    """The plugin folder as the daemon lays it out (``author/name-version@...``), one per replay."""
    folder = work / manifest.author / f"{manifest.name}-{manifest.version}@{label}"
    # The manifest rules keep these names plain; a replay must never build a venv outside its temp folder.
    if folder.resolve().parent.parent != work.resolve():
        raise PackageError(f"manifest fields make the working folder {folder}, outside {work}")
    return folder


def _describe(item: _Run) -> str:
    tool = "" if item.version == "pip" else f" uv {item.version}"
    return f"{item.profile}{tool} {item.target.arch}" + (" static" if item.mode == "static" else "")


def _plan(
    tree: Path,
    options: VerifyOptions,
    live: list[Target],
    static: list[Target],
    uv_binaries: dict[str, Path],
    mirror: str,
) -> list[_Run]:
    """Every check in report order, each keyed by what it would run: equal keys are the same replay."""
    runs: list[_Run] = []
    template = Path("/replay")  # commands are compared with one root for all
    for target in live:
        for profile in options.profiles:
            for version in ["pip"] if profile == "pip" else list(uv_binaries):
                uv = uv_binaries.get(version)
                command = install_command(profile, tree, uv, mirror)
                command = [part.replace(str(tree), str(template)) for part in command]
                # Same interpreter, same uv binary, same install argv, same files: the same replay.
                key = ("live", str(target), version, tuple(command), requirements_missing(profile, command, tree))
                runs.append(_Run(profile, version, target, "live", key))
    for target in static:
        for profile in sorted({static_profile(profile) for profile in options.profiles}):
            runs.append(
                _Run(profile, own_uv_version(), target, "static", ("static", str(target), *static_key(profile, tree)))
            )
    return runs


def _fetch_uv_versions(options: VerifyOptions, cache_dir: Path, reporter: Reporter) -> dict[str, Path]:
    """Every requested uv, fetched once and side by side (most are already in the cache)."""
    versions = list(dict.fromkeys(options.uv_versions))
    if not versions:
        return {}
    with (
        reporter.activity(f"uv {', '.join(versions)}: fetching for the replays"),
        cancel.executor(len(versions)) as pool,
    ):
        futures = {version: pool.submit(fetch_uv, version, cache_dir, options.indexes) for version in versions}
        return {version: future.result() for version, future in futures.items()}


def _serve_mirror(
    stack: contextlib.ExitStack, root: Path, mirror: str, options: VerifyOptions
) -> tuple[list[Check], list[str]]:
    """A slim package installs from its mirror: serve it at the mirror's address inside the namespace, and
    name every pinned file the wheelhouse lacks. Returns that check and the prefix that enters the namespace."""
    checks = []
    if options.mirror_server is None:
        if options.wheelhouse is None:
            raise UsageError(
                f"this is a slim package: it installs from {mirror}, so verification needs its wheelhouse",
                tip="give --wheelhouse DIR (the folder pack --wheelhouse wrote)",
            )
        missing = missing_from_wheelhouse(root, read_wheelhouse(options.wheelhouse))
        detail = f"the wheelhouse {options.wheelhouse} lacks {', '.join(missing)}" if missing else ""
        checks.append(
            Check(
                "wheelhouse",
                "-",
                "-",
                "static",
                "files pinned by requirements.txt",
                (Step("files", not missing, 0.0, detail),),
            )
        )
    server = list(options.mirror_server or wheelhouse_server(options.wheelhouse or Path(), mirror))
    return checks, stack.enter_context(serve_in_namespace(mirror, server))


def _central_directory(package: Path) -> tuple[list[str], int]:
    """The package's directory entries, and the size of its files once extracted."""
    with open_package(package) as archive:
        infos = archive.infolist()
    return [info.filename for info in infos if info.is_dir()], sum(info.file_size for info in infos)


def _most_replays(options: VerifyOptions) -> int:
    """An upper bound on the live replays ``options`` ask for: on this host's architecture only, before
    duplicates are merged (a static check installs nothing)."""
    return len(options.profiles) * max(1, len(options.uv_versions))


def _entries_checks(names: list[str]) -> list[Check]:
    """The daemon's checksum read fails on a directory entry, so it rejects the upload (DAEMON-FACTS §1)."""
    if not names:
        return []
    step = Step("entries", False, 0.0, directory_entries_rejected(names))
    return [Check("package", "-", "-", "static", "zip entries", (step,))]


# Remembering a pass: the same files, verified the same way on the same host, pass again.


def _memory_path(
    checksum: str,
    directories: list[str],
    options: VerifyOptions,
    isolation: str,
    interpreter: Path | None,
    cache_dir: Path,
) -> Path | None:
    """Where a pass of this package with these settings is recorded; None when it must not be remembered."""
    if "latest" in options.uv_versions:
        return None  # "latest" moves: the same words may mean another uv tomorrow
    if options.wheelhouse is not None or options.mirror_server is not None:
        return None  # a slim package's verdict depends on a wheelhouse that changes under the same bytes
    from . import __version__

    python = None
    if interpreter is not None:
        real = interpreter.resolve()
        stat = real.stat()
        python = [str(real), stat.st_size, stat.st_mtime_ns]
    settings = {
        # What extraction and the daemon see of the package: its files (the checksum) and its directory entries.
        "package": [checksum, directories],
        "tool": __version__,
        "options": {
            "profiles": list(options.profiles),
            "uv": list(options.uv_versions),
            "arches": list(options.arches) if options.arches is not None else None,
            "python": options.python,
            "start": options.start,
            "start_timeout": options.start_timeout,
            "install_timeout": options.install_timeout,
            "install_idle_timeout": options.install_idle_timeout,
            "glibc": list(options.glibc),
        },
        "own_uv": own_uv_version(),
        "host": {"python": python, "machine": platform.machine(), "isolation": isolation},
    }
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    return cache_dir / "verified" / f"{key}.json"


def _remember(memory: Path, report: VerifyReport) -> None:
    data = report.to_json()
    data["remembered"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    WheelCache(memory.parent.parent).mark()
    memory.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(memory, json.dumps(data))


def _recall(memory: Path, package: Path) -> VerifyReport | None:
    try:
        data: dict[str, Any] = json.loads(memory.read_text(encoding="utf-8"))
        checks = tuple(
            Check(**{**_fields(check, Check), "steps": tuple(Step(**_fields(step, Step)) for step in check["steps"])})
            for check in data["checks"]
        )
        report = VerifyReport(
            package, data["identifier"], data["isolation"], checks, tuple(data["notes"]), data["remembered"]
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None  # absent or unreadable: replay
    return report if report.ok else None


def _fields(data: dict[str, Any], cls: Callable[..., object]) -> dict[str, Any]:
    names = getattr(cls, "__dataclass_fields__", {})
    return {key: value for key, value in data.items() if key in names}


def require_pass(report: VerifyReport) -> None:
    """Raise VerificationError naming the first failing profile (pack uses this to reject a package)."""
    for check in report.checks:
        if not check.ok:
            failed = next(step for step in check.steps if not step.ok and step.fatal)
            lines = failed.detail.splitlines()
            # The first line says what went wrong, the last one usually why (the exception, uv's cause).
            why = ": ".join(dict.fromkeys([lines[0], lines[-1]])) if lines else ""
            raise VerificationError(
                f"{check.profile} ({check.uv}, {check.target}) failed at {failed.name}: {why}",
                tip="run `dify-repack verify` on the package for the full table; `--no-verify` skips this check",
            )
    if not report.checks:
        raise EnvironmentProblem("no verification check could run on this host")
