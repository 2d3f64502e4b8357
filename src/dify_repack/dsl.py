"""App DSL files as sources: the plugins an exported Dify app needs, and its offline copy (DAEMON-FACTS §7).

A DSL (``kind: app``, any ``version`` Dify exports) lists ``dependencies`` of three shapes::

    - {type: marketplace, value: {marketplace_plugin_unique_identifier: author/name:version@checksum}}
    - {type: github, value: {repo: owner/repo, version: TAG, package: ASSET, github_plugin_unique_identifier: ...}}
    - {type: package, value: {plugin_unique_identifier: author/name:version@checksum}}

each with an optional ``current_identifier``. A repackaged plugin has a new checksum, so the offline copy names
the new packages as ``type: package`` entries; everything else in the DSL is kept as it was.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from .errors import DifyRepackError, UsageError
from .files import atomic_output
from .redaction import shown_line
from .sources import PluginId, Source, parse_source
from .yamlsafe import load_yaml

DependencyKind = Literal["marketplace", "github", "package"]
DSL_SUFFIXES = (".yml", ".yaml")
# Dify's own import refuses larger DSLs (api/services/app_dsl_service.py DSL_MAX_SIZE).
MAX_DSL_BYTES = 10 * 1024 * 1024
_IDENTIFIER_KEYS: dict[str, str] = {
    "marketplace": "marketplace_plugin_unique_identifier",
    "github": "github_plugin_unique_identifier",
    "package": "plugin_unique_identifier",
}
_SHAPES = (
    "type marketplace with value.marketplace_plugin_unique_identifier, type github with value.repo, "
    "value.version, value.package and value.github_plugin_unique_identifier, or type package with "
    "value.plugin_unique_identifier"
)


@dataclass(frozen=True)
class Dependency:
    """One entry of a DSL's ``dependencies``: the plugin it names and, for remote kinds, where to get it."""

    dsl: Path
    index: int
    kind: DependencyKind
    plugin: PluginId  # as the DSL names it, with the checksum of the package the app was exported with
    source: Source | None  # the Marketplace id or GitHub asset to fetch; None for a package entry

    @property
    def where(self) -> str:
        return f"{self.dsl}: dependencies[{self.index}]"

    @property
    def key(self) -> tuple[str, str]:
        """Plugin id and version: what two sources must share to be packed once."""
        assert self.plugin.version is not None, "a DSL identifier always names its version"
        return f"{self.plugin.org}/{self.plugin.name}", self.plugin.version


@dataclass(frozen=True, eq=False)
class AppDsl:
    path: Path
    version: str  # the DSL format version ("0.1.5", "0.5.0", ...), as written
    name: str  # the app's name
    dependencies: tuple[Dependency, ...]
    data: dict[str, Any]  # the whole document, for the offline copy


def is_dsl_source(source: Source) -> bool:
    """A local ``.yml``/``.yaml`` file: an app DSL (plugins are ``.difypkg`` files or folders)."""
    return source.kind == "file" and source.path is not None and source.path.suffix.lower() in DSL_SUFFIXES


def read_dsl(path: Path) -> AppDsl:
    """Read an app DSL; UsageError (exit 2) naming the file, and the entry, when it is not one Dify exports."""
    try:
        size = path.stat().st_size
        if size > MAX_DSL_BYTES:
            raise UsageError(f"{path}: {size} bytes, larger than any DSL Dify imports (10 MiB)")
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read the DSL ({exc})") from None
    data = load_yaml(text, where=str(path), error=UsageError)
    tip = "give an app DSL exported from Dify (Studio → app → Export DSL), or a .difypkg"
    if not isinstance(data, dict):
        raise UsageError(f"{path}: not a Dify app DSL (the YAML is not a mapping)", tip=tip)
    kind = data.get("kind")
    # Dify's import takes a DSL without `kind` as an app; anything else (rag_pipeline, ...) is not one.
    if kind != "app" and not (kind is None and isinstance(data.get("app"), dict)):
        found = f"kind: {kind}" if kind is not None else "no kind: app and no app section"
        raise UsageError(f"{path}: not a Dify app DSL ({found})", tip=tip)
    app = data.get("app")
    name = str(app.get("name") or path.stem) if isinstance(app, dict) else path.stem
    entries = data.get("dependencies") or []
    if not isinstance(entries, list):
        raise UsageError(f"{path}: dependencies is not a list", tip=tip)
    dependencies = tuple(_dependency(path, index, entry) for index, entry in enumerate(entries))
    return AppDsl(path, str(data.get("version") or "0.1.0"), name, dependencies, data)


