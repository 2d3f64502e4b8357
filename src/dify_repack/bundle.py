"""Bundles (``.difybndl``): several packages in one upload, in the layout the daemon installs (DAEMON-FACTS §7).

A bundle is a zip of ``manifest.yaml`` (``type: bundle``), ``README.md``, ``_assets/icon.svg`` and each package
at ``_assets/<checksum>``, listed as ``{type: package, value: {path: <checksum>}}``. The daemon checks every
embedded package's signature as for a single upload, enforces ``ENFORCE_LANGGENIUS_PLUGIN_SIGNATURES`` on this
path only, and holds the bundle, not its packages, to a size limit.
"""

from __future__ import annotations

import dataclasses
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from . import cancel
from .errors import DifyRepackError, PackageError, SignatureError, UsageError, VerificationError
from .files import read_bounded
from .inspect import Inspection, inspect_package
from .manifest import Manifest, read_manifest
from .package import extract_package, open_package, write_package, zip_checksum
from .packing import PackResult
from .redaction import shown_line
from .report import NullReporter, PrefixedReporter, Reporter
from .signing import read_signature, sign_package
from .verify import VerifyOptions, VerifyReport, require_pass, verify_package
from .yamlsafe import MAX_YAML_CHARS, load_yaml

BUNDLE_SUFFIX = ".difybndl"
ASSETS = "_assets"
LANGGENIUS = "langgenius"
MIB = 1024 * 1024
# Defaults of the three limits a bundle upload meets (DAEMON-FACTS §7): daemon, Dify's API, nginx (docker .env).
DAEMON_BUNDLE_LIMIT = 600 * MIB
API_BUNDLE_LIMIT = 15 * MIB * 12
NGINX_DEFAULT_LIMIT = 100 * MIB
_NAME = re.compile(r"^[a-z0-9_-]{1,128}$")
_ICON = (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24"><rect width="24" height="24" rx="4" '
    'fill="#155eef"/><path d="M6 8h12v10H6z" fill="#fff"/></svg>\n'
)


@dataclass(frozen=True)
class BundleEntry:
    """One embedded package: where it sits in the bundle and what the daemon will see."""

    path: str  # inside the bundle: _assets/<checksum>
    manifest: Manifest
    checksum: str
    size: int
    signed: bool
    category: str | None  # the signature's authorized_category

    @property
    def identifier(self) -> str:
        return f"{self.manifest.plugin_id}:{self.manifest.version}@{self.checksum}"

    @property
    def langgenius_signed(self) -> bool:
        return self.signed and self.category == LANGGENIUS


@dataclass(frozen=True)
class Bundle:
    path: Path
    name: str
    size: int
    entries: tuple[BundleEntry, ...]
    remote: tuple[str, ...] = ()  # marketplace/github dependencies: fetched online at install, so not offline

    @property
    def settings(self) -> tuple[str, ...]:
        return bundle_settings(self.size, self.entries)


@dataclass(frozen=True)
class BundleVerification:
    bundle: Bundle
    reports: tuple[VerifyReport, ...]  # one per embedded package, in bundle order

    @property
    def failed(self) -> tuple[str, ...]:
        """Identifiers of the embedded packages that would not install offline (and remote dependencies)."""
        bad = [
            entry.identifier for entry, report in zip(self.bundle.entries, self.reports, strict=True) if not report.ok
        ]
        return (*bad, *self.bundle.remote)

    @property
    def ok(self) -> bool:
        return bool(self.reports) and not self.failed


@dataclass(frozen=True)
class BundleInspection:
    bundle: Bundle
    inspections: tuple[Inspection, ...]


def package_manifest(package: Path, *, shown_as: object = None) -> Manifest:
    """The manifest of a ``.difypkg`` without extracting the rest; PackageError names a bundle given instead.

    ``shown_as`` names the package in messages (the URL or Marketplace id of a download).
    """
    where = str(package if shown_as is None else shown_as)
    with tempfile.TemporaryDirectory(prefix="dify-repack-manifest-") as temp:
        with open_package(package, shown_as=where) as archive:
            try:
                info = archive.getinfo("manifest.yaml")
            except KeyError:
                raise PackageError(f"{where}: no manifest.yaml at the top level; this is not a Dify plugin") from None
            if info.file_size > MAX_YAML_CHARS:
                raise PackageError(f"{where}: manifest.yaml is {info.file_size} bytes, not a plugin manifest")
            text = archive.read(info).decode("utf-8", errors="replace")
        if _manifest_type(text, where) == "bundle":
            raise PackageError(f"{where}: is a bundle, not a plugin package", tip="give the .difypkg files")
        (Path(temp) / "manifest.yaml").write_text(text, encoding="utf-8")
        return read_manifest(Path(temp), origin=where)


