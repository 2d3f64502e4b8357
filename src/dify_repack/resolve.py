"""Resolution for a target, not for the host: ``uv pip compile --python-platform`` with a PEP 751 lock output.

uv evaluates markers for the target and lists only target-compatible wheels with URL, size and sha256
(UV-PIP-FACTS); pip download would evaluate markers for the host.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from packaging.requirements import Requirement
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
from packaging.version import InvalidVersion

from .credentials import DEFAULT_INDEX as DEFAULT_INDEX
from .credentials import Indexes as Indexes
from .credentials import certificate_error, is_certificate_error
from .errors import DependencyError, NetworkError
from .files import write_atomically
from .redaction import shown_line
from .requirements import tomllib
from .runner import clean_env, run
from .targets import Target
from .uvbin import find_python, uv_bin

# A file name becomes a cache entry with a temporary name around it: past 200 bytes it would exceed the 255 bytes
# file systems allow. Real wheel names, platform tags and all, stay well under 150.
MAX_FILENAME = 200
BROKEN_FILE_TIP = "the index serves a broken file for this version: pin another version, or ask the index's keepers"


@dataclass(frozen=True)
class Artifact:
    """A file the index offers: where it is and what its bytes must hash to."""

    url: str
    filename: str
    sha256: str | None
    size: int | None


@dataclass(frozen=True)
class Pin:
    name: str  # canonical
    version: str
    wheels: tuple[Artifact, ...]  # only those the target can install
    sdist: Artifact | None

    def best_wheel(self, target: Target) -> Artifact | None:
        ranked = [(rank, wheel) for wheel in self.wheels if (rank := target.wheel_rank(wheel.filename)) is not None]
        return min(ranked, key=lambda item: item[0])[1] if ranked else None


# A resolution is reused for a day: a second run of the same plugin then needs no index at all, while a
# run a day later still picks up new releases. --refresh resolves again at once.
RESOLUTION_MAX_AGE = 24 * 3600.0


@dataclass(frozen=True)
class ResolutionCache:
    """Resolutions stored as JSON under ``root``, keyed by everything that decides their outcome."""

    root: Path
    max_age: float = RESOLUTION_MAX_AGE
    refresh: bool = False

    def key(
        self,
        requirements: Sequence[Requirement],
        target: Target,
        indexes: Indexes,
        preferences: dict[str, str],
        constraints: Sequence[Requirement] = (),
    ) -> str:
        material = {
            "requirements": sorted(str(requirement) for requirement in requirements),
            "preferences": sorted(preferences.items()),
            "constraints": sorted(str(constraint) for constraint in constraints),
            "target": [target.python, target.arch, list(target.glibc)],
            "indexes": list(indexes.public_urls()),  # a changed password must not cost a resolution
            "uv": uv_bin(),
        }
        return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()

    def load(self, key: str) -> list[Pin] | None:
        path = self.root / f"{key}.json"
        if self.refresh or not path.is_file() or time.time() - path.stat().st_mtime > self.max_age:
            return None
        try:
            return [_pin_from_json(entry) for entry in json.loads(path.read_text(encoding="utf-8"))]
        except (ValueError, KeyError, TypeError):
            return None  # a damaged entry is only a cache miss

    def store(self, key: str, pins: list[Pin]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        write_atomically(self.root / f"{key}.json", json.dumps([asdict(pin) for pin in pins]))


def _pin_from_json(entry: dict[str, Any]) -> Pin:
    sdist = Artifact(**entry["sdist"]) if entry["sdist"] else None
    return Pin(entry["name"], entry["version"], tuple(Artifact(**wheel) for wheel in entry["wheels"]), sdist)


def resolve(
    requirements: Sequence[Requirement],
    target: Target,
    *,
    indexes: Indexes,
    preferences: dict[str, str] | None = None,
    constraints: Sequence[Requirement] = (),
    uv_cache: Path | None = None,
    cache: ResolutionCache | None = None,
) -> list[Pin]:
    """Pin every package ``requirements`` need on ``target``, preferring ``preferences`` (e.g. uv.lock pins).

    Preferences are tried as constraints first; when they conflict with the declared ranges, the set is
    resolved afresh (a stale lock must not make a valid plugin fail). ``constraints`` (constraint files,
    hash-pinned versions) always hold.
    """
    preferences = preferences or {}
    refresh = cache is not None and cache.refresh
    key = cache.key(requirements, target, indexes, preferences, constraints) if cache else ""
    if cache and (cached := cache.load(key)) is not None:
        return cached
    pins: list[Pin] | None = None
    if preferences:
        with contextlib.suppress(DependencyError):  # the preferences conflict: resolve without them
            pins = _compile(requirements, target, indexes, constraints, preferences, uv_cache, refresh)
    if pins is None:
        pins = _compile(requirements, target, indexes, constraints, {}, uv_cache, refresh)
    if cache:
        cache.store(key, pins)
    return pins


def _compile(
    requirements: Sequence[Requirement],
    target: Target,
    indexes: Indexes,
    constraints: Sequence[Requirement],
    preferences: dict[str, str],
    uv_cache: Path | None,
    refresh: bool = False,
) -> list[Pin]:
    with tempfile.TemporaryDirectory(prefix="dify-repack-resolve-") as temp:
        work = Path(temp)
        (work / "requirements.in").write_text("".join(f"{req}\n" for req in requirements), encoding="utf-8")
        # Constraints never carry extras (uv refuses them): only the name, versions and marker matter.
        lines = [f"{constraint.name}{constraint.specifier}{_marker_suffix(constraint)}\n" for constraint in constraints]
        lines += [f"{name}=={version}\n" for name, version in sorted(preferences.items())]
        (work / "constraints.txt").write_text("".join(lines), encoding="utf-8")
        # An interpreter of the target's version builds sdist metadata faithfully; any one will do otherwise,
        # and naming one stops uv from trying to download a managed Python.
        interpreter = find_python(target.python) or Path(sys.executable)
        argv: list[str | Path] = [
            uv_bin(),
            "pip",
            "compile",
            "requirements.in",
            "--constraints",
            "constraints.txt",
            "--python",
            interpreter,
            "--python-version",
            target.python,
            "--python-platform",
            target.uv_platform,
            "--format",
            "pylock.toml",
            "--output-file",
            "pylock.toml",
            "--no-header",
            "--quiet",
            *indexes.uv_args(),
            *(["--refresh"] if refresh else []),  # uv's own HTTP cache must not answer for the index either
        ]
        env = clean_env({**({"UV_CACHE_DIR": str(uv_cache)} if uv_cache else {}), **indexes.uv_env()})
        result = run(argv, cwd=work, env=env, timeout=900)
        if result.returncode != 0:
            raise _explain_failure(result.output, target, indexes)
        data = tomllib.loads((work / "pylock.toml").read_text(encoding="utf-8"))
    return [_pin(package, target) for package in data.get("packages", [])]


def _marker_suffix(requirement: Requirement) -> str:
    return f" ; {requirement.marker}" if requirement.marker else ""


def _explain_failure(output: str, target: Target, indexes: Indexes) -> Exception:
    lines = [line.strip() for line in output.splitlines() if line.strip() and not line.startswith("warning")]
    text = " ".join(lines)
    where = ", ".join(indexes.public_urls())
    if is_certificate_error(text):
        return certificate_error(where, output)
    if denied := re.search(r"\b40[13] (?:Unauthorized|Forbidden)\b", text):
        return NetworkError(
            f"the package index {where} refused access ({denied.group(0)}): the login is missing or wrong",
            tip="give it in the URL as USER:PASSWORD@ before the host, in ~/.netrc (or the file $NETRC names), "
            "or in a keyring",
        )
    if re.search(r"Failed to fetch|error sending request|dns error|Connect|tcp connect", text):
        return NetworkError(
            f"cannot reach the package index {where}: {lines[-1] if lines else text}",
            tip="check the network/proxy, or point --index-url at a reachable mirror",
        )
    summary = "; ".join(line.lstrip("╰─▶ ").rstrip(".") for line in lines if not line.startswith(("hint", "help")))
    if broken := re.search(r"Failed to (?:download|extract archive|read metadata)[^;]*`([^`]+)`", text):
        return DependencyError(
            f"the package index {where} serves a broken file for {broken.group(1)}: {summary}",
            tip=BROKEN_FILE_TIP,
        )
    return DependencyError(
        f"dependencies cannot be resolved for {target}: {summary}",
        tip="loosen the pins named above, or check that every package publishes wheels or an sdist for Linux",
    )


def _artifact(entry: dict[str, Any], name: str) -> Artifact:
    url = str(entry.get("url") or entry.get("path") or "")
    # Indexes may add a query (signed links) and percent-encode the name ("torch-2.5.1%2Bcpu-..."): the
    # file name is the last path segment, decoded. It becomes a path in the cache and the package.
    filename = unquote(urlsplit(url).path.rsplit("/", 1)[-1])
    if (
        filename in ("", ".", "..")
        or any(char in filename for char in "/\\\0")
        or len(filename.encode()) > MAX_FILENAME
    ):
        raise DependencyError(
            f"{name}: the index links a file with an unusable name ({shown_line(filename)})",
            tip=f"check the index; a file name must be one path segment of at most {MAX_FILENAME} bytes",
        )
    hashes = entry.get("hashes") or {}
    size = entry.get("size")
    return Artifact(url, filename, hashes.get("sha256"), int(size) if size else None)


def _wheel_for(artifact: Artifact, name: str, target: Target) -> bool:
    """Whether ``artifact`` is a wheel of ``name`` that ``target`` installs; unparsable names are not."""
    try:
        return target.wheel_rank(artifact.filename) is not None and (
            canonicalize_name(parse_wheel_filename(artifact.filename)[0]) == name
        )
    except (InvalidWheelFilename, InvalidVersion):
        return False


def _pin(package: dict[str, Any], target: Target) -> Pin:
    name = canonicalize_name(package["name"])
    if "version" not in package or package.get("vcs") or package.get("archive") or package.get("directory"):
        raise DependencyError(f"{name}: direct URL / VCS / path dependencies cannot be packaged for {target}")
    candidates = (_artifact(entry, name) for entry in package.get("wheels", []))
    wheels = tuple(artifact for artifact in candidates if _wheel_for(artifact, name, target))
    sdist = _artifact(package["sdist"], name) if package.get("sdist") else None
    return Pin(name, str(package["version"]), wheels, sdist)
