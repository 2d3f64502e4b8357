"""``verify``: replay what each daemon version does with a package (DAEMON-FACTS §4), with the network cut off.

Live replay needs the target's CPython and CPU; other architectures get a static check (offline resolution
for their platform with ``--dry-run``). Isolation is a new network namespace; without one the result says so.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import cancel
from .credentials import Indexes
from .errors import EnvironmentProblem, NetworkError, PackageError, UsageError, VerificationError
from .manifest import Manifest, read_manifest
from .mirror import missing_from_wheelhouse, slim_mirror_url
from .mirror_serve import serve_in_namespace, wheelhouse_server
from .offline import WHEELS_DIR
from .package import extract_package, open_package, zip_checksum
from .report import NullReporter, Reporter
from .reqfile import check_includes
from .requirements import remote_lock_sources, tomllib
from .runner import Completed, clean_env, kill_group, run, spawn
from .targets import DEFAULT_GLIBC, DEFAULT_PYTHON, Target, make_targets
from .uvbin import fetch_uv, find_python, own_uv_version, provide_python, uv_bin
from .wheelhouse import read_wheelhouse
from .wheels import WheelCache, default_cache_dir

PROFILES = {
    "pip": "daemon ≤0.0.3: python -m venv + pip install -r requirements.txt",
    "uv-pip": "daemon 0.0.4–0.5.2: uv pip install -r requirements.txt",
    "uv-sync": "daemon 0.5.3–0.5.4: uv sync --no-dev (requirements.txt without pyproject.toml)",
    "uv-sync-frozen": "daemon 0.5.5–0.6.x: uv sync --no-dev --frozen when uv.lock exists",
    "mirror": "daemon 0.6.3+ with PIP_MIRROR_URL: requirements.txt wins, -i <unreachable mirror>",
}
# The oldest and newest uv seen in the daemon's official images (DAEMON-FACTS §4).
DEFAULT_UV_VERSIONS = ("0.9.13", "0.11.7")
# An internal mirror that the air-gapped daemon is configured with but cannot reach.
UNREACHABLE_MIRROR = "http://127.0.0.1:9/simple"
INSTALL_TIMEOUT = 600.0  # the daemon kills the install after 10 minutes in any case
START_TIMEOUT = 120.0  # the plugin must send its first heartbeat within 120 s


@dataclass(frozen=True)
class Step:
    name: str  # venv, install, compile, import, start, resolve
    ok: bool
    seconds: float
    detail: str = ""  # the lines that explain a failure
    fatal: bool = True  # compileall failures are only logged by the daemon


@dataclass(frozen=True)
class Check:
    profile: str
    uv: str  # uv version, or "pip"
    target: str
    mode: str  # "live" or "static"
    command: str
    steps: tuple[Step, ...]

    @property
    def ok(self) -> bool:
        return all(step.ok or not step.fatal for step in self.steps)


@dataclass(frozen=True)
class VerifyReport:
    package: Path
    identifier: str
    isolation: str  # how the network was cut: "unshare -n", "unshare -rn", or "none (uv offline mode)"
    checks: tuple[Check, ...]
    notes: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(check.ok for check in self.checks)

    @property
    def isolated(self) -> bool:
        return not self.isolation.startswith("none")

    def to_json(self) -> dict[str, object]:
        return {
            "schema": 1,
            "status": "success" if self.ok else "error",
            "package": str(self.package),
            "identifier": self.identifier,
            "isolation": self.isolation,
            "isolated": self.isolated,
            "notes": list(self.notes),
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
    wheelhouse: Path | None = None  # a slim package's wheels, served at its mirror URL inside the namespace
    mirror_server: tuple[str, ...] | None = None  # or a command serving that mirror there (a real index server)


def network_isolation() -> tuple[list[str], str]:
    """The argv prefix that runs a command without network, and its name; empty when none works here."""
    if shutil.which("unshare"):
        for prefix in (["unshare", "-n", "--"], ["unshare", "-rn", "--"]):
            if run([*prefix, "true"], timeout=30).returncode == 0:
                return prefix, " ".join(prefix[:-1])
    return [], "none (uv offline mode)"


def verify_package(
    package: Path, options: VerifyOptions | None = None, reporter: Reporter | None = None
) -> VerifyReport:
    options = options or VerifyOptions()
    reporter = reporter or NullReporter()
    unknown = [profile for profile in options.profiles if profile not in PROFILES]
    if unknown:
        raise UsageError(f"unknown profile {unknown[0]!r}; choose from {', '.join(PROFILES)}")
    cache_dir = options.cache_dir or default_cache_dir()
    prefix, isolation = network_isolation()
    notes: list[str] = []
    if not prefix:
        notes.append("NO NETWORK ISOLATION: unshare is unavailable, so uv's offline mode stood in; this is not proof")
        reporter.warn(notes[-1])
    with tempfile.TemporaryDirectory(prefix="dify-repack-verify-") as temp, contextlib.ExitStack() as serving:
        work = Path(temp)
        probe = work / "probe"
        extract_package(package, probe)
        manifest = read_manifest(probe, origin=str(package))
        # pip and uv follow -r/-c as written: an include leading out of the package would read this host's files.
        check_includes(probe / "requirements.txt", root=probe)
        mirror = slim_mirror_url(probe)
        mirror_checks: list[Check] = []
        if mirror is not None:
            reporter.step(f"serving the wheelhouse at {mirror} inside the network namespace")
            mirror_checks, prefix = _serve_mirror(serving, probe, mirror, options)
            isolation = f"unshare -n -m (the mirror {mirror} served inside)"
        identifier = f"{manifest.plugin_id}:{manifest.version}@{zip_checksum(package)}"
        targets = make_targets(options.python, list(options.arches or manifest.arches), options.glibc)
        host_machine = platform.machine()
        try:
            interpreter = provide_python(options.python, reporter.step)
        except (EnvironmentProblem, NetworkError) as problem:
            interpreter = None  # static checks still prove something
            reporter.warn(problem.message)
        live = [target for target in targets if target.machine == host_machine and interpreter is not None]
        static = [target for target in targets if target not in live]
        if interpreter is None:
            notes.append(f"no CPython {options.python} on this host: static checks only (install one to replay live)")
            reporter.warn(notes[-1])
        checks = _entries_checks(package) + mirror_checks
        if live:
            WheelCache(cache_dir).mark()  # uv versions are kept there; tagged so `cache clean` knows it
        uv_binaries = (
            {version: fetch_uv(version, cache_dir, options.indexes) for version in options.uv_versions} if live else {}
        )
        for target in live:
            assert interpreter is not None
            context = _Replay(package, manifest, interpreter, work, prefix, options, mirror or UNREACHABLE_MIRROR)
            for profile in options.profiles:
                for version in ["pip"] if profile == "pip" else list(uv_binaries):
                    reporter.step(
                        f"replaying {profile} with {'pip' if version == 'pip' else 'uv ' + version} on {target}"
                    )
                    uv = uv_binaries[version] if version != "pip" else None
                    checks.append(_replay(context, profile, uv, version, target))
        for target in static:
            for profile in sorted({_static_profile(profile) for profile in options.profiles}):
                reporter.step(f"static check {profile} for {target}")
                checks.append(_static_check(package, profile, target, work, prefix, mirror))
    return VerifyReport(package, identifier, isolation, tuple(checks), tuple(notes))


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


def _entries_checks(package: Path) -> list[Check]:
    """The daemon's checksum read fails on a directory entry, so it rejects the upload (DAEMON-FACTS §1)."""
    with open_package(package) as archive:
        names = [info.filename for info in archive.infolist() if info.is_dir()]
    if not names:
        return []
    detail = (
        f"directory entries {', '.join(names)}: the daemon rejects the upload "
        f'("read {names[0].rstrip("/")}: is a directory"); write file entries only (dify-repack pack does)'
    )
    return [Check("package", "-", "-", "static", "zip entries", (Step("entries", False, 0.0, detail),))]


