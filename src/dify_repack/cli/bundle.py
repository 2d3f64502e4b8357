"""``bundle``, and how batches and bundles are shown: the batch report, bundle summaries, their JSON."""

from __future__ import annotations

from pathlib import Path

import click
from rich.markup import escape
from rich.table import Table

from ..batch import BatchItem, BatchResult
from ..bundle import Bundle, BundleInspection, BundleVerification, write_bundle
from ..errors import DifyRepackError, UsageError
from ..packing import PackResult
from ..render import console, mib, pack_json, print_verify_report
from ..review import ReviewPaths, write_bundle_documents
from ._app import cli, emit, make_reporter, output_options, review_options, with_options
from ._app import output as printing  # `output` is the bundle command's -o

sign_key_option = click.option(
    "--sign-key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Sign every package (see `dify-repack keygen`).",
)
langgenius_option = click.option(
    "--langgenius-category",
    is_flag=True,
    help="Sign langgenius plugins with category langgenius (needs --sign-key): the daemon checks it on bundle "
    "uploads unless ENFORCE_LANGGENIUS_PLUGIN_SIGNATURES=false.",
)


def check_signing_flags(sign_key: Path | None, langgenius_category: bool) -> None:
    if langgenius_category and sign_key is None:
        raise UsageError("--langgenius-category signs packages, so it needs --sign-key KEY.private.pem")


@cli.command("bundle")
@click.argument("packages", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The bundle to write (NAME.difybndl).",
)
@click.option("--name", help="The bundle's name in Dify (default: from the file name).")
@sign_key_option
@langgenius_option
@with_options(review_options)
@with_options(output_options)
def bundle_command(
    packages: tuple[Path, ...],
    output: Path,
    name: str | None,
    sign_key: Path | None,
    langgenius_category: bool,
    sbom: Path | None,
    report: Path | None,
) -> None:
    """Put packages into one .difybndl that Dify installs in one upload.

    \b
    Each package is stored as the daemon expects it (_assets/<checksum>); the bundle is written
    deterministically and atomically, and the packages themselves are left as they are.
    Prints the daemon, API and nginx settings the bundle upload needs.

    \b
    Examples:
      dify-repack bundle out/*-offline.difypkg -o plugins.difybndl
      dify-repack bundle out/*-offline.difypkg -o plugins.difybndl \\
          --sign-key keys/offline.private.pem --langgenius-category
      dify-repack verify plugins.difybndl
      dify-repack bundle out/*-offline.difypkg -o plugins.difybndl --sbom plugins.cdx.json --report plugins.html
    """
    check_signing_flags(sign_key, langgenius_category)
    bundle = write_bundle(
        packages,
        output,
        name=name,
        sign_key=sign_key,
        langgenius_category=langgenius_category,
        reporter=make_reporter(),
    )
    documents = ReviewPaths(sbom, report)
    written = write_bundle_documents(bundle.path, documents) if documents else []
    if printing().as_json:
        emit("success", {**bundle_json(bundle), "documents": [str(path) for path in written]})
        return
    if printing().quiet:
        click.echo(f"wrote {bundle.path} ({len(bundle.entries)} packages, {mib(bundle.size)})")
    else:
        print_bundle(bundle)
    for path in written:
        click.echo(f"wrote {path}")


def bundle_json(bundle: Bundle) -> dict[str, object]:
    return {
        "bundle": str(bundle.path),
        "name": bundle.name,
        "size": bundle.size,
        "packages": [
            {
                "identifier": entry.identifier,
                "path": entry.path,
                "size": entry.size,
                "signed": entry.signed,
                "category": entry.category,
            }
            for entry in bundle.entries
        ],
        "remote_dependencies": list(bundle.remote),
        "settings": list(bundle.settings),
    }


def _settings(lines: tuple[str, ...], what: str) -> None:
    out = console()
    out.print(f"Dify settings for {what}:" if lines else f"Dify settings: the defaults accept {what}.")
    for line in lines:
        out.print(f"  {line}", markup=False)


def print_bundle(bundle: Bundle, *, settings: bool = True) -> None:
    out = console()
    out.print(f"[bold green]wrote[/] {escape(str(bundle.path))}  ({len(bundle.entries)} packages, {mib(bundle.size)})")
    for entry in bundle.entries:
        signed = f"signed ({entry.category or 'no category'})" if entry.signed else "unsigned"
        out.print(f"  {escape(entry.identifier)}  {mib(entry.size)}  {signed}")
    if settings:
        _settings(bundle.settings, "this bundle upload")


# pack: the batch report


def _cells(item: BatchItem) -> list[str]:
    dsls = ", ".join(path.name for path in item.dsls) or "-"
    if isinstance(item.outcome, DifyRepackError):
        return [
            escape(item.sources[0]),
            escape(dsls),
            "",
            "",
            "",
            "",
            f"[red]failed[/]: {escape(item.outcome.message)}",
        ]
    result = item.outcome
    report = result.verification
    verified = "skipped" if report is None else f"{len(report.checks)} checks" if report.ok else "FAILED"
    merged = f" ({len(item.sources)} sources)" if len(item.sources) > 1 else ""
    return [
        escape(result.manifest.plugin_id),
        escape(dsls),
        escape(result.manifest.version),
        mib(result.stats.compressed_bytes),
        verified,
        "yes" if result.signed else "no",
        f"[green]ok[/]{merged}",
    ]


