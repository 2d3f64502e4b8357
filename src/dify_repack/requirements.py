"""What a plugin declares it needs: pyproject.toml, requirements.txt (read by ``reqfile``) and uv.lock pins."""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.markers import InvalidMarker, Marker
from packaging.requirements import Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from .errors import DependencyError
from .redaction import shown_line, shown_name
from .reqfile import DeclaredPin, HashPin, RequirementsFile, parse_requirement, parse_requirements_file

if sys.version_info >= (3, 11):
    import tomllib as tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

SDK = "dify-plugin"


@dataclass(frozen=True)
class Declared:
    """The dependency set a plugin declares, and where it came from."""

    requirements: tuple[Requirement, ...]
    source: str  # the file the set was read from
    notes: tuple[str, ...] = ()  # what the user should know (files that disagree, ignored options)
    lock_pins: dict[str, str] = field(default_factory=dict)  # canonical name -> version in an existing uv.lock
    has_pyproject_project: bool = False
    added_to_pyproject: tuple[Requirement, ...] = ()  # requirements pyproject.toml must gain to match the set
    # Hard limits for resolution: constraint files, and the exact versions of hash-pinned packages.
    constraints: tuple[Requirement, ...] = ()
    # Every exact pin stated (uv.lock first, then requirements files); ``preferred`` ones steer resolution.
    pins: tuple[DeclaredPin, ...] = ()
    preferred: tuple[DeclaredPin, ...] = ()
    hashes: tuple[HashPin, ...] = ()
    require_hashes: bool = False  # --require-hashes: every shipped package needs a pinned hash
    requires_python: str | None = None  # pyproject.toml's, validated


