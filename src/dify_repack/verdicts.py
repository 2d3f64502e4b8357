"""Each daemon version's install of a package, judged statically: why it would fail offline, or "ok".

The rules of DAEMON-FACTS §1-5 and UV-PIP-FACTS, read from the extracted package's files: requirements.txt
for pip and ``uv pip``, pyproject.toml for ``uv sync``, uv.lock for ``uv sync --frozen``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from packaging.markers import InvalidMarker, Marker
from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name
from packaging.version import Version

from .errors import DependencyError
from .offline import WHEELS_DIR
from .redaction import shown_line
from .reqfile import logical_lines, parse_requirement
from .requirements import remote_lock_sources, tomllib
from .targets import Target

# [tool.uv] keys every uv in the daemon's images knows; an older uv that meets any other key ignores the whole
# table, and with it no-index and find-links (DAEMON-FACTS §5).
KNOWN_UV_KEYS = frozenset(
    {
        "no-index",
        "find-links",
        "environments",
        "package",
        "index-url",
        "extra-index-url",
        "dev-dependencies",
        "override-dependencies",
        "constraint-dependencies",
        "sources",
        "index",
        "managed",
        "default-groups",
    }
)
OLD_UV = "older uv ignores the whole [tool.uv] table and goes online"
_FIND_LINKS = re.compile(r"^(?:--find-links|-f)(?:\s*=\s*|\s*)(?P<value>\S+)$")


@dataclass(frozen=True)
class Verdict:
    profile: str  # a key of verify.PROFILES
    command: str  # what this daemon version runs in the plugin directory
    reasons: tuple[str, ...]  # why the install will fail offline; empty when it should work

    @property
    def ok(self) -> bool:
        return not self.reasons

    @property
    def reason(self) -> str:
        """One line: "ok", or the first reason and how many more there are."""
        more = len(self.reasons) - 1
        return "ok" if not self.reasons else self.reasons[0] + (f" (and {more} more)" if more else "")


@dataclass(frozen=True)
class Wheel:
    """A ``.whl`` file of the package, named as installers read it."""

    path: str  # inside the package
    folder: str  # the folder it is in, "." at the top
    filename: str
    name: NormalizedName
    version: Version


@dataclass(frozen=True)
class Scan:
    """The extracted package and what every rule needs from it."""

    root: Path
    targets: tuple[Target, ...]
    wheels: tuple[Wheel, ...]

    def missing(self, requirements: Iterable[Requirement], wheels: Sequence[Wheel], target: Target) -> list[str]:
        """The requirements that apply to ``target`` and have no wheel among ``wheels`` that installs there."""
        missing = []
        for requirement in requirements:
            if not target.evaluate(requirement.marker):
                continue
            name = canonicalize_name(requirement.name)
            fitting = (w for w in wheels if w.name == name and target.wheel_rank(w.filename) is not None)
            if not any(requirement.specifier.contains(wheel.version, prereleases=True) for wheel in fitting):
                missing.append(f"{requirement.name}{requirement.specifier}")
        return missing

    def wheel_reasons(self, requirements: Sequence[Requirement], wheels: Sequence[Wheel]) -> list[str]:
        """One line per set of missing pins: "numpy==2.4.1 has no wheel for cp312-linux-arm64"."""
        targets_by_pins: dict[tuple[str, ...], list[str]] = {}
        for target in self.targets:
            if missing := tuple(self.missing(requirements, wheels, target)):
                targets_by_pins.setdefault(missing, []).append(str(target))
        return [
            f"{', '.join(pins[:4])}{f' and {len(pins) - 4} more' if len(pins) > 4 else ''} "
            f"{'has' if len(pins) == 1 else 'have'} no wheel for {', '.join(targets)}"
            for pins, targets in targets_by_pins.items()
        ]

    def package_dir(self, value: str) -> str | None:
        """The package folder a relative find-links/registry value names; None if remote, absolute or outside."""
        posix = PurePosixPath(value)
        if "://" in value or posix.is_absolute() or ".." in posix.parts:
            return None
        return posix.as_posix() if (self.root / posix).is_dir() else None

    def visible(self, links: Sequence[str], where: str) -> tuple[list[Wheel], list[str]]:
        """The wheels an installer sees through find-links ``links`` (flat: no subfolders), and what is wrong."""
        if not links:
            return [], [f"will go online: {where} has no find-links to a directory inside the package"]
        folders, reasons = set(), []
        for value in links:
            folder = self.package_dir(value)
            if folder is not None:
                folders.add(folder)
            elif "://" in value:
                reasons.append(f"will go online: {where} find-links {value} is remote")
            else:
                reasons.append(f"{where} find-links {value} is not a directory inside the package")
        return [wheel for wheel in self.wheels if wheel.folder in folders], reasons


def _read_toml(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """The file's tables (None when absent) and why it cannot be read: then the install fails on it."""
    if not path.is_file():
        return None, None
    try:
        return tomllib.loads(path.read_text(encoding="utf-8")), None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        return {}, f"{path.name}: not valid TOML: {error}"


