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
from .errors import EnvironmentProblem

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


RAM_FOLDER = Path("/dev/shm")


def scratch_parent(needed: int) -> Path | None:
    """Where short-lived work of about ``needed`` bytes goes: RAM (``/dev/shm``) when it has room, else None.

    Replays create and delete tens of thousands of small files (venvs, uv caches); in RAM that costs a fifth
    of the CPU time it costs on a journaling disk. None means the system's temporary folder: when ``TMPDIR``
    chooses it, when there is no ``/dev/shm``, when it is mounted ``noexec`` (a venv runs its scripts and
    maps native libraries from there) or read-only, or when ``needed`` would take more than its free space
    or half of the memory still available.
    """
    if os.environ.get("TMPDIR") or not hasattr(os, "ST_NOEXEC"):
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


def _memory_available() -> int:
    with Path("/proc/meminfo").open(encoding="ascii") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise OSError("no MemAvailable in /proc/meminfo")


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
    with tempfile.TemporaryDirectory(prefix=prefix, dir=parent) as name, (Path(name) / _IN_USE).open("wb") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released by the kernel however this process ends
        yield Path(name)


def _remove_abandoned(parent: Path, prefix: str) -> None:
    for folder in parent.glob(f"{prefix}*"):
        try:
            with (folder / _IN_USE).open("rb") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                shutil.rmtree(folder, ignore_errors=True)
        except OSError:
            continue  # in use, another user's, not yet locked by a run that is starting, or gone meanwhile
