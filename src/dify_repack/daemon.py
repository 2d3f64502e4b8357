"""What each plugin-daemon version does to install a plugin (DAEMON-FACTS §4): profiles, commands, limits.

Kept free of heavy imports: the CLI reads these constants to describe its options.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from .redaction import shown_name, shown_names

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
# The daemon's watchdogs on the install: killed after PYTHON_ENV_INIT_TIMEOUT (120 s) without output,
# and after 10 minutes in any case.
INSTALL_IDLE_TIMEOUT = 120.0
INSTALL_TIMEOUT = 600.0
START_TIMEOUT = 120.0  # the plugin must send its first heartbeat within 120 s


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


def uv_env(uv: Path, root: Path, cache: Path) -> dict[str, str]:
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


def is_heartbeat(text: str) -> bool:
    """The plugin's first heartbeat line on stdout is what the daemon waits for."""
    try:
        message = json.loads(text)
    except (ValueError, RecursionError):
        return False
    return isinstance(message, dict) and message.get("event") == "heartbeat"


def directory_entries_rejected(names: Sequence[str]) -> str:
    """Why the daemon rejects a package with directory entries: its checksum read fails on them (DAEMON-FACTS §1)."""
    kind = "directory entry" if len(names) == 1 else "directory entries"
    return (
        f"{kind} {shown_names(names)}: the daemon's checksum read fails "
        f'("read {shown_name(names[0].rstrip("/"))}: is a directory") and it rejects the upload; '
        "write file entries only (dify-repack pack does)"
    )
