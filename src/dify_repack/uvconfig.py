"""The settings a package carries for uv, judged before ``verify`` lets uv act on them on this machine.

A replay runs uv in the plugin folder, where uv reads ``[tool.uv]`` of pyproject.toml, a ``uv.toml`` (which wins
over ``[tool.uv]``), ``.python-version`` and uv.lock. Each can name a place of the machine: ``find-links =
["/root"]`` or a lock's ``registry = "/srv/wheels"`` is read (and may even make the replay pass with files the
daemon lacks), ``[tool.uv.pip] target`` or ``system = true`` makes ``uv pip install`` write there, and a
``.python-version`` holding a path makes ``uv sync`` run that program. Such a package is refused before anything
runs. ``pack`` never ships them: its output carries its own ``[tool.uv]``, lock and ``.python-version`` only.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement

from .errors import DependencyError
from .redaction import shown_line, shown_name
from .reqfile import check_locations, leads_outside
from .requirements import tomllib

UV_TOML = "uv.toml"
# [tool.uv.pip] keys choosing what `uv pip install` installs into: anything but the daemon's venv is this machine's.
_INSTALL_INTO = ("python", "system", "break-system-packages", "target", "prefix")
# The parts of pyproject.toml uv takes locations from: its settings, the requirements it locks, and
# [build-system] when it builds the project.
_PYPROJECT_TABLES = (
    ("tool", "uv"),
    ("project", "dependencies"),
    ("project", "optional-dependencies"),
    ("dependency-groups",),
    ("build-system",),
)
# A .python-version names a version or two: a longer one is judged by its start.
_PYTHON_VERSION_BYTES = 64 * 1024


@dataclass(frozen=True)
class ConfigRisk:
    """A setting that would make uv read, write or run something of this machine outside the package."""

    file: str
    line: int | None  # where the value is written, when it can be found
    setting: str  # dotted, as in ``tool.uv.find-links[0]``
    value: str
    why: str

    @property
    def message(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        setting = f"{shown_name(self.setting)} = " if self.setting else ""
        return f"{where}: {setting}{shown_line(self.value)} {self.why}"


def check_replay_config(root: Path) -> None:
    """Refuse, naming the file, line and setting, a package whose files would make pip or uv touch this machine
    outside ``root`` before any of its code runs: requirements-file locations first, then uv's settings."""
    check_locations(root / "requirements.txt", root=root)
    risks = config_risks(root)
    if risks:
        raise DependencyError(
            f"{risks[0].message}; verify does not replay such a package",
            tip="remove it, or pack the plugin with `dify-repack pack`: its package carries only its own uv "
            "settings, lock and a .python-version of 3.12",
        )


def replay_refusals(root: Path) -> list[str]:
    """Why ``check_replay_config`` would refuse the package in ``root``, a line each (what ``inspect`` lists)."""
    refusals: list[str] = []
    try:
        check_locations(root / "requirements.txt", root=root)
    except DependencyError as error:
        refusals.append(error.message)  # the first only, as verify reports it
    return refusals + [risk.message for risk in config_risks(root)]


def config_risks(root: Path) -> list[ConfigRisk]:
    """Every risky uv setting of the package in ``root``: pyproject.toml, uv.toml, uv.lock, .python-version."""
    root = root.resolve()
    risks: list[ConfigRisk] = []
    text, data = _read_toml(root / "pyproject.toml")
    uv_text, uv_toml = _read_toml(root / UV_TOML)
    # The project is built (from [build-system]) unless uv's settings say `package = false`; uv.toml wins.
    settings = uv_toml if (root / UV_TOML).exists() else _table(data, ("tool", "uv"))
    builds = not (isinstance(settings, dict) and settings.get("package") is False)
    for keys in _PYPROJECT_TABLES:
        table = _table(data, keys)
        if table is not None and (builds or keys != ("build-system",)):
            risks += _settings("pyproject.toml", text, table, ".".join(keys), root)
    risks += _settings(UV_TOML, uv_text, uv_toml, "", root)
    risks += _lock(root)
    risks += _python_version(root)
    return risks


def _table(data: dict[str, Any], keys: tuple[str, ...]) -> Any:
    table: Any = data
    for key in keys:
        table = table.get(key) if isinstance(table, dict) else None
    return table


