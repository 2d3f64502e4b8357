"""A static check: offline resolution for a platform this host cannot run (arm64 on x86_64, say).

It proves the right wheels are inside the package without running them: ``uv pip install --dry-run`` for the
requirements path, ``uv export`` of the (frozen) lock and then that dry run for ``uv sync``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .offline import WHEELS_DIR
from .redaction import shown_line
from .replay import Check, Step, Update, clone, timed
from .requirements import remote_lock_sources, tomllib
from .runner import clean_env
from .targets import Target
from .uvbin import find_python, own_uv_version, uv_bin


def static_profile(profile: str) -> str:
    # Without a live interpreter the distinction that matters is which file drives the install.
    return "requirements" if profile in ("pip", "uv-pip", "mirror") else profile


def static_key(profile: str, tree: Path) -> tuple[str, bool]:
    """What a static check of ``profile`` runs on this package: the requirements path, or a (frozen) sync."""
    if profile == "requirements" or not (tree / "pyproject.toml").is_file():
        return "requirements", False
    return "sync", profile == "uv-sync-frozen" and (tree / "uv.lock").is_file()


def static_check(
    tree: Path, profile: str, target: Target, root: Path, prefix: list[str], update: Update, mirror: str | None = None
) -> Check:
    """Offline resolution for ``target``'s platform: proves the right wheels are inside without running them.

    A slim package resolves against its mirror, served inside the namespace (``prefix``)."""
    clone(tree, root)
    uv = uv_bin()
    cache = root.parent / "uv-cache" / root.name
    offline = {} if mirror else {"UV_OFFLINE": "1"}
    env = clean_env({"UV_CACHE_DIR": str(cache), "UV_PYTHON_DOWNLOADS": "never", **offline})
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
    kind, frozen = static_key(profile, root)
    if kind == "requirements":
        if not (root / "requirements.txt").is_file():
            steps.append(Step("resolve", False, 0.0, "requirements.txt is missing"))
        else:
            update("resolve")
            step = timed("resolve", [*prefix, *install, "-r", "requirements.txt"], cwd=root, env=env, timeout=300)
            steps.append(step)
        return _static_result(profile, target, "uv pip install --dry-run", steps)
    if frozen and not mirror and (remote := _remote_lock_source(root / "uv.lock")):
        steps.append(
            Step(
                "lock",
                False,
                0.0,
                f"uv.lock points to a remote index ({shown_line(remote)}): --frozen installs go online",
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
        update("lock")
        step = timed("lock", [*prefix, *export], cwd=root, env=env, timeout=300)
        steps.append(step)
        if step.ok:
            wheels = ["--index-url", mirror] if mirror else ["--no-index", "--find-links", WHEELS_DIR]
            update("resolve")
            resolve_argv = [*prefix, *install, *wheels, "-r", ".static-requirements.txt"]
            steps.append(timed("resolve", resolve_argv, cwd=root, env=env, timeout=300))
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