def _daemon_dir(work: Path, manifest: Manifest, label: str) -> Path:
    folder = work / manifest.author / f"{manifest.name}-{manifest.version}@{label}"
    # The manifest rules keep these names plain; a replay must never build a venv outside its temp folder.
    if folder.resolve().parent.parent != work.resolve():
        raise PackageError(f"manifest fields make the working folder {folder}, outside {work}")
    return folder


def _uv_env(uv: Path, root: Path, cache: Path) -> dict[str, str]:
    """The daemon replaces uv's environment with these few variables (DAEMON-FACTS §4)."""
    env = {
        "VIRTUAL_ENV": str(root / ".venv"),
        "PATH": os.pathsep.join([str(uv.parent), "/usr/local/bin", "/usr/bin", "/bin"]),
        "UV_CACHE_DIR": str(cache),
    }
    for name in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"):
        if name in os.environ:
            env[name] = os.environ[name]
    return env


def install_command(profile: str, root: Path, uv: Path | None, mirror: str = UNREACHABLE_MIRROR) -> list[str]:
    """The dependency install the daemon version behind ``profile`` runs in the plugin directory ``root``."""
    has_requirements = (root / "requirements.txt").is_file()
    has_pyproject = (root / "pyproject.toml").is_file()
    has_lock = (root / "uv.lock").is_file()
    if profile == "pip":
        return [str(root / ".venv" / "bin" / "pip"), "install", "-r", "requirements.txt"]
    assert uv is not None
    requirements_install = [str(uv), "pip", "install", "-r", "requirements.txt", "-vvv"]
    sync = [str(uv), "sync", "--no-dev", "-v"]
    if profile == "uv-pip" or (profile in ("uv-sync", "uv-sync-frozen") and not has_pyproject):
        return requirements_install
    if profile == "uv-sync":
        return sync
    if profile == "uv-sync-frozen":
        return [*sync, "--frozen"] if has_lock else sync
    # mirror: a configured PIP_MIRROR_URL makes requirements.txt win (0.6.3+).
    if has_requirements:
        return [str(uv), "pip", "install", "-i", mirror, "-r", "requirements.txt", "-vvv"]
    return [*sync, "-i", mirror, *(["--frozen"] if has_lock else [])]


