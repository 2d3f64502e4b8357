"""What a plugin declares it needs: pyproject.toml, requirements.txt (with -r, markers, hashes) and uv.lock pins."""

from __future__ import annotations

import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.markers import InvalidMarker, Marker
from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from .errors import DependencyError

if sys.version_info >= (3, 11):
    import tomllib as tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

SDK = "dify-plugin"
# Long options pip accepts in requirement files that pull in another file; optparse also takes any unique
# prefix (``--constr``), so a prefix counts as the option: it is then confined like the full spelling.
_INCLUDES = {"--requirement": "requirement", "--constraint": "constraint"}
_SHORT_INCLUDES = {"-r": "requirement", "-c": "constraint"}
# Options that configure where pip looks: the package replaces them all with its own wheels.
_IGNORED_OPTION = re.compile(
    r"^(-i|-f|--index-url|--extra-index-url|--find-links|--no-index|--trusted-host|--pre|"
    r"--prefer-binary|--only-binary|--no-binary|--use-feature|--no-build-isolation)\b"
)
_INDEX_OPTION = re.compile(r"^(-i|--index-url|--extra-index-url)\b")
# Per-requirement options that only steer a build; dropped, as the package ships built wheels.
_BUILD_OPTIONS = ("--config-settings", "--global-option", "--install-option")
# pip's --hash algorithms, with the hex length of their digests.
HASH_ALGORITHMS = {"sha256": 64, "sha384": 96, "sha512": 128}
# A line from a plugin is shown at most this long: enough to recognise it, never a whole file.
_SHOWN_CHARS = 120


@dataclass(frozen=True)
class DeclaredPin:
    """An exact version the plugin stated, and where: ``uv.lock`` or ``requirements.txt:LINE``."""

    name: str  # canonical
    version: str
    where: str
    marker: Marker | None = None  # the pin holds only where this is true (a platform- or Python-specific line)


@dataclass(frozen=True)
class HashPin:
    """``--hash`` values for one package: the file shipped for it must match one of them."""

    name: str  # canonical
    version: str
    hashes: frozenset[str]  # "sha256:<hex>" ...
    where: str
    marker: Marker | None = None


@dataclass
class RequirementsFile:
    """What a requirements file (and the files it includes) declares."""

    requirements: list[Requirement] = field(default_factory=list)
    constraints: list[Requirement] = field(default_factory=list)  # from -c files: narrow versions, add nothing
    pins: list[DeclaredPin] = field(default_factory=list)
    hashes: list[HashPin] = field(default_factory=list)
    require_hashes: bool = False


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


def shown_line(text: str) -> str:
    """A line of a plugin's file for a message: quoted, control characters escaped, length bounded."""
    return repr(text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + "…")


def read_requirements_file(path: Path, *, root: Path, notes: list[str] | None = None) -> list[Requirement]:
    """The requirements of a pip requirements file (see ``parse_requirements_file``)."""
    return parse_requirements_file(path, root=root, notes=notes).requirements


def parse_requirements_file(path: Path, *, root: Path, notes: list[str] | None = None) -> RequirementsFile:
    """Parse a pip requirements file and what it includes; invalid lines raise DependencyError naming file and line.

    Includes (``-r``/``-c`` in every spelling pip accepts) must stay inside ``root`` once symbolic links are
    resolved: a file outside it is never opened, so its content cannot leak into messages or resolution.
    Index options are not followed (the package installs from its own wheels); ``notes`` learns of them.
    """
    result = RequirementsFile()
    _read_into(result, path, root=root.resolve(), shown=_shown(path, root), notes=notes, kind="requirement")
    return result