def _dependency(path: Path, index: int, entry: object) -> Dependency:
    where = f"{path}: dependencies[{index}]"
    kind = entry.get("type") if isinstance(entry, dict) else None
    value = entry.get("value") if isinstance(entry, dict) else None
    if kind not in _IDENTIFIER_KEYS or not isinstance(value, dict):
        raise UsageError(f"{where}: unknown dependency shape {shown_line(entry)}", tip=f"Dify writes {_SHAPES}")
    identifier = value.get(_IDENTIFIER_KEYS[kind])
    plugin = _plugin_id(identifier, f"{where}: value.{_IDENTIFIER_KEYS[kind]}")
    source: Source | None = None
    if kind == "marketplace":
        source = parse_source(str(plugin))
    elif kind == "github":
        repo, tag, asset = (value.get(key) for key in ("repo", "version", "package"))
        tag = tag or value.get("release")  # the console's own form of the tag
        if not all(isinstance(part, str) and part for part in (repo, tag, asset)):
            raise UsageError(f"{where}: a github dependency needs value.repo, value.version and value.package")
        repo = str(repo).removeprefix("https://github.com/").strip("/")
        try:
            source = parse_source(f"github:{repo}@{tag}/{asset}")
        except DifyRepackError as exc:
            raise UsageError(f"{where}: {exc.message}") from None
    return Dependency(path, index, kind, plugin, source)


def _plugin_id(identifier: object, where: str) -> PluginId:
    # The Marketplace form of a source is exactly a plugin identifier, so its parser judges one here.
    source = None
    if isinstance(identifier, str):
        try:
            source = parse_source(identifier)
        except DifyRepackError:
            source = None
    if source is None or source.plugin is None or source.plugin.version is None:
        raise UsageError(f"{where}: {shown_line(identifier)} is not a plugin identifier (author/name:version@checksum)")
    return source.plugin


def offline_copy_path(dsl: AppDsl, output_dir: Path) -> Path:
    """``app1.yml`` → ``OUTPUT/app1.offline.yml``."""
    return output_dir / f"{dsl.path.stem}.offline{dsl.path.suffix}"


def write_offline_copy(dsl: AppDsl, identifiers: Mapping[int, str], output: Path) -> Path:
    """Write the DSL with each dependency naming its repackaged package (``identifiers`` by entry index).

    The entries become ``type: package`` with the new ``plugin_unique_identifier``; a ``current_identifier``
    that was set names the new package too. Every other key and value is kept. The original is never touched.
    """
    if output.resolve() == dsl.path.resolve():
        raise UsageError(f"{output}: the offline copy would replace its own DSL", tip="write it elsewhere with -o DIR")
    missing = [dependency.where for dependency in dsl.dependencies if dependency.index not in identifiers]
    if missing:
        raise UsageError(f"{missing[0]}: no repackaged plugin for this entry, so no offline copy of {dsl.path}")
    data = dict(dsl.data)
    entries = list(data.get("dependencies") or [])
    for index, identifier in identifiers.items():
        original = entries[index]
        value: dict[str, Any] = {"plugin_unique_identifier": identifier}
        if "version" in original["value"]:
            value["version"] = original["value"]["version"]
        entries[index] = {
            "current_identifier": identifier if original.get("current_identifier") else None,
            "type": "package",
            "value": value,
        }
    data["dependencies"] = entries
    text = yaml.safe_dump(data, allow_unicode=True, sort_keys=False, width=2**16)
    with atomic_output(output) as staged:
        staged.write_text(text, encoding="utf-8")
    return output
