"""Versions and hashes the plugin stated, kept: preferred while resolving, checked against what is shipped.

A plugin states versions in uv.lock and in ``==`` lines of requirements.txt (often an export of its lock, the
only pin record when ``.difyignore`` leaves uv.lock out), and file hashes with ``--hash``. Resolution prefers
the versions; every shipped version that differs is listed; a shipped file must match its pinned hashes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from packaging.markers import UndefinedComparison, UndefinedEnvironmentName
from packaging.version import InvalidVersion, Version

from .errors import DependencyError
from .reqfile import DeclaredPin, HashPin
from .requirements import Declared
from .targets import Target
from .wheels import Selected


@dataclass(frozen=True)
class PinChange:
    """A package shipped in another version than the plugin pinned (``where``: uv.lock or FILE:LINE)."""

    name: str
    declared: str
    shipped: str  # versions joined with ", " when the targets differ
    where: str


def holds(pin: DeclaredPin | HashPin, target: Target) -> bool:
    """Whether a pin applies on ``target`` (its marker, e.g. a Python- or platform-specific line, is true there)."""
    try:
        return target.evaluate(pin.marker)
    except (InvalidVersion, UndefinedComparison, UndefinedEnvironmentName):
        return False  # a marker this target cannot evaluate pins nothing there


def preferences_for(pins: Sequence[DeclaredPin], target: Target) -> dict[str, str]:
    """The versions to prefer on ``target``: the first pin of each package that applies there."""
    chosen: dict[str, str] = {}
    for pin in pins:
        if pin.name not in chosen and holds(pin, target):
            chosen[pin.name] = pin.version
    return chosen


def compare_pins(pins: Sequence[DeclaredPin], selected: Sequence[Selected]) -> tuple[int, tuple[PinChange, ...]]:
    """How many declared pins name a shipped package where they apply, and those shipped in another version."""
    compared, changes = 0, []
    for pin in pins:
        versions = sorted(
            {
                item.pin.version
                for item in selected
                if item.pin.name == pin.name and any(holds(pin, target) for target in item.files)
            },
            key=_version_key,
        )
        if not versions:
            continue  # not shipped where the pin applies (a dev tool, another platform): nothing to compare
        compared += 1
        if [_version_key(v) for v in versions] != [_version_key(pin.version)]:
            changes.append(PinChange(pin.name, pin.version, ", ".join(versions), pin.where))
    return compared, tuple(changes)


def _version_key(text: str) -> Version | str:
    try:
        return Version(text)
    except InvalidVersion:
        return text


def check_hashes(declared: Declared, selected: Sequence[Selected]) -> None:
    """Every shipped file of a hash-pinned package must match one of its hashes (DependencyError naming it).

    A wheel built here from an sdist is checked through the sdist, as pip checks what it downloads.
    """
    for item in selected:
        pins = [pin for pin in declared.hashes if pin.name == item.pin.name and any(holds(pin, t) for t in item.files)]
        if not pins:
            if declared.require_hashes:
                raise DependencyError(
                    f"{item.pin.name} {item.pin.version} is shipped but has no --hash, and requirements.txt "
                    "says --require-hashes",
                    tip="pin every package with its hashes (uv pip compile --generate-hashes), or drop --require-hashes",
                )
            continue
        allowed = frozenset().union(*(pin.hashes for pin in pins))
        algorithms = {"sha256"} | {value.split(":", 1)[0] for value in allowed}
        if item.built:
            sdist = item.pin.sdist
            found = {f"sha256:{sdist.sha256.lower()}"} if sdist is not None and sdist.sha256 else set()
            shipped = [(f"its sdist {sdist.filename if sdist else ''}", found)]
        else:
            ordered = sorted(item.files.items(), key=lambda entry: str(entry[0]))
            shipped = [(f"{path.name} ({target})", _digests(path, algorithms)) for target, path in ordered]
        for label, digests in shipped:
            if not digests & allowed:
                sha256 = next((digest for digest in sorted(digests) if digest.startswith("sha256:")), "unknown")
                raise DependencyError(
                    f"{item.pin.name} {item.pin.version}: {label} matches none of the --hash values at "
                    f"{pins[0].where} (it is {sha256})",
                    tip="the hashes name other files (another version or platform?): regenerate them for Linux "
                    "with uv pip compile --generate-hashes --python-platform linux, or remove them",
                )


def _digests(path: Path, algorithms: set[str]) -> set[str]:
    """``alg:hex`` of the file for each algorithm, in one pass."""
    hashers = {name: hashlib.new(name) for name in algorithms}
    with path.open("rb") as handle:
        while chunk := handle.read(1024 * 1024):
            for hasher in hashers.values():
                hasher.update(chunk)
    return {f"{name}:{hasher.hexdigest()}" for name, hasher in hashers.items()}