def _read_toml(path: Path) -> tuple[str, dict[str, Any]]:
    """The file's text and table; a missing or invalid file is empty here (uv then fails, or ignores it)."""
    try:
        text = path.read_text(encoding="utf-8")
        return text, tomllib.loads(text)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return "", {}


def _settings(file: str, text: str, table: object, prefix: str, root: Path) -> Iterator[ConfigRisk]:
    pip = table.get("pip") if isinstance(table, dict) and prefix in ("", "tool.uv") else None
    flagged = set()
    for key, value in pip.items() if isinstance(pip, dict) else ():
        if key in _INSTALL_INTO and _installs_elsewhere(key, value, root):
            setting = f"{prefix}.pip.{key}" if prefix else f"pip.{key}"
            flagged.add(setting)
            why = "makes `uv pip install` install outside the daemon's venv, into this machine"
            shown = value if isinstance(value, str) else json.dumps(value)  # as TOML writes it: true, not True
            yield ConfigRisk(file, _line(text, shown, key), setting, shown, why)
    for setting, value in _strings(table, prefix):
        if setting not in flagged and leads_outside(_location(value), root):
            why = "is outside the package: uv would read or write there on this machine"
            yield ConfigRisk(file, _line(text, value, setting), setting, value, why)


def _installs_elsewhere(key: str, value: object, root: Path) -> bool:
    if key in ("system", "break-system-packages"):
        return value is True
    if key == "python" and isinstance(value, str) and "/" not in value:
        return True  # a version or a name: uv looks for that interpreter on this machine
    return isinstance(value, str) and leads_outside(value, root)


def _location(value: str) -> str:
    """The place a setting names: the URL of a ``name @ URL`` requirement, else the value (a path or URL)."""
    try:
        url = Requirement(value).url
    except InvalidRequirement:
        return value
    return url or value


def _strings(value: object, key: str) -> Iterator[tuple[str, str]]:
    """Every string of a settings tree with its dotted key (``tool.uv.sources.helper.path``, ``find-links[0]``)."""
    if isinstance(value, str):
        yield key, value
    elif isinstance(value, dict):
        for name, item in value.items():
            yield from _strings(item, f"{key}.{name}" if key else str(name))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _strings(item, f"{key}[{index}]")


def _line(text: str, value: str, setting: str) -> int | None:
    """The first line holding ``value`` (else the setting's last key): where a reader finds it."""
    last = setting.rsplit(".", 1)[-1].split("[")[0]
    for needle in (value, last):
        for number, line in enumerate(text.splitlines(), start=1):
            if needle and needle in line:
                return number
    return None


def _lock(root: Path) -> Iterator[ConfigRisk]:
    """uv.lock sources and files: a wheel's ``path`` is relative to its registry folder, the rest to the project."""
    text, data = _read_toml(root / "uv.lock")
    packages = data.get("package")
    for index, package in enumerate(packages if isinstance(packages, list) else []):
        if not isinstance(package, dict):
            continue
        source = package.get("source")
        registry = source.get("registry") if isinstance(source, dict) else None
        bases = (root, root / registry) if isinstance(registry, str) else (root,)
        for setting, value in _strings(package, f"package[{index}]"):
            key = setting.rsplit(".", 1)[-1]
            if key in ("registry", "path", "directory", "editable", "virtual", "url", "git") and leads_outside(
                value, root, *bases
            ):
                why = "is outside the package: uv sync would read it on this machine"
                yield ConfigRisk("uv.lock", _line(text, value, setting), setting, value, why)


def _python_version(root: Path) -> Iterator[ConfigRisk]:
    """A path in .python-version is a program ``uv sync`` runs to learn its Python version (then builds the venv
    with it); one outside the package is this machine's."""
    path = root / ".python-version"
    if not path.is_file():
        return
    with path.open("rb") as file:
        head = file.read(_PYTHON_VERSION_BYTES).decode("utf-8", errors="replace")
    for number, line in enumerate(head.splitlines(), start=1):
        request = line.strip()
        if request.startswith("#") or not ("/" in request or request.startswith("~")):
            continue
        if leads_outside(request, root):
            why = "names a program of this machine, which uv would run instead of the daemon's CPython"
            yield ConfigRisk(".python-version", number, "", request, why)
