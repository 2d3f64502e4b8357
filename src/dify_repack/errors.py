"""The one exception hierarchy: every error a user can cause or meet carries a message that names the fix.

The CLI turns each class into its exit code (``ExitCode``); library users catch ``DifyRepackError``.
"""

from __future__ import annotations

import enum
import errno
import signal
from pathlib import Path

from .redaction import redact


class ExitCode(enum.IntEnum):
    OK = 0
    FAILURE = 1  # an unexpected bug: reported with a traceback hint
    USAGE = 2  # bad command-line arguments (click's own code too)
    BAD_PACKAGE = 3  # the input plugin or package cannot be read or is unsafe
    DEPENDENCY = 4  # a requirement is invalid, cannot be resolved or has no wheel for a target
    BUILD = 5  # an sdist could not be built into a wheel
    NETWORK = 6  # an index, marketplace or download could not be reached or answered an error
    VERIFY = 7  # the package does not install offline (verify found a failing profile)
    SIGNATURE = 8  # a key or signature problem
    ENVIRONMENT = 9  # the host lacks something the job needs (uv, a Python, network isolation)
    PARTIAL = 10  # a batch where some plugins failed and others succeeded
    INTERRUPTED = 130  # Ctrl-C (128 + SIGINT), as shells report it
    TERMINATED = 143  # SIGTERM (128 + SIGTERM)


class DifyRepackError(Exception):
    """Base class: ``str(error)`` is a one-line message; ``tip`` says what to do about it.

    Both are redacted here, so no message can carry a password from a URL it quotes.
    """

    exit_code = ExitCode.FAILURE

    def __init__(self, message: str, *, tip: str | None = None) -> None:
        message = redact(message)
        super().__init__(message)
        self.message = message
        self.tip = redact(tip) if tip is not None else None


class UsageError(DifyRepackError):
    """The arguments contradict each other or name something that does not exist."""

    exit_code = ExitCode.USAGE


class PackageError(DifyRepackError):
    """The plugin (zip or directory) is unreadable, unsafe, or lacks what Dify requires."""

    exit_code = ExitCode.BAD_PACKAGE


class DependencyError(DifyRepackError):
    """A dependency declaration is invalid, cannot be resolved, or has no wheel for a target."""

    exit_code = ExitCode.DEPENDENCY


class BuildError(DifyRepackError):
    """An sdist could not be turned into a wheel usable on the target."""

    exit_code = ExitCode.BUILD


class NetworkError(DifyRepackError):
    """A download or index request failed (unreachable, HTTP error, hash mismatch)."""

    exit_code = ExitCode.NETWORK


class StatusError(NetworkError):
    """A server answered with an HTTP error; ``status`` lets a caller word a 404 for what it asked for."""

    def __init__(self, message: str, *, url: str, status: int) -> None:
        super().__init__(message)
        self.url = url
        self.status = status


class VerificationError(DifyRepackError):
    """A replayed daemon install failed: the package would not install offline."""

    exit_code = ExitCode.VERIFY


class SignatureError(DifyRepackError):
    """A key is in the wrong format, or a signature does not verify."""

    exit_code = ExitCode.SIGNATURE


class EnvironmentProblem(DifyRepackError):
    """The host lacks a tool the job needs (uv, a CPython, namespaces for network isolation), or a folder the job
    writes to is read-only, unwritable or full."""

    exit_code = ExitCode.ENVIRONMENT

    @classmethod
    def cannot_write(
        cls, folder: Path | None, error: OSError, *, elsewhere: str = "-o, --cache-dir, TMPDIR"
    ) -> EnvironmentProblem:
        """A write that failed in ``folder``: full, read-only or not ours, said in words with the way out.

        ``elsewhere`` names the setting that moves the work to another folder.
        """
        where = f"{folder}: " if folder is not None else ""
        reason = error.strerror or str(error)
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            tip = "free some space there, or point the run at another folder"
        elif error.errno == errno.EROFS:
            tip = "that file system is mounted read-only; point the run at another folder"
        else:
            tip = "make it writable for this user, or point the run at another folder"
        return cls(f"{where}cannot write there: {reason}", tip=f"{tip} ({elsewhere})")


class Interrupted(DifyRepackError):
    """The user (Ctrl-C) or the system (SIGTERM) asked the run to stop; raised by ``cancel.check``."""

    exit_code = ExitCode.INTERRUPTED

    def __init__(self, signum: int = signal.SIGINT) -> None:
        super().__init__("interrupted")
        self.signum = signum
        if signum == signal.SIGTERM:
            self.exit_code = ExitCode.TERMINATED