def _manifest_type(text: str, where: str) -> object:
    data = load_yaml(text, where=f"{where}: manifest.yaml", error=PackageError)
    return data.get("type") if isinstance(data, dict) else None


def is_bundle(path: Path) -> bool:
    """Whether ``path`` is a readable zip whose manifest says ``type: bundle``."""
    try:
        with open_package(path) as archive:
            info = archive.getinfo("manifest.yaml")
            if info.file_size > MIB:
                return False
            text = archive.read(info).decode("utf-8", errors="replace")
        return _manifest_type(text, str(path)) == "bundle"
    except (PackageError, KeyError, OSError):
        return False


def bundle_name(output: Path) -> str:
    """A bundle name the daemon accepts, from the file name: ``Plugins v2.difybndl`` → ``plugins_v2``."""
    name = re.sub(r"[^a-z0-9_-]+", "_", output.name.removesuffix(BUNDLE_SUFFIX).lower()).strip("_")
    return name[:128] or "offline_plugins"


def check_bundle_path(output: Path) -> None:
    if not output.name.endswith(BUNDLE_SUFFIX):
        raise UsageError(f"{output}: a bundle file must end in {BUNDLE_SUFFIX}", tip="Dify's console tells by the name")


def write_bundle(
    packages: Sequence[Path | PackResult],
    output: Path,
    *,
    name: str | None = None,
    sign_key: Path | None = None,
    langgenius_category: bool = False,
    reporter: Reporter | None = None,
) -> Bundle:
    """Write ``packages`` as one bundle, deterministically and atomically; the packages are left as they are.

    With ``sign_key`` each embedded package is signed first (category ``langgenius`` for langgenius plugins
    when ``langgenius_category``). Two packages of one plugin version with different contents are refused:
    the daemon would install whichever comes last. A ``PackResult`` (a batch's own packages) is not read again:
    its manifest and checksum are known, so only the bundle's own write reads it.
    """
    reporter = reporter or NullReporter()
    name = name or bundle_name(output)
    check_bundle_path(output)
    if not _NAME.match(name):
        raise UsageError(f"bundle name {name!r} must match [a-z0-9_-]{{1,128}}")
    if not packages:
        raise UsageError("a bundle needs at least one package")
    if sign_key is not None:
        reporter.warn(
            "signing gives each package a new checksum: DSL offline copies made earlier from these packages "
            "name the old identifiers (sign in `pack --sign-key` to keep them matching)"
        )
    with tempfile.TemporaryDirectory(prefix="dify-repack-bundle-") as temp:
        root = Path(temp) / "bundle"
        (root / ASSETS).mkdir(parents=True)
        entries: dict[str, BundleEntry] = {}
        by_plugin: dict[tuple[str, str], tuple[str, Path]] = {}
        for number, given in enumerate(packages):
            known = given if isinstance(given, PackResult) and sign_key is None else None
            package = given.output if isinstance(given, PackResult) else given
            manifest = known.manifest if known is not None else package_manifest(package)
            if sign_key is not None:
                category = LANGGENIUS if langgenius_category and manifest.author == LANGGENIUS else "community"
                reporter.step(f"signing {manifest.plugin_id} {manifest.version} (category {category})")
                signed = Path(temp) / f"signed-{number}.difypkg"
                sign_package(package, sign_key, signed, category=category)
                package = signed
            entry = _entry(package, manifest, known.stats.checksum if known is not None else None)
            key = (manifest.plugin_id, manifest.version)
            if key in by_plugin and by_plugin[key][0] != entry.checksum:
                raise UsageError(
                    f"{by_plugin[key][1]} and {package}: two different packages of {key[0]} {key[1]}; "
                    "the daemon would install only one of them",
                    tip="bundle one package per plugin version",
                )
            by_plugin[key] = (entry.checksum, package)
            if entry.checksum not in entries:
                # A link, not a copy: write_package reads the content through it.
                (root / entry.path).symlink_to(package.resolve())
                entries[entry.checksum] = entry
        ordered = sorted(entries.values(), key=lambda entry: entry.identifier)
        (root / ASSETS / "icon.svg").write_text(_ICON, encoding="utf-8")
        (root / "manifest.yaml").write_text(_manifest_text(name, ordered), encoding="utf-8")
        (root / "README.md").write_text(_readme(name, ordered), encoding="utf-8")
        reporter.step(f"writing {output} ({len(ordered)} packages)")
        stats = write_package(root, output)
    return Bundle(output, name, stats.compressed_bytes, tuple(ordered))


