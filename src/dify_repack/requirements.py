"""What a plugin declares it needs: pyproject.toml, requirements.txt (with -r, markers, hashes) and uv.lock pins."""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from .errors import DependencyError

if sys.version_info >= (3, 11):
    import tomllib as tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

SDK = "dify-plugin"
_INCLUDE = re.compile(r"^(-r|--requirement|-c|--constraint)(\s+|=)(?P<path>\S+)$")
# Options that configure where pip looks: the package replaces them all with its own wheels.
_IGNORED_OPTION = re.compile(
    r"^(-i|-f|--index-url|--extra-index-url|--find-links|--no-index|--trusted-host|--pre|"
    r"--prefer-binary|--only-binary|--no-binary|--use-feature|--no-build-isolation)\b"
)
_INDEX_OPTION = re.compile(r"^(-i|--index-url|--extra-index-url)\b")
_INLINE_OPTION = re.compile(r"\s+--(hash|config-settings|global-option|install-option)[=\s]\S+")


@dataclass(frozen=True)
class Declared:
    """The dependency set a plugin declares, and where it came from."""

    requirements: tuple[Requirement, ...]
    source: str  # the file the set was read from
    notes: tuple[str, ...] = ()  # what the user should know (files that disagree, ignored options)
    lock_pins: dict[str, str] = field(default_factory=dict)  # canonical name -> version in an existing uv.lock
    has_pyproject_project: bool = False
    added_to_pyproject: tuple[Requirement, ...] = ()  # requirements pyproject.toml must gain to match the set


def read_requirements_file(
    path: Path, *, root: Path, notes: list[str] | None = None, _seen: frozenset[Path] = frozenset()
) -> list[Requirement]:
    """Parse a pip requirements file; invalid lines raise DependencyError naming file and line.

    Index options are not followed (the package installs from its own wheels); ``notes`` learns of them.
    """
    shown = path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)
    if path.resolve() in _seen:
        raise DependencyError(f"{shown}: includes itself (-r loop)")
    if not path.is_file():
        raise DependencyError(f"{shown}: no such requirements file")
    requirements: list[Requirement] = []
    for lineno, line in logical_lines(path.read_text(encoding="utf-8", errors="replace")):
        where = f"{shown}:{lineno}"
        include = _INCLUDE.match(line)
        if include:
            if line.startswith(("-c", "--constraint")):
                continue  # constraints narrow versions; the resolver picks within the plugin's own pins anyway
            nested = path.parent / include.group("path")
            requirements += read_requirements_file(nested, root=root, notes=notes, _seen=_seen | {path.resolve()})
            continue
        if _IGNORED_OPTION.match(line):
            if notes is not None and _INDEX_OPTION.match(line):
                notes.append(f"{where}: {line} is not used to resolve; give it to dify-repack as --index-url")
            continue
        if line.startswith(("-e", "--editable")):
            raise DependencyError(
                f"{where}: editable requirement {line!r} cannot be packaged",
                tip="list the package by name and version",
            )
        if line.startswith("-"):
            raise DependencyError(f"{where}: unsupported requirements-file option {line.split()[0]!r}")
        requirements.append(parse_requirement(_INLINE_OPTION.sub("", line), where))
    return requirements


def logical_lines(text: str) -> list[tuple[int, str]]:
    """Lines with comments removed and backslash continuations joined, numbered by where they start."""
    result: list[tuple[int, str]] = []
    pending, start = "", 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = re.sub(r"(^|\s)#.*$", "", raw).rstrip()
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = (pending + line).strip()
        pending = ""
        if line:
            result.append((start, line))
    if pending.strip():
        result.append((start, pending.strip()))
    return result


_VERSION_AFTER_OPERATOR = re.compile(r"(===|==|~=|!=|<=|>=|<|>)\s*(?P<version>[^\s,;]+)")


def _is_version(text: str) -> bool:
    try:
        Version(text.removesuffix(".*"))
    except InvalidVersion:
        return False
    return True


def parse_requirement(text: str, where: str) -> Requirement:
    try:
        requirement = Requirement(text)
    except InvalidRequirement as exc:
        reason = str(exc).splitlines()[0]
        # packaging's parser error for a bad version ("Expected semicolon ...") hides the actual mistake.
        versions = (match.group("version") for match in _VERSION_AFTER_OPERATOR.finditer(text))
        bad = next((version for version in versions if not _is_version(version)), None)
        if bad is not None:
            reason = f"{bad!r} is not a valid version"
        raise DependencyError(
            f"{where}: invalid requirement {text!r}: {reason}",
            tip="fix the line (a version looks like 1.2.3, e.g. dify_plugin==0.7.4)",
        ) from None
    if requirement.url:
        raise DependencyError(
            f"{where}: {requirement.name} is a direct URL requirement ({requirement.url}); it cannot be resolved from an index",
            tip="publish the package to an index (a private one works with --index-url) and require it by version",
        )
    return requirement


