"""``verify`` and ``inspect``: proof and a static reading of a package."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click
from rich.markup import escape

from ..bundle import inspect_bundle, is_bundle, require_bundle_pass, verify_bundle
from ..dossier import read_dossier
from ..errors import DifyRepackError, ExitCode
from ..inspect import inspect_package
from ..render import (
    print_inspection,
    print_verify_report,
)
from ..resolve import Indexes
from ..review import ReviewPaths, write_bundle_documents, write_documents
from ..signing import load_public_key
from ..targets import chosen_arches, parse_glibc
from ..verify import DEFAULT_UV_VERSIONS, PROFILES, VerifyOptions, require_pass, verify_package
from ._app import (
    arch_option,
    cache_option,
    cli,
    emit,
    glibc_option,
    index_options,
    make_reporter,
    output,
    output_options,
    python_option,
    review_options,
    stderr,
    uv_option,
    with_options,
)
from .bundle import (
    bundle_inspection_fields,
    bundle_verification_fields,
    print_bundle_inspection,
    print_bundle_verification,
)


@cli.command("verify")
@click.argument("package", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--profile",
    "profiles",
    multiple=True,
    type=click.Choice(list(PROFILES)),
    help="Daemon profile to replay (repeatable; default all): "
    + "; ".join(f"{name} = {text}" for name, text in PROFILES.items()),
)
@uv_option
@arch_option
@python_option
@glibc_option
@click.option("--no-start", is_flag=True, help="Skip starting the plugin and waiting for its heartbeat.")
@with_options(index_options)
@cache_option
@click.option(
    "--wheelhouse",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="For a slim package: the wheelhouse to serve at its mirror URL inside the network namespace.",
)
@with_options(output_options)
def verify_command(
    package: Path,
    profiles: tuple[str, ...],
    uv_versions: tuple[str, ...],
    arch: str | None,
    python_version: str,
    glibc: str,
    no_start: bool,
    index_url: str,
    extra_index_urls: tuple[str, ...],
    cache_dir: Path | None,
    wheelhouse: Path | None,
) -> int:
    """Prove that PACKAGE (or every package of a .difybndl bundle) installs with the network cut off.

    \b
    For each profile and uv version: extract like the daemon (files only, mode 0644), create the
    venv, run the daemon's install command with its replaced environment inside a network namespace
    (unshare -n), compileall, `import dify_plugin`, then start the plugin with INSTALL_METHOD=local and
    wait for its first heartbeat. Architectures this host cannot run get a static offline resolution
    for their platform. Exit code 0 only when every check passed, 7 when one failed.

    \b
    A slim package (pack --mirror-url) installs from its mirror: give --wheelhouse DIR, and the
    wheelhouse is served at the mirror's address inside the namespace (its host name resolved to
    127.0.0.1 there), with nothing else reachable. A file the wheelhouse lacks fails, named.

    \b
    Examples:
      dify-repack verify ./author-plugin_1.0.0-offline.difypkg
      dify-repack verify ./p-offline.difypkg --profile uv-sync-frozen --uv 0.11.7 -q
      dify-repack verify ./p-offline.difypkg --arch x86_64 --no-start --json
      dify-repack verify ./slim/p-offline.difypkg --wheelhouse ./house
      dify-repack verify ./plugins.difybndl          # each embedded package, the bad one named
    """
    arches = chosen_arches(arch, ()) or None
    options = VerifyOptions(
        profiles=profiles or tuple(PROFILES),
        uv_versions=uv_versions or DEFAULT_UV_VERSIONS,
        arches=arches,
        python=python_version,
        cache_dir=cache_dir,
        start=not no_start,
        indexes=Indexes(index_url, extra_index_urls),
        glibc=parse_glibc(glibc),
        wheelhouse=wheelhouse,
    )
    reporter = make_reporter()
    if is_bundle(package):
        verification = verify_bundle(package, options, reporter)
        checks = sum(len(report.checks) for report in verification.reports)
        return _outcome(
            lambda: require_bundle_pass(verification),
            bundle_verification_fields(verification),
            f"verified: {package}: {len(verification.reports)} packages, {checks} checks passed",
            lambda: print_bundle_verification(verification),
        )
    report = verify_package(package, options, reporter)
    return _outcome(
        lambda: require_pass(report),
        report.to_json(),
        f"verified: {report.identifier}: {report.counts} passed (network cut by {report.isolation})",
        lambda: print_verify_report(report),
    )


def _outcome(require: Callable[[], None], fields: dict[str, object], line: str, show: Callable[[], None]) -> int:
    """Render a verification, of a package or a bundle: the envelope, one line with -q, or the whole report."""
    failure = None
    try:
        require()
    except DifyRepackError as error:
        failure = error
    if output().as_json:
        emit("success" if failure is None else "error", fields, failure)
    elif output().quiet:
        if failure is not None:
            raise failure  # the one error line says which profile (or package) failed and why
        click.echo(line)
    else:
        show()
    return int(ExitCode.OK) if failure is None else int(failure.exit_code)


# Inspect: a static reading of any .difypkg.


@cli.command("inspect")
@click.argument("package", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A public key (PEM PKCS#1) to verify the signature with, as the daemon would.",
)
@with_options(review_options)
@with_options(output_options)
def inspect_command(package: Path, key: Path | None, sbom: Path | None, report: Path | None) -> None:
    """Show what PACKAGE (or each package of a .difybndl bundle) holds and whether it installs offline.

    \b
    Reads any .difypkg, original or repackaged, without installing anything:
      - its identifier author/name:version@checksum, with the checksum the daemon computes
      - its signature, and its size against Dify's default upload limits (and what to raise)
      - its dependency files, the wheels inside per target (CPython 3.12 on the manifest's
        architectures) and the requirements.txt pins with no wheel for a target
      - what the daemon rejects or trips on: directory entries, sdists, [tool.uv] keys older uv lacks

    \b
    Then a verdict per daemon profile, i.e. the file and command that daemon version uses:
      pip             daemon <= 0.0.3    pip install -r requirements.txt
      uv-pip          0.0.4 - 0.5.2      uv pip install -r requirements.txt (mandatory file)
      uv-sync         0.5.3 - 0.5.4      uv sync --no-dev when pyproject.toml exists
      uv-sync-frozen  0.5.5 - 0.6.x      adds --frozen when uv.lock exists
      mirror          0.6.3+ with PIP_MIRROR_URL: requirements.txt wins when present

    \b
    A verdict is a prediction from the files alone. The proof is
      dify-repack verify PACKAGE
    which replays each install with the network cut off. Exits 0 whenever PACKAGE could be
    read, whatever the verdicts; 2 when it does not exist; 3 when it is not a readable, safe Dify
    plugin package; 8 when --key is not a public key the daemon could use.

    \b
    Examples:
      dify-repack inspect ./langgenius-openai_api_compatible_0.0.35.difypkg
      dify-repack inspect ./p-offline.difypkg --key keys/offline.public.pem
      dify-repack inspect ./p-offline.difypkg -q          # one line: identifier, signature, verdicts
      dify-repack inspect ./p-offline.difypkg --json | jq .verdicts
      dify-repack inspect ./plugins.difybndl           # each embedded package and the bundle's settings
    """
    if key is not None:
        load_public_key(key)  # a key that cannot verify anything is the user's mistake, not a package verdict
    documents = ReviewPaths(sbom, report)
    if is_bundle(package):
        bundled = inspect_bundle(package, public_key=key)
        written = write_bundle_documents(package, documents, public_key=key) if documents else []
        if output().as_json:
            emit("success", {**bundle_inspection_fields(bundled), "documents": [str(path) for path in written]})
        else:
            print_bundle_inspection(bundled, quiet=output().quiet)
            for path in written:
                stderr().print(f"wrote {escape(str(path))}")
        return
    if documents:
        dossier = read_dossier(package, public_key=key)
        written = write_documents([dossier], documents)
        result = dossier.inspection
    else:
        result, written = inspect_package(package, public_key=key), []
    if output().as_json:
        emit("success", {**result.to_json(), "documents": [str(path) for path in written]})
    elif output().quiet:
        verdicts = ", ".join(f"{v.profile} {'ok' if v.ok else 'FAIL'}" for v in result.verdicts)
        signature = (
            "unsigned"
            if not result.signed
            else {None: "signed", True: "verified", False: "NOT verified"}[result.verified]
        )
        click.echo(f"{result.identifier}: {signature}; {verdicts}")
    else:
        print_inspection(result)
        for path in written:
            stderr().print(f"wrote {escape(str(path))}")
