"""Offline configuration inside the package: every setting must travel in it, because the daemon replaces
uv's environment (DAEMON-FACTS §4). Both install paths are configured so every daemon version works:
requirements.txt for pip / ``uv pip install``, pyproject.toml + uv.lock for ``uv sync [--frozen]``.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pathspec
import tomlkit
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from tomlkit.container import OutOfOrderTableProxy
from tomlkit.items import Array, Table

from .errors import DependencyError, EnvironmentProblem
from .files import file_sha256
from .manifest import Manifest
from .redaction import shown_line, shown_names
from .requirements import SDK, check_requires_python, own_extras
from .runner import clean_env, run
from .targets import Target
from .uvbin import find_python, uv_bin
from .uvconfig import UV_TOML
from .wheels import Selected

WHEELS_DIR = "wheels"
HEADER = "# Written by dify-repack: installs only from the wheels in ./wheels/, with no network access.\n"
# The daemon's SDK patch looks for this spelling with a regex (DAEMON-FACTS §4 step 4).
SDK_NAME = "dify_plugin"
# Files the daemon must see; an ignore rule matching one of them would drop it from a rebuilt package.
PROTECTED = (
    f"{WHEELS_DIR}/",
    f"{WHEELS_DIR}/x-1-py3-none-any.whl",
    "requirements.txt",
    "pyproject.toml",
    "uv.lock",
)


def requirements_lines(selected: Sequence[Selected], targets: Sequence[Target], *, hashes: bool = False) -> list[str]:
    """Exact pins for every package; an architecture marker only where the targets differ.

    With ``hashes`` every line also names the sha256 of each shipped file of it, so pip and uv check them when
    they install (a plugin that pinned hashes keeps that check; pip then wants one on every line).
    """
    lines = []
    for item in selected:
        name = SDK_NAME if item.pin.name == "dify-plugin" else item.pin.name
        covered = [target for target in targets if target in item.files]
        line = f"{name}=={item.pin.version}"
        if len(covered) != len(targets):
            line += f" ; {' or '.join(target.arch_marker for target in covered)}"
        if hashes:
            digests = sorted({file_sha256(path) for path in item.files.values()})
            line += "".join(f" \\\n    --hash=sha256:{digest}" for digest in digests)
        lines.append(line)
    return lines


def write_requirements(
    root: Path, selected: Sequence[Selected], targets: Sequence[Target], *, hashes: bool = False
) -> None:
    body = "".join(f"{line}\n" for line in requirements_lines(selected, targets, hashes=hashes))
    text = f"{HEADER}--no-index\n--find-links=./{WHEELS_DIR}/\n{body}"
    (root / "requirements.txt").write_text(text, encoding="utf-8")


def edit_pyproject(
    root: Path,
    manifest: Manifest,
    targets: Sequence[Target],
    *,
    declared: Sequence[Requirement],
    declared_in_pyproject: bool,
    added: Sequence[Requirement] = (),
    sdk_version: str | None = None,
) -> list[str]:
    """Make pyproject.toml install offline with ``uv sync``, keeping the user's formatting; returns notes."""
    path = root / "pyproject.toml"
    document = tomlkit.parse(path.read_text(encoding="utf-8"))
    notes: list[str] = []

    project = document.get("project")
    # [project] split by other tables ([project.urls] further down) comes back as a proxy, not a Table.
    if not isinstance(project, (Table, OutOfOrderTableProxy)):
        project = tomlkit.table()
        project["name"] = manifest.name.replace("_", "-")
        project["version"] = manifest.version
        document["project"] = project
        notes.append("pyproject.toml had no [project] table; added one so `uv sync` can install")
    requires = project.get("requires-python")
    python = targets[0].python
    if requires is not None:
        check_requires_python(str(requires), python)
    else:
        project["requires-python"] = f">={python}"
    if declared_in_pyproject and added:
        project["dependencies"].extend(str(requirement) for requirement in added)
    if not declared_in_pyproject:
        copied = tomlkit.array()
        copied.extend(str(requirement) for requirement in declared)
        project["dependencies"] = copied.multiline(True)
        notes.append("pyproject.toml declared no dependencies; copied requirements.txt's into it")

    dependencies = project.get("dependencies")
    if isinstance(dependencies, Array):
        notes += _inline_own_extras(dependencies, project)
    if sdk_version is not None and isinstance(dependencies, Array):
        notes += _pin_sdk(dependencies, sdk_version)

    extras = project.get("optional-dependencies")
    if extras is not None:
        # Locked like groups (from paths of this machine too, while packing); the daemon installs no extra.
        del project["optional-dependencies"]
        names = shown_names(extras) if isinstance(extras, dict) else "?"
        notes.append(
            f"removed [project.optional-dependencies] ({names}): the daemon installs no extras, and uv lock "
            "resolves them"
        )

    if "dependency-groups" in document:
        groups = shown_names(document["dependency-groups"])
        del document["dependency-groups"]
        notes.append(f"removed [dependency-groups] ({groups}): not runtime dependencies, and uv sync resolves them")

    tool = document.get("tool")
    if not isinstance(tool, (Table, OutOfOrderTableProxy)):
        tool = tomlkit.table(is_super_table=True)
        document["tool"] = tool
    old = tool.get("uv")
    dropped = sorted(key for key in (old or {}) if key not in ("no-index", "find-links", "environments", "package"))
    if dropped:
        notes.append(f"replaced [tool.uv] keys {shown_names(dropped)}: only keys every daemon's uv reads are shipped")
    tool["uv"] = _offline_uv_table(targets, package=False if "build-system" in document else None)
    path.write_text(tomlkit.dumps(document), encoding="utf-8")
    return notes