def _shown(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else path.name


def _read_into(
    result: RequirementsFile,
    path: Path,
    *,
    root: Path,
    shown: str,
    notes: list[str] | None,
    kind: str,
    seen: frozenset[Path] = frozenset(),
) -> None:
    real = path.resolve()
    if not real.is_relative_to(root):
        raise DependencyError(f"{shown}: leads outside the plugin folder; refusing to read it")
    if real in seen:
        raise DependencyError(f"{shown}: includes itself (-r loop)")
    if not real.is_file():
        raise DependencyError(f"{shown}: no such requirements file")
    # utf-8-sig: pip drops a byte order mark, and so must the first requirement's name.
    for lineno, line in logical_lines(real.read_text(encoding="utf-8-sig", errors="replace")):
        where = f"{shown}:{lineno}"
        if line.startswith("-"):
            include = _include(line, where)
            if include is None:
                _option(result, line, where, notes)
                continue
            nested_kind, target = include
            nested = _confine(nested_kind, target, real.parent, root, where)
            # A constraint file's requirements are constraints, whatever the file including it was.
            _read_into(
                result,
                nested,
                root=root,
                shown=_shown(nested.resolve(), root),
                notes=notes,
                kind="constraint" if kind == "constraint" else nested_kind,
                seen=seen | {real},
            )
            continue
        requirement, options = _split_options(line)
        parsed = parse_requirement(requirement, where)
        hashes = _hashes(options, where)
        (result.constraints if kind == "constraint" else result.requirements).append(parsed)
        exact = exact_version(parsed)
        if exact is not None:
            result.pins.append(DeclaredPin(canonicalize_name(parsed.name), exact, where, parsed.marker))
        if hashes:
            if exact is None:
                raise DependencyError(
                    f"{where}: {parsed.name} has --hash values but no exact == version, so the hashes cannot "
                    "name its file (pip refuses it too)",
                    tip=f"pin it: {parsed.name}==VERSION --hash=...",
                )
            result.hashes.append(
                HashPin(canonicalize_name(parsed.name), exact, frozenset(hashes), where, parsed.marker)
            )


def check_includes(path: Path, *, root: Path) -> None:
    """Refuse a requirements file that includes, at any depth, a file outside ``root``; nothing else is checked.

    For a package whose files pip or uv will read as they are (``verify``): they would follow such an include.
    """
    root = root.resolve()
    todo, seen = [path], set()
    while todo:
        real = todo.pop().resolve()
        shown = _shown(real, root)
        if not real.is_relative_to(root):
            raise DependencyError(f"{shown}: leads outside the plugin folder; refusing to read it")
        if real in seen or not real.is_file():
            continue  # loops and missing files are the installer's to report
        seen.add(real)
        for lineno, line in logical_lines(real.read_text(encoding="utf-8-sig", errors="replace")):
            where = f"{shown}:{lineno}"
            try:
                include = _include(line, where) if line.startswith("-") else None
            except DependencyError:
                continue  # malformed, not an include pip could follow
            if include is not None:
                todo.append(_confine(*include, real.parent, root, where))


def _confine(kind: str, target: str, directory: Path, root: Path, where: str) -> Path:
    """The included file when it stays inside ``root`` (links resolved); otherwise refused, never opened."""
    nested = directory / target
    if "://" in target or target.startswith("file:") or not nested.resolve().is_relative_to(root):
        raise DependencyError(
            f"{where}: {'-c' if kind == 'constraint' else '-r'} {shown_line(target)} is outside the "
            "plugin folder; only files inside the plugin can be included",
            tip="copy what it needs into the plugin folder and include that file",
        )
    return nested


def _include(line: str, where: str) -> tuple[str, str] | None:
    """``(kind, path)`` when the line is an include: -r/-c/--requirement/--constraint, spaced, ``=``, attached or quoted."""
    try:
        tokens = shlex.split(line)
    except ValueError:
        raise DependencyError(f"{where}: unbalanced quotes in an option line") from None
    if not tokens:
        return None
    first, value = tokens[0], tokens[1] if len(tokens) > 1 else None
    kind = None
    if first.startswith("--"):
        name, equals, attached = first.partition("=")
        kind = next((k for option, k in _INCLUDES.items() if len(name) > 3 and option.startswith(name)), None)
        value = attached if equals else value
    elif first[:2] in _SHORT_INCLUDES:
        kind = _SHORT_INCLUDES[first[:2]]
        value = first[2:].removeprefix("=") or value
    if kind is None:
        return None
    if not value:
        raise DependencyError(f"{where}: {first} names no file")
    return kind, value


def _option(result: RequirementsFile, line: str, where: str, notes: list[str] | None) -> None:
    if line.split()[0] == "--require-hashes":
        result.require_hashes = True
        return
    if _IGNORED_OPTION.match(line):
        if notes is not None and _INDEX_OPTION.match(line):
            notes.append(f"{where}: {line} is not used to resolve; give it to dify-repack as --index-url")
        return
    if line.startswith(("-e", "--editable")):
        raise DependencyError(
            f"{where}: editable requirement {shown_line(line)} cannot be packaged",
            tip="list the package by name and version",
        )
    raise DependencyError(f"{where}: unsupported requirements-file option {shown_line(line.split()[0])}")


def _split_options(line: str) -> tuple[str, list[str]]:
    """The requirement and its per-line options: as pip does, options start at the first word beginning with -."""
    words = line.split()
    first = next((index for index, word in enumerate(words) if word.startswith("-")), len(words))
    if first == len(words):
        return line, []
    return " ".join(words[:first]), words[first:]


def _hashes(options: list[str], where: str) -> list[str]:
    """``alg:hex`` values of ``--hash``; build options are dropped; anything else is an error."""
    hashes, index = [], 0
    while index < len(options):
        option = options[index]
        name, equals, value = option.partition("=")
        if not equals and index + 1 < len(options) and not options[index + 1].startswith("-"):
            value, index = options[index + 1], index + 1
        index += 1
        if name in _BUILD_OPTIONS:
            continue
        if name != "--hash":
            raise DependencyError(f"{where}: unsupported option {shown_line(name)} after a requirement")
        algorithm, _, digest = value.partition(":")
        if HASH_ALGORITHMS.get(algorithm) != len(digest) or not re.fullmatch(r"[0-9a-fA-F]+", digest):
            raise DependencyError(
                f"{where}: --hash {shown_line(value)} is not sha256:, sha384: or sha512: with a hex digest"
            )
        hashes.append(f"{algorithm}:{digest.lower()}")
    return hashes


def exact_version(requirement: Requirement) -> str | None:
    """The version an ``==`` specifier names exactly (no wildcard), if any."""
    for spec in requirement.specifier:
        if spec.operator in ("==", "===") and not spec.version.endswith(".*"):
            return spec.version
    return None


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
            reason = f"{shown_line(bad)} is not a valid version"
        raise DependencyError(
            f"{where}: invalid requirement {shown_line(text)}: {reason}",
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
            f"{root}: neither requirements.txt nor pyproject.toml [project].dependencies declares the dependencies",
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
    return [parse_requirement(text, f"{where}[{index}]") for index, text in enumerate(dependencies)]


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
