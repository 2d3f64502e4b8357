"""Finding the tools the work runs on: our own uv, other uv versions for verification, and CPythons.

The daemon's CPython is looked for first of all (``require_python``): ``uv lock`` and the replays need it, and
a host without it must hear so in the first second, not after every download. When none is found, uv's own
settings decide whether uv may install a managed one (``UV_PYTHON_DOWNLOADS``, ``UV_PYTHON_INSTALL_MIRROR``,
``UV_PYTHON_INSTALL_DIR``: runner.clean_env passes them through).
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

from packaging.version import InvalidVersion, Version

from .credentials import Indexes, certificate_error, is_certificate_error
from .errors import EnvironmentProblem, NetworkError
from .runner import clean_env, run

# The uv range this release is tested with; it matches the `uv` requirement in pyproject.toml.
UV_MINIMUM = Version("0.13.0")
UV_BELOW = Version("0.14")


def _version_of(binary: str) -> Version | None:
    result = run([binary, "--version"], timeout=30)
    match = re.search(r"uv (\d+\.\d+\.\d+)", result.stdout)
    if result.returncode != 0 or not match:
        return None
    try:
        return Version(match.group(1))
    except InvalidVersion:
        return None


_lock = threading.Lock()


def uv_bin() -> str:
    """Our uv: the one the ``uv`` dependency installed, else ``$UV``, else PATH; its version checked once."""
    with _lock:  # resolutions run in threads; the first call must happen once
        return _uv_bin()


@functools.cache
def _uv_bin() -> str:
    candidates: list[str] = []
    try:
        from uv import find_uv_bin

        candidates.append(find_uv_bin())
    except (ImportError, FileNotFoundError):
        pass
    candidates += [os.environ.get("UV", ""), shutil.which("uv") or ""]
    for candidate in filter(None, candidates):
        version = _version_of(candidate)
        if version is not None and UV_MINIMUM <= version < UV_BELOW:
            return candidate
    raise EnvironmentProblem(
        f"no uv {UV_MINIMUM}–<{UV_BELOW} found",
        tip=f"pip install 'uv>={UV_MINIMUM},<{UV_BELOW}' (it is a dependency of dify-repack)",
    )


@functools.cache
def own_uv_version() -> str:
    """The version of ``uv_bin()``, asked once."""
    return str(_version_of(uv_bin()))


def fetch_uv(version: str, cache_dir: Path, indexes: Indexes | None = None) -> Path:
    """A uv binary of ``version`` ("latest" for the newest), installed once into ``cache_dir/uv/``.

    ``indexes`` (with their logins) point at a private mirror where the public index is out of reach.
    """
    indexes = indexes or Indexes()
    own = uv_bin()
    if version == own_uv_version():
        return Path(own)
    if version != "latest":
        cached = cache_dir / "uv" / version / "bin" / "uv"
        if cached.is_file():
            return cached
    (cache_dir / "uv").mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=cache_dir / "uv"))
    spec = "uv" if version == "latest" else f"uv=={version}"
    try:
        result = run(
            [
                own,
                "pip",
                "install",
                "--quiet",
                "--target",
                staging,
                "--python-version",
                "3.12",
                spec,
                *indexes.uv_args(),
            ],
            env=clean_env({"UV_CACHE_DIR": str(cache_dir / "uv-cache"), **indexes.uv_env()}),
            timeout=300,
        )
        binary = staging / "bin" / "uv"
        if result.returncode != 0 or not binary.is_file():
            if is_certificate_error(result.output):
                raise certificate_error(", ".join(indexes.public_urls()), result.output)
            raise NetworkError(f"could not fetch {spec} for verification: {result.tail(3)}")
        final = cache_dir / "uv" / str(_version_of(str(binary)) or version)
        with contextlib.suppress(OSError):  # another run put the same version there first
            staging.rename(final)
    finally:  # failed or interrupted (even while asking the new uv its version): no half-installed uv stays
        shutil.rmtree(staging, ignore_errors=True)
    return final / "bin" / "uv"


def _python_version(binary: Path) -> str | None:
    result = run([binary, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], timeout=30)
    return result.stdout.strip() if result.returncode == 0 else None


def find_python(version: str) -> Path | None:
    with _lock:
        return _find_python(version)


@functools.cache
def _find_python(version: str) -> Path | None:
    """A CPython ``version`` on this host: PATH, then pyenv's versions, then uv's discovery; None if absent.

    The cheap places come first (uv's discovery costs a third of a second where pyenv shims stand in PATH);
    pyenv shims are skipped on purpose: they fail for versions that are installed but not selected.
    """
    candidates = [
        Path(directory) / f"python{version}"
        for directory in os.environ.get("PATH", "").split(os.pathsep)
        if directory and "shims" not in Path(directory).parts
    ]
    pyenv_root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    candidates += sorted((pyenv_root / "versions").glob(f"{version}.*/bin/python{version}"), reverse=True)
    for candidate in candidates:
        if candidate.is_file() and _python_version(candidate) == version:
            return candidate
    found = run([_uv_bin(), "python", "find", "--no-python-downloads", version], timeout=60)
    if found.returncode == 0 and found.stdout.strip():
        discovered = Path(found.stdout.strip())
        if _python_version(discovered) == version:
            return discovered
    return None


def python_downloads_allowed() -> bool:
    """Whether uv may fetch a managed CPython on its own, as ``UV_PYTHON_DOWNLOADS`` says (default: yes)."""
    return os.environ.get("UV_PYTHON_DOWNLOADS", "automatic").strip().lower() not in ("never", "manual", "false", "0")


_install_lock = threading.Lock()


def provide_python(version: str, announce: Callable[[str], None] | None = None) -> Path | None:
    """A CPython ``version``: found on this host, else installed by uv when its settings allow; None otherwise.

    Raises EnvironmentProblem (or NetworkError for a certificate) when uv tried to install one and failed.
    """
    with _install_lock:  # plugins of a batch ask at once; one install is enough
        found = find_python(version)
        if found is not None or not python_downloads_allowed():
            return found
        if announce is not None:
            announce(f"no CPython {version} on this host: uv installs a managed one")
        result = run([uv_bin(), "python", "install", version], timeout=600)
        if result.returncode != 0:
            if is_certificate_error(result.output):
                raise certificate_error(f"uv python install {version}", result.output)
            raise EnvironmentProblem(
                f"no CPython {version} on this host, and `uv python install {version}` failed: {result.tail(1)}",
                tip=_python_tip(version),
            )
        _find_python.cache_clear()
        return find_python(version)


def require_python(version: str, announce: Callable[[str], None] | None = None) -> Path:
    """``provide_python``, or an error with the fix before any work is done."""
    found = provide_python(version, announce)
    if found is None:
        why = (
            f"UV_PYTHON_DOWNLOADS={os.environ.get('UV_PYTHON_DOWNLOADS', '')} keeps uv from installing one"
            if not python_downloads_allowed()
            else "uv installed one that it does not find (UV_PYTHON_PREFERENCE?)"
        )
        raise EnvironmentProblem(
            f"no CPython {version} on this host (PATH, pyenv, uv-managed), and {why}; "
            "uv lock and the install replays need it",
            tip=_python_tip(version),
        )
    return found


def _python_tip(version: str) -> str:
    return (
        f"install it with `uv python install {version}` (UV_PYTHON_INSTALL_MIRROR names a mirror), "
        f"`pyenv install {version}` or the OS package, then run again"
    )