def _inline_own_extras(dependencies: Array, project: Mapping[str, Any]) -> list[str]:
    """Replace a requirement of the project itself (``demo[llm]``) with what its extras bring, as resolved: the
    extras are removed below, and the daemon's ``uv sync`` installs [project].dependencies only."""
    notes = []
    for index in reversed(range(len(dependencies))):
        text = str(dependencies[index])
        own = own_extras(Requirement(text), project)
        if own is None:
            continue
        del dependencies[index]
        for offset, requirement in enumerate(own):
            dependencies.insert(index + offset, str(requirement))
        listed = shown_line(", ".join(str(requirement) for requirement in own) or "nothing")
        notes.append(f"pyproject.toml: {shown_line(text)} (the plugin's own extras) is now {listed}")
    return notes[::-1]


def _pin_sdk(dependencies: Array, version: str) -> list[str]:
    """Pin the SDK exactly: for old SDKs the daemon patches, it reads the version from this line."""
    notes = []
    for index, text in enumerate(list(dependencies)):
        requirement = Requirement(str(text))
        if canonicalize_name(requirement.name) != SDK or str(requirement.specifier) == f"=={version}":
            continue
        marker = f"; {requirement.marker}" if requirement.marker else ""
        dependencies[index] = f"{SDK_NAME}=={version}{marker}"
        notes.append(f"pyproject.toml: {text} is now {SDK_NAME}=={version}, the version shipped")
    return notes


def _offline_uv_table(targets: Sequence[Target], *, package: bool | None) -> Table:
    table = tomlkit.table()
    table.add(
        tomlkit.comment("Written by dify-repack: resolve and install only from ./wheels/, for the daemon's Linux")
    )
    table.add(tomlkit.comment("CPython only (no forks for other platforms or Pythons, whose wheels are not shipped)."))
    table["no-index"] = True
    table["find-links"] = [f"./{WHEELS_DIR}/"]
    environments = tomlkit.array()
    environments.extend(target.uv_environment for target in targets)
    table["environments"] = environments.multiline(True)
    if package is not None:
        # Building the project itself would need its build backend offline; the daemon runs it from source.
        table["package"] = package
    table.add(tomlkit.nl())  # keep a blank line before whatever table follows in the user's file
    return table


def regenerate_lock(root: Path, targets: Sequence[Target], *, uv_cache: Path, offline: bool = True) -> None:
    """Write uv.lock from ./wheels only, so ``uv sync --frozen`` finds every file inside the package.

    ``offline=False`` when pyproject.toml names an index on loopback to lock against (slim packages).
    """
    (root / "uv.lock").unlink(missing_ok=True)
    interpreter = find_python(targets[0].python)
    argv: list[str | Path] = [uv_bin(), "lock", "--no-progress"]
    if interpreter is not None:
        argv += [*(["--offline"] if offline else []), "--python", interpreter]
    else:
        argv += [
            "--python",
            targets[0].python,
        ]  # uv may fetch a managed CPython; packages still come from ./wheels
    result = run(argv, cwd=root, env=clean_env({"UV_CACHE_DIR": str(uv_cache)}), timeout=600)
    if result.returncode != 0 and interpreter is None:
        raise EnvironmentProblem(
            f"writing uv.lock needs CPython {targets[0].python}, which this host lacks and uv could not fetch",
            tip=f"install CPython {targets[0].python} (uv python install {targets[0].python}, pyenv, or the OS package)",
        )
    if result.returncode != 0:
        raise DependencyError(f"uv lock against the shipped wheels failed: {result.tail(6)}")


def fix_python_version(root: Path, python: str) -> str | None:
    """Make .python-version name ``python``: uv sync honours it, and anything else (another version, a path to a
    program) breaks the daemon's install. Only its start is read, however large the file."""
    path = root / ".python-version"
    if not path.is_file():
        return None
    with path.open("rb") as file:
        current = file.read(256).decode("utf-8", errors="replace").strip()
    if current == python:
        return None
    path.write_text(f"{python}\n", encoding="utf-8")
    return f".python-version said {shown_line(current)}; the daemon's venv is CPython {python}, so it now says {python}"


def drop_uv_toml(root: Path) -> list[str]:
    """Remove a uv.toml: uv reads it instead of pyproject.toml's [tool.uv], so it would replace the offline settings
    (and, while packing, could point uv lock at this machine's folders). Returns a note when there was one."""
    path = root / UV_TOML
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
    else:
        return []
    return [
        f"removed {UV_TOML}: uv reads it instead of pyproject.toml's [tool.uv], whose offline settings it would replace"
    ]


def fix_ignore_files(root: Path) -> list[str]:
    """Drop ignore rules that would exclude the wheels or dependency files when the plugin is packaged again."""
    notes = []
    for name in (".difyignore", ".gitignore"):
        path = root / name
        if not path.is_file():
            continue
        kept, removed = [], []
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True):
            rule = line.strip()
            if rule and not rule.startswith(("#", "!")) and _matches_protected(rule):
                removed.append(rule)
            else:
                kept.append(line)
        if removed:
            path.write_text("".join(kept), encoding="utf-8")
            notes.append(f"{name}: removed {', '.join(removed)} (it would leave the wheels or dependency files out)")
    return notes


def _matches_protected(rule: str) -> bool:
    try:
        spec = pathspec.GitIgnoreSpec.from_lines([rule])
    except ValueError:  # a rule no gitignore reader accepts drops nothing; it stays as the plugin wrote it
        return False
    return any(spec.match_file(path) for path in PROTECTED)
