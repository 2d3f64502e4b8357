"""``pack``: a plugin in, an offline package out. The orchestration only; each step lives in its own module."""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePath

from . import cancel
from .errors import EnvironmentProblem, PackageError, UsageError
from .files import atomic_output
from .licenses import wheel_license
from .manifest import Manifest, read_manifest
from .mirror import add_to_wheelhouse, make_slim, mirror_settings, record_in_wheelhouse
from .mirror_serve import mirror_address
from .offline import (
    WHEELS_DIR,
    drop_uv_toml,
    edit_pyproject,
    fix_ignore_files,
    fix_python_version,
    regenerate_lock,
    write_requirements,
)
from .package import (
    SIGNATURE_FILE,
    ZipStats,
    copy_plugin_dir,
    extract_package,
    package_stats,
    write_package,
    zip_checksum,
)
from .pins import PinChange, check_hashes, compare_pins, preferences_for
from .report import NullReporter, Reporter
from .requirements import SDK, check_requires_python, declared_dependencies
from .resolve import Indexes, Pin, ResolutionCache, resolve
from .signing import DEFAULT_CATEGORY, key_permission_warning, load_private_key, sign_tree
from .targets import DEFAULT_GLIBC, DEFAULT_PYTHON, Target, chosen_arches, make_targets
from .uvbin import require_python
from .verify import VerifyReport
from .wheelhouse import HouseFile, read_wheelhouse
from .wheels import Provenance, Selected, WheelCache, default_cache_dir, fetch_all, prefetch

MIB = 1024 * 1024
# Upload limits with Dify's defaults (DAEMON-FACTS §3): the API's in code, the daemon's (also on unpacked size).
API_DEFAULT_LIMIT = 15 * MIB
DAEMON_DEFAULT_LIMIT = 50 * MIB
# Less free space than this in -o, the cache or TMPDIR fails the run before it starts: a package with a few
# wheels takes tens of MiB in each, and running out midway would waste every download.
MIN_FREE_BYTES = 64 * MIB

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
    wheelhouse: Path | None = None  # also put every wheel into this static index (wheelhouse.py)
    mirror_url: str | None = None  # write a slim package installing from the wheelhouse served here (mirror.py)
    lock_from_mirror: bool = False  # uv.lock's file URLs as the live mirror serves them (devpi, Nexus, ...)
    follow_symlinks: bool = False  # follow links of a plugin folder that lead outside it and its repository
    origin: str | None = None  # the source as the user gave it (a URL, a Marketplace id): named in errors
    sign_category: str = DEFAULT_CATEGORY  # authorized_category of the signature (bundles: langgenius plugins)


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
    wheelhouse: Path | None = None
    mirror_url: str | None = None  # set for a slim package
    provenance: dict[str, Provenance] = field(default_factory=dict)  # wheel file name -> where it came from
    license_attention: tuple[str, ...] = ()  # "name version: license — why a reviewer should look"
    pin_changes: tuple[PinChange, ...] = ()  # shipped versions that differ from a version the plugin pinned

    @property
    def dify_settings(self) -> tuple[str, ...]:
        """The Dify settings this upload needs, as ``NAME=value  # why`` lines."""
        settings = upload_settings(self.stats.compressed_bytes, self.stats.uncompressed_bytes, signed=self.signed)
        if self.mirror_url is not None and self.wheelhouse is not None:
            settings += mirror_settings(self.mirror_url, self.wheelhouse)
        return settings

    @property
    def identifier(self) -> str:
        """``author/name:version@checksum`` as the daemon will report the written package."""
        return f"{self.manifest.plugin_id}:{self.manifest.version}@{self.stats.checksum}"


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
    """The package's path: exactly one file name, built from checked manifest fields, inside ``output_dir``."""
    folder = output_dir or Path.cwd()
    name = manifest.offline_filename
    output = folder / name
    # The manifest rules already exclude separators; this holds even if those rules change.
    if PurePath(name).name != name or name in (".", "..") or output.parent != folder:
        raise PackageError(f"manifest fields make the output name {name!r}, which is not one file name")
    return output


