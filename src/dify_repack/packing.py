"""``pack``: a plugin in, an offline package out. The orchestration only; each step lives in its own module."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from .errors import PackageError, UsageError
from .manifest import Manifest, read_manifest
from .offline import (
    WHEELS_DIR,
    edit_pyproject,
    fix_ignore_files,
    fix_python_version,
    regenerate_lock,
    write_requirements,
)
from .package import (
    SIGNATURE_FILE,
    ZipStats,
    atomic_output,
    copy_plugin_dir,
    extract_package,
    package_stats,
    write_package,
)
from .report import NullReporter, Reporter
from .requirements import SDK, declared_dependencies
from .resolve import Indexes, Pin, ResolutionCache, resolve
from .signing import load_private_key, sign_tree
from .targets import DEFAULT_GLIBC, DEFAULT_PYTHON, Target, chosen_arches, make_targets
from .uvbin import require_python
from .verify import VerifyReport
from .wheels import Selected, WheelCache, default_cache_dir, fetch_all, prefetch

MIB = 1024 * 1024
# Upload limits with Dify's defaults (DAEMON-FACTS §3): the API's in code, the daemon's (also on unpacked size).
API_DEFAULT_LIMIT = 15 * MIB
DAEMON_DEFAULT_LIMIT = 50 * MIB

# Run on the written package before it is moved into place; raises to reject it (verification hooks in here).
Check = Callable[[Path, Manifest, tuple[Target, ...]], VerifyReport]


@dataclass(frozen=True)
class PackOptions:
    output_dir: Path | None = None  # default: the current directory
    arch: str | None = None  # "amd64", "arm64", "all"; None: what the manifest lists
    python: str = DEFAULT_PYTHON
    indexes: Indexes = field(default_factory=Indexes)
    cache_dir: Path | None = None
    sign_key: Path | None = None
    check: Check | None = None
    refresh: bool = False  # resolve again even when a recent resolution of the same input is cached
    glibc: tuple[int, int] = DEFAULT_GLIBC  # the newest manylinux level the daemon's host can run


@dataclass(frozen=True)
class PackResult:
    source: str
    output: Path
    manifest: Manifest
    targets: tuple[Target, ...]
    dependency_source: str
    packages: int
    wheels: int
    built: tuple[str, ...]
    stats: ZipStats
    notes: tuple[str, ...]
    signed: bool
    verification: VerifyReport | None = None  # what the check found, when one ran

    @property
    def dify_settings(self) -> tuple[str, ...]:
        """The Dify settings this upload needs, as ``NAME=value  # why`` lines."""
        return upload_settings(self.stats.compressed_bytes, self.stats.uncompressed_bytes, signed=self.signed)