def _timed(name: str, argv: list[str], *, cwd: Path, env: dict[str, str], timeout: float, fatal: bool = True) -> Step:
    started = time.monotonic()
    result = run(argv, cwd=cwd, env=env, timeout=timeout)
    return Step(
        name, result.returncode == 0, time.monotonic() - started, explain(result) if result.returncode else "", fatal
    )


@dataclass(frozen=True)
class _Replay:
    """What every live replay of one package shares."""

    package: Path
    manifest: Manifest
    interpreter: Path
    work: Path
    prefix: list[str]  # the network-isolation argv prefix
    options: VerifyOptions
    mirror: str  # the daemon's PIP_MIRROR_URL in the mirror profile


def _replay(context: _Replay, profile: str, uv: Path | None, version: str, target: Target) -> Check:
    package, manifest, interpreter, work = context.package, context.manifest, context.interpreter, context.work
    prefix, options = context.prefix, context.options
    root = _daemon_dir(work, manifest, f"{profile}-{version}")
    extract_package(package, root)
    cache = work / f"uv-cache-{profile}-{version}"
    offline_env = {} if prefix else {"UV_OFFLINE": "1", "PIP_NO_INDEX": "1"}
    daemon_env = clean_env({"UV_CACHE_DIR": str(cache), "UV_PYTHON_DOWNLOADS": "never", **offline_env})
    steps: list[Step] = []
    if uv is None:
        venv_argv = [str(interpreter), "-m", "venv", ".venv"]
    else:
        venv_argv = [str(uv), "venv", ".venv", "--python", str(interpreter)]
    step = _timed("venv", [*prefix, *venv_argv], cwd=root, env=daemon_env, timeout=120)
    steps.append(step)
    command = install_command(profile, root, uv, context.mirror)
    if (
        step.ok
        and profile in ("pip", "uv-pip", "mirror")
        and "requirements.txt" in command
        and not (root / "requirements.txt").is_file()
    ):
        steps.append(Step("install", False, 0.0, "requirements.txt is missing; this daemon version requires it"))
    elif step.ok:
        env = daemon_env if uv is None else {**_uv_env(uv, root, cache), **offline_env}
        step = _timed("install", [*prefix, *command], cwd=root, env=env, timeout=INSTALL_TIMEOUT)
        steps.append(step)
    if all(s.ok for s in steps):
        python = str(root / ".venv" / "bin" / "python")
        step = _timed(
            "compile",
            [*prefix, python, "-m", "compileall", "-q", "-x", r"\.venv|\.uv-cache", "."],
            cwd=root,
            env=daemon_env,
            timeout=300,
            fatal=False,
        )
        steps.append(step)
        step = _timed("import", [*prefix, python, "-c", "import dify_plugin"], cwd=root, env=daemon_env, timeout=120)
        steps.append(step)
        if step.ok and options.start:
            steps.append(_start(root, manifest, prefix, daemon_env, options.start_timeout))
    shown = " ".join(Path(command[0]).name if index == 0 else part for index, part in enumerate(command))
    return Check(profile, version, str(target), "live", shown, tuple(steps))


