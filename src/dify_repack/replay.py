"""One replay of what a daemon does with a package, in its own folder and uv cache (DAEMON-FACTS §4).

A live replay creates the venv, installs, compiles, imports ``dify_plugin`` and starts the plugin, each step
under the network-isolation prefix, with the daemon's watchdogs. The steps and their results are shared with
the static checks (static_check.py) for platforms this host cannot run.
"""

from __future__ import annotations

import collections
import hashlib
import os
import queue
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, replace
from pathlib import Path

from . import cancel
from .daemon import install_command, is_heartbeat, uv_env
from .files import file_sha256
from .manifest import Manifest
from .offline import WHEELS_DIR
from .runner import Completed, clean_env, kill_group, run, spawn
from .targets import Target

# A silence longer than this share of the daemon's idle limit is reported: a busier host would cross it.
NEAR_MISS = 0.5

Update = Callable[[str], None]  # the replay's current stage, for the live view


@dataclass(frozen=True)
class Step:
    name: str  # venv, install, compile, import, start, resolve
    ok: bool
    seconds: float
    detail: str = ""  # the lines that explain a failure
    fatal: bool = True  # compileall failures are only logged by the daemon
    warning: str = ""  # passed, but close to a daemon limit
    same_as: str = ""  # not run again: an earlier replay ran it on byte-identical installed files


@dataclass(frozen=True)
class Check:
    profile: str
    uv: str  # uv version, or "pip"
    target: str
    mode: str  # "live" or "static"
    command: str
    steps: tuple[Step, ...]
    same_as: str = ""  # the profile whose identical replay stands for this one (same commands, same files)

    @property
    def ok(self) -> bool:
        return all(step.ok or not step.fatal for step in self.steps)


@dataclass(frozen=True)
class Limits:
    """The daemon's limits a replay applies (overridable so tests need not wait two minutes)."""

    install_timeout: float
    install_idle_timeout: float
    start_timeout: float
    start: bool  # start the plugin and wait for its heartbeat


class Environments:
    """Which replay first ran ``import`` and ``start`` on an installed environment, by its fingerprint.

    Two installs that produce byte-identical files (say, ``uv pip install`` and ``uv sync`` of the same pins)
    give the same import and start: the later replay takes the earlier one's result instead of running them.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runs: dict[str, tuple[str, Future[list[Step]]]] = {}

    def claim(self, fingerprint: str, label: str) -> tuple[str, Future[list[Step]]]:
        """The label of the replay that owns ``fingerprint`` (``label`` itself when first) and its result."""
        with self._lock:
            return self._runs.setdefault(fingerprint, (label, Future()))


@dataclass(frozen=True)
class Replay:
    """What every live replay of one package shares."""

    tree: Path  # the package, extracted once
    manifest: Manifest
    interpreter: Path
    work: Path
    prefix: list[str]  # the network-isolation argv prefix
    limits: Limits
    mirror: str  # the daemon's PIP_MIRROR_URL in the mirror profile
    environments: Environments | None  # None: no other uv replay to share import and start with


def clone(tree: Path, root: Path) -> None:
    """A replay's own copy of the extracted package.

    Wheels are hard-linked (installers only read them); the other files are copied, since compileall and
    ``uv sync`` write next to them.
    """
    wheels = tree / WHEELS_DIR

    def copy(source: str, target: str) -> object:
        if Path(source).parent == wheels:
            try:
                os.link(source, target)
                return target
            except OSError:
                pass  # another file system: copy
        return shutil.copy2(source, target)

    root.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(tree, root, copy_function=copy)


class _Silences:
    """Follows a step's output: its longest silence and the line before it (the cause of a near-miss)."""

    def __init__(self) -> None:
        self.last = time.monotonic()
        self.line = ""
        self.longest = 0.0
        self.after = ""

    def seen(self, line: str) -> None:
        self.finish()
        self.last, self.line = time.monotonic(), line.strip() or self.line

    def finish(self) -> None:
        if (gap := time.monotonic() - self.last) > self.longest:
            self.longest, self.after = gap, self.line

    def where(self) -> str:
        return f' after "{self.after[:120]}"' if self.after else " before any output"