def read_pyproject(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise DependencyError(f"pyproject.toml: not valid TOML: {exc}") from None


def read_lock_pins(path: Path) -> dict[str, str]:
    """Versions an existing uv.lock chose, to prefer them; the project itself and unparsable entries are skipped."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError):
        return {}
    pins: dict[str, str] = {}
    for package in data.get("package", []):
        source = package.get("source", {})
        if not isinstance(source, dict) or "registry" not in source:
            continue
        try:
            pins[canonicalize_name(package["name"])] = str(Version(package["version"]))
        except (KeyError, InvalidVersion):
            continue
    return pins


def remote_lock_sources(lock: dict[str, Any]) -> list[str]:
    """The URLs a parsed uv.lock makes ``uv sync --frozen`` fetch: remote registries, git/url sources, files."""
    remote: list[str] = []
    packages = lock.get("package")
    for package in packages if isinstance(packages, list) else []:
        source = package.get("source")
        for kind, value in (source if isinstance(source, dict) else {}).items():
            if kind in ("git", "url") or (kind == "registry" and "://" in str(value)):
                remote.append(str(value))
        files = [package.get("sdist"), *(package.get("wheels") or [])]
        remote += [str(f["url"]) for f in files if isinstance(f, dict) and "://" in str(f.get("url", ""))]
    return remote


def declared_dependencies(root: Path) -> Declared:
    """The one dependency set to resolve: pyproject.toml's when it declares any, else requirements.txt's."""
    pyproject_path, requirements_path = root / "pyproject.toml", root / "requirements.txt"
    pyproject = read_pyproject(pyproject_path) if pyproject_path.is_file() else {}
    project = pyproject.get("project")
    from_pyproject: list[Requirement] | None = None
    if isinstance(project, dict) and project.get("dependencies"):
        from_pyproject = [
            parse_requirement(str(text), f"pyproject.toml [project].dependencies[{index}]")
            for index, text in enumerate(project["dependencies"])
        ]
    file_notes: list[str] = []
    from_requirements = (
        read_requirements_file(requirements_path, root=root, notes=file_notes) if requirements_path.is_file() else None
    )
    lock = root / "uv.lock"
    pins = read_lock_pins(lock) if lock.is_file() else {}
    has_project = isinstance(project, dict)
    if from_pyproject is not None:
        notes = _disagreements(from_pyproject, from_requirements) if from_requirements is not None else []
        notes += file_notes
        added: tuple[Requirement, ...] = ()
        found = _sdk_from_elsewhere(from_pyproject, pyproject, from_requirements or [])
        if found is not None:
            requirement, where = found
            added = (requirement,)
            from_pyproject.append(requirement)
            notes.append(
                f"{requirement.name} is only in {where}, not in [project].dependencies: added {requirement} there, "
                "since `uv sync` installs only [project].dependencies and the daemon imports dify_plugin"
            )
        notes += _missing_sdk(from_pyproject)
        return Declared(tuple(from_pyproject), "pyproject.toml", tuple(notes), pins, has_project, added)
    if from_requirements is not None:
        notes = file_notes + _missing_sdk(from_requirements)
        return Declared(tuple(from_requirements), "requirements.txt", tuple(notes), pins, has_project)
    raise DependencyError(
        f"{root}: neither requirements.txt nor pyproject.toml [project].dependencies declares the dependencies",
        tip="a Python plugin lists at least dify_plugin in requirements.txt or pyproject.toml",
    )


def _missing_sdk(requirements: list[Requirement]) -> list[str]:
    if any(canonicalize_name(requirement.name) == SDK for requirement in requirements):
        return []
    return ["no dify_plugin requirement: the daemon's `import dify_plugin` check will fail"]


def _sdk_from_elsewhere(
    dependencies: list[Requirement], pyproject: dict[str, Any], requirements: list[Requirement]
) -> tuple[Requirement, str] | None:
    """The SDK requirement when a plugin declares it in a dependency group or requirements.txt only."""
    if any(canonicalize_name(requirement.name) == SDK for requirement in dependencies):
        return None
    groups = pyproject.get("dependency-groups")
    for group, entries in groups.items() if isinstance(groups, dict) else []:
        for entry in entries if isinstance(entries, list) else []:
            if isinstance(entry, str) and re.match(r"dify[-_.]plugin\b", entry, re.IGNORECASE):
                return parse_requirement(
                    entry, f"pyproject.toml [dependency-groups].{group}"
                ), f"dependency group {group!r}"
    for requirement in requirements:
        if canonicalize_name(requirement.name) == SDK:
            return requirement, "requirements.txt"
    return None


def _disagreements(pyproject: list[Requirement], requirements: list[Requirement]) -> list[str]:
    """Lines telling where requirements.txt contradicts pyproject.toml (which current daemons read)."""
    wanted = {canonicalize_name(req.name): req for req in pyproject}
    notes = []
    for req in requirements:
        other = wanted.get(canonicalize_name(req.name))
        if other is None:
            continue
        pinned = [spec.version for spec in req.specifier if spec.operator == "=="]
        # An exact pin within pyproject's range is a lock-style file agreeing; other ranges must match exactly.
        if pinned and not other.specifier.contains(pinned[0], prereleases=True):
            notes.append(f"requirements.txt pins {req.name}=={pinned[0]} but pyproject.toml asks {other}")
        elif not pinned and req.specifier != other.specifier:
            notes.append(f"requirements.txt asks {req} but pyproject.toml asks {other}")
    listed = {canonicalize_name(req.name) for req in requirements}
    notes += [
        f"requirements.txt lacks {req}, which pyproject.toml asks" for name, req in wanted.items() if name not in listed
    ]
    if notes:
        notes.append("resolved from pyproject.toml (what daemons 0.5.3+ read); both files now pin that one set")
    return notes