def upload_settings(compressed: int, uncompressed: int, *, signed: bool) -> tuple[str, ...]:
    """The Dify settings an upload of this size and signature needs, as ``NAME=value  # why`` lines."""
    settings = []
    if not signed:
        settings.append(
            "FORCE_VERIFYING_SIGNATURE=false  # plugin daemon: the package is unsigned "
            "(or sign it and make the daemon trust that key)"
        )
    largest = max(compressed, uncompressed)
    if compressed > API_DEFAULT_LIMIT or largest > DAEMON_DEFAULT_LIMIT:
        # The daemon checks the unpacked size too (DAEMON-FACTS §3), so the limit must cover the larger one.
        mib = -(-largest // MIB) + 1
        settings.append(
            f"PLUGIN_MAX_PACKAGE_SIZE={mib * MIB}  # api and plugin daemon "
            f"(MAX_PLUGIN_PACKAGE_SIZE): {compressed / MIB:.1f} MiB zipped, "
            f"{uncompressed / MIB:.1f} MiB unpacked"
        )
        settings.append(f"NGINX_CLIENT_MAX_BODY_SIZE={mib}M  # nginx in front of Dify")
    return tuple(settings)


def output_path(manifest: Manifest, output_dir: Path | None) -> Path:
    return (output_dir or Path.cwd()) / manifest.offline_filename


def load_plugin(source: Path, dest: Path) -> None:
    """Put the plugin's files into ``dest``: a source directory is copied, a .difypkg extracted."""
    if source.is_dir():
        copy_plugin_dir(source, dest)
    elif source.is_file():
        extract_package(source, dest)
    else:
        raise PackageError(f"{source}: no such file or directory")


def pack(source: Path, options: PackOptions | None = None, reporter: Reporter | None = None) -> PackResult:
    """Repackage ``source`` (a .difypkg or a plugin directory) so that it installs offline."""
    options = options or PackOptions()
    reporter = reporter or NullReporter()
    if options.sign_key is not None:
        # A wrong or SPKI key should fail in a second, not after every download and build.
        load_private_key(options.sign_key)
    cache = WheelCache(options.cache_dir or default_cache_dir())
    with tempfile.TemporaryDirectory(prefix="dify-repack-") as temp:
        root = Path(temp) / "plugin"
        root.mkdir()
        load_plugin(source, root)
        manifest = read_manifest(root, origin=str(source))
        output = output_path(manifest, options.output_dir)
        if source.is_file() and output.resolve() == source.resolve():
            raise UsageError(
                f"{source}: the offline package would replace its own input",
                tip="write it elsewhere with -o DIR (the input is never modified)",
            )
        # Stale wheels and an old signature never carry over: the package is rebuilt from its declarations.
        shutil.rmtree(root / WHEELS_DIR, ignore_errors=True)
        (root / SIGNATURE_FILE).unlink(missing_ok=True)

        targets = make_targets(options.python, chosen_arches(options.arch, manifest.arches), options.glibc)
        declared = declared_dependencies(root)
        if options.check is not None or (root / "pyproject.toml").is_file():
            # uv lock and the replays need the daemon's CPython: find it, or have uv install it, before any download.
            require_python(options.python, reporter.step)
        reporter.step(
            f"{manifest.plugin_id} {manifest.version}: {len(declared.requirements)} requirements from "
            f"{declared.source}, for {', '.join(map(str, targets))}"
        )
        notes = list(declared.notes)
        for note in notes:
            reporter.warn(note)

        resolutions = ResolutionCache(cache.root / "resolutions", refresh=options.refresh)

        def resolve_for(target: Target) -> list[Pin]:
            started = time.monotonic()
            with reporter.activity(f"resolving for {target}"):
                pins = resolve(
                    declared.requirements,
                    target,
                    indexes=options.indexes,
                    preferences=declared.lock_pins,
                    uv_cache=cache.uv_cache,
                    cache=resolutions,
                )
            reporter.step(f"resolved {target}: {len(pins)} packages in {time.monotonic() - started:.1f} s")
            return pins

        # One thread per target resolves; the first target to finish starts its downloads and builds at once,
        # while the others are still resolving (fetch_all then finds those files in the cache).
        with ThreadPoolExecutor(len(targets) + 1) as pool:
            futures = {pool.submit(resolve_for, target): target for target in targets}
            resolved: dict[Target, list[Pin]] = {}
            prefetching = None
            for future in as_completed(futures):
                resolved[futures[future]] = future.result()
                if prefetching is None and len(targets) > 1:
                    target = futures[future]
                    prefetching = pool.submit(
                        prefetch, resolved[target], target, cache, indexes=options.indexes, reporter=reporter
                    )
            plan = {target: resolved[target] for target in targets}
            if prefetching is not None:
                prefetching.result()
        selected = fetch_all(plan, cache, indexes=options.indexes, reporter=reporter)

        wheel_dir = root / WHEELS_DIR
        wheel_dir.mkdir()
        wheel_files = {path for item in selected for path in item.files.values()}
        for path in wheel_files:
            _link_or_copy(path, wheel_dir / path.name)

        reporter.step("writing the offline configuration")
        write_requirements(root, selected, targets)
        if (root / "pyproject.toml").is_file():
            notes += edit_pyproject(
                root,
                manifest,
                targets,
                declared=declared.requirements,
                declared_in_pyproject=declared.source == "pyproject.toml",
                added=declared.added_to_pyproject,
                sdk_version=_single_version(selected, SDK),
            )
            with reporter.activity("locking uv.lock against ./wheels"):
                regenerate_lock(root, targets, uv_cache=cache.uv_cache)
        notes += fix_ignore_files(root)
        python_note = fix_python_version(root, options.python)
        if python_note:
            notes.append(python_note)

        with atomic_output(output) as staged:
            # Signing writes the package itself: one pass over the files either way.
            with reporter.activity(f"writing {output.name}" + (" (signed)" if options.sign_key else "")):
                if options.sign_key is not None:
                    sign_tree(root, options.sign_key, staged)
                else:
                    write_package(root, staged)
            verification = options.check(staged, manifest, targets) if options.check is not None else None
            stats = package_stats(staged)
        stats = ZipStats(output, stats.files, stats.compressed_bytes, stats.uncompressed_bytes)

    return PackResult(
        source=str(source),
        output=output,
        manifest=manifest,
        targets=targets,
        dependency_source=declared.source,
        packages=len(selected),
        wheels=len(wheel_files),
        built=tuple(f"{item.pin.name} {item.pin.version}" for item in selected if item.built),
        stats=stats,
        notes=tuple(notes),
        signed=options.sign_key is not None,
        verification=verification,
    )


def _single_version(selected: list[Selected], name: str) -> str | None:
    versions = {item.pin.version for item in selected if item.pin.name == name}
    return versions.pop() if len(versions) == 1 else None


def _link_or_copy(source: Path, target: Path) -> None:
    # A hard link costs nothing; the cache may be on another file system, then copy.
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