def _requirements_reasons(scan: Scan, requirements: Sequence[Requirement], error: str | None) -> list[str]:
    """Why ``pip``/``uv pip install -r requirements.txt`` would fail offline."""
    path = scan.root / "requirements.txt"
    if not path.is_file():
        return ["requirements.txt is missing; this daemon version installs only from it"]
    if error:
        return [error]
    # Options are read from the top-level file only: pack writes them there, and nesting them is rare.
    lines = [line for _, line in logical_lines(path.read_text(encoding="utf-8", errors="replace"))]
    links = [match.group("value") for line in lines if (match := _FIND_LINKS.match(line))]
    reasons = [] if "--no-index" in lines else ["will go online: requirements.txt has no --no-index"]
    visible, link_reasons = scan.visible(links, "requirements.txt")
    return reasons + link_reasons + scan.wheel_reasons(requirements, visible)


def _sync_reasons(scan: Scan, pyproject: dict[str, Any]) -> list[str]:
    """Why ``uv sync --no-dev`` (daemon 0.5.3+) would fail offline with this pyproject.toml."""
    reasons = []
    project = pyproject.get("project")
    if not isinstance(project, dict):
        reasons.append("pyproject.toml has no [project] table, so uv sync cannot install it")
        project = {}
    tool = pyproject.get("tool")
    uv = tool.get("uv") if isinstance(tool, dict) else None
    uv = uv if isinstance(uv, dict) else {}
    unknown = sorted(set(uv) - KNOWN_UV_KEYS)
    if unknown:
        reasons.append(f"{OLD_UV}: it does not know {', '.join(unknown)}")
    if uv.get("no-index") is not True:
        reasons.append("will go online: [tool.uv] has no no-index = true")
    links = uv.get("find-links") or []
    visible, link_reasons = scan.visible([links] if isinstance(links, str) else [str(v) for v in links], "[tool.uv]")
    reasons += link_reasons
    reasons += _environment_reasons(scan.targets, uv.get("environments"))
    groups = pyproject.get("dependency-groups")
    reasons += [
        f"dev group {group} must resolve offline (uv sync --no-dev still resolves groups)"
        for group in (groups if isinstance(groups, dict) else {})
    ]
    if uv.get("dev-dependencies"):
        reasons.append("tool.uv.dev-dependencies must resolve offline (uv sync --no-dev still resolves them)")
    build = pyproject.get("build-system")
    if isinstance(build, dict) and uv.get("package") is not False:
        # Without `package = false` uv builds and installs the project itself, with its build backend.
        for backend in _parse_all(build.get("requires"), "[build-system] requires", reasons):
            if scan.wheel_reasons([backend], visible):
                reasons.append(
                    f"uv sync builds the project: backend {backend.name} must be in "
                    f"./{WHEELS_DIR} (or set [tool.uv] package = false)"
                )
    dependencies = _parse_all(project.get("dependencies"), "[project] dependencies", reasons)
    reasons += scan.wheel_reasons(dependencies, visible)
    version_file = scan.root / ".python-version"
    if version_file.is_file():
        lines = version_file.read_text(encoding="utf-8", errors="replace").splitlines()
        wanted = next((s for line in lines if (s := line.strip()) and not s.startswith("#")), "")
        python = scan.targets[0].python
        if not re.search(rf"(?<![\d.]){re.escape(python)}(?!\d)", wanted):
            reasons.append(
                f".python-version says {wanted!r}: uv sync follows it, but the daemon's venv is CPython {python}"
            )
    return reasons


def _parse_all(values: object, where: str, reasons: list[str]) -> list[Requirement]:
    parsed = []
    for index, text in enumerate(values if isinstance(values, list) else []):
        try:
            parsed.append(parse_requirement(str(text), f"pyproject.toml {where}[{index}]"))
        except DependencyError as error:
            reasons.append(error.message)
    return parsed


