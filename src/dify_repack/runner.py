"""The one subprocess wrapper: argv lists only, a scrubbed environment, output streamed, children stoppable.

Every child runs in its own process group, registered here, so that an interrupt (``cancel.request``) or a
watchdog kills the whole tree (uv's build backends, pip's subprocesses), not only the process we started.
The command line is logged on ``dify_repack.commands`` at INFO and each output line at DEBUG: ``-v`` shows them.
"""

from __future__ import annotations

import codecs
import logging
import os
import queue
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

from . import cancel
from .errors import EnvironmentProblem
from .redaction import redact

commands = logging.getLogger("dify_repack.commands")

# Settings a user or the machine may have for pip/uv must not leak into what we resolve, build or verify:
# the daemon never sees them, so a package that only works with them is broken.
_SCRUBBED_PREFIXES = ("PIP_", "UV_", "PYTHON", "VIRTUAL_ENV", "CONDA_")
# Except the uv settings that concern only this machine: how its uv gets a CPython, trusts servers and times
# out. They change how the work is done, never what the package holds (indexes, find-links, resolution, offline
# mode and the cache stay ours). Index logins are no such setting: they go only to the commands that talk to
# an index (credentials.Indexes.uv_env), never to a replay that runs the plugin's own code.
UV_MACHINE_SETTINGS = frozenset(
    {
        "UV_PYTHON_DOWNLOADS",
        "UV_PYTHON_INSTALL_MIRROR",
        "UV_PYPY_INSTALL_MIRROR",
        "UV_GRAALPY_INSTALL_MIRROR",
        "UV_PYTHON_DOWNLOADS_JSON_URL",
        "UV_PYTHON_INSTALL_DIR",
        "UV_PYTHON_PREFERENCE",
        "UV_MANAGED_PYTHON",
        "UV_NO_MANAGED_PYTHON",
        "UV_SYSTEM_CERTS",
        "UV_NATIVE_TLS",
        "UV_KEYRING_PROVIDER",
        "UV_HTTP_TIMEOUT",
        "UV_REQUEST_TIMEOUT",
        "UV_HTTP_CONNECT_TIMEOUT",
        "UV_HTTP_RETRIES",
        "UV_CONCURRENT_DOWNLOADS",
        "UV_CONCURRENT_BUILDS",
        "UV_CONCURRENT_INSTALLS",
    }
)


_POLL = 0.05  # seconds between looks at the clock and the cancel flag while a child is quiet
_LONGEST_LINE = 64 * 1024

Killed = Literal["idle", "timeout", "cancelled"]


def _kept(name: str) -> bool:
    return not name.startswith(_SCRUBBED_PREFIXES) or name in UV_MACHINE_SETTINGS