def timed(
    name: str,
    argv: list[str],
    *,
    cwd: Path,
    env: dict[str, str],
    timeout: float,
    idle_timeout: float | None = None,
    fatal: bool = True,
    update: Update | None = None,
) -> Step:
    """Run one step; with ``idle_timeout``, kill it after that long without output as the daemon does."""
    started = time.monotonic()
    silences = _Silences()

    def on_line(line: str) -> None:
        silences.seen(line)
        if update is not None and line.strip():
            update(f"{name}: {line.strip()[:80]}")

    result = run(argv, cwd=cwd, env=env, timeout=timeout, idle_timeout=idle_timeout, on_line=on_line)
    silences.finish()
    seconds = time.monotonic() - started
    if result.killed == "idle":
        detail = (
            f"killed after {idle_timeout or 0:.0f} s without output{silences.where()}, as the daemon kills a "
            f"silent install (PYTHON_ENV_INIT_TIMEOUT)\n{explain(result)}"
        )
        return Step(name, False, seconds, detail.strip(), fatal)
    if result.killed == "timeout":
        detail = f"killed after {timeout:.0f} s, the daemon's limit for the whole step\n{explain(result)}"
        return Step(name, False, seconds, detail.strip(), fatal)
    warning = ""
    if idle_timeout is not None and silences.longest > idle_timeout * NEAR_MISS:
        warning = (
            f"{name} was silent for {silences.longest:.0f} s{silences.where()}; the daemon kills an install "
            f"after {idle_timeout:.0f} s without output, so a busier host may fail it"
        )
    return Step(name, result.returncode == 0, seconds, explain(result) if result.returncode else "", fatal, warning)


def live_replay(
    context: Replay, profile: str, uv: Path | None, version: str, target: Target, root: Path, update: Update
) -> Check:
    """The daemon's install of the package in ``root`` (a new folder), step by step; stops at the first failure."""
    work, prefix, limits = context.work, context.prefix, context.limits
    clone(context.tree, root)
    cache = work / "uv-cache" / root.name
    # A CPython that uv would fetch (a package's .python-version or requires-python may ask for another) is kept
    # in the work folder, not in this machine's user folders, whose managed CPythons the daemon lacks anyway.
    replay_env = {"UV_PYTHON_INSTALL_DIR": str(work / "uv-python")}
    replay_env |= {} if prefix else {"UV_OFFLINE": "1", "PIP_NO_INDEX": "1"}
    daemon_env = clean_env({"UV_CACHE_DIR": str(cache), "UV_PYTHON_DOWNLOADS": "never", **replay_env})
    steps: list[Step] = []
    if uv is None:
        venv_argv = [str(context.interpreter), "-m", "venv", ".venv"]
    else:
        venv_argv = [str(uv), "venv", ".venv", "--python", str(context.interpreter)]
    update("venv")
    step = timed("venv", [*prefix, *venv_argv], cwd=root, env=daemon_env, timeout=120)
    steps.append(step)
    command = install_command(profile, root, uv, context.mirror)
    if step.ok and requirements_missing(profile, command, root):
        steps.append(Step("install", False, 0.0, "requirements.txt is missing; this daemon version requires it"))
    elif step.ok:
        env = daemon_env if uv is None else {**uv_env(uv, root, cache), **replay_env}
        update("install")
        step = timed(
            "install",
            [*prefix, *command],
            cwd=root,
            env=env,
            timeout=limits.install_timeout,
            idle_timeout=limits.install_idle_timeout,
            update=update,
        )
        steps.append(step)
    if all(s.ok for s in steps):
        python = str(root / ".venv" / "bin" / "python")
        update("compile")
        compile_argv = [*prefix, python, "-m", "compileall", "-q", "-x", r"\.venv|\.uv-cache", "."]
        steps.append(timed("compile", compile_argv, cwd=root, env=daemon_env, timeout=300, fatal=False))
        if uv is None or context.environments is None:
            # Only the pip profile makes its venv with `python -m venv` and pip: no other replay can match it
            # (nor can one when this is the only uv replay).
            steps += _import_and_start(context, root, daemon_env, update)
        else:
            steps += _shared_import_and_start(context, root, daemon_env, update, f"{profile} uv {version}")
    return Check(profile, version, str(target), "live", shown_command(command), tuple(steps))


