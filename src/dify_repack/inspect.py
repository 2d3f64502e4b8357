"""``inspect``: what a ``.difypkg`` holds and what each daemon version would do with it, without installing.

A static reading against the rules in DAEMON-FACTS §1-5 and UV-PIP-FACTS: fast, and every verdict says why.
It predicts; ``verify`` replays the daemon's install with the network cut off and is the proof.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from packaging.utils import InvalidWheelFilename, parse_wheel_filename

from .daemon import PROFILES, directory_entries_rejected
from .errors import DependencyError, SignatureError
from .manifest import Manifest, read_manifest
from .mirror import slim_mirror_url
from .offline import WHEELS_DIR
from .package import extract_package, open_package, zip_checksum
from .packing import API_DEFAULT_LIMIT, DAEMON_DEFAULT_LIMIT, upload_settings
from .reqfile import read_requirements_file
from .signing import read_signature, verify_signature
from .targets import DEFAULT_PYTHON, make_targets
from .uvconfig import replay_refusals
from .verdicts import Scan, Verdict, Wheel, judge

SCHEMA = 1
DEPENDENCY_FILES = ("requirements.txt", "pyproject.toml", "uv.lock", ".python-version")
SDIST_SUFFIXES = (".tar.gz", ".zip", ".tar.bz2", ".tgz")


@dataclass(frozen=True)
class TargetWheels:
    target: str  # e.g. "cp312-linux-arm64"
    wheels: tuple[str, ...]  # package paths of the wheels that install on this target
    missing: tuple[str, ...]  # requirements.txt lines (markers applied) without such a wheel: "numpy==2.4.1"


@dataclass(frozen=True)
class Inspection:
    package: Path
    manifest: Manifest
    checksum: str  # as the daemon computes it (file entries only)
    signed: bool
    signature_time: int | None
    category: str | None  # authorized_category of .verification.dify.json, when signed
    verified: bool | None  # against the public key given; None when no key was given
    files: int
    directory_entries: tuple[str, ...]
    dependency_files: tuple[str, ...]  # which of DEPENDENCY_FILES the package has
    wheel_dirs: tuple[str, ...]
    wheels: tuple[str, ...]
    sdists: tuple[str, ...]
    targets: tuple[TargetWheels, ...]
    compressed_bytes: int
    uncompressed_bytes: int
    problems: tuple[str, ...]
    verdicts: tuple[Verdict, ...]

    @property
    def identifier(self) -> str:
        return f"{self.manifest.plugin_id}:{self.manifest.version}@{self.checksum}"

    @property
    def settings(self) -> tuple[str, ...]:
        return upload_settings(self.compressed_bytes, self.uncompressed_bytes, signed=self.signed)

    def to_json(self) -> dict[str, Any]:
        m = self.manifest
        return {
            "schema": SCHEMA,
            "package": str(self.package),
            "identifier": self.identifier,
            "checksum": self.checksum,
            "manifest": {
                "author": m.author,
                "name": m.name,
                "version": m.version,
                "arch": list(m.arches),
                "runner_version": m.runner_version,
                "entrypoint": m.entrypoint,
            },
            "signature": {
                "signed": self.signed,
                "verified": self.verified,
                "time": self.signature_time,
                "category": self.category,
            },
            "entries": {"files": self.files, "directories": list(self.directory_entries)},
            "dependency_files": {name: name in self.dependency_files for name in DEPENDENCY_FILES},
            "wheels": {
                "dirs": list(self.wheel_dirs),
                "files": list(self.wheels),
                "sdists": list(self.sdists),
                "targets": {t.target: {"wheels": list(t.wheels), "missing": list(t.missing)} for t in self.targets},
            },
            "sizes": {
                "compressed": self.compressed_bytes,
                "uncompressed": self.uncompressed_bytes,
                "api_default_limit": API_DEFAULT_LIMIT,
                "daemon_default_limit": DAEMON_DEFAULT_LIMIT,
            },
            "settings": list(self.settings),
            "problems": list(self.problems),
            "verdicts": {
                v.profile: {
                    "daemon": PROFILES[v.profile],
                    "command": v.command,
                    "ok": v.ok,
                    "reason": v.reason,
                    "reasons": list(v.reasons),
                }
                for v in self.verdicts
            },
        }


def inspect_package(package: Path, *, public_key: Path | None = None) -> Inspection:
    """Read ``package`` (original or offline) and judge each daemon profile; PackageError if unreadable.

    With ``public_key``, the signature is also verified against it, as the daemon would.
    """
    with tempfile.TemporaryDirectory(prefix="dify-repack-inspect-") as temp:
        root = Path(temp)
        extract_package(package, root)  # the safety checks, and PackageError for a bad zip
        with open_package(package) as archive:
            infos = archive.infolist()
        manifest = read_manifest(root, origin=str(package))
        names = [info.filename for info in infos if not info.is_dir()]
        directories = tuple(info.filename for info in infos if info.is_dir())
        problems = [directory_entries_rejected(directories)] if directories else []
        signed, signed_at, category = False, None, None
        try:
            signature = read_signature(package)
        except SignatureError as error:
            problems.append(f"{error.message}; the daemon treats the package as unsigned")
        else:
            if signature is not None:
                signed, signed_at, category = True, signature.time, signature.category
        verified: bool | None = None
        if public_key is not None:
            try:
                verified = verify_signature(package, public_key).verified
            except SignatureError as error:
                verified = False
                problems.append(f"signature not verified with {public_key}: {error.message}")

        wheels = []
        for path in (PurePosixPath(name) for name in names if name.endswith(".whl")):
            try:
                project, version, _, _ = parse_wheel_filename(path.name)
            except InvalidWheelFilename:
                problems.append(f"{path}: not a valid wheel file name; installers ignore it")
                continue
            wheels.append(Wheel(str(path), path.parent.as_posix(), path.name, project, version))
        wheel_dirs = tuple(sorted({wheel.folder for wheel in wheels}))
        sdists = tuple(
            name
            for name in names
            if name.endswith(SDIST_SUFFIXES) and PurePosixPath(name).parent.as_posix() in {*wheel_dirs, WHEELS_DIR}
        )
        problems += [
            f"{name}: an sdist is built at install time; offline that needs its build backend and, "
            "for native code, a C compiler: ship a wheel instead"
            for name in sdists
        ]

        scan = Scan(root, make_targets(DEFAULT_PYTHON, manifest.arches), tuple(wheels))
        requirements, requirements_error = [], None
        if (root / "requirements.txt").is_file():
            try:
                requirements = read_requirements_file(root / "requirements.txt", root=root)
            except DependencyError as error:
                requirements_error = error.message
                problems.append(error.message)
        # What verify refuses to replay; an include leading outside was reported by the reading above.
        problems += [refusal for refusal in replay_refusals(root) if refusal not in problems]
        per_target = tuple(
            TargetWheels(
                str(target),
                tuple(w.path for w in wheels if target.wheel_rank(w.filename) is not None),
                tuple(scan.missing(requirements, wheels, target)),
            )
            for target in scan.targets
        )
        verdicts = judge(scan, requirements, requirements_error, problems)
        if (mirror := slim_mirror_url(root)) is not None:
            per_target, verdicts = _slim(per_target, verdicts, mirror, problems)
        checksum = zip_checksum(package)

    return Inspection(
        package=package,
        manifest=manifest,
        checksum=checksum,
        signed=signed,
        verified=verified,
        signature_time=signed_at,
        category=category,
        files=len(names),
        directory_entries=directories,
        dependency_files=tuple(name for name in DEPENDENCY_FILES if name in names),
        wheel_dirs=wheel_dirs,
        wheels=tuple(wheel.path for wheel in wheels),
        sdists=sdists,
        targets=per_target,
        compressed_bytes=package.stat().st_size,
        uncompressed_bytes=sum(info.file_size for info in infos),
        problems=tuple(problems),
        verdicts=verdicts,
    )


def _slim(
    targets: tuple[TargetWheels, ...], verdicts: tuple[Verdict, ...], mirror: str, notes: list[str]
) -> tuple[tuple[TargetWheels, ...], tuple[Verdict, ...]]:
    """A slim package (pack --mirror-url) has no wheels and names its mirror on purpose: judge the rest."""
    notes.append(
        f"slim package: every daemon installs it from {mirror}, which must serve its wheelhouse "
        "(`dify-repack verify PACKAGE --wheelhouse DIR` replays that offline)"
    )
    expected = ("will go online", "no wheel for")
    kept = tuple(
        Verdict(v.profile, v.command, tuple(r for r in v.reasons if not any(e in r for e in expected)))
        for v in verdicts
    )
    return tuple(TargetWheels(t.target, t.wheels, ()) for t in targets), kept
