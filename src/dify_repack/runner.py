"""The one subprocess wrapper: argv lists only, a scrubbed environment, output kept for error messages."""

from __future__ import annotations

import logging
import os
import re
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .redaction import redact

logger = logging.getLogger(__name__)

# Settings a user or the machine may have for pip/uv must not leak into what we resolve, build or verify:
# the daemon never sees them, so a package that only works with them is broken.
_SCRUBBED_PREFIXES = ("PIP_", "UV_", "PYTHON", "VIRTUAL_ENV", "CONDA_")
# Except the uv settings that concern only this machine: how its uv gets a CPython, trusts servers, logs in and
# times out. They change how the work is done, never what the package holds (indexes, find-links, resolution,
# offline mode and the cache stay ours).
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
_UV_INDEX_LOGIN = re.compile(r"UV_INDEX_\w+_(?:USERNAME|PASSWORD)")


def _kept(name: str) -> bool:
    if not name.startswith(_SCRUBBED_PREFIXES):
        return True
    return name in UV_MACHINE_SETTINGS or bool(_UV_INDEX_LOGIN.fullmatch(name))


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

    @property
    def output(self) -> str:
        return (self.stdout + "\n" + self.stderr).strip()

    def tail(self, lines: int = 15) -> str:
        """The last lines of the output, where tools put the reason they failed."""
        return "\n".join(self.output.splitlines()[-lines:])


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
) -> Completed:
    """Run ``argv`` and capture its output; never raises for a non-zero exit (callers decide what it means).

    ``env`` defaults to ``clean_env()``. A timeout is reported as return code -9 with a note in stderr.
    """
    args = tuple(os.fspath(arg) for arg in argv)
    logger.debug("run: %s (cwd=%s)", redact(" ".join(args)), cwd)
    try:
        proc = subprocess.run(
            args,
            cwd=cwd,
            env=dict(env) if env is not None else clean_env(),
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        stdout = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        stderr = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        return Completed(args, -9, stdout, stderr + f"\ntimed out after {timeout:.0f} s")
    except FileNotFoundError:
        return Completed(args, 127, "", f"{args[0]}: command not found")
    return Completed(args, proc.returncode, redact(proc.stdout), redact(proc.stderr))