def read_pyproject(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise DependencyError(f"pyproject.toml: not valid TOML: {exc}") from None


def read_lock_pins(path: Path, notes: list[str] | None = None) -> list[DeclaredPin]:
    """Versions an existing uv.lock chose, to prefer them; the project itself and unparsable entries are skipped.

    A lock that cannot be read only loses its preference (``notes`` says so): the plugin still declares its set.
    """
    notes = [] if notes is None else notes
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        notes.append(f"uv.lock: not valid TOML ({exc}); its versions are not preferred")
        return []
    packages = data.get("package", [])
    if not isinstance(packages, list):
        notes.append("uv.lock: `package` is not a list of tables; its versions are not preferred")
        return []
    pins, skipped = [], 0
    for package in packages:
        source = package.get("source") if isinstance(package, dict) else None
        if not isinstance(source, dict) or "registry" not in source:
            skipped += not isinstance(package, dict)
            continue
        name, version, markers = package.get("name"), package.get("version"), package.get("resolution-markers")
        try:
            if not isinstance(name, str) or not isinstance(version, str):
                raise TypeError(name)
            # A package locked in several versions holds each only where its resolution markers say.
            marker = Marker(" or ".join(f"({m})" for m in markers)) if isinstance(markers, list) and markers else None
            pins.append(DeclaredPin(canonicalize_name(name), str(Version(version)), "uv.lock", marker))
        except (TypeError, InvalidVersion, InvalidMarker):
            skipped += 1
    if skipped:
        notes.append(f"uv.lock: {skipped} malformed package entries skipped; their versions are not preferred")
    return pins


def remote_lock_sources(lock: dict[str, Any]) -> list[str]:
    """The URLs a parsed uv.lock makes ``uv sync --frozen`` fetch: remote registries, git/url sources, files."""
    remote: list[str] = []
    packages = lock.get("package")
    for package in packages if isinstance(packages, list) else []:
        if not isinstance(package, dict):
            continue
        source = package.get("source")
        for kind, value in (source if isinstance(source, dict) else {}).items():
            if kind in ("git", "url") or (kind == "registry" and "://" in str(value)):
                remote.append(str(value))
        files = [package.get("sdist"), *(package.get("wheels") or [])]
        remote += [str(f["url"]) for f in files if isinstance(f, dict) and "://" in str(f.get("url", ""))]
    return remote


def declared_dependencies(root: Path) -> Declared:
    """The one dependency set to resolve: pyproject.toml's when it declares any, else requirements.txt's."""
    pyproject_path = _confined(root / "pyproject.toml", root)
    requirements_path = _confined(root / "requirements.txt", root)
    pyproject = read_pyproject(pyproject_path) if pyproject_path.is_file() else {}
    project = pyproject.get("project")
    from_pyproject = _pyproject_dependencies(project) if isinstance(project, dict) else None
    file_notes: list[str] = []
    from_file = (
        parse_requirements_file(requirements_path, root=root, notes=file_notes) if requirements_path.is_file() else None
    )
    from_requirements = from_file.requirements if from_file is not None else None
    lock = _confined(root / "uv.lock", root)
    lock_pins = read_lock_pins(lock, file_notes) if lock.is_file() else []
    agrees = (
        from_pyproject is None or from_requirements is None or not _disagreements(from_pyproject, from_requirements)
    )
    file_pins = from_file.pins if from_file is not None else []
    if from_pyproject:
        source, requirements = "pyproject.toml", from_pyproject
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
    elif from_requirements is not None:
        source, requirements, notes, added = "requirements.txt", from_requirements, file_notes, ()
    else:
        raise DependencyError(
            "neither requirements.txt nor pyproject.toml [project].dependencies declares the plugin's dependencies",
            tip="a Python plugin lists at least dify_plugin in requirements.txt or pyproject.toml",
        )
    return Declared(
        tuple(requirements),
        source,
        tuple(notes + _missing_sdk(requirements)),
        lock_pins={pin.name: pin.version for pin in lock_pins if pin.marker is None},
        has_pyproject_project=isinstance(project, dict),
        added_to_pyproject=added,
        constraints=tuple(_uv_constraints(pyproject) + _hash_constraints(from_file)),
        pins=tuple(lock_pins + file_pins),
        # uv.lock first: daemons 0.5.5+ install from it. A requirements.txt contradicting pyproject.toml is stale.
        preferred=tuple(lock_pins + (file_pins if agrees else [])),
        hashes=tuple(from_file.hashes) if from_file is not None else (),
        require_hashes=from_file is not None and from_file.require_hashes,
        requires_python=str(project["requires-python"])
        if isinstance(project, dict) and "requires-python" in project
        else None,
    )


def check_requires_python(requires: str, python: str) -> None:
    """Refuse a requires-python that excludes the daemon's CPython: uv sync would refuse to install."""
    if not SpecifierSet(requires).contains(f"{python}.0"):
        raise DependencyError(
            f"pyproject.toml requires-python {requires} excludes CPython {python}, which the daemon always uses",
            tip=f"allow {python} in requires-python",
        )


def _confined(path: Path, root: Path) -> Path:
    """``path`` when it stays inside the plugin once links are resolved; a link leading out is refused unread."""
    if path.is_symlink() and not path.resolve().is_relative_to(root.resolve()):
        raise DependencyError(f"{path.name}: leads outside the plugin folder; refusing to read it")
    return path


def _pyproject_dependencies(project: dict[str, Any]) -> list[Requirement]:
    """``[project].dependencies`` (and a valid ``requires-python``), or a DependencyError naming the entry."""
    requires = project.get("requires-python")
    if requires is not None:
        try:
            SpecifierSet(requires if isinstance(requires, str) else repr(requires))
        except InvalidSpecifier:
            raise DependencyError(
                f"pyproject.toml: requires-python {shown_line(str(requires))} is not a version specifier",
                tip='write it like ">=3.12"',
            ) from None
    dependencies = project.get("dependencies", [])
    if not isinstance(dependencies, list):
        raise DependencyError(
            f"pyproject.toml: [project].dependencies is a {type(dependencies).__name__}, not a list of requirements",
            tip='write it as dependencies = ["dify_plugin==0.7.4", ...]',
        )
    where = "pyproject.toml [project].dependencies"
    for index, text in enumerate(dependencies):
        if not isinstance(text, str):
            raise DependencyError(f"{where}[{index}]: a {type(text).__name__}, not a requirement string")
    found = []
    for index, text in enumerate(dependencies):
        requirement = parse_requirement(text, f"{where}[{index}]")
        own = own_extras(requirement, project)
        found += [requirement] if own is None else own
    return found


def own_extras(
    requirement: Requirement, project: Mapping[str, Any], seen: frozenset[str] = frozenset()
) -> list[Requirement] | None:
    """What ``requirement`` brings when it names the project itself (``demo[llm]`` among demo's dependencies):
    its extras' requirements, nested ones too, under its marker, as uv installs them; None for another package.

    The daemon installs no extras, and ``pack`` removes [project.optional-dependencies]: these take its place.
    """
    name = project.get("name")
    if not isinstance(name, str) or canonicalize_name(requirement.name) != canonicalize_name(name):
        return None
    table = project.get("optional-dependencies")
    extras = {canonicalize_name(str(key)): value for key, value in table.items()} if isinstance(table, Mapping) else {}
    found: list[Requirement] = []
    for extra in sorted({canonicalize_name(extra) for extra in requirement.extras} - seen):
        entries = extras.get(extra)
        for index, text in enumerate(entries if isinstance(entries, list) else []):
            where = f"pyproject.toml [project.optional-dependencies].{extra}[{index}]"
            if not isinstance(text, str):
                raise DependencyError(f"{where}: a {type(text).__name__}, not a requirement string")
            inner = parse_requirement(str(text), where)
            if requirement.marker is not None:
                both = f"({inner.marker}) and ({requirement.marker})" if inner.marker else str(requirement.marker)
                inner.marker = Marker(both)
            nested = own_extras(inner, project, seen | {extra})
            found += [inner] if nested is None else nested
    return found


def _uv_constraints(pyproject: dict[str, Any]) -> list[Requirement]:
    """``[tool.uv] constraint-dependencies``: honoured while resolving, as uv would."""
    tool = pyproject.get("tool")
    uv = tool.get("uv") if isinstance(tool, dict) else None
    entries = uv.get("constraint-dependencies") if isinstance(uv, dict) else None
    if entries is None:
        return []
    where = "pyproject.toml [tool.uv].constraint-dependencies"
    if not isinstance(entries, list) or not all(isinstance(entry, str) for entry in entries):
        raise DependencyError(f"{where}: not a list of requirement strings")
    return [parse_requirement(entry, f"{where}[{index}]") for index, entry in enumerate(entries)]


def _hash_constraints(parsed: RequirementsFile | None) -> list[Requirement]:
    """Constraint files' lines, and the exact version of every hash-pinned package: hashes name those files only."""
    if parsed is None:
        return []
    pinned = [
        Requirement(f"{pin.name}=={pin.version}" + (f"; {pin.marker}" if pin.marker else "")) for pin in parsed.hashes
    ]
    return parsed.constraints + pinned


def _missing_sdk(requirements: list[Requirement]) -> list[str]:
    if any(canonicalize_name(requirement.name) == SDK for requirement in requirements):
        return []
    return ["no dify_plugin requirement: the daemon's `import dify_plugin` check will fail"]


def _sdk_from_elsewhere(
    dependencies: list[Requirement], pyproject: dict[str, Any], requirements: list[Requirement]
) -> tuple[Requirement, str] | None:
    """The SDK requirement when a plugin declares it in a dependency group, an extra or requirements.txt only."""
    if any(canonicalize_name(requirement.name) == SDK for requirement in dependencies):
        return None
    project = pyproject.get("project")
    elsewhere = (
        ("dependency group", "[dependency-groups]", pyproject.get("dependency-groups")),
        (
            "extra",
            "[project.optional-dependencies]",
            project.get("optional-dependencies") if isinstance(project, dict) else None,
        ),
    )
    for kind, table, groups in elsewhere:
        for group, entries in groups.items() if isinstance(groups, dict) else []:
            for entry in entries if isinstance(entries, list) else []:
                if isinstance(entry, str) and re.match(r"dify[-_.]plugin\b", entry, re.IGNORECASE):
                    where = f"pyproject.toml {table}.{shown_name(str(group))}"
                    return parse_requirement(entry, where), f"{kind} {shown_line(group)}"
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
