"""Section 4: a batch over a corpus folder with one shared cache, and the bytes sharing saved."""

from __future__ import annotations

import re
import shutil
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar
from unittest import mock

import httpx
import yaml

from common import Section, dir_bytes, pack_module, secs, stopwatch
from dify_repack.errors import DifyRepackError
from dify_repack.http import ProgressCallback
from dify_repack.packing import PackOptions, PackResult, pack
from dify_repack.render import mib
from dify_repack.resolve import Artifact
from dify_repack.wheels import WheelCache

# The files a corpus folder may hold that belong in the plugin (SOURCE.txt is provenance, not plugin data).
CORPUS_DATA_FILES = ("manifest.yaml", "requirements.txt", "pyproject.toml", "uv.lock", ".difyignore")


# --------------------------------------------------------------------------------------------- 4: corpus


MAIN_PY = """from dify_plugin import DifyPluginEnv, Plugin

plugin = Plugin(DifyPluginEnv(MAX_REQUEST_TIMEOUT=120))

if __name__ == "__main__":
    plugin.run()
"""
TOOL_PY = """from collections.abc import Generator
from typing import Any

from dify_plugin import Tool
from dify_plugin.entities.tool import ToolInvokeMessage


class EchoTool(Tool):
    def _invoke(self, tool_parameters: dict[str, Any]) -> Generator[ToolInvokeMessage, None, None]:
        yield self.create_text_message(str(tool_parameters.get("text", "")))
"""
PROVIDER_PY = """from typing import Any

from dify_plugin import ToolProvider


class Provider(ToolProvider):
    def _validate_credentials(self, credentials: dict[str, Any]) -> None:
        return None
"""
ICON_SVG = '<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16"><rect width="16" height="16"/></svg>\n'


def icon_png() -> bytes:
    """A valid 1×1 grey PNG, for manifests whose icon is a .png."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)  # 1 by 1 pixel, 8-bit greyscale
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00\x80")) + chunk(b"IEND", b"")
    )


def write_provider(root: Path, kind: str, relative: str, author: str, icon: str) -> None:
    """A provider YAML at the path the manifest names; tool providers also get one tool."""
    provider = root / relative
    stem = provider.stem
    provider.parent.mkdir(parents=True, exist_ok=True)
    identity = {"author": author, "name": stem, "label": {"en_US": stem}, "icon": icon}
    if kind == "tools":
        (root / "tools").mkdir(exist_ok=True)
        (root / "tools" / "echo.yaml").write_text(
            yaml.safe_dump(
                {
                    "identity": {"name": "echo", "author": author, "label": {"en_US": "Echo"}},
                    "description": {"human": {"en_US": "Echo"}, "llm": "Echo the text"},
                    "parameters": [
                        {"name": "text", "type": "string", "required": True, "form": "llm", "label": {"en_US": "Text"}}
                    ],
                    "extra": {"python": {"source": "tools/echo.py"}},
                }
            ),
            encoding="utf-8",
        )
        (root / "tools" / "echo.py").write_text(TOOL_PY, encoding="utf-8")
        (provider.parent / f"{stem}.py").write_text(PROVIDER_PY, encoding="utf-8")
        data: dict[str, Any] = {
            "identity": identity,
            "tools": ["tools/echo.yaml"],
            "extra": {"python": {"source": f"{provider.parent.name}/{stem}.py"}},
        }
    else:
        # Model, endpoint, agent-strategy ... providers: the shape matters to the daemon, not to packaging.
        data = {"provider": stem, "label": {"en_US": stem}, "icon_small": {"en_US": icon}}
    provider.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")


def build_minimal_plugin(folder: Path, dest: Path) -> None:
    """A plugin directory around a corpus folder's data files: main.py, provider(s), an icon, privacy."""
    dest.mkdir(parents=True)
    for name in CORPUS_DATA_FILES:
        if (folder / name).is_file():
            shutil.copyfile(folder / name, dest / name)
    manifest = yaml.safe_load((folder / "manifest.yaml").read_text(encoding="utf-8")) or {}
    (dest / "main.py").write_text(MAIN_PY, encoding="utf-8")
    icon = str(manifest.get("icon") or "icon.svg")
    assets = dest / "_assets"
    assets.mkdir()
    if icon.endswith(".png"):
        (assets / icon).write_bytes(icon_png())
    else:
        (assets / icon).write_text(ICON_SVG, encoding="utf-8")
    plugins = manifest.get("plugins") if isinstance(manifest.get("plugins"), dict) else {}
    for kind, paths in (plugins or {}).items():
        for relative in paths or []:
            write_provider(dest, str(kind), str(relative), str(manifest.get("author", "bench")), icon)
    if manifest.get("privacy"):
        (dest / str(manifest["privacy"])).write_text("This plugin collects no data.\n", encoding="utf-8")


