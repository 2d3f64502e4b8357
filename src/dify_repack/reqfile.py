"""pip requirements files as a plugin ships them: includes confined to the plugin, options, pins and hashes.

A requirements file can pull in others (``-r``, ``-c`` and the spellings pip accepts); a hostile one names files
of the packing machine (``/proc/self/environ``). Only files inside the plugin folder are ever opened. Its other
locations (``--find-links /root``, ``-e /opt/src``, a path line) are never followed here; a package whose files
pip or uv would read as they are (``verify``) must keep them all inside.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

from packaging.markers import Marker
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from .errors import DependencyError, PackageError
from .files import read_bounded
from .redaction import shown_line, shown_name

# Long options pip accepts in requirement files that pull in another file; optparse also takes any unique
# prefix (``--constr``), so a prefix counts as the option: it is then confined like the full spelling.
_INCLUDES = {"--requirement": "requirement", "--constraint": "constraint"}
_SHORT_INCLUDES = {"-r": "requirement", "-c": "constraint"}
# Options whose value pip and uv open as a folder, a file or a URL (long ones also by any unique prefix).
_LOCATIONS = ("--find-links", "--index-url", "--extra-index-url", "--editable")
_SHORT_LOCATIONS = ("-f", "-i", "-e")
_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]+):")
# A home folder as pip and uv expand it (``~``, ``~/x``, ``~user/x``); ``~=1.0`` is a version specifier.
_HOME = re.compile(r"~[\w.-]*(/|$)")
# Options that configure where pip looks or how it builds: the package replaces them with its own wheels.
_IGNORED_OPTION = re.compile(
    r"^(-i|-f|--index-url|--extra-index-url|--find-links|--no-index|--trusted-host|--pre|"
    r"--prefer-binary|--only-binary|--no-binary|--use-feature|--no-build-isolation|--config-settings|-C)\b"
)
_INDEX_OPTION = re.compile(r"^(-i|--index-url|--extra-index-url)\b")
# Per-requirement options that only steer a build; dropped, as the package ships built wheels.
_BUILD_OPTIONS = ("--config-settings", "--global-option", "--install-option")
# pip's --hash algorithms, with the hex length of their digests.
HASH_ALGORITHMS = {"sha256": 64, "sha384": 96, "sha512": 128}
# A real plugin's requirements file is a few kilobytes, a hash-pinned export a few hundred; one of 80 MB took two
# minutes and 1.5 GB to read line by line.
MAX_REQUIREMENTS_BYTES = 4 * 1024**2


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
    for lineno, line in logical_lines(_read(real, shown)):
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


def _read(path: Path, shown: str) -> str:
    try:
        data = read_bounded(path, MAX_REQUIREMENTS_BYTES, shown)
    except PackageError as error:
        raise DependencyError(error.message) from None
    # utf-8-sig: pip drops a byte order mark, and so must the first requirement's name.
    return data.decode("utf-8-sig", errors="replace")


def check_locations(path: Path, *, root: Path) -> None:
    """Refuse a requirements file that makes pip or uv read outside ``root``, at any include depth: an include, a
    ``--find-links``/``--index-url``/``--extra-index-url`` or ``-e`` location, a path or ``name @ URL``
    requirement, or a ``${VAR}`` (both expand it from this machine's environment). Nothing else is checked.

    For a package whose files pip or uv will read as they are (``verify``).
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
        for lineno, line in logical_lines(_read(real, shown)):
            where = f"{shown}:{lineno}"
            try:
                include = _include(line, where) if line.startswith("-") else None
            except DependencyError:
                continue  # malformed, not an include pip could follow
            if include is not None:
                todo.append(_confine(*include, real.parent, root, where))
                continue
            location = _location(line)
            if location is not None and "${" in location.replace("${PROJECT_ROOT}", ""):
                raise DependencyError(
                    f"{where}: {shown_line(location)} names an environment variable, which pip and uv expand from "
                    "this machine's environment; verify does not replay such a package",
                    tip="write the path of a file inside the package, or the index URL itself",
                )
            if location is not None and leads_outside(location, root, root, real.parent):
                raise DependencyError(
                    f"{where}: {shown_line(location)} is outside the package: pip and uv would read it on this "
                    "machine; verify does not replay such a package",
                    tip="name only files inside the package (./wheels/) or an index URL",
                )


def leads_outside(location: str, root: Path, *bases: Path) -> bool:
    """Whether pip or uv, given ``location`` (a path relative to each of ``bases``, or a URL), would touch this
    machine outside ``root`` (resolved). A remote URL does not: replays run with the network cut."""
    # uv expands ${PROJECT_ROOT} to the project's folder; any other variable comes from this machine's environment.
    location = location.strip().replace("${PROJECT_ROOT}", str(root))
    if "${" in location:
        return True
    scheme = _SCHEME.match(location)
    if scheme is not None:
        if not scheme.group(1).lower().endswith("file"):  # file:, git+file:
            return False
        parts = urlsplit(location)
        if parts.netloc not in ("", "localhost"):
            return True
        location = unquote(parts.path)  # absolute, or relative as in file:./wheels
    if _HOME.match(location):
        return True
    return any(not _inside(base / location, root) for base in bases or (root,))


def _inside(path: Path, root: Path) -> bool:
    # normpath keeps a leading "//" (POSIX leaves its meaning open); Linux reads it as "/".
    return Path("/" + os.path.normpath(path).lstrip("/") if path.is_absolute() else path).is_relative_to(root)


def _location(line: str) -> str | None:
    """What a requirements-file line makes pip or uv open: an option's location, a path, a URL; None for a name."""
    if line.startswith("-"):
        try:
            found = _option_value(shlex.split(line), _LOCATIONS, _SHORT_LOCATIONS)
        except ValueError:
            return None
        return (found[1] or None) if found is not None else None
    requirement, _ = _split_options(line)
    try:
        return Requirement(requirement).url
    except InvalidRequirement:
        return requirement  # a path or an archive, as pip reads such a line


def _confine(kind: str, target: str, directory: Path, root: Path, where: str) -> Path:
    """The included file when it stays inside ``root`` (links resolved); otherwise refused, never opened."""
    nested = directory / target
    if "${" in target:
        # pip and uv expand ${VAR} in requirement files: the file it names is not known until install time.
        raise DependencyError(
            f"{where}: {'-c' if kind == 'constraint' else '-r'} {shown_line(target)} names an environment variable, "
            "which pip would expand; only plain paths inside the plugin folder can be included",
            tip="write the path of a file inside the plugin folder",
        )
    if "://" in target or target.startswith("file:") or not nested.resolve().is_relative_to(root):
        raise DependencyError(
            f"{where}: {'-c' if kind == 'constraint' else '-r'} {shown_line(target)} is outside the "
            "plugin folder; only plain paths inside the plugin folder can be included",
            tip="copy what it needs into the plugin folder and include that file",
        )
    return nested


def _include(line: str, where: str) -> tuple[str, str] | None:
    """``(kind, path)`` when the line is an include: -r/-c/--requirement/--constraint, spaced, ``=``, attached or quoted."""
    try:
        tokens = shlex.split(line)
    except ValueError:
        raise DependencyError(f"{where}: unbalanced quotes in an option line") from None
    found = _option_value(tokens, _INCLUDES, _SHORT_INCLUDES)
    if found is None:
        return None
    option, value = found
    if not value:
        raise DependencyError(f"{where}: {tokens[0]} names no file")
    if "\x00" in value:  # no file name holds one, and a path with one cannot even be looked up
        raise DependencyError(f"{where}: {shown_line(value)} is not a file name (a NUL byte)")
    return (_INCLUDES | _SHORT_INCLUDES)[option], value


def _option_value(tokens: list[str], long: Iterable[str], short: Iterable[str]) -> tuple[str, str] | None:
    """``(option, value)`` when the first token is one of ``long`` (or a prefix of one, as optparse takes it), with
    ``=`` or a space before its value, or one of ``short``, its value attached too; the value may be empty."""
    if not tokens:
        return None
    first, following = tokens[0], tokens[1] if len(tokens) > 1 else ""
    if first.startswith("--"):
        name, equals, attached = first.partition("=")
        option = next((option for option in long if len(name) > 3 and option.startswith(name)), None)
        return None if option is None else (option, attached if equals else following)
    if first[:2] in short:
        return first[:2], first[2:].removeprefix("=") or following
    return None


def _option(result: RequirementsFile, line: str, where: str, notes: list[str] | None) -> None:
    if line.split()[0] == "--require-hashes":
        result.require_hashes = True
        return
    if _IGNORED_OPTION.match(line):
        if notes is not None and _INDEX_OPTION.match(line):
            notes.append(f"{where}: {shown_name(line)} is not used to resolve; give it to dify-repack as --index-url")
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
            f"{where}: {requirement.name} is a direct URL requirement ({shown_name(requirement.url)}); it cannot be resolved from an index",
            tip="publish the package to an index (a private one works with --index-url) and require it by version",
        )
    return requirement