def print_batch_report(result: BatchResult) -> None:
    """One table for the run, then the bundle, the DSL copies, and the settings to set."""
    out = console()
    if result.items:
        table = Table(title="dify-repack pack")
        for column in ("plugin", "source DSLs", "version", "size", "verified", "signed", "result"):
            table.add_column(column)
        for item in result.items:
            table.add_row(*_cells(item))
        out.print(table)
    for item in result.items:
        if len(item.sources) > 1:
            out.print(f"packed once for {len(item.sources)} sources: {escape(', '.join(item.sources))}")
    if result.bundle is not None:
        print_bundle(result.bundle, settings=False)
    elif result.bundle_skipped:
        out.print(f"[bold red]bundle not written[/]: {escape(result.bundle_skipped)}")
    for copy in result.copies:
        if copy.output is not None:
            out.print(
                f"[bold green]wrote[/] {escape(str(copy.output))}: the app DSL {escape(str(copy.dsl))} with its "
                "dependencies naming the repacked packages; import this copy in the isolated Dify"
            )
        else:
            out.print(f"[bold red]no offline copy of {escape(str(copy.dsl))}[/]: {escape(copy.reason)}")
    _settings(result.settings, "the bundle upload" if result.bundle is not None else "these uploads")


def batch_fields(result: BatchResult) -> dict[str, object]:
    """The whole run for the JSON envelope: every plugin, every output and the settings."""
    results = []
    for item in result.items:
        entry = pack_json(item.sources[0], item.outcome, item.seconds)
        entry.update(sources=list(item.sources), dsls=[str(path) for path in item.dsls], identifier=item.identifier)
        if item.key is not None:
            entry.setdefault("plugin", item.key[0])
            entry.setdefault("version", item.key[1])
        results.append(entry)
    return {
        "results": results,
        "outputs": {
            "packages": [str(item.outcome.output) for item in result.items if isinstance(item.outcome, PackResult)],
            "bundle": str(result.bundle.path) if result.bundle is not None else None,
            "dsl_copies": [
                {"dsl": str(copy.dsl), "copy": str(copy.output) if copy.output else None, "reason": copy.reason or None}
                for copy in result.copies
            ],
        },
        "bundle": bundle_json(result.bundle) if result.bundle is not None else None,
        "bundle_skipped": result.bundle_skipped or None,
        "settings": list(result.settings),
    }


# verify and inspect of a bundle


def print_bundle_verification(verification: BundleVerification) -> None:
    out = console()
    bundle = verification.bundle
    out.print(f"[bold]{escape(str(bundle.path))}[/]: bundle of {len(bundle.entries)} packages")
    for report in verification.reports:
        print_verify_report(report)
    for remote in bundle.remote:
        out.print(f"[bold red]FAIL[/] {escape(remote)}: the isolated daemon cannot fetch it")
    if verification.ok:
        out.print("[bold green]every embedded package passed[/]")
    else:
        failed = ", ".join(verification.failed)
        out.print(f"[bold red]FAILED: {escape(failed)} would not install offline; the daemon rejects the bundle[/]")


def bundle_verification_fields(verification: BundleVerification) -> dict[str, object]:
    return {
        "bundle": str(verification.bundle.path),
        "failed": list(verification.failed),
        "packages": [report.to_json() for report in verification.reports],
        "remote_dependencies": list(verification.bundle.remote),
    }


def print_bundle_inspection(inspection: BundleInspection, *, quiet: bool = False) -> None:
    """Each embedded package in a few lines (``inspect`` on it alone gives the full reading)."""
    out = console()
    bundle = inspection.bundle
    if quiet:  # one line a package: identifier, signature, verdicts
        for result in inspection.inspections:
            verdicts = ", ".join(f"{v.profile} {'ok' if v.ok else 'FAIL'}" for v in result.verdicts)
            click.echo(f"{result.identifier}: {'signed' if result.signed else 'unsigned'}; {verdicts}")
        return
    out.print(f"[bold]{escape(str(bundle.path))}[/]: bundle {escape(bundle.name)}, {mib(bundle.size)}")
    for entry, result in zip(bundle.entries, inspection.inspections, strict=True):
        out.print(f"[bold]{escape(result.identifier)}[/]  at {escape(entry.path)}")
        signature = f"signed, category {result.category or 'none'}" if result.signed else "unsigned"
        if result.verified is not None:
            signature += "; verified with the given key" if result.verified else "; NOT verified with the given key"
        out.print(
            f"  {mib(result.compressed_bytes)} zipped, {mib(result.uncompressed_bytes)} unpacked; "
            f"{len(result.wheels)} wheels; {escape(signature)}"
        )
        failing = [verdict.profile for verdict in result.verdicts if not verdict.ok]
        if failing:
            first = next(verdict for verdict in result.verdicts if not verdict.ok)
            out.print(f"  [bold red]offline: FAIL[/] {', '.join(failing)}: {escape(first.reason)}")
        else:
            out.print("  [green]offline: every daemon profile ok[/] (static prediction)")
        for problem in result.problems:
            out.print(f"  problem: {escape(problem)}")
    for remote in bundle.remote:
        out.print(f"[bold red]problem[/]: {escape(remote)}")
    _settings(bundle.settings, "this bundle upload")


def bundle_inspection_fields(inspection: BundleInspection) -> dict[str, object]:
    return {
        **bundle_json(inspection.bundle),
        "inspections": [result.to_json() for result in inspection.inspections],
    }
