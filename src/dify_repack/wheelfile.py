"""What a wheel file must be before the tool trusts it: a readable zip holding the ``.dist-info`` its name
promises, with a METADATA that reads back intact.

An index vouches for a wheel only by its sha256, and a wheel ships in a package whose install the daemon runs:
a file that matches its hash may still be a truncated zip, a page with a zip's first bytes, or another project's
wheel under this name. pip and uv refuse such a wheel only at install time, on the far side of the air gap.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import IO

from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
from packaging.version import InvalidVersion, Version

from .package import ZIP_READ_ERRORS
from .redaction import shown_line

# METADATA is small; a wheel declaring more is not read for it (a bomb costs nothing to decline).
MAX_METADATA = 1024 * 1024
# Broken data, plus an encrypted entry (RuntimeError), an unknown method (NotImplementedError), a read error.
_ERRORS = (*ZIP_READ_ERRORS, RuntimeError, NotImplementedError, OSError)


class NotAWheel(Exception):
    """Why a file cannot be used as the wheel its name says it is (the message is the reason alone)."""


def read_metadata(wheel: Path | IO[bytes]) -> bytes | None:
    """The bytes of the wheel's ``*.dist-info/METADATA`` (None when it has none, or declares over MAX_METADATA).

    Raises NotAWheel when the file is no readable zip or METADATA is corrupt (its CRC is checked on reading).
    """
    try:
        with zipfile.ZipFile(wheel) as archive:
            return _metadata_in(archive, next((i for i in archive.infolist() if _is_metadata(i.filename)), None))
    except _ERRORS as exc:
        raise NotAWheel(f"not a readable zip ({exc or type(exc).__name__})") from None


def check_wheel(path: Path, filename: str) -> bytes | None:
    """Raise NotAWheel unless ``path`` is a readable wheel of the project and version ``filename`` names; its
    METADATA as ``read_metadata`` gives it, from the same single opening of the zip."""
    try:
        name, version, _, _ = parse_wheel_filename(filename)
    except (InvalidWheelFilename, InvalidVersion) as exc:
        raise NotAWheel(f"not a wheel file name ({exc})") from None
    try:
        with zipfile.ZipFile(path) as archive:
            found = {info.filename.split("/", 1)[0]: info for info in archive.infolist() if _is_metadata(info.filename)}
            own = next((info for folder, info in found.items() if _names(folder, name, version)), None)
            if own is None:
                shown = ", ".join(shown_line(folder) for folder in sorted(found)[:3]) or "none"
                raise NotAWheel(f"holds no {name}-{version}.dist-info/METADATA (found: {shown})")
            # Its CRC is checked on reading: a METADATA that does not read back breaks every installer.
            return _metadata_in(archive, own)
    except _ERRORS as exc:
        raise NotAWheel(f"not a readable zip ({exc or type(exc).__name__})") from None


def _metadata_in(archive: zipfile.ZipFile, info: zipfile.ZipInfo | None) -> bytes | None:
    return None if info is None or info.file_size > MAX_METADATA else archive.read(info)


def _is_metadata(member: str) -> bool:
    return member.count("/") == 1 and member.endswith(".dist-info/METADATA")


def _names(folder: str, name: str, version: Version) -> bool:
    """Whether ``NAME-VERSION.dist-info`` is the folder of that project and version (both normalised)."""
    stem, _, given = folder.removesuffix(".dist-info").rpartition("-")
    try:
        return canonicalize_name(stem) == name and Version(given) == version
    except InvalidVersion:
        return False
