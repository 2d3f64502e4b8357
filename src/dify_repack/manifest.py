"""manifest.yaml: the fields the repackager relies on (DAEMON-FACTS §2), checked with messages that name them.

Each field is held to the daemon's own rule (``pkg/entities/plugin_entities``, ``manifest_entities``): the
author, name and version become file and folder names here (the output package, verify's working folders),
so nothing the daemon would refuse may pass.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import PackageError
from .files import read_bounded
from .redaction import shown_line
from .yamlsafe import MAX_YAML_CHARS, load_yaml

# The daemon's regular expressions (Go: \d and \w are ASCII there, hence re.ASCII), matched whole.
_AUTHOR = re.compile(r"[a-z0-9_-]{1,64}")
_NAME = re.compile(r"[a-z0-9_-]{1,128}")
_VERSION = re.compile(r"\d{1,4}(\.\d{1,4}){2}(-\w{1,16})?", re.ASCII)
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
# `python -m <entrypoint>`: a dotted module name, nothing a shell or a path could make more of.
_ENTRYPOINT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", re.ASCII)
_MAX_ENTRYPOINT = 256  # the daemon's max=256
_MAX_RUNNER_VERSION = 128
_MAX_ICON = 128
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
    raw = read_bounded(path, MAX_YAML_CHARS, f"{where}: manifest.yaml")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise PackageError(f"{where}: manifest.yaml is not UTF-8 text") from None
    data = load_yaml(text, where=f"{where}: manifest.yaml", error=PackageError)
    if not isinstance(data, dict):
        raise PackageError(f"{where}: manifest.yaml must be a mapping")
    if data.get("type", "plugin") != "plugin":
        raise PackageError(f"{where}: manifest.yaml type is {shown_line(data.get('type'))}, not 'plugin'")

    author = _text(data, "author", where)
    name = _text(data, "name", where)
    version = _text(data, "version", where)
    if not _AUTHOR.fullmatch(author) or _UUID.fullmatch(author):
        raise PackageError(
            f"{where}: manifest author {shown_line(author)} must match [a-z0-9_-]{{1,64}} and not be a UUID"
        )
    if not _NAME.fullmatch(name):
        raise PackageError(f"{where}: manifest name {shown_line(name)} must match [a-z0-9_-]{{1,128}}")
    if not _VERSION.fullmatch(version):
        raise PackageError(
            f"{where}: manifest version {shown_line(version)} is not x.y.z (each 1-4 digits, optional -suffix of letters, "
            "digits or _), as the daemon requires"
        )
    for key in ("icon", "icon_dark"):
        _check_asset(data.get(key), key, where)

    meta: dict[str, Any] = data["meta"] if isinstance(data.get("meta"), dict) else {}
    runner: dict[str, Any] = meta["runner"] if isinstance(meta.get("runner"), dict) else {}
    language = str(runner.get("language", "")).lower()
    if language != "python":
        raise PackageError(
            f"{where}: meta.runner.language is {shown_line(runner.get('language'))}; only Python plugins install dependencies"
        )
    if meta.get("version") is not None and not _VERSION.fullmatch(str(meta["version"])):
        raise PackageError(f"{where}: manifest meta.version {shown_line(meta['version'])} is not x.y.z")
    entrypoint = str(runner.get("entrypoint") or "main")
    if len(entrypoint) > _MAX_ENTRYPOINT or not _ENTRYPOINT.fullmatch(entrypoint):
        raise PackageError(
            f"{where}: meta.runner.entrypoint {shown_line(entrypoint)} is not a Python module name "
            "(the daemon runs `python -m ENTRYPOINT`; e.g. main)"
        )
    runner_version = str(runner.get("version") or "3.12")
    if len(runner_version) > _MAX_RUNNER_VERSION or not runner_version.isprintable():
        raise PackageError(f"{where}: meta.runner.version {shown_line(runner_version)} is not a Python version")
    raw_arch = meta.get("arch") or list(KNOWN_ARCHES)
    arches = tuple(str(arch) for arch in (raw_arch if isinstance(raw_arch, list) else [raw_arch]))
    unknown = [arch for arch in arches if arch not in KNOWN_ARCHES]
    if unknown:
        raise PackageError(f"{where}: meta.arch lists {', '.join(unknown[:3])[:120]}; Dify knows amd64 and arm64")
    return Manifest(author, name, version, arches, runner_version, entrypoint)


def _text(data: dict[str, Any], key: str, where: str) -> str:
    value = data.get(key)
    if value is None or str(value).strip() == "":
        raise PackageError(f"{where}: manifest.yaml has no {key!r}")
    if isinstance(value, (dict, list)):
        raise PackageError(f"{where}: manifest {key} must be text, not a {type(value).__name__}")
    return str(value).strip()


def _check_asset(value: object, key: str, where: str) -> None:
    """An icon names a file under ``_assets/``: a short relative path that stays there."""
    if value is None:
        return
    text = str(value)
    parts = text.split("/")
    if (
        isinstance(value, (dict, list))
        or len(text) > _MAX_ICON
        or not text.isprintable()
        or "\\" in text
        or text.startswith("/")
        or any(part in ("", ".", "..") for part in parts)
    ):
        raise PackageError(f"{where}: manifest {key} {shown_line(text)} must be a file name under _assets/")
