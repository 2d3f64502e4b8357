"""The transfer dossier: what crosses the air gap, read from the package file itself.

Every hash, size and license here is taken from the bytes that are shipped, so the SBOM and the report describe
exactly the package a reviewer signs off, whether it was just packed or is inspected later. Where each wheel came
from (its index URL, or an sdist built here) is known only to the run that packed it and is added when given.
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from packaging.utils import InvalidWheelFilename, parse_wheel_filename

from .files import file_sha256
from .inspect import Inspection, inspect_package
from .licenses import License, wheel_license
from .package import entry_digests, open_package
from .verify import VerifyReport
from .wheels import Provenance


@dataclass(frozen=True)
class FileEntry:
    path: str
    sha256: str
    size: int


@dataclass(frozen=True)
class WheelEntry:
    path: str  # inside the package, e.g. wheels/numpy-2.3.3-cp312-...whl
    name: str  # canonical project name
    version: str
    sha256: str
    size: int
    license: License
    targets: tuple[str, ...]  # the targets this wheel installs on
    provenance: Provenance | None  # None when the package was not packed by this run

    @property
    def filename(self) -> str:
        return PurePosixPath(self.path).name


@dataclass(frozen=True)
class PluginDossier:
    inspection: Inspection
    sha256: str  # of the package file itself, as `sha256sum` shows it on the other side
    files: tuple[FileEntry, ...]  # every file entry in zip order, wheels included
    wheels: tuple[WheelEntry, ...]
    notes: tuple[str, ...] = ()  # what the packing run changed (pins, groups, built sdists)
    verification: VerifyReport | None = None

    @property
    def plugin_files(self) -> tuple[FileEntry, ...]:
        """The plugin's own files: everything but the shipped wheels."""
        wheel_paths = {wheel.path for wheel in self.wheels}
        return tuple(entry for entry in self.files if entry.path not in wheel_paths)

    @property
    def attention(self) -> tuple[WheelEntry, ...]:
        """Wheels whose license a reviewer should look at."""
        return tuple(wheel for wheel in self.wheels if wheel.license.attention)


def read_dossier(
    package: Path,
    *,
    provenance: Mapping[str, Provenance] | None = None,
    notes: Sequence[str] = (),
    verification: VerifyReport | None = None,
    public_key: Path | None = None,
) -> PluginDossier:
    """Read ``package``; ``provenance`` maps wheel file names to where the packing run got them."""
    inspection = inspect_package(package, public_key=public_key)
    targets_of: dict[str, list[str]] = {}
    for target in inspection.targets:
        for path in target.wheels:
            targets_of.setdefault(path, []).append(target.target)
    files: list[FileEntry] = []
    wheels: list[WheelEntry] = []
    with open_package(package) as archive:
        sizes = {info.filename: info.file_size for info in archive.infolist()}
        for name, digest in entry_digests(archive):
            files.append(FileEntry(name, digest.hex(), sizes[name]))
        for entry in files:
            if entry.path not in inspection.wheels:
                continue
            try:
                project, version, _, _ = parse_wheel_filename(PurePosixPath(entry.path).name)
            except InvalidWheelFilename:
                continue  # inspect already names it as a problem
            wheels.append(
                WheelEntry(
                    path=entry.path,
                    name=project,
                    version=str(version),
                    sha256=entry.sha256,
                    size=entry.size,
                    license=_license_in(archive, entry.path),
                    targets=tuple(targets_of.get(entry.path, ())),
                    provenance=(provenance or {}).get(PurePosixPath(entry.path).name),
                )
            )
    return PluginDossier(inspection, file_sha256(package), tuple(files), tuple(wheels), tuple(notes), verification)


def _license_in(archive: zipfile.ZipFile, path: str) -> License:
    with archive.open(path) as handle:
        return wheel_license(handle)
