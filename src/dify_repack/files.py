"""Files written whole or not at all, hashed in chunks, and the folders short-lived work goes in: what every
writer and checker here shares."""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from . import cancel
from .errors import EnvironmentProblem, PackageError

CHUNK = 1024 * 1024


@contextmanager
def atomic_output(target: Path) -> Iterator[Path]:
    """A temporary path beside ``target`` that replaces it only when the block succeeds."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, temp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    except OSError as exc:  # a parent that is a file (/dev/null/x), read-only, or not there to create (/proc)
        raise EnvironmentProblem.cannot_write(target.parent, exc, elsewhere="-o") from None
    os.close(handle)
    temp = Path(temp_name)
    try:
        yield temp
        cancel.check()  # an interrupted run never leaves its output, however far it got
        temp.chmod(0o644)
        temp.replace(target)
    finally:
        temp.unlink(missing_ok=True)


def write_atomically(path: Path, data: bytes | str, *, mode: int = 0o644, durable: bool = False) -> None:
    """Write ``data`` under a unique temporary name beside ``path``, then rename it over ``path``.

    Readers (other threads, other runs) see the old content or the new, never a part; a failed write leaves
    nothing behind. The file is created 0600 and gets ``mode`` only once complete. ``durable`` syncs it to disk
    first, for what must survive a power cut.
    """
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    temp = Path(temp_name)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data.encode() if isinstance(data, str) else data)
            if durable:
                out.flush()
                os.fsync(out.fileno())
        temp.chmod(mode)
        temp.replace(path)
    finally:
        temp.unlink(missing_ok=True)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def read_bounded(path: Path, limit: int, shown: str) -> bytes:
    """A small file's bytes; a file larger than ``limit`` (or unreadable) is a PackageError naming ``shown``.

    Never reads more than ``limit + 1`` bytes, whatever the file (a link to a huge one, a device).
    """
    try:
        with path.open("rb") as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        raise PackageError(f"{shown}: cannot read it ({exc.strerror})") from None
    if len(data) > limit:
        raise PackageError(f"{shown}: larger than {limit} bytes; this file is never that large in a real plugin")
    return data


RAM_FOLDER = Path("/dev/shm")
TEMP_VARIABLES = ("TMPDIR", "TEMP", "TMP")  # what tempfile reads: a user who set one chose the folder


def scratch_parent(needed: int) -> Path | None:
    """Where short-lived work of about ``needed`` bytes goes: RAM (``/dev/shm``) when it has room, else None.

    Replays create and delete tens of thousands of small files (venvs, uv caches); in RAM that costs a fifth
    of the CPU time it costs on a journaling disk. None means the system's temporary folder: when ``TMPDIR``
    (or ``TEMP``, ``TMP``, which Python reads too) chooses it, when there is no ``/dev/shm``, when it is mounted ``noexec`` (a venv runs its scripts and
    maps native libraries from there) or read-only, or when ``needed`` would take more than its free space
    or half of the memory still available.
    """
    if any(os.environ.get(name) for name in TEMP_VARIABLES) or not hasattr(os, "ST_NOEXEC"):
        return None
    try:
        stat = os.statvfs(RAM_FOLDER)
        available = _memory_available()
    except OSError:
        return None
    if stat.f_flag & (os.ST_NOEXEC | os.ST_RDONLY) or not os.access(RAM_FOLDER, os.W_OK | os.X_OK):
        return None
    if needed > stat.f_bavail * stat.f_frsize or needed > available // 2:
        return None
    return RAM_FOLDER


# Where the kernel says how much memory is left, for the machine and for this process's control group.
PROC = Path("/proc")
CGROUP = Path("/sys/fs/cgroup")


def _memory_available() -> int:
    """The memory still available to this process: the machine's, or less where its control group (a container,
    a CI job) has a limit, which files in RAM count against: above it the kernel kills the run."""
    with (PROC / "meminfo").open(encoding="ascii") as meminfo:
        found = [int(line.split()[1]) * 1024 for line in meminfo if line.startswith("MemAvailable:")]
    if not found:
        raise OSError("no MemAvailable in /proc/meminfo")
    return min(found + list(_cgroup_headroom()))


def _cgroup_headroom() -> Iterator[int]:
    """Limit minus use of this process's memory control group and each one above it (cgroup v2, or v1's memory
    controller); in a container the path may name the host's view, so the mounted root is read too."""
    try:
        lines = (PROC / "self" / "cgroup").read_text(encoding="utf-8").splitlines()
    except OSError:
        return  # no control groups: the machine's figure stands
    for _, controllers, path in (line.split(":", 2) for line in lines if line.count(":") >= 2):
        if controllers == "":
            base, limit, used = CGROUP, "memory.max", "memory.current"
        elif "memory" in controllers.split(","):
            base, limit, used = CGROUP / "memory", "memory.limit_in_bytes", "memory.usage_in_bytes"
        else:
            continue
        folder = base / path.lstrip("/")
        for group in (folder, *folder.parents[: len(folder.parents) - len(base.parents)]):
            headroom = _headroom(group / limit, group / used)
            if headroom is not None:
                yield headroom


def _headroom(limit: Path, used: Path) -> int | None:
    try:
        return int(limit.read_text(encoding="ascii")) - int(used.read_text(encoding="ascii"))
    except (OSError, ValueError):
        return None  # no such group in this view, or no limit ("max")


# Held locked by the run using a work folder: a folder whose lock is free was left by a run that ended without
# removing it (killed, or ended by the last resort after an interrupt).
_IN_USE = ".in-use"


@contextmanager
def scratch_folder(prefix: str, needed: int) -> Iterator[Path]:
    """A new temporary folder for short-lived work of about ``needed`` bytes, in RAM when ``scratch_parent`` says so.

    Folders of the same ``prefix`` that earlier runs left behind are removed first: in RAM they would hold
    memory until the next reboot.
    """
    parent = scratch_parent(needed)
    _remove_abandoned(Path(parent or tempfile.gettempdir()), prefix)
    with tempfile.TemporaryDirectory(prefix=prefix, dir=parent) as name:
        folder = Path(name)
        # Locked before it takes its name, so another run never finds the lock free on a folder that is starting.
        with (folder / f"{_IN_USE}.new").open("wb") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released by the kernel however this process ends
            (folder / f"{_IN_USE}.new").rename(folder / _IN_USE)
            yield folder


def _remove_abandoned(parent: Path, prefix: str) -> None:
    for folder in parent.glob(f"{prefix}*"):
        try:
            with (folder / _IN_USE).open("rb") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                shutil.rmtree(folder, ignore_errors=True)
        except OSError:
            continue  # in use, another user's, just created (no lock yet), or gone meanwhile
