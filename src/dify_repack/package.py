"""Package I/O: read a plugin (``.difypkg`` zip or source directory) safely, write the zip the daemon accepts.

The daemon rejects directory entries, extracts every file with mode 0644 and identifies a package by a
checksum over paths and contents (DAEMON-FACTS §1); the writer here produces exactly that, deterministically.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tempfile
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

import pathspec

from . import cancel
from .errors import PackageError

SIGNATURE_FILE = ".verification.dify.json"
# Far above any real plugin (torch-sized packages are ~3 GiB) and far below what would fill a disk.
MAX_UNCOMPRESSED_BYTES = 8 * 1024**3
# A fixed timestamp makes the same input give a byte-identical zip (zip's epoch is 1980).
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
_CHUNK = 1024 * 1024
# Never part of a plugin, whatever its ignore files say: VCS data, local venvs, caches, built packages.
ALWAYS_IGNORED = (".git/", ".venv/", "__pycache__/", "*.pyc", "*.difypkg", ".DS_Store")


@dataclass(frozen=True)
class ZipStats:
    path: Path
    files: int
    compressed_bytes: int
    uncompressed_bytes: int


def _check_member_name(name: str, source: Path) -> PurePosixPath:
    posix = PurePosixPath(name)
    if "\\" in name or posix.is_absolute() or (len(name) > 1 and name[1] == ":"):
        raise PackageError(f"{source}: entry {name!r} has an absolute or non-POSIX path; refusing to extract it")
    if ".." in posix.parts:
        raise PackageError(f"{source}: entry {name!r} points outside the package ('..'); refusing to extract it")
    return posix


@contextmanager
def open_package(package: Path) -> Iterator[zipfile.ZipFile]:
    """Open a ``.difypkg`` for reading; an unreadable file is a PackageError naming it."""
    try:
        archive = zipfile.ZipFile(package)
    except FileNotFoundError:
        raise PackageError(f"{package}: no such file") from None
    except (zipfile.BadZipFile, OSError) as exc:
        raise PackageError(
            f"{package}: not a readable .difypkg (zip) file: {exc}",
            tip="a .difypkg is a zip archive; a truncated download is the usual cause",
        ) from None
    with archive:
        yield archive


def extract_package(source: Path, dest: Path, *, max_bytes: int | None = None) -> None:
    """Extract a ``.difypkg`` into ``dest`` as the daemon would (files only), refusing unsafe entries."""
    max_bytes = max_bytes or MAX_UNCOMPRESSED_BYTES
    with open_package(source) as archive:
        members = [info for info in archive.infolist() if not info.is_dir()]
        total = sum(info.file_size for info in members)
        if total > max_bytes:
            raise PackageError(
                f"{source}: entries would unpack to {total / 1024**3:.1f} GiB, above the "
                f"{max_bytes / 1024**3:.0f} GiB safety limit (zip bomb?)"
            )
        for info in members:
            cancel.check()
            posix = _check_member_name(info.filename, source)
            if stat.S_ISLNK(info.external_attr >> 16):
                raise PackageError(
                    f"{source}: entry {info.filename!r} is a symbolic link; Dify packages hold files only"
                )
            target = dest.joinpath(*posix.parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                with archive.open(info) as src, target.open("wb") as out:
                    _copy_limited(src, out, info.file_size, info.filename, source)
            except (zipfile.BadZipFile, EOFError, OSError, zipfile.LargeZipFile) as exc:
                raise PackageError(f"{source}: entry {info.filename!r} is corrupt or truncated: {exc}") from None
            target.chmod(0o644)


def _copy_limited(src: IO[bytes], out: IO[bytes], declared: int, name: str, source: Path) -> None:
    # The central directory's size may lie; stop at the declared size instead of trusting it.
    written = 0
    while chunk := src.read(_CHUNK):
        written += len(chunk)
        if written > declared:
            raise PackageError(f"{source}: entry {name!r} is larger than its header says (zip bomb?)")
        out.write(chunk)


def ignore_spec(root: Path) -> pathspec.GitIgnoreSpec:
    """The rules the official packager applies: ``.difyignore``, else ``.gitignore`` (DAEMON-FACTS §8)."""
    for name in (".difyignore", ".gitignore"):
        rules = root / name
        if rules.is_file():
            lines = rules.read_text(encoding="utf-8", errors="replace").splitlines()
            return pathspec.GitIgnoreSpec.from_lines([*ALWAYS_IGNORED, *lines])
    return pathspec.GitIgnoreSpec.from_lines(ALWAYS_IGNORED)


def copy_plugin_dir(source: Path, dest: Path) -> None:
    """Copy a plugin source directory into ``dest``, skipping what the official packager would skip."""
    if not source.is_dir():
        raise PackageError(f"{source}: not a directory")
    spec = ignore_spec(source)
    for path in sorted(_walk_files(source, spec)):
        relative = path.relative_to(source)
        if path.is_symlink():
            raise PackageError(
                f"{source}: {relative.as_posix()} is a symbolic link; Dify packages hold files only",
                tip="replace the link with the file, or list it in .difyignore",
            )
        target = dest / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        target.chmod(0o644)


def _walk_files(root: Path, spec: pathspec.GitIgnoreSpec) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        base = Path(dirpath)
        relative_dir = base.relative_to(root).as_posix()
        prefix = "" if relative_dir == "." else relative_dir + "/"
        dirnames[:] = [name for name in dirnames if not spec.match_file(prefix + name + "/")]
        for name in filenames:
            if not spec.match_file(prefix + name):
                yield base / name


def iter_files(root: Path) -> list[str]:
    """Every file below ``root`` as a sorted POSIX relative path: the zip order the packager uses."""
    return sorted(path.relative_to(root).as_posix() for path in root.rglob("*") if path.is_file())


_SAMPLE = 256 * 1024


def _compression(name: str, path: Path) -> int:
    """Deflate what deflates; store wheels and other already-compressed data (models, archives, images).

    Deflating such data saves about 1% and costs most of the write time; a sample of the file's start decides,
    so the choice depends on the content alone and the output stays deterministic.
    """
    if name.endswith(".whl"):
        return zipfile.ZIP_STORED
    with path.open("rb") as handle:
        sample = handle.read(_SAMPLE)
    if len(sample) >= 4096 and len(zlib.compress(sample, 1)) > 0.95 * len(sample):
        return zipfile.ZIP_STORED
    return zipfile.ZIP_DEFLATED


@contextmanager
def atomic_output(target: Path) -> Iterator[Path]:
    """A temporary path beside ``target`` that replaces it only when the block succeeds."""
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    os.close(handle)
    temp = Path(temp_name)
    try:
        yield temp
        cancel.check()  # an interrupted run never leaves its output, however far it got
        temp.chmod(0o644)
        temp.replace(target)
    finally:
        temp.unlink(missing_ok=True)


def write_package(root: Path, output: Path, *, names: Iterable[str] | None = None, comment: bytes = b"") -> ZipStats:
    """Write the files below ``root`` (or ``names`` in that order) as a deterministic, daemon-valid zip."""
    ordered = list(names) if names is not None else iter_files(root)
    uncompressed = 0
    with atomic_output(output) as temp:
        with zipfile.ZipFile(temp, "w", allowZip64=True) as archive:
            for name in ordered:
                cancel.check()
                info = zipfile.ZipInfo(name, date_time=ZIP_EPOCH)
                info.external_attr = (stat.S_IFREG | 0o644) << 16
                info.create_system = 3  # unix, so the mode above is read
                source = root / name
                info.compress_type = _compression(name, source)
                info.file_size = source.stat().st_size
                uncompressed += info.file_size
                with (
                    source.open("rb") as src,
                    archive.open(info, "w", force_zip64=info.file_size > 2**31) as dst,
                ):
                    shutil.copyfileobj(src, dst, _CHUNK)
            archive.comment = comment
        size = temp.stat().st_size
    return ZipStats(output, len(ordered), size, uncompressed)


def package_stats(package: Path) -> ZipStats:
    with open_package(package) as archive:
        members = [info for info in archive.infolist() if not info.is_dir()]
    return ZipStats(package, len(members), package.stat().st_size, sum(info.file_size for info in members))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def plugin_checksum(entries: Iterable[tuple[str, str]]) -> str:
    """The daemon's package checksum from ``(path, sha256-hex of content)`` pairs (DAEMON-FACTS §1)."""
    digest = hashlib.sha256()
    for path, content_hash in sorted(entries):
        digest.update(hashlib.sha256(path.encode()).hexdigest().encode())
        digest.update(content_hash.encode())
    return digest.hexdigest()


def entry_digests(archive: zipfile.ZipFile) -> Iterator[tuple[str, bytes]]:
    """``(name, sha256 digest)`` of every file entry in zip order, streamed: what the daemon hashes."""
    for info in archive.infolist():
        if info.is_dir():
            continue
        digest = hashlib.sha256()
        with archive.open(info) as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
        yield info.filename, digest.digest()


def zip_checksum(package: Path) -> str:
    """The checksum part of the plugin identifier for a ``.difypkg``, computed as the daemon does."""
    with open_package(package) as archive:
        return plugin_checksum((name, digest.hex()) for name, digest in entry_digests(archive))