def _entry(package: Path, manifest: Manifest, checksum: str | None = None) -> BundleEntry:
    checksum = checksum or zip_checksum(package)
    try:
        signature = read_signature(package)
    except SignatureError:
        signature = None  # the daemon treats a garbled signature as none; inspect names the problem
    return BundleEntry(
        path=f"{ASSETS}/{checksum}",
        manifest=manifest,
        checksum=checksum,
        size=package.stat().st_size,
        signed=signature is not None,
        category=signature.category if signature is not None else None,
    )


def _manifest_text(name: str, entries: Sequence[BundleEntry]) -> str:
    manifest: dict[str, Any] = {
        "name": name,
        "labels": {"en_US": name},
        "description": {"en_US": f"{len(entries)} plugins repackaged to install offline"},
        "icon": "icon.svg",
        "version": "0.0.1",
        "author": "dify-repack",
        "type": "bundle",
        "dependencies": [{"type": "package", "value": {"path": entry.checksum}} for entry in entries],
        "tags": [],
    }
    return yaml.safe_dump(manifest, sort_keys=False, allow_unicode=True)


def _readme(name: str, entries: Sequence[BundleEntry]) -> str:
    lines = [f"# {name}", "", "Plugins repackaged by dify-repack to install with no internet access:", ""]
    lines += [f"- `{entry.identifier}`" for entry in entries]
    return "\n".join(lines) + "\n"


