"""Getting wheels: a content-addressed cache, parallel verified downloads, and sdists built into wheels.

Offline, an sdist needs its build backend and often a compiler, so the package ships wheels only
(DAEMON-FACTS §5); an sdist-only dependency is built here, while the network is still available.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import platform
import re
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import platformdirs

from . import cancel
from .errors import BuildError, DependencyError, DifyRepackError, EnvironmentProblem, UsageError
from .files import file_sha256, write_atomically
from .http import ProgressCallback, download, make_client
from .package import ZIP_MAGIC
from .report import NullReporter, Reporter, plural
from .resolve import BROKEN_FILE_TIP, Artifact, Indexes, Pin
from .runner import clean_env, run
from .targets import MACHINES, Target, host_runs, is_pure_wheel
from .uvbin import find_python, uv_bin
from .wheelfile import NotAWheel, check_wheel

PARALLEL_DOWNLOADS = 8
SHA256_SUFFIX = ".sha256"  # beside a built wheel: its hash, checked before it is used again


def default_cache_dir() -> Path:
    return Path(os.environ.get("DIFY_REPACK_CACHE_DIR") or platformdirs.user_cache_dir("dify-repack")).absolute()


# Cache Directory Tagging Specification (https://bford.info/cachedir/): backup tools skip the folder, and
# `cache clean` deletes only a folder that carries this tag, written when the cache is created.
CACHEDIR_TAG = "CACHEDIR.TAG"
_TAG_SIGNATURE = "Signature: 8a477f597d28d172789f06886806bc55"
_TAG_TEXT = (
    f"{_TAG_SIGNATURE}\n"
    "# This file is a cache directory tag created by dify-repack.\n"
    "# For information about cache directory tags, see https://bford.info/cachedir/\n"
)


class WheelCache:
    """Files stored by sha256 under ``root/files/ab/abcdef.../<filename>``; a file is there only once verified.

    The name is not trusted: a file is hashed again before it is used in a run (once per run, while its inode,
    size and mtime stay the same), and an entry whose bytes do not match is dropped, said through ``warn``
    and fetched or built again. Built wheels keep their sha256 beside them for the same check.
    """

    def __init__(self, root: Path, *, warn: Callable[[str], None] | None = None) -> None:
        self.root = root.absolute()  # tools run from other folders (a replay's plugin dir) must find it too
        self.fetched: set[Path] = set()  # files this run downloaded or built (not "already in the cache")
        self._warn = warn or (lambda _message: None)
        self._verified: dict[Path, tuple[tuple[int, int, int], str]] = {}
        self._lock = threading.Lock()

    def mark(self) -> None:
        """Create the cache folder with its tag (once): what `clean` later checks before deleting anything."""
        tag = self.root / CACHEDIR_TAG
        if not tag.exists():
            self.root.mkdir(parents=True, exist_ok=True)
            tag.write_text(_TAG_TEXT, encoding="utf-8")

    def is_ours(self) -> bool:
        try:
            text = (self.root / CACHEDIR_TAG).read_text(encoding="utf-8", errors="replace")
        except OSError:
            return False
        return text.startswith(_TAG_SIGNATURE) and "dify-repack" in text

    @property
    def uv_cache(self) -> Path:
        return self.root / "uv-cache"

    def path_for(self, sha256: str, filename: str) -> Path:
        return self.root / "files" / sha256[:2] / sha256 / filename

    def lookup(self, artifact: Artifact) -> Path | None:
        if artifact.sha256 is None:
            return None
        path = self.path_for(artifact.sha256, artifact.filename)
        if not path.is_file():
            return None
        if self.verify(path, artifact.sha256.lower()):
            return path
        return None

    def verify(self, path: Path, sha256: str) -> bool:
        """Whether ``path`` hashes to ``sha256``; a mismatching entry is removed and the run told so."""
        identity = _identity(path)
        with self._lock:
            if self._verified.get(path) == (identity, sha256):
                return True
        actual = file_sha256(path)
        if actual == sha256:
            self._remember(path, sha256)
            return True
        path.unlink(missing_ok=True)
        self._warn(
            f"cache: {path.name} did not match its sha256 (found {actual[:12]}…, expected {sha256[:12]}…); "
            "dropped it, it is fetched again"
        )
        return False

    def _remember(self, path: Path, sha256: str) -> None:
        with self._lock:
            self._verified[path] = (_identity(path), sha256)

    def export(self, path: Path, dest: Path) -> None:
        """Put a verified cache file into a package: a hard link when it is still the file checked, else a copy
        whose bytes are checked again."""
        with self._lock:
            known = self._verified.get(path)
        if known is None:
            raise ValueError(f"{path} was not verified in this run")  # a programming error, not user input
        identity, sha256 = known
        try:
            os.link(path, dest)
            if _identity(dest) == identity:
                return
            dest.unlink()  # the entry changed since it was checked: copy it and check the copy
        except OSError:
            pass  # the cache may be on another file system
        shutil.copyfile(path, dest)
        if file_sha256(dest) != sha256:
            dest.unlink()
            raise EnvironmentProblem(
                f"cache: {path.name} changed while this run used it",
                tip="another process is writing the cache; run again",
            )

    def fetch(self, client: httpx.Client, artifact: Artifact, advance: ProgressCallback | None = None) -> Path:
        cached = self.lookup(artifact)
        if cached is not None:
            return cached
        # A wheel is a zip: an error or login page served with status 200 is refused before its hash is checked.
        magic = ZIP_MAGIC if artifact.filename.endswith(".whl") else None
        if artifact.sha256 is None:
            # No hash from the index: download to learn it, then file it under the real one.
            with tempfile.TemporaryDirectory(dir=self.scratch()) as temp:
                loose = Path(temp) / artifact.filename
                digest = download(client, artifact.url, loose, size=artifact.size, progress=advance, magic=magic)
                stored = self.store(loose, digest)
                self.fetched.add(stored)
                return stored
        path = self.path_for(artifact.sha256, artifact.filename)
        digest = download(
            client, artifact.url, path, sha256=artifact.sha256, size=artifact.size, progress=advance, magic=magic
        )
        self._remember(path, digest)
        self.fetched.add(path)
        return path

    def store(self, file: Path, sha256: str) -> Path:
        """Move a verified file into the cache atomically (it may already be there from a parallel run)."""
        path = self.path_for(sha256, file.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        file.replace(path)
        self._remember(path, sha256)
        return path

    def built_wheels(self, build_dir: Path) -> list[Path]:
        """The verified wheels built earlier into ``build_dir``; a damaged build is dropped (and rebuilt)."""
        wheels = sorted(build_dir.glob("*.whl")) if build_dir.is_dir() else []
        for wheel in wheels:
            sidecar = wheel.with_name(wheel.name + SHA256_SUFFIX)
            expected = sidecar.read_text(encoding="ascii", errors="replace").strip() if sidecar.is_file() else ""
            if not self.verify(wheel, expected):
                shutil.rmtree(build_dir, ignore_errors=True)
                return []
        return wheels

    def store_built(self, wheel: Path, build_dir: Path) -> Path:
        """Keep a freshly built wheel in ``build_dir`` with its sha256 beside it.

        Runs side by side (a batch, two processes) may build the same sdist at once; a rebuild differs in its
        timestamps, and replacing the first wheel would change a file another run has already checked. So the
        first wheel stored stays, under a lock, and the later build is dropped.
        """
        build_dir.mkdir(parents=True, exist_ok=True)
        final = build_dir / wheel.name
        sidecar = final.with_name(final.name + SHA256_SUFFIX)
        with (build_dir / ".lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            stored = sidecar.read_text(encoding="ascii", errors="replace").strip() if sidecar.is_file() else ""
            if final.is_file() and stored and self.verify(final, stored):
                wheel.unlink(missing_ok=True)
                return final
            sha256 = file_sha256(wheel)
            write_atomically(sidecar, f"{sha256}\n")
            wheel.replace(final)
        self._remember(final, sha256)
        return final

    def built_dir(self, sdist: Artifact, python: str) -> Path:
        """Where wheels built from one sdist by one CPython version and machine are kept."""
        key = sdist.sha256 or sdist.filename
        return self.root / "built" / key[:2] / key / f"cp{python.replace('.', '')}-{platform.machine()}"

    def scratch(self) -> Path:
        scratch = self.root / "tmp"
        scratch.mkdir(parents=True, exist_ok=True)
        return scratch

    def size(self) -> tuple[int, int]:
        found = self.root.rglob("*") if self.root.exists() else []
        files = [path for path in found if path.is_file() and path.name != CACHEDIR_TAG]
        return len(files), sum(path.stat().st_size for path in files)

    def clean(self) -> None:
        """Delete the cache; refused for a folder this tool did not create (no dify-repack CACHEDIR.TAG)."""
        if not self.root.exists():
            return
        if self.root.is_symlink() or not self.is_ours():
            raise UsageError(
                f"{self.root}: not a dify-repack cache (no {CACHEDIR_TAG} written by dify-repack); refusing to delete it",
                tip="check --cache-dir / DIFY_REPACK_CACHE_DIR; a cache made by an older dify-repack has no tag: "
                "delete it yourself if you are sure",
            )
        shutil.rmtree(self.root, ignore_errors=True)


def _identity(path: Path) -> tuple[int, int, int]:
    stat = path.stat()
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


@dataclass(frozen=True)
class Selected:
    """The wheels for one package across the targets."""

    pin: Pin
    files: dict[Target, Path]  # target -> wheel file in the cache
    built: bool
    origins: dict[Target, str] = field(default_factory=dict)  # target -> URL of the wheel, or of the sdist built

    def provenance(self) -> dict[str, Provenance]:
        """Where each wheel file came from: its index URL, or the sdist it was built from here."""
        return {path.name: Provenance(self.origins.get(target, ""), self.built) for target, path in self.files.items()}


@dataclass(frozen=True)
class Provenance:
    url: str  # the wheel's URL on the index, or the sdist's when it was built here
    built: bool  # built from that sdist on this machine


def fetch_all(
    plan: dict[Target, list[Pin]],
    cache: WheelCache,
    *,
    indexes: Indexes,
    reporter: Reporter | None = None,
) -> list[Selected]:
    """Download (or build) the best wheel of every pin for every target; the same file is fetched once."""
    reporter = reporter or NullReporter()
    wanted: dict[str, Artifact] = {}
    choice: dict[tuple[Target, str], Artifact] = {}
    needs_build: dict[tuple[str, str], list[Target]] = {}
    pins: dict[tuple[str, str], Pin] = {}
    for target, target_pins in plan.items():
        for pin in target_pins:
            pins[(pin.name, pin.version)] = pin
            wheel = pin.best_wheel(target)
            if wheel is not None:
                choice[(target, pin.name)] = wheel
                wanted[wheel.url] = wheel
            else:
                needs_build.setdefault((pin.name, pin.version), []).append(target)
    missing_sdist = [pins[key] for key in needs_build if pins[key].sdist is None]
    if missing_sdist:
        pin = missing_sdist[0]
        where = ", ".join(str(target) for target in needs_build[(pin.name, pin.version)])
        raise BuildError(
            f"{pin.name} {pin.version} has no wheel for {where} and no sdist to build one from",
            tip="pin a version that publishes a wheel for that platform, or drop that architecture with --arch",
        )
    # sdists first: they are few and small, and building them overlaps with the wheel downloads.
    sdist_of = {key: sdist for key in needs_build if (sdist := pins[key].sdist) is not None}
    sdists = _download_many(list(sdist_of.values()), cache, indexes, reporter)
    with cancel.executor(1) as builder:
        builds = {
            key: builder.submit(
                build_wheels, pins[key], sdists[sdist.url], needs_build[key], cache, indexes=indexes, reporter=reporter
            )
            for key, sdist in sdist_of.items()
        }
        downloaded = _download_many(list(wanted.values()), cache, indexes, reporter)
        built: dict[tuple[str, str], dict[Target, Path]] = {}
        failures: list[BuildError] = []
        for key, future in builds.items():
            try:
                built[key] = future.result()
            except BuildError as error:
                failures.append(error)  # go on, so that one run names every package that needs attention
    for url, path in downloaded.items():
        _check_downloaded(wanted[url], path)
    if len(failures) == 1:
        raise failures[0]
    if failures:
        raise BuildError("; ".join(error.message for error in failures), tip=failures[0].tip)
    selected: dict[tuple[str, str], Selected] = {}
    for target, target_pins in plan.items():
        for pin in target_pins:
            key = (pin.name, pin.version)
            wheel = choice.get((target, pin.name))
            path = downloaded[wheel.url] if wheel else built[key][target]
            entry = selected.setdefault(key, Selected(pin, {}, key in built))
            entry.files[target] = path
            origin = wheel or pin.sdist
            entry.origins[target] = origin.url if origin else ""
    return sorted(selected.values(), key=lambda item: (item.pin.name, item.pin.version))


def _check_downloaded(artifact: Artifact, path: Path) -> None:
    """A downloaded wheel must be the wheel its name promises; its sha256 alone may vouch for a broken file."""
    try:
        check_wheel(path, artifact.filename)
    except NotAWheel as exc:
        raise DependencyError(
            f"{artifact.filename} (from {artifact.url}) is not a usable wheel: {exc}",
            tip=BROKEN_FILE_TIP,
        ) from None


def prefetch(
    pins: list[Pin], target: Target, cache: WheelCache, *, indexes: Indexes, reporter: Reporter | None = None
) -> None:
    """Fetch and build what one target needs into the cache; fetch_all reports any failure later."""
    with contextlib.suppress(DifyRepackError):
        fetch_all({target: pins}, cache, indexes=indexes, reporter=reporter)


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB" if size >= 100_000 else f"{size / 1e3:.1f} kB"


def _download_many(
    artifacts: Sequence[Artifact], cache: WheelCache, indexes: Indexes, reporter: Reporter
) -> dict[str, Path]:
    result: dict[str, Path] = {}
    todo = []
    for artifact in artifacts:
        cached = cache.lookup(artifact)
        if cached is not None:
            result[artifact.url] = cached
        else:
            todo.append(artifact)
    # Files an earlier step of this run fetched (the first target's prefetch) are not "already in the cache".
    earlier = sum(path in cache.fetched for path in result.values())
    known = f"{len(result) - earlier} already in the cache" + (f", {earlier} fetched above" if earlier else "")
    if not todo:
        return result
    total = sum(artifact.size or 0 for artifact in todo)
    reporter.step(f"downloading {plural(len(todo), 'file')} ({_megabytes(total)}); {known}")
    with (
        make_client(timeout=120, auth=indexes.auth()) as client,
        reporter.task("downloading", total or None, unit="bytes") as advance,
        cancel.executor(PARALLEL_DOWNLOADS) as pool,
    ):
        futures = {artifact.url: pool.submit(cache.fetch, client, artifact, advance) for artifact in todo}
        for url, future in futures.items():
            result[url] = future.result()
    return result


def build_wheels(
    pin: Pin,
    sdist: Path,
    targets: Sequence[Target],
    cache: WheelCache,
    *,
    indexes: Indexes,
    reporter: Reporter,
) -> dict[Target, Path]:
    """Build ``sdist`` once and map every target to the wheel, or fail naming what the user can do."""
    python_version = targets[0].python
    interpreter = find_python(python_version)
    # Without the target's CPython a pure sdist still builds correctly; the cache key records what built it.
    build_python = interpreter or Path(sys.executable)
    key_version = python_version if interpreter else f"{sys.version_info.major}.{sys.version_info.minor}"
    build_dir = cache.built_dir(pin.sdist, key_version) if pin.sdist else cache.root / "built" / "unknown"
    wheels = cache.built_wheels(build_dir)
    if not wheels:
        started = time.monotonic()
        with reporter.activity(f"building {pin.name} {pin.version} from its sdist (no wheel is published)"):
            wheels = [_build(pin, sdist, build_python, build_dir, cache, indexes)]
        cache.fetched.add(wheels[0])
        reporter.step(f"built {wheels[0].name} in {time.monotonic() - started:.1f} s")
    wheel = wheels[0]
    if is_pure_wheel(wheel.name):
        return dict.fromkeys(targets, wheel)
    host_machine = platform.machine()
    result: dict[Target, Path] = {}
    for target in targets:
        if not host_runs(target):
            raise BuildError(
                f"{pin.name} {pin.version} is published only as an sdist with native code; it cannot be built for "
                f"{target} on this {sys.platform} {host_machine} host",
                tip=f"run dify-repack on a Linux {target.arch} machine, or leave {target.arch} out with --arch "
                f"{next((arch for arch, m in MACHINES.items() if m == host_machine), 'amd64')}"
                if sys.platform == "linux"
                else f"build it on a Linux {target.arch} machine (the daemon runs Linux wheels only)",
            )
        if target.wheel_rank(wheel.name) is None:
            raise BuildError(
                f"{pin.name} {pin.version} has native code and was built as {wheel.name}, which CPython "
                f"{target.python} cannot load",
                tip=f"install CPython {target.python} on this host (e.g. `uv python install {target.python}`) and retry",
            )
        result[target] = wheel
    return result


def _build(pin: Pin, sdist: Path, python: Path, build_dir: Path, cache: WheelCache, indexes: Indexes) -> Path:
    with tempfile.TemporaryDirectory(dir=cache.scratch()) as temp:
        out = Path(temp) / "out"
        result = run(
            [uv_bin(), "build", "--wheel", "--python", python, "--out-dir", out, sdist, *indexes.uv_args()],
            env=clean_env({"UV_CACHE_DIR": str(cache.uv_cache), **indexes.uv_env()}),
            timeout=1800,
        )
        wheels = sorted(out.glob("*.whl")) if out.is_dir() else []
        if result.returncode != 0 or not wheels:
            # The backend's own error lines say why (a missing compiler or header); uv's wrapping does not.
            reasons = [
                line.strip()
                for line in result.output.splitlines()
                if re.search(r"\berror\b", line, re.IGNORECASE)
                and not line.strip().startswith(("×", "cause", "hint", "╰"))
            ]
            raise BuildError(
                f"{pin.name} {pin.version}: building a wheel from its sdist failed: {'; '.join(reasons[-3:]) or result.tail(3)}",
                tip="it may need a C compiler or system headers on this host; or pin a version that publishes wheels",
            )
        return cache.store_built(wheels[0], build_dir)
