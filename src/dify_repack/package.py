"""Package I/O: read a plugin (``.difypkg`` zip or source directory) safely, write the zip the daemon accepts.

The daemon rejects directory entries, extracts every file with mode 0644 and identifies a package by a
checksum over paths and contents (DAEMON-FACTS §1); the writer here produces exactly that, deterministically.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

import pathspec

from . import cancel
from .errors import EnvironmentProblem, PackageError
from .files import CHUNK, atomic_output, read_bounded
from .redaction import shown_line

SIGNATURE_FILE = ".verification.dify.json"
# Far above any real plugin (torch-sized packages are ~3 GiB) and far below what would fill a disk.
MAX_UNCOMPRESSED_BYTES = 8 * 1024**3
# Deflate of real data rarely passes 20:1; above this, a large entry is a bomb (deflate's ceiling is ~1030:1).
MAX_RATIO = 200
RATIO_FLOOR = 8 * 1024 * 1024  # smaller entries (an empty placeholder) may compress absurdly well
# The central directory is parsed into memory: this bounds it (real packages hold a few thousand files).
MAX_ENTRIES = 200_000
# The compression methods Go's archive/zip (the daemon) reads.
_DAEMON_METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflated"}
# What a zip read can raise on hostile bytes besides OSError: all of it means "corrupt package".
ZIP_READ_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, ValueError)
ZIP_MAGIC = b"PK\x03\x04"  # how a zip file (a package, a wheel) starts
# A fixed timestamp makes the same input give a byte-identical zip (zip's epoch is 1980).
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
# Linux's NAME_MAX, and a path length far above real plugins' (<300) and below PATH_MAX with any temp prefix.
_MAX_PART_BYTES = 255
_MAX_NAME_BYTES = 1024
_MAX_RULES_BYTES = 1024 * 1024  # an ignore file of a real plugin is a few hundred bytes
# Never part of a plugin, whatever its ignore files say: VCS data, local venvs, caches, built packages.
ALWAYS_IGNORED = (".git/", ".venv/", "__pycache__/", "*.pyc", "*.difypkg", ".DS_Store")


@dataclass(frozen=True)
class ZipStats:
    path: Path
    files: int
    compressed_bytes: int
    uncompressed_bytes: int
    checksum: str = ""  # the daemon's checksum, when the writer computed it on the way


def _check_member_name(name: str, source: object) -> PurePosixPath:
    posix = PurePosixPath(name)
    if "\\" in name or posix.is_absolute() or (len(name) > 1 and name[1] == ":"):
        raise PackageError(
            f"{source}: entry {shown_line(name)} has an absolute or non-POSIX path; refusing to extract it"
        )
    if ".." in posix.parts:
        raise PackageError(
            f"{source}: entry {shown_line(name)} points outside the package ('..'); refusing to extract it"
        )
    if not posix.parts or posix.parts == (".",):
        raise PackageError(f"{source}: entry {shown_line(name)} has an empty path")
    if len(name.encode()) > _MAX_NAME_BYTES or any(len(part.encode()) > _MAX_PART_BYTES for part in posix.parts):
        raise PackageError(f"{source}: entry {shown_line(name)} has a name too long for a file system")
    return posix


def check_entries(archive: zipfile.ZipFile, source: object) -> None:
    """Refuse what the daemon would misread or what could hurt this machine, before any content is read.

    One check for every reader (pack, inspect, verify, sign, verify-signature): the names are safe and unique,
    each entry is a plain stored or deflated file, and the declared sizes are sane (no bomb).
    """
    infos = archive.infolist()
    if len(infos) > MAX_ENTRIES:
        raise PackageError(f"{source}: {len(infos)} entries, above the {MAX_ENTRIES} safety limit")
    files: dict[PurePosixPath, str] = {}
    total = 0
    for info in infos:
        # ZipInfo cuts a name at NUL; the daemon (Go) does not, so the two would read different names.
        if "\x00" in info.orig_filename:
            raise PackageError(f"{source}: entry {shown_line(info.orig_filename)} has a NUL byte in its name")
        name = info.filename
        posix = _check_member_name(name, source)
        if info.is_dir():
            continue
        if stat.S_ISLNK(info.external_attr >> 16):
            raise PackageError(f"{source}: entry {shown_line(name)} is a symbolic link; Dify packages hold files only")
        if info.flag_bits & 0x1:
            raise PackageError(f"{source}: entry {shown_line(name)} is encrypted; the daemon cannot read it")
        if info.compress_type not in _DAEMON_METHODS:
            raise PackageError(
                f"{source}: entry {shown_line(name)} uses compression method {info.compress_type}; "
                "the daemon reads only stored and deflated entries"
            )
        if posix in files:
            # The daemon opens entries by name, so it may read either copy: the outcome is not predictable.
            raise PackageError(f"{source}: entry {shown_line(name)} appears twice; the daemon may read either copy")
        files[posix] = name
        if info.file_size > RATIO_FLOOR and info.file_size > MAX_RATIO * max(info.compress_size, 1):
            raise PackageError(
                f"{source}: entry {shown_line(name)} declares {info.file_size} bytes from {info.compress_size} "
                f"compressed (ratio above {MAX_RATIO}: zip bomb?)"
            )
        total += info.file_size
    if total > MAX_UNCOMPRESSED_BYTES:
        raise PackageError(
            f"{source}: entries would unpack to {total / 1024**3:.1f} GiB, above the "
            f"{MAX_UNCOMPRESSED_BYTES / 1024**3:.0f} GiB safety limit (zip bomb?)"
        )
    for posix, name in files.items():
        for parent in posix.parents:
            if parent in files:
                raise PackageError(
                    f"{source}: entry {shown_line(name)} needs a folder where the file {shown_line(files[parent])} is"
                )


@contextmanager
def open_package(package: Path, *, shown_as: object = None) -> Iterator[zipfile.ZipFile]:
    """Open a ``.difypkg`` for reading, checked (``check_entries``); any read error is a PackageError.

    ``shown_as`` names the package in messages (the user's path or URL when ``package`` is a temp copy).
    """
    where = package if shown_as is None else shown_as
    try:
        # A FIFO would block the open for ever and a device never ends: only a regular file is read.
        if package.exists() and not package.is_file():
            raise PackageError(f"{where}: not a regular file, so not a .difypkg")
        archive = zipfile.ZipFile(package)
    except FileNotFoundError:
        raise PackageError(f"{where}: no such file") from None
    except UnicodeDecodeError:
        raise PackageError(f"{where}: an entry name is flagged UTF-8 but is not valid UTF-8") from None
    except (*ZIP_READ_ERRORS, OSError) as exc:
        raise PackageError(
            f"{where}: not a readable .difypkg (zip) file: {_first_line(exc)}",
            tip="a .difypkg is a zip archive; a truncated download is the usual cause",
        ) from None
    with archive:
        check_entries(archive, where)
        try:
            yield archive
        except ZIP_READ_ERRORS as exc:
            raise PackageError(f"{where}: corrupt entry: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def extract_package(source: Path, dest: Path, *, shown_as: object = None) -> None:
    """Extract a ``.difypkg`` into ``dest`` as the daemon would (files only), refusing unsafe entries."""
    where = source if shown_as is None else shown_as
    with open_package(source, shown_as=where) as archive:
        root = dest.resolve()
        for info in archive.infolist():
            cancel.check()
            if info.is_dir():
                continue
            target = dest.joinpath(*PurePosixPath(info.filename).parts)
            # Names were checked; this guards against a folder of dest being a link planted earlier.
            if not target.parent.resolve().is_relative_to(root):
                raise PackageError(
                    f"{where}: entry {shown_line(info.filename)} would be written outside the package folder"
                )
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(info) as src, target.open("wb") as out:
                    _copy_limited(src, out, info.file_size, info.filename, where)
                target.chmod(0o644)
            except OSError as exc:
                raise EnvironmentProblem.cannot_write(dest, exc) from None


def _copy_limited(src: IO[bytes], out: IO[bytes], declared: int, name: str, source: object) -> None:
    # The central directory's size may lie; stop at the declared size instead of trusting it.
    written = 0
    while chunk := src.read(CHUNK):
        written += len(chunk)
        if written > declared:
            raise PackageError(f"{source}: entry {shown_line(name)} is larger than its header says (zip bomb?)")
        out.write(chunk)


def ignore_spec(root: Path) -> pathspec.GitIgnoreSpec:
    """The rules the official packager applies: ``.difyignore``, else ``.gitignore`` (DAEMON-FACTS §8)."""
    for name in (".difyignore", ".gitignore"):
        rules = root / name
        if rules.is_file():
            lines = read_bounded(rules, _MAX_RULES_BYTES, f"{root}/{name}").decode("utf-8", "replace").splitlines()
            for number, line in enumerate(lines, 1):
                try:
                    pathspec.GitIgnoreSpec.from_lines([line])
                except ValueError as exc:  # pathspec's GitIgnorePatternError: "!" alone, and the like
                    raise PackageError(
                        f"{root}/{name}:{number}: not a valid ignore pattern ({exc})",
                        tip="fix or remove that line: the official packager could not read it either",
                    ) from None
            return pathspec.GitIgnoreSpec.from_lines([*ALWAYS_IGNORED, *lines])
    return pathspec.GitIgnoreSpec.from_lines(ALWAYS_IGNORED)


def copy_plugin_dir(source: Path, dest: Path, *, follow_symlinks: bool = False) -> list[str]:
    """Copy a plugin source directory into ``dest``, skipping what the official packager would skip.

    The copy is whole or refused: unreadable entries and special files are errors naming them. A symbolic
    link is stored as a regular file holding its target's content (as the official packager does) when the
    target stays inside the plugin folder or the git repository holding it, or anywhere with
    ``follow_symlinks``; other links are refused, so a cloned plugin cannot ship ``~/.ssh/id_rsa``.
    Returns one note per link followed.
    """
    if not source.is_dir():
        raise PackageError(f"{source}: not a directory")
    copier = _Copier(source, dest, ignore_spec(source), follow_symlinks)
    copier.copy_dir(source, "", ())
    return copier.notes


def repository_root(folder: Path) -> Path | None:
    """The git work tree holding ``folder`` (the nearest ancestor with ``.git``), if any."""
    for candidate in (folder, *folder.parents):
        if (candidate / ".git").exists():
            return candidate
    return None


class _Copier:
    def __init__(self, source: Path, dest: Path, spec: pathspec.GitIgnoreSpec, follow_all: bool) -> None:
        self.source, self.dest, self.spec, self.follow_all = source, dest, spec, follow_all
        real = source.resolve()
        self.boundary = repository_root(real) or real
        self.notes: list[str] = []
        self.total = 0  # bytes copied so far

    def _shown(self, relative: str) -> str:
        return f"{self.source}/{relative}"

    def copy_dir(self, folder: Path, prefix: str, ancestors: tuple[Path, ...]) -> None:
        real = folder.resolve()
        if real in ancestors:
            raise PackageError(f"{self._shown(prefix.rstrip('/'))}: symbolic link loop (leads back to {real})")
        try:
            with os.scandir(folder) as scan:
                entries = sorted(scan, key=lambda entry: entry.name)
        except OSError as exc:
            raise PackageError(
                f"{self._shown(prefix) if prefix else self.source}: cannot read this folder ({exc.strerror})",
                tip="make it readable, or list it in .difyignore",
            ) from None
        for entry in entries:
            relative = prefix + entry.name
            self._check_name(relative)
            try:
                is_link, is_dir = entry.is_symlink(), entry.is_dir(follow_symlinks=False)
            except OSError as exc:
                raise PackageError(f"{self._shown(relative)}: cannot read it ({exc.strerror})") from None
            if self.spec.match_file(relative + "/" if is_dir else relative):
                continue
            path = Path(entry.path)
            if is_link:
                self._copy_link(path, relative, (*ancestors, real))
            elif is_dir:
                self.copy_dir(path, relative + "/", (*ancestors, real))
            else:
                self._copy_file(path, relative)

    def _check_name(self, relative: str) -> None:
        """A name every reader of the package accepts (``_check_member_name``): UTF-8, no backslash."""
        try:
            relative.encode()
        except UnicodeEncodeError:
            shown = relative.encode(errors="surrogateescape").decode(errors="backslashreplace")
            raise PackageError(
                f"{self._shown(shown)}: the name is not valid UTF-8, which a package entry must be",
                tip="rename it, or list it in .difyignore",
            ) from None
        if "\\" in relative:
            raise PackageError(
                f"{self._shown(relative)}: a backslash in a name reads as a folder on Windows; "
                "a package refuses such entries",
                tip="rename it, or list it in .difyignore",
            )

    def _inside(self, target: Path) -> bool:
        # Hidden folders (.ssh, .aws, .git) are never a plugin's content, even inside a repository: a home
        # folder under version control must not make ~/.ssh a valid target.
        if not target.is_relative_to(self.boundary):
            return False
        return not any(part.startswith(".") for part in target.relative_to(self.boundary).parts[:-1])

    def _copy_link(self, link: Path, relative: str, ancestors: tuple[Path, ...]) -> None:
        try:
            target = link.resolve(strict=True)
        except (OSError, RuntimeError) as exc:
            loop = isinstance(exc, RuntimeError) or getattr(exc, "errno", None) == errno.ELOOP
            problem = "symbolic link loop" if loop else f"symbolic link to a missing file ({link.readlink()})"
            raise PackageError(
                f"{self._shown(relative)}: {problem}", tip="fix the link, or list it in .difyignore"
            ) from None
        if not self.follow_all and not self._inside(target):
            raise PackageError(
                f"{self._shown(relative)}: symbolic link to {target}, outside the plugin folder and its repository; "
                "refusing to package it",
                tip="replace the link with the file, list it in .difyignore, "
                "or pass --follow-symlinks if every link in this folder is meant to ship",
            )
        if target.is_dir():
            if self.spec.match_file(relative + "/"):
                return
            self.notes.append(f"followed symbolic link {relative} -> {link.readlink()} (folder stored as files)")
            self.copy_dir(target, relative + "/", ancestors)
        else:
            self.notes.append(f"followed symbolic link {relative} -> {link.readlink()} (stored as a file)")
            self._copy_file(target, relative)

    def _copy_file(self, path: Path, relative: str) -> None:
        cancel.check()
        target = self.dest / relative
        try:
            info = path.stat()
            mode = info.st_mode
            if not stat.S_ISREG(mode):
                raise PackageError(
                    f"{self._shown(relative)}: is a {_KINDS.get(stat.S_IFMT(mode), 'special file')}, not a regular file",
                    tip="remove it from the plugin folder, or list it in .difyignore",
                )
            # The limit a package may unpack to, checked before copying (a sparse file costs nothing to make).
            self.total += info.st_size
            if self.total > MAX_UNCOMPRESSED_BYTES:
                raise PackageError(
                    f"{self._shown(relative)}: the plugin folder holds more than the "
                    f"{MAX_UNCOMPRESSED_BYTES / 1024**3:.0f} GiB a package may unpack to",
                    tip="list large files the plugin does not need in .difyignore",
                )
            source = path.open("rb")
        except OSError as exc:
            raise PackageError(
                f"{self._shown(relative)}: cannot read it ({exc.strerror})",
                tip="make it readable, or list it in .difyignore",
            ) from None
        with source:
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                with target.open("wb") as out:
                    while chunk := self._read(source, relative):
                        out.write(chunk)
                target.chmod(0o644)
            except OSError as exc:
                raise EnvironmentProblem.cannot_write(self.dest, exc) from None

    def _read(self, source: IO[bytes], relative: str) -> bytes:
        try:
            return source.read(CHUNK)
        except OSError as exc:
            raise PackageError(f"{self._shown(relative)}: cannot read it ({exc.strerror})") from None


_KINDS = {stat.S_IFIFO: "FIFO", stat.S_IFSOCK: "socket", stat.S_IFCHR: "device", stat.S_IFBLK: "device"}


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


def write_package(
    root: Path,
    output: Path,
    *,
    names: Iterable[str] | None = None,
    comment: bytes | Callable[[Sequence[tuple[str, str]]], bytes] = b"",
) -> ZipStats:
    """Write the files below ``root`` (or ``names`` in that order) as a deterministic, daemon-valid zip.

    The daemon's checksum is computed on the way (one read of each file), so the identifier costs nothing.
    ``comment`` may be made from the ``(name, sha256-hex)`` of every entry, in zip order: a signature is.
    """
    ordered = list(names) if names is not None else iter_files(root)
    uncompressed = 0
    digests = []
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
                digest = hashlib.sha256()
                with (
                    source.open("rb") as src,
                    archive.open(info, "w", force_zip64=info.file_size > 2**31) as dst,
                ):
                    while chunk := src.read(CHUNK):
                        digest.update(chunk)
                        dst.write(chunk)
                digests.append((name, digest.hexdigest()))
            archive.comment = comment(digests) if callable(comment) else comment
        size = temp.stat().st_size
    return ZipStats(output, len(ordered), size, uncompressed, plugin_checksum(digests))


def package_stats(package: Path) -> ZipStats:
    with open_package(package) as archive:
        members = [info for info in archive.infolist() if not info.is_dir()]
    return ZipStats(package, len(members), package.stat().st_size, sum(info.file_size for info in members))


def plugin_checksum(entries: Iterable[tuple[str, str]]) -> str:
    """The daemon's package checksum from ``(path, sha256-hex of content)`` pairs (DAEMON-FACTS §1).

    The daemon hashes the raw 32-byte digests, not their hex spelling; entries sorted by path, bytewise.
    """
    digest = hashlib.sha256()
    for path, content_hash in sorted(entries, key=lambda entry: entry[0].encode()):
        digest.update(hashlib.sha256(path.encode()).digest())
        digest.update(bytes.fromhex(content_hash))
    return digest.hexdigest()


def entry_digests(archive: zipfile.ZipFile) -> Iterator[tuple[str, bytes]]:
    """``(name, sha256 digest)`` of every file entry in zip order, streamed: what the daemon hashes."""
    for info in archive.infolist():
        cancel.check()
        if info.is_dir():
            continue
        digest = hashlib.sha256()
        with archive.open(info) as handle:
            while chunk := handle.read(CHUNK):
                digest.update(chunk)
        yield info.filename, digest.digest()


def zip_checksum(package: Path) -> str:
    """The checksum part of the plugin identifier for a ``.difypkg``, computed as the daemon does."""
    with open_package(package) as archive:
        return plugin_checksum((name, digest.hex()) for name, digest in entry_digests(archive))
