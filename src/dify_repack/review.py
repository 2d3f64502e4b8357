"""The review documents of a run: the SBOM and the HTML report over every package the run wrote or read."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .bundle import Bundle, read_bundle
from .dossier import PluginDossier, read_dossier
from .files import atomic_output, file_sha256
from .packing import PackResult


@dataclass(frozen=True)
class ReviewPaths:
    sbom: Path | None = None
    report: Path | None = None

    def __bool__(self) -> bool:
        return self.sbom is not None or self.report is not None


def packed_dossier(result: PackResult) -> PluginDossier:
    """The dossier of a package this run wrote: what the package holds plus where each wheel came from."""
    return read_dossier(
        result.output, provenance=result.provenance, notes=result.notes, verification=result.verification
    )


def write_documents(
    dossiers: Sequence[PluginDossier], paths: ReviewPaths, *, bundle: Bundle | None = None
) -> list[Path]:
    """Write the requested documents (each atomically); returns the paths written.

    With ``bundle``, the documents describe the bundle, with each plugin inside it.
    """
    # Imported when asked for: the CycloneDX library alone would add a tenth of a second to every command.
    from .htmlreport import report_html
    from .sbom import sbom_json

    sha256 = file_sha256(bundle.path) if bundle is not None else ""  # hashed once for both documents
    written = []
    if paths.sbom is not None:
        written.append(_write(paths.sbom, sbom_json(dossiers, bundle=bundle, bundle_sha256=sha256)))
    if paths.report is not None:
        written.append(_write(paths.report, report_html(dossiers, bundle=bundle, bundle_sha256=sha256)))
    return written


def _write(path: Path, text: str) -> Path:
    with atomic_output(path) as staged:
        staged.write_text(text, encoding="utf-8")
    return path


def write_bundle_documents(path: Path, paths: ReviewPaths, *, public_key: Path | None = None) -> list[Path]:
    """The documents of an existing bundle, read from its embedded packages (origins are not known here)."""
    with tempfile.TemporaryDirectory(prefix="dify-repack-review-") as temp:
        bundle = read_bundle(path, Path(temp))
        dossiers = [read_dossier(Path(temp) / entry.path, public_key=public_key) for entry in bundle.entries]
        return write_documents(dossiers, paths, bundle=bundle)