class RecordingCache(WheelCache):
    """Records every cache file a pack used (looked up or fetched): what a fresh per-plugin cache would download."""

    # Class-level because pack builds its own instance; the bench resets it before each plugin.
    used: ClassVar[set[Path]] = set()

    def lookup(self, artifact: Artifact) -> Path | None:
        path = super().lookup(artifact)
        if path is not None:
            RecordingCache.used.add(path)
        return path

    def fetch(self, client: httpx.Client, artifact: Artifact, advance: ProgressCallback | None = None) -> Path:
        path = super().fetch(client, artifact, advance)
        RecordingCache.used.add(path)
        return path


@dataclass
class CorpusResult:
    name: str
    ok: bool
    seconds: float
    wheels: int = 0
    package_bytes: int = 0
    needed_bytes: int = 0  # sizes of the cache files this plugin used
    added_bytes: int = 0  # bytes the shared cache grew by during this plugin
    built: tuple[str, ...] = ()  # packages built from sdists
    has_sdk: bool = False  # a dify_plugin wheel is inside: without one the plugin cannot start
    error: str = ""


def pack_corpus_plugin(folder: Path, work: Path, cache: Path) -> CorpusResult:
    source = work / "corpus-src" / folder.name
    build_minimal_plugin(folder, source)
    RecordingCache.used = set()
    before = dir_bytes(cache / "files")
    with stopwatch() as elapsed:
        try:
            result: PackResult | None = pack(source, PackOptions(output_dir=work / "corpus-out", cache_dir=cache))
            error = ""
        except DifyRepackError as exc:
            result, error = None, exc.message
        except Exception as exc:  # a bench must report a bug in one plugin and go on with the others
            result, error = None, f"unexpected {type(exc).__name__}: {exc}"
    needed = sum(path.stat().st_size for path in RecordingCache.used if path.is_file())
    added = dir_bytes(cache / "files") - before
    if result is None:
        return CorpusResult(folder.name, False, elapsed(), needed_bytes=needed, added_bytes=added, error=error)
    return CorpusResult(
        folder.name,
        True,
        elapsed(),
        result.wheels,
        result.stats.compressed_bytes,
        needed,
        added,
        result.built,
        ships_sdk(result.output),
    )


def ships_sdk(package: Path) -> bool:
    """A cheap sanity check in place of verification (too slow for a batch): is the plugin SDK in the wheels?"""
    with zipfile.ZipFile(package) as archive:
        return any(re.match(r"wheels/.*dify_plugin-[^/]+\.whl$", name, re.IGNORECASE) for name in archive.namelist())


def bench_corpus(corpus: Path, work: Path) -> Section:
    section = Section("4 corpus batch")
    cache = work / "cache-corpus"
    folders = sorted(path.parent for path in corpus.glob("*/manifest.yaml"))
    results: list[CorpusResult] = []
    with mock.patch.object(pack_module, "WheelCache", RecordingCache), stopwatch() as elapsed:
        for folder in folders:
            results.append(pack_corpus_plugin(folder, work, cache))
    for item in results:
        if item.ok:
            built = f"; built from sdists: {', '.join(item.built)}" if item.built else ""
            note = (
                f"ok: {item.wheels} wheels, {mib(item.package_bytes)}; needed {mib(item.needed_bytes)}, "
                f"downloaded {mib(item.added_bytes)}{built}"
            )
            if not item.has_sdk:
                note += "; WARNING: no dify_plugin wheel in the package (the plugin cannot start)"
        else:
            note = f"error: {item.error[:300]} (needed {mib(item.needed_bytes)} before failing)"
        section.row(item.name, secs(item.seconds), note)
    shared = dir_bytes(cache / "files")
    separate = sum(item.needed_bytes for item in results)
    ok = sum(item.ok for item in results)
    section.row("batch wall time", secs(elapsed()), f"{ok} ok, {len(results) - ok} errors, one shared cache")
    section.row(
        "downloaded, shared cache",
        mib(shared),
        f"growth of the cache's files/; uv metadata cache {mib(dir_bytes(cache / 'uv-cache'))} on disk (not compared)",
    )
    section.row(
        "downloaded, one cache per plugin",
        mib(separate),
        "sum over plugins of the sizes of the cache files each pack looked up or fetched (wheels and sdists, "
        "failed plugins included) = what a fresh cache per plugin would download",
    )
    section.row(
        "saved by sharing", mib(separate - shared), f"{1 - shared / separate:.0%} fewer bytes" if separate else ""
    )
    section.data.update(
        plugins=[vars(item) for item in results],
        seconds=elapsed(),
        shared_download_bytes=shared,
        per_plugin_download_bytes=separate,
    )
    return section