def _start(root: Path, manifest: Manifest, prefix: list[str], env: dict[str, str], timeout: float) -> Step:
    """Start the plugin as the daemon does and wait for its first heartbeat on stdout."""
    started = time.monotonic()
    argv = [*prefix, str(root / ".venv" / "bin" / "python"), "-m", manifest.entrypoint]
    process = spawn(argv, cwd=root, env={**env, "INSTALL_METHOD": "local"}, stdin=subprocess.PIPE)
    lines: queue.Queue[bytes | None] = queue.Queue()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    seen: list[str] = []
    try:
        while (remaining := timeout - (time.monotonic() - started)) > 0:
            try:
                line = lines.get(timeout=min(remaining, 0.1))
            except queue.Empty:
                cancel.check()
                continue
            if line is None:
                break
            text = line.decode(errors="replace").strip()
            if text:
                seen.append(text[:300])
            if _is_heartbeat(text):
                return Step("start", True, time.monotonic() - started)
    finally:
        kill_group(process)
        _, stderr = process.communicate()
    cancel.check()  # killed by a stop request: no verdict
    reason = (
        "exited before its first heartbeat"
        if process.returncode is not None and time.monotonic() - started < timeout
        else f"no heartbeat within {timeout:.0f} s"
    )
    errors = stderr.decode(errors="replace").strip()
    if error := python_error(errors):
        reason += f": {error}"
    tail = "\n".join([*seen[-3:], *errors.splitlines()[-8:]])
    return Step("start", False, time.monotonic() - started, f"{reason}\n{tail}".strip())


_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit)\b")


def python_error(stderr: str) -> str:
    """The exception that stopped a Python program, skipping what it printed while shutting down."""
    found, ignoring, previous = "", False, ""
    for line in stderr.splitlines():
        if line.startswith("Exception ignored"):
            ignoring = True  # interpreter-shutdown noise (e.g. gevent's "greenlet is being finalized")
        elif line.startswith("Traceback") and not previous.startswith("Exception ignored"):
            ignoring = False
        elif not ignoring and _EXCEPTION_LINE.match(line):
            found = line.strip()
        previous = line
    return found


def _is_heartbeat(text: str) -> bool:
    try:
        message = json.loads(text)
    except ValueError:
        return False
    return isinstance(message, dict) and message.get("event") == "heartbeat"


def _static_profile(profile: str) -> str:
    # Without a live interpreter the distinction that matters is which file drives the install.
    return "requirements" if profile in ("pip", "uv-pip", "mirror") else profile


