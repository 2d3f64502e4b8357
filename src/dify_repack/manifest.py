"""manifest.yaml: the fields the repackager relies on (DAEMON-FACTS §2), checked with messages that name them."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .errors import PackageError

_AUTHOR = re.compile(r"^[a-z0-9_-]{1,64}$")
_NAME = re.compile(r"^[a-z0-9_-]{1,128}$")
_VERSION = re.compile(r"^\d+\.\d+\.\d+([.-].*)?$")
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
KNOWN_ARCHES = ("amd64", "arm64")


@dataclass(frozen=True)
class Manifest:
    author: str
    name: str
    version: str
    arches: tuple[str, ...]
    runner_version: str
    entrypoint: str

    @property
    def plugin_id(self) -> str:
        return f"{self.author}/{self.name}"

    @property
    def offline_filename(self) -> str:
        return f"{self.author}-{self.name}_{self.version}-offline.difypkg"


def read_manifest(root: Path, *, origin: str | None = None) -> Manifest:
    """Parse ``root/manifest.yaml``; ``origin`` names the input in error messages."""
    where = origin or str(root)
    path = root / "manifest.yaml"
    if not path.is_file():
        raise PackageError(f"{where}: no manifest.yaml at the top level; this is not a Dify plugin")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        first_line = str(exc).splitlines()[0]
        raise PackageError(f"{where}: manifest.yaml is not valid YAML: {first_line}") from None
    if not isinstance(data, dict):
        raise PackageError(f"{where}: manifest.yaml must be a mapping")
    if data.get("type", "plugin") != "plugin":
        raise PackageError(f"{where}: manifest.yaml type is {data.get('type')!r}, not 'plugin'")

    author = _text(data, "author", where)
    name = _text(data, "name", where)
    version = _text(data, "version", where)
    if not _AUTHOR.match(author) or _UUID.match(author):
        raise PackageError(f"{where}: manifest author {author!r} must match [a-z0-9_-]{{1,64}} and not be a UUID")
    if not _NAME.match(name):
        raise PackageError(f"{where}: manifest name {name!r} must match [a-z0-9_-]{{1,128}}")
    if not _VERSION.match(version):
        raise PackageError(f"{where}: manifest version {version!r} is not x.y.z")

    meta: dict[str, Any] = data["meta"] if isinstance(data.get("meta"), dict) else {}
    runner: dict[str, Any] = meta["runner"] if isinstance(meta.get("runner"), dict) else {}
    language = str(runner.get("language", "")).lower()
    if language != "python":
        raise PackageError(
            f"{where}: meta.runner.language is {runner.get('language')!r}; only Python plugins install dependencies"
        )
    entrypoint = str(runner.get("entrypoint") or "main")
    raw_arch = meta.get("arch") or list(KNOWN_ARCHES)
    arches = tuple(str(arch) for arch in (raw_arch if isinstance(raw_arch, list) else [raw_arch]))
    unknown = [arch for arch in arches if arch not in KNOWN_ARCHES]
    if unknown:
        raise PackageError(f"{where}: meta.arch lists {', '.join(unknown)}; Dify knows amd64 and arm64")
    return Manifest(author, name, version, arches, str(runner.get("version") or "3.12"), entrypoint)


def _text(data: dict[str, Any], key: str, where: str) -> str:
    value = data.get(key)
    if value is None or str(value).strip() == "":
        raise PackageError(f"{where}: manifest.yaml has no {key!r}")
    return str(value).strip()