def bundle_settings(size: int, entries: Sequence[BundleEntry]) -> tuple[str, ...]:
    """The daemon, API and nginx settings a bundle upload needs, as ``NAME=value  # why`` lines."""
    settings = []
    unsigned = [entry.manifest.plugin_id for entry in entries if not entry.signed]
    if unsigned:
        settings.append(
            f"FORCE_VERIFYING_SIGNATURE=false  # plugin daemon: unsigned {', '.join(unsigned)} "
            "(or sign them with --sign-key and make the daemon trust that key)"
        )
    if any(entry.signed for entry in entries):
        settings.append(
            "THIRD_PARTY_SIGNATURE_VERIFICATION_ENABLED=true  # plugin daemon, with "
            "THIRD_PARTY_SIGNATURE_VERIFICATION_PUBLIC_KEYS naming your public key inside its container "
            "(docs/signing.md); not needed for packages only the official key signed"
        )
    langgenius = [entry for entry in entries if entry.manifest.author == LANGGENIUS]
    lacking = [entry.manifest.plugin_id for entry in langgenius if not entry.langgenius_signed]
    if lacking:
        settings.append(
            f"ENFORCE_LANGGENIUS_PLUGIN_SIGNATURES=false  # plugin daemon, bundle uploads only: {', '.join(lacking)} "
            "not signed with category langgenius (or sign with --sign-key --langgenius-category: daemon 0.6.10 "
            "accepts that from a trusted key)"
        )
    elif langgenius:
        settings.append(
            "ENFORCE_LANGGENIUS_PLUGIN_SIGNATURES=false  # only on daemons before 0.6.10: 0.5.3 refuses "
            "category langgenius from a third-party key"
        )
    mib = -(-size // MIB) + 1
    shown = f"the bundle is {size / MIB:.1f} MiB"
    if size > API_BUNDLE_LIMIT:
        settings.append(f"PLUGIN_MAX_BUNDLE_SIZE={mib * MIB}  # api: {shown} (default 180 MiB)")
    if size > NGINX_DEFAULT_LIMIT:
        settings.append(f"NGINX_CLIENT_MAX_BODY_SIZE={mib}M  # nginx in front of Dify: {shown} (docker default 100M)")
    if size > DAEMON_BUNDLE_LIMIT:
        settings.append(f"MAX_BUNDLE_PACKAGE_SIZE={mib * MIB}  # plugin daemon: {shown} (default 600 MiB)")
    return tuple(settings)


def read_bundle(path: Path, dest: Path) -> Bundle:
    """Extract ``path`` into ``dest`` (safely, as any package) and read its manifest and embedded packages."""
    extract_package(path, dest)
    manifest_file = dest / "manifest.yaml"
    if not manifest_file.is_file():
        raise PackageError(f"{path}: no manifest.yaml at the top level; this is not a Dify bundle")
    text = read_bounded(manifest_file, MAX_YAML_CHARS, f"{path}: manifest.yaml").decode("utf-8", errors="replace")
    data = load_yaml(text, where=f"{path}: manifest.yaml", error=PackageError)
    if not isinstance(data, dict) or data.get("type") != "bundle":
        raise PackageError(f"{path}: manifest.yaml does not say type: bundle")
    entries, remote = [], []
    dependencies = data.get("dependencies") or []
    for index, dependency in enumerate(dependencies if isinstance(dependencies, list) else []):
        kind = dependency.get("type") if isinstance(dependency, dict) else None
        value = dependency.get("value") if isinstance(dependency, dict) else None
        if kind in ("marketplace", "github"):
            remote.append(f"{kind} dependency {_describe(value)} (installed from the internet)")
            continue
        asset = value.get("path") if kind == "package" and isinstance(value, dict) else None
        package = dest / ASSETS / str(asset)
        if not isinstance(asset, str) or "/" in asset or asset in ("", ".", "..") or not package.is_file():
            raise PackageError(
                f"{path}: dependencies[{index}] names no package inside the bundle: {shown_line(dependency)}"
            )
        entry = _entry(package, package_manifest(package, shown_as=f"{path}: {ASSETS}/{asset}"))
        entries.append(dataclasses.replace(entry, path=f"{ASSETS}/{asset}"))
    if not entries and not remote:
        raise PackageError(f"{path}: the bundle lists no packages")
    return Bundle(path, str(data.get("name") or path.stem), path.stat().st_size, tuple(entries), tuple(remote))


def _describe(value: object) -> str:
    return shown_line(" ".join(str(part) for part in value.values()) if isinstance(value, dict) else value)


def verify_bundle(
    path: Path, options: VerifyOptions | None = None, reporter: Reporter | None = None
) -> BundleVerification:
    """Replay every embedded package as ``verify`` replays a package; each report names its package."""
    reporter = reporter or NullReporter()
    with tempfile.TemporaryDirectory(prefix="dify-repack-bundle-") as temp:
        bundle = read_bundle(path, Path(temp))
        reports = []
        for entry in bundle.entries:
            cancel.check()
            inner = PrefixedReporter(reporter, entry.identifier)
            report = verify_package(Path(temp) / entry.path, options, inner)
            reports.append(dataclasses.replace(report, package=path / entry.path))
    return BundleVerification(bundle, tuple(reports))


def require_bundle_pass(verification: BundleVerification) -> None:
    """Raise VerificationError naming the first embedded package that fails, and why (as ``require_pass``)."""
    path = verification.bundle.path
    for entry, report in zip(verification.bundle.entries, verification.reports, strict=True):
        try:
            require_pass(report)
        except DifyRepackError as error:
            others = len(verification.failed) - 1
            more = f" (and {others} more package{'s' if others > 1 else ''})" if others else ""
            raise VerificationError(
                f"{path}: {entry.identifier} would not install offline{more}; the daemon rejects the whole "
                f"bundle: {error.message}",
                tip=f"dify-repack verify {path} shows every check; repack that plugin",
            ) from None
    if verification.bundle.remote:
        raise VerificationError(f"{path}: {verification.bundle.remote[0]}: an isolated daemon cannot fetch it")


def inspect_bundle(path: Path, *, public_key: Path | None = None) -> BundleInspection:
    """Read every embedded package as ``inspect`` reads a package."""
    with tempfile.TemporaryDirectory(prefix="dify-repack-bundle-") as temp:
        bundle = read_bundle(path, Path(temp))
        inspections = tuple(
            dataclasses.replace(
                inspect_package(Path(temp) / entry.path, public_key=public_key), package=path / entry.path
            )
            for entry in bundle.entries
        )
    return BundleInspection(bundle, inspections)