def clean_env(extra: Mapping[str, str] | None = None, *, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The current environment without pip/uv/Python settings (but uv's machine settings), plus ``extra``.

    ``PIP_CONFIG_FILE=os.devnull`` makes pip ignore every pip.conf (global, user and site). uv reads only
    ``SSL_CERT_FILE``, so a ``REQUESTS_CA_BUNDLE`` alone is handed to it under that name: httpx trusts the same.
    """
    source = os.environ if base is None else base
    env = {key: value for key, value in source.items() if _kept(key)}
    if not env.get("SSL_CERT_FILE") and env.get("REQUESTS_CA_BUNDLE"):
        env["SSL_CERT_FILE"] = env["REQUESTS_CA_BUNDLE"]
    env["PIP_CONFIG_FILE"] = os.devnull
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    if extra:
        env.update(extra)
    return env


@dataclass(frozen=True)
class Completed:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    longest_silence: float = 0.0  # the longest stretch in seconds without a byte of output, start to exit
    # Why we killed it: "idle" (idle_timeout), "timeout"; a cancelled run raises ``Interrupted`` instead.
    killed: Killed | None = None

    @property
    def output(self) -> str:
        return (self.stdout + "\n" + self.stderr).strip()

    def tail(self, lines: int = 15) -> str:
        """The last lines of the output, where tools put the reason they failed."""
        return "\n".join(self.output.splitlines()[-lines:])


# Children started here and not yet reaped, by pid (= process group id). Dict operations are atomic under the
# GIL, so the signal handler may walk a snapshot while worker threads add and remove entries.
_children: dict[int, subprocess.Popen[bytes]] = {}


def kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL ``process`` and everything it started. Call it before reaping: a reaped pid may be reused."""
    if process.returncode is not None:
        return
    killpg = getattr(os, "killpg", None)
    try:
        if killpg is None:  # Windows: no process groups
            process.kill()
        else:
            killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def kill_children() -> None:
    """Kill every process group started here that is still running (the interrupt path)."""
    for process in tuple(_children.values()):
        kill_group(process)


cancel.on_request(kill_children)


def _start(
    args: tuple[str, ...],
    cwd: Path | None,
    env: Mapping[str, str] | None,
    stdin: int | IO[bytes] | None,
    stdout: int | IO[bytes] | None,
    stderr: int | IO[bytes] | None,
) -> subprocess.Popen[bytes]:
    commands.info("%s%s", redact(shlex.join(args)), f"  (in {cwd})" if cwd else "")
    cancel.check()
    process = subprocess.Popen(
        args,
        cwd=cwd,
        env=dict(env) if env is not None else clean_env(),
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        start_new_session=True,
    )
    for pid, known in tuple(_children.items()):
        if known.returncode is not None:
            _children.pop(pid, None)
    _children[process.pid] = process
    if cancel.cancelled():  # the signal came while Popen ran, before the registration
        kill_group(process)
    return process


def spawn(
    argv: Sequence[str | os.PathLike[str]],
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    stdin: int | IO[bytes] | None = subprocess.DEVNULL,
    stdout: int | IO[bytes] | None = subprocess.PIPE,
    stderr: int | IO[bytes] | None = subprocess.PIPE,
) -> subprocess.Popen[bytes]:
    """Start a long-lived child in its own registered process group; stop it with ``kill_group``."""
    return _start(tuple(os.fspath(arg) for arg in argv), cwd, env, stdin, stdout, stderr)


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    idle_timeout: float | None = None,
    on_line: Callable[[str], None] | None = None,
) -> Completed:
    """Run ``argv`` and capture its output; never raises for a non-zero exit (callers decide what it means).

    ``env`` defaults to ``clean_env()``. ``on_line`` gets each output line (stdout and stderr, redacted) as it
    comes, in the calling thread. After ``timeout`` seconds, or ``idle_timeout`` seconds without any output, the
    process group is killed and the result has return code -9, ``killed`` set and a note in stderr. A stop
    request kills it too and raises ``errors.Interrupted``. The child's TMPDIR (TEMP, TMP) is a folder of its own
    inside the given one, removed when it ends.
    """
    args = tuple(os.fspath(arg) for arg in argv)
    env = dict(env) if env is not None else clean_env()
    with _private_temp(env.get("TMPDIR")) as temp:
        # A killed child cannot clean up after itself (python -m venv leaves ensurepip's folder behind).
        env.update({"TMPDIR": temp, "TEMP": temp, "TMP": temp})
        try:
            process = _start(args, cwd, env, subprocess.DEVNULL, subprocess.PIPE, subprocess.PIPE)
        except FileNotFoundError:
            return Completed(args, 127, "", f"{args[0]}: command not found")
        try:
            result = _supervise(process, args, timeout, idle_timeout, on_line)
        finally:
            kill_group(process)  # anything the child left behind in its group
            process.wait()
            _children.pop(process.pid, None)
            for pipe in (process.stdout, process.stderr):
                if pipe is not None:
                    pipe.close()
    cancel.check()
    return result


@contextmanager
def _private_temp(parent: str | None) -> Iterator[str]:
    try:
        folder = tempfile.mkdtemp(prefix="dify-repack-run-", dir=parent)
    except OSError as exc:
        raise EnvironmentProblem.cannot_write(
            Path(parent or tempfile.gettempdir()), exc, elsewhere="TMPDIR=DIR"
        ) from None
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _supervise(
    process: subprocess.Popen[bytes],
    args: tuple[str, ...],
    timeout: float | None,
    idle_timeout: float | None,
    on_line: Callable[[str], None] | None,
) -> Completed:
    chunks: queue.SimpleQueue[tuple[int, bytes]] = queue.SimpleQueue()
    streams = [process.stdout, process.stderr]
    for index, pipe in enumerate(streams):
        assert pipe is not None
        threading.Thread(target=_pump, args=(index, pipe.fileno(), chunks), daemon=True).start()
    texts: list[list[str]] = [[], []]
    partial = ["", ""]
    decoders = [codecs.getincrementaldecoder("utf-8")("replace") for _ in streams]
    started = last = time.monotonic()
    longest = 0.0
    killed: Killed | None = None
    open_streams = len(streams)

    def emit(line: str) -> None:
        line = redact(line.rstrip("\r"))
        commands.debug("%s", line)
        if on_line is not None:
            on_line(line)

    exited = False
    while open_streams or not exited:
        try:
            index, data = chunks.get(timeout=_POLL)
        except queue.Empty:
            pass
        else:
            now = time.monotonic()
            longest, last = max(longest, now - last), now
            text = decoders[index].decode(data, final=not data)
            texts[index].append(text)
            *lines, partial[index] = (partial[index] + text).split("\n")
            # At the end, or when a line grows without bound (progress redrawn with \r): out with it as it is.
            if not data or len(partial[index]) > _LONGEST_LINE:
                lines.append(partial[index])
                partial[index] = ""
            if not data:
                open_streams -= 1
            for line in lines:
                if line or data:
                    emit(line)
        now = time.monotonic()
        if killed is None:
            if cancel.cancelled():
                killed = "cancelled"
            elif timeout is not None and now - started > timeout:
                killed = "timeout"
            elif idle_timeout is not None and now - last > idle_timeout:
                killed = "idle"
            if killed is not None:
                kill_group(process)
        exited = _exited(process)
        if exited:
            # Whatever it started and left running would hold the pipes open: the group goes with its leader.
            kill_group(process)
    longest = max(longest, time.monotonic() - last)
    returncode = process.wait()
    # Universal newlines, as text-mode pipes give them.
    stdout, stderr = (redact("".join(parts).replace("\r\n", "\n").replace("\r", "\n")) for parts in texts)
    if killed == "timeout":
        stderr += f"\ntimed out after {timeout:.0f} s"
    elif killed == "idle":
        stderr += f"\nkilled after {idle_timeout:.0f} s without output"
    return Completed(args, -9 if killed else returncode, stdout, stderr, longest, killed)


def _pump(index: int, fd: int, chunks: queue.SimpleQueue[tuple[int, bytes]]) -> None:
    """Forward whatever the child writes, as it comes; an empty chunk says the stream ended."""
    while True:
        try:
            data = os.read(fd, 65536)
        except OSError:
            data = b""
        chunks.put((index, data))
        if not data:
            return


def _exited(process: subprocess.Popen[bytes]) -> bool:
    """Whether the leader has exited, without reaping it (its pid stays ours, so killing its group is safe)."""
    waitid = getattr(os, "waitid", None)
    if waitid is None:
        return process.poll() is not None
    try:
        return waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True