def _static_check(
    package: Path, profile: str, target: Target, work: Path, prefix: list[str], mirror: str | None = None
) -> Check:
    """Offline resolution for ``target``'s platform: proves the right wheels are inside without running them.

    A slim package resolves against its mirror, served inside the namespace (``prefix``)."""
    root = work / "static" / f"{profile}-{target.arch}"
    extract_package(package, root)
    uv = uv_bin()
    offline = {} if mirror else {"UV_OFFLINE": "1"}
    env = clean_env({"UV_CACHE_DIR": str(work / "uv-cache-static"), "UV_PYTHON_DOWNLOADS": "never", **offline})
    install = [
        uv,
        "pip",
        "install",
        "--dry-run",
        "--target",
        ".target",
        "--python-platform",
        target.uv_platform,
        "--python-version",
        target.python,
    ]
    steps: list[Step] = []
    if profile == "requirements" or not (root / "pyproject.toml").is_file():
        if not (root / "requirements.txt").is_file():
            steps.append(Step("resolve", False, 0.0, "requirements.txt is missing"))
        else:
            step = _timed("resolve", [*prefix, *install, "-r", "requirements.txt"], cwd=root, env=env, timeout=300)
            steps.append(step)
        return _static_result(profile, target, "uv pip install --dry-run", steps)
    frozen = profile == "uv-sync-frozen" and (root / "uv.lock").is_file()
    if frozen and not mirror and (remote := _remote_lock_source(root / "uv.lock")):
        steps.append(
            Step(
                "lock",
                False,
                0.0,
                f"uv.lock points to a remote index ({remote}): --frozen installs go online",
            )
        )
    else:
        # What `uv sync` would install, from the lock (frozen) or from resolving offline against ./wheels.
        # Locking needs an interpreter that satisfies requires-python; never a pyenv shim or a download.
        interpreter = str(find_python(target.python) or sys.executable)
        export = [
            uv,
            "export",
            "--python",
            interpreter,
            "--no-dev",
            "--no-emit-project",
            "--no-hashes",
            "--format",
            "requirements-txt",
            "--output-file",
            ".static-requirements.txt",
            *(["--frozen"] if frozen else []),
        ]
        step = _timed("lock", [*prefix, *export], cwd=root, env=env, timeout=300)
        steps.append(step)
        if step.ok:
            wheels = ["--index-url", mirror] if mirror else ["--no-index", "--find-links", WHEELS_DIR]
            step = _timed(
                "resolve",
                [*prefix, *install, *wheels, "-r", ".static-requirements.txt"],
                cwd=root,
                env=env,
                timeout=300,
            )
            steps.append(step)
    return _static_result(profile, target, "uv export + uv pip install --dry-run", steps)


def _static_result(profile: str, target: Target, command: str, steps: list[Step]) -> Check:
    return Check(profile, own_uv_version(), str(target), "static", command, tuple(steps))


def _remote_lock_source(lock: Path) -> str:
    """The first URL ``uv sync --frozen`` would fetch, or "" when the lock stays inside the package."""
    try:
        data = tomllib.loads(lock.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError):
        return "unreadable uv.lock"
    return next(iter(remote_lock_sources(data)), "")


def explain(result: Completed) -> str:
    """The few lines of a failed tool's output that say why (errors and their causes, not -vvv noise)."""
    lines = result.output.splitlines()
    keep = [
        line.rstrip()
        for line in lines
        if line.lstrip().startswith(
            (
                "error",
                "ERROR",
                "cause",
                "hint",
                "help",
                "×",
                "╰",
                "Because",
                "And because",
                "ModuleNotFoundError",
                "ImportError",
                "Traceback",
            )
        )
        or "No solution found" in line
        or "Failed to" in line
        or "has no wheels" in line
        or "not found" in line
        or "unknown field" in line  # why a uv ignored pyproject.toml's [tool.uv]
    ]
    chosen = keep[-12:] if keep else lines[-8:]
    return "\n".join(chosen)


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