def _shared_import_and_start(
    context: Replay, root: Path, env: dict[str, str], update: Update, label: str
) -> list[Step]:
    """Import and start, or the result of the replay that ran them on byte-identical installed files."""
    assert context.environments is not None
    owner, result = context.environments.claim(environment_fingerprint(root / ".venv"), label)
    if owner != label:
        update(f"import, start: same installed files as {owner}")
        return [replace(step, seconds=0.0, same_as=owner) for step in result.result()]
    try:
        result.set_result(_import_and_start(context, root, env, update))
    except BaseException as error:
        result.set_exception(error)  # the replays waiting for this one must not hang
        raise
    return result.result()


def _import_and_start(context: Replay, root: Path, env: dict[str, str], update: Update) -> list[Step]:
    prefix, limits = context.prefix, context.limits
    python = str(root / ".venv" / "bin" / "python")
    update("import")
    step = timed("import", [*prefix, python, "-c", "import dify_plugin"], cwd=root, env=env, timeout=120)
    steps = [step]
    if step.ok and limits.start:
        update("start")
        steps.append(start_plugin(root, context.manifest, prefix, env, limits.start_timeout))
    return steps


# Written by uv per install, with a timestamp: they differ between two installs of the same wheels.
_BOOKKEEPING = ("RECORD", "uv_cache.json")


def environment_fingerprint(venv: Path) -> str:
    """What ``import`` and ``start`` depend on in a venv: every installed file's path and bytes, and the Python.

    Left out: the installer's per-install bookkeeping in ``*.dist-info``, and ``__pycache__`` (Python checks a
    ``.pyc`` against its source's mtime and size and recompiles it when they differ, so it never changes what
    runs). Anything else differing (a file, a version, a link) makes another fingerprint.
    """
    digest = hashlib.sha256()
    config = (venv / "pyvenv.cfg").read_text(encoding="utf-8", errors="replace").splitlines()
    digest.update(
        "\n".join(sorted(line for line in config if line.startswith(("home", "include", "version")))).encode()
    )
    for path in sorted((venv / "lib").rglob("*")):
        relative = path.relative_to(venv).as_posix()
        if path.parent.name == "__pycache__" or (path.parent.name.endswith(".dist-info") and path.name in _BOOKKEEPING):
            continue
        digest.update(relative.encode() + b"\0")
        if path.is_symlink():
            digest.update(b"link:" + str(path.readlink()).encode())
        elif path.is_file():
            digest.update(bytes.fromhex(file_sha256(path)))
    return digest.hexdigest()


def requirements_missing(profile: str, command: list[str], root: Path) -> bool:
    """Daemons that use requirements.txt for ``profile`` refuse the package without it, before running anything."""
    return (
        profile in ("pip", "uv-pip", "mirror")
        and "requirements.txt" in command
        and not (root / "requirements.txt").is_file()
    )


def shown_command(command: list[str]) -> str:
    return " ".join(Path(command[0]).name if index == 0 else part for index, part in enumerate(command))


def start_plugin(root: Path, manifest: Manifest, prefix: list[str], env: dict[str, str], timeout: float) -> Step:
    """Start the plugin as the daemon does and wait for its first heartbeat on stdout."""
    started = time.monotonic()
    argv = [*prefix, str(root / ".venv" / "bin" / "python"), "-m", manifest.entrypoint]
    process = spawn(argv, cwd=root, env={**env, "INSTALL_METHOD": "local"}, stdin=subprocess.PIPE)
    lines: queue.Queue[bytes | None] = queue.Queue()
    # stderr is drained as it comes too: a plugin logging more than a pipe holds before its first heartbeat
    # would otherwise block on its next write and be judged silent. Its end is what a failure shows.
    errors_tail: collections.deque[bytes] = collections.deque(maxlen=200)

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)
        lines.put(None)

    def drain() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            errors_tail.append(line)

    readers = [threading.Thread(target=target, daemon=True) for target in (pump, drain)]
    for reader in readers:
        reader.start()
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
            if is_heartbeat(text):
                return Step("start", True, time.monotonic() - started)
    finally:
        kill_group(process)
        process.wait()
        for reader in readers:
            reader.join(timeout=5)  # the group is gone, so its pipes close
        for pipe in (process.stdin, process.stdout, process.stderr):
            if pipe is not None:
                pipe.close()
    cancel.check()  # killed by a stop request: no verdict
    reason = (
        "exited before its first heartbeat"
        if process.returncode is not None and time.monotonic() - started < timeout
        else f"no heartbeat within {timeout:.0f} s"
    )
    errors = b"".join(errors_tail).decode(errors="replace").strip()
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