def check_folders(options: PackOptions) -> None:
    """Find a read-only, unwritable or full output folder, cache, temp folder or wheelhouse now, before any download.

    Each gets a probe file written and removed, and its free space compared with ``MIN_FREE_BYTES``; a folder
    that does not exist yet is judged by the nearest one above it (and not created: a refusal leaves nothing).
    """
    temp = os.environ.get("TMPDIR")
    folders = (
        (options.output_dir or Path.cwd(), "-o DIR"),
        (options.cache_dir or default_cache_dir(), "--cache-dir DIR or DIFY_REPACK_CACHE_DIR"),
        # tempfile would quietly skip an unusable TMPDIR; uv, which gets it too, would not.
        (Path(temp) if temp else Path(tempfile.gettempdir()), "TMPDIR=DIR"),
        *(((options.wheelhouse, "--wheelhouse DIR"),) if options.wheelhouse is not None else ()),
    )
    for folder, elsewhere in folders:
        existing = folder.absolute()
        while not existing.exists() and existing.parent != existing:
            existing = existing.parent
        try:
            handle, probe = tempfile.mkstemp(prefix=".dify-repack-probe-", dir=existing)
            try:
                os.write(handle, b"probe")
            finally:
                os.close(handle)
                Path(probe).unlink()
            free = shutil.disk_usage(existing).free
        except OSError as exc:
            raise EnvironmentProblem.cannot_write(folder, exc, elsewhere=elsewhere) from None
        if free < MIN_FREE_BYTES:
            raise EnvironmentProblem(
                f"{folder}: only {free / MIB:.1f} MiB free; a run needs at least {MIN_FREE_BYTES // MIB} MiB there",
                tip=f"free some space there, or point the run at another folder ({elsewhere})",
            )


def load_plugin(source: Path, dest: Path, *, follow_symlinks: bool = False, shown_as: str | None = None) -> list[str]:
    """Put the plugin's files into ``dest``: a source directory is copied, a .difypkg extracted; notes.

    ``shown_as`` names a downloaded package in messages (its URL), instead of its temporary path.
    """
    if source.is_dir():
        return copy_plugin_dir(source, dest, follow_symlinks=follow_symlinks)
    if source.is_file():
        extract_package(source, dest, shown_as=shown_as)
        return []
    raise PackageError(f"{source}: no such file or directory")