def _environment_reasons(targets: Sequence[Target], environments: object) -> list[str]:
    """``[tool.uv] environments`` must cover each target and nothing else: uv resolves for all it allows."""
    entries = [environments] if isinstance(environments, str) else environments
    if not isinstance(entries, list) or not entries:
        return ["[tool.uv] has no environments: uv resolves for every platform and needs Windows-only wheels"]
    try:
        markers = [Marker(str(entry)) for entry in entries]
    except InvalidMarker as error:
        return [f"[tool.uv] environments: invalid marker: {str(error).splitlines()[0]}"]

    def allowed(environment: dict[str, str]) -> bool:
        return any(marker.evaluate(environment) for marker in markers)

    reasons = []
    # Probe with complete environments derived from the target: Marker.evaluate fills gaps from this host.
    for target in targets:
        base = target.marker_environment
        if not allowed(base):
            reasons.append(f"[tool.uv] environments exclude {target}: uv sync refuses to install there")
        major, minor = (int(part) for part in target.python.split("."))
        newer = [f"{major}.{minor + step}" for step in (1, 2, 20)]
        probes = [
            dict(base, python_version=v, python_full_version=f"{v}.0", implementation_version=f"{v}.0") for v in newer
        ]
        if any(allowed(probe) for probe in probes):
            reasons.append(
                f"[tool.uv] environments do not bound python_full_version below {newer[0]}: uv forks "
                f"the resolution for Python {newer[0]}+ where cp{major}{minor} wheels do not apply"
            )
        others = [
            dict(base, sys_platform="win32", platform_system="Windows", os_name="nt"),
            dict(base, sys_platform="darwin", platform_system="Darwin"),
        ]
        if any(allowed(other) for other in others):
            reasons.append("[tool.uv] environments are not restricted to Linux: uv needs Windows-only wheels")
    return list(dict.fromkeys(reasons))  # one line per cause, not per target


def _lock_reasons(scan: Scan, lock: dict[str, Any]) -> list[str]:
    """Why ``uv sync --frozen`` would go online: it fetches what the lock names and ignores no-index."""
    reasons = []
    packages = lock.get("package")
    for package in packages if isinstance(packages, list) else []:
        source = package.get("source")
        registry = str(source.get("registry", "")) if isinstance(source, dict) else ""
        if registry and "://" not in registry and scan.package_dir(registry) is None:
            reasons.append(
                f"uv.lock takes {package.get('name')} from {registry}, which is not a directory inside the package"
            )
    if remote := remote_lock_sources(lock):
        reasons.insert(
            0, f"will go online: uv.lock points to a remote index ({shown_line(remote[0])}); --frozen ignores no-index"
        )
    return list(dict.fromkeys(reasons))


def judge(
    scan: Scan, requirements: Sequence[Requirement], error: str | None, problems: list[str]
) -> tuple[Verdict, ...]:
    """Each daemon version's file and command (DAEMON-FACTS §4), judged; adds package-wide risks to problems."""
    pyproject, pyproject_error = _read_toml(scan.root / "pyproject.toml")
    lock, lock_error = _read_toml(scan.root / "uv.lock")
    problems += [message for message in (pyproject_error, lock_error) if message]
    by_requirements = tuple(_requirements_reasons(scan, requirements, error))
    sync = frozen = uv_pip = ("uv pip install -r requirements.txt", by_requirements)
    if pyproject is not None:
        by_pyproject = (pyproject_error,) if pyproject_error else tuple(_sync_reasons(scan, pyproject))
        sync = frozen = ("uv sync --no-dev", by_pyproject)
        if lock is not None:  # without a lock the frozen profile runs plain `uv sync`
            by_lock = (lock_error,) if lock_error else tuple(_lock_reasons(scan, lock))
            # The lock's reasons first: with a remote lock, --frozen goes online whatever pyproject.toml says.
            frozen = ("uv sync --no-dev --frozen", by_lock + by_pyproject)
        # It depends on the daemon's uv, not on the package alone: worth a line of its own.
        problems += [reason for reason in by_pyproject if reason.startswith(OLD_UV)]
    if (scan.root / "requirements.txt").is_file():  # a configured mirror makes requirements.txt win (0.6.3+)
        mirror = ("uv pip install -i $PIP_MIRROR_URL -r requirements.txt", by_requirements)
    else:
        mirror = (f"{frozen[0]} -i $PIP_MIRROR_URL", frozen[1])
    pip = ("pip install -r requirements.txt", by_requirements)
    plan = {"pip": pip, "uv-pip": uv_pip, "uv-sync": sync, "uv-sync-frozen": frozen, "mirror": mirror}
    return tuple(Verdict(profile, command, reasons) for profile, (command, reasons) in plan.items())
