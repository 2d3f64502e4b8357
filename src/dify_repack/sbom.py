"""The SBOM of a transfer: CycloneDX 1.6 JSON written with the CycloneDX project's own library.

One plugin is the root component; several (a batch or a bundle) hang below a root that names the transfer.
Each shipped wheel is a ``pkg:pypi`` component with the sha256 of the file shipped, its license, the index URL it
came from (credentials redacted) and the targets it serves; each of the plugin's own files is a ``file``
component with its hash. The same input gives the same bytes: no timestamp, a serial number derived from the
identifiers.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from cyclonedx.model import ExternalReference, ExternalReferenceType, HashAlgorithm, HashType, Property, XsUri
from cyclonedx.model.bom import Bom
from cyclonedx.model.component import Component, ComponentType
from cyclonedx.model.license import DisjunctiveLicense, LicenseExpression
from cyclonedx.output.json import JsonV1Dot6
from packageurl import PackageURL

from . import __version__
from .bundle import Bundle
from .dossier import FileEntry, PluginDossier, WheelEntry
from .licenses import License
from .redaction import redact

PREFIX = "dify-repack"


def sbom_json(dossiers: Sequence[PluginDossier], *, bundle: Bundle | None = None, bundle_sha256: str = "") -> str:
    """The CycloneDX document for ``dossiers`` (one plugin, every plugin of one transfer, or of ``bundle``, whose
    file hashes to ``bundle_sha256``)."""
    identifiers = sorted(dossier.inspection.identifier for dossier in dossiers)
    bom = Bom(serial_number=uuid.uuid5(uuid.NAMESPACE_URL, "dify-repack:" + " ".join(identifiers)))
    bom.metadata.timestamp = None  # type: ignore[assignment]  # reproducible output; the lib allows None
    bom.metadata.tools.components.add(
        Component(name="dify-repack", version=__version__, type=ComponentType.APPLICATION)
    )
    if bundle is None and len(dossiers) == 1:
        root = _plugin_component(dossiers[0], nested=False)
        members = _contents(dossiers[0])
        depends = [component for component in members if component.type is ComponentType.LIBRARY]
    else:
        root = (
            _bundle_component(bundle, bundle_sha256, len(dossiers))
            if bundle is not None
            else _transfer_component(len(dossiers))
        )
        members = depends = [_plugin_component(dossier, nested=True) for dossier in dossiers]
    bom.metadata.component = root
    for component in members:
        bom.components.add(component)
    bom.register_dependency(root, depends)
    return JsonV1Dot6(bom).output_as_string(indent=2) + "\n"


def _bundle_component(bundle: Bundle, sha256: str, plugins: int) -> Component:
    return Component(
        name=bundle.name,
        type=ComponentType.APPLICATION,
        bom_ref=f"bundle:{bundle.path.name}",
        description=f"Dify bundle {bundle.path.name}: {plugins} plugins installed in one upload",
        hashes=[HashType(alg=HashAlgorithm.SHA_256, content=sha256)],
        properties=[Property(name=f"{PREFIX}:setting", value=line) for line in bundle.settings],
    )


def _transfer_component(plugins: int) -> Component:
    return Component(
        name="dify-repack transfer",
        version=__version__,
        type=ComponentType.APPLICATION,
        bom_ref="transfer",
        description=f"{plugins} Dify plugins packed for an offline deployment",
    )


def _plugin_component(dossier: PluginDossier, *, nested: bool) -> Component:
    inspection = dossier.inspection
    manifest = inspection.manifest
    properties = [
        Property(name=f"{PREFIX}:identifier", value=inspection.identifier),
        Property(name=f"{PREFIX}:checksum", value=inspection.checksum),
        Property(name=f"{PREFIX}:signed", value=str(inspection.signed).lower()),
        Property(name=f"{PREFIX}:targets", value=", ".join(target.target for target in inspection.targets)),
    ]
    if dossier.verification is not None:
        properties.append(Property(name=f"{PREFIX}:verified", value=str(dossier.verification.ok).lower()))
    properties += [Property(name=f"{PREFIX}:note", value=note) for note in dossier.notes]
    return Component(
        name=manifest.name,
        group=manifest.author,
        version=manifest.version,
        type=ComponentType.APPLICATION,
        bom_ref=inspection.identifier,
        description=f"Dify plugin {manifest.plugin_id}, packed to install offline",
        hashes=[HashType(alg=HashAlgorithm.SHA_256, content=dossier.sha256)],
        properties=properties,
        components=_contents(dossier) if nested else None,
    )


def _contents(dossier: PluginDossier) -> list[Component]:
    prefix = dossier.inspection.identifier + "#"
    return [_wheel_component(wheel, prefix) for wheel in dossier.wheels] + [
        _file_component(entry, prefix) for entry in dossier.plugin_files
    ]


def _wheel_component(wheel: WheelEntry, prefix: str) -> Component:
    properties = [
        Property(name=f"{PREFIX}:path", value=wheel.path),
        Property(name=f"{PREFIX}:targets", value=", ".join(wheel.targets) or "none"),
    ]
    references = []
    if wheel.provenance is not None:
        properties.append(Property(name=f"{PREFIX}:built-from-sdist", value=str(wheel.provenance.built).lower()))
        if wheel.provenance.url:
            url = redact(wheel.provenance.url)
            properties.append(Property(name=f"{PREFIX}:download-url", value=url))
            references.append(ExternalReference(type=ExternalReferenceType.DISTRIBUTION, url=XsUri(url)))
    if wheel.license.attention:
        properties.append(Property(name=f"{PREFIX}:license-attention", value=wheel.license.attention))
    return Component(
        name=wheel.name,
        version=wheel.version,
        type=ComponentType.LIBRARY,
        bom_ref=prefix + wheel.path,
        purl=PackageURL("pypi", name=wheel.name, version=wheel.version, qualifiers={"file_name": wheel.filename}),
        hashes=[HashType(alg=HashAlgorithm.SHA_256, content=wheel.sha256)],
        licenses=_licenses(wheel.license),
        properties=properties,
        external_references=references,
    )


def _file_component(entry: FileEntry, prefix: str) -> Component:
    return Component(
        name=entry.path,
        type=ComponentType.FILE,
        bom_ref=prefix + entry.path,
        hashes=[HashType(alg=HashAlgorithm.SHA_256, content=entry.sha256)],
    )


def _licenses(license: License) -> list[LicenseExpression | DisjunctiveLicense]:
    if not license.text:
        return []
    if license.spdx and (" OR " in license.text or " AND " in license.text or " WITH " in license.text):
        return [LicenseExpression(license.text)]
    if license.spdx:
        return [DisjunctiveLicense(id=license.text)]
    return [DisjunctiveLicense(name=license.text)]