def pack(source: Path, options: PackOptions | None = None, reporter: Reporter | None = None) -> PackResult:
    """Repackage ``source`` (a .difypkg or a plugin directory) so that it installs offline."""
    options = options or PackOptions()
    reporter = reporter or NullReporter()
    check_folders(options)
    if options.sign_key is not None:
        # A wrong or SPKI key should fail in a second, not after every download and build.
        load_private_key(options.sign_key)
        if warning := key_permission_warning(options.sign_key):
            reporter.warn(warning)
    if options.mirror_url is not None:
        mirror_address(options.mirror_url)  # a bad URL fails before any download
        if options.wheelhouse is None:
            raise UsageError("a slim package (--mirror-url) needs a wheelhouse (--wheelhouse DIR) to serve its wheels")
    elif options.lock_from_mirror:
        raise UsageError("--lock-from-mirror needs --mirror-url (the repository to read the file URLs from)")
    if options.wheelhouse is not None:
        read_wheelhouse(options.wheelhouse)  # a folder that is not a wheelhouse fails before any download
    cache = WheelCache(options.cache_dir or default_cache_dir(), warn=reporter.warn)
    with tempfile.TemporaryDirectory(prefix="dify-repack-") as temp:
        root = Path(temp) / "plugin"
        root.mkdir()
        shown = options.origin or str(source)
        link_notes = load_plugin(source, root, follow_symlinks=options.follow_symlinks, shown_as=shown)
        manifest = read_manifest(root, origin=shown)
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
        if declared.requires_python is not None:
            check_requires_python(declared.requires_python, options.python)  # before anything is downloaded
        if options.check is not None or (root / "pyproject.toml").is_file():
            # uv lock and the replays need the daemon's CPython: find it, or have uv install it, before any download.
            require_python(options.python, reporter.step)
        reporter.step(
            f"{manifest.plugin_id} {manifest.version}: {len(declared.requirements)} requirements from "
            f"{declared.source}, for {', '.join(map(str, targets))}"
        )
        notes = [*link_notes, *declared.notes]
        for note in notes:
            reporter.warn(note)
        cache.mark()

        resolutions = ResolutionCache(cache.root / "resolutions", refresh=options.refresh)

        def resolve_for(target: Target) -> list[Pin]:
            started = time.monotonic()
            with reporter.activity(f"resolving for {target}"):
                pins = resolve(
                    declared.requirements,
                    target,
                    indexes=options.indexes,
                    preferences=preferences_for(declared.preferred, target),
                    constraints=declared.constraints,
                    uv_cache=cache.uv_cache,
                    cache=resolutions,
                )
            reporter.step(f"resolved {target}: {len(pins)} packages in {time.monotonic() - started:.1f} s")
            return pins

        # One thread per target resolves; the first target to finish starts its downloads and builds at once,
        # while the others are still resolving (fetch_all then finds those files in the cache).
        with cancel.executor(len(targets) + 1) as pool:
            futures = {pool.submit(resolve_for, target): target for target in targets}
            resolved: dict[Target, list[Pin]] = {}
            prefetching = None
            for future in cancel.as_completed(futures):
                resolved[futures[future]] = future.result()
                if prefetching is None and len(targets) > 1:
                    target = futures[future]
                    prefetching = pool.submit(
                        prefetch, resolved[target], target, cache, indexes=options.indexes, reporter=reporter
                    )
            plan = {target: resolved[target] for target in targets}
            if prefetching is not None:
                prefetching.result()
        cancel.check()  # prefetch keeps its failures, an interrupt among them, for fetch_all to report
        selected = fetch_all(plan, cache, indexes=options.indexes, reporter=reporter)
        check_hashes(declared, selected)
        compared, changes = compare_pins(declared.pins, selected)
        if changes:
            reporter.warn(f"{len(changes)} of {compared} versions the plugin pinned are shipped in another version")

        wheel_dir = root / WHEELS_DIR
        wheel_dir.mkdir()
        wheel_files = {path for item in selected for path in item.files.values()}
        for path in wheel_files:
            cache.export(path, wheel_dir / path.name)

        reporter.step("writing the offline configuration")
        notes += drop_uv_toml(root)  # before uv runs here: it would read the plugin's uv.toml
        write_requirements(root, selected, targets, hashes=bool(declared.hashes))
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
        house: dict[Path, HouseFile] | None = None  # a slim package's files in the wheelhouse
        if options.wheelhouse is not None and options.mirror_url is not None:
            # A slim package installs from the wheelhouse, so its verification needs the wheels there first; the
            # plugin itself is listed only once the package is accepted (below).
            reporter.step(f"adding the wheels to the wheelhouse {options.wheelhouse}")
            house = add_to_wheelhouse(options.wheelhouse, manifest, selected, record=False)
            reporter.step(f"making the package slim: it installs from {options.mirror_url}")
            make_slim(
                root,
                selected,
                targets,
                options.mirror_url,
                options.wheelhouse,
                house,
                cache.uv_cache,
                lock_from_mirror=options.lock_from_mirror,
            )
        notes += fix_ignore_files(root)
        python_note = fix_python_version(root, options.python)
        if python_note:
            notes.append(python_note)

        with atomic_output(output) as staged:
            # Signing writes the package itself: one pass over the files either way.
            try:
                with reporter.activity(f"writing {output.name}" + (" (signed)" if options.sign_key else "")):
                    if options.sign_key is not None:
                        sign_tree(root, options.sign_key, staged, category=options.sign_category)
                        stats = dataclasses.replace(package_stats(staged), checksum=zip_checksum(staged))
                    else:
                        stats = write_package(root, staged)
            except OSError as exc:
                raise EnvironmentProblem.cannot_write(output.parent, exc, elsewhere="-o DIR") from None
            verification = options.check(staged, manifest, targets) if options.check is not None else None
            # Only a package that is written (verified, when asked) records its name there, the last step before
            # it is moved into place: a failure or an interrupt up to here leaves the wheelhouse listing none of it.
            if options.wheelhouse is not None and house is not None:
                record_in_wheelhouse(options.wheelhouse, manifest, house)
            elif options.wheelhouse is not None:
                reporter.step(f"adding the wheels to the wheelhouse {options.wheelhouse}")
                add_to_wheelhouse(options.wheelhouse, manifest, selected)
        stats = dataclasses.replace(stats, path=output)

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
        wheelhouse=options.wheelhouse,
        mirror_url=options.mirror_url,
        provenance={name: origin for item in selected for name, origin in item.provenance().items()},
        license_attention=_license_attention(selected),
        pin_changes=changes,
    )


def _license_attention(selected: list[Selected]) -> tuple[str, ...]:
    """Shipped packages whose license usually needs a reviewer (none declared, the GPL family)."""
    found = []
    for item in selected:
        license = wheel_license(next(iter(item.files.values())))
        if license.attention:
            found.append(f"{item.pin.name} {item.pin.version}: {license} — {license.attention}")
    return tuple(found)


def _single_version(selected: list[Selected], name: str) -> str | None:
    versions = {item.pin.version for item in selected if item.pin.name == name}
    return versions.pop() if len(versions) == 1 else None
