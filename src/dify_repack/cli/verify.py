"""``verify`` and ``inspect``: proof and a static reading of a package."""

from __future__ import annotations

from pathlib import Path

import click

from ..bundle import inspect_bundle, is_bundle, verify_bundle
from ..errors import ExitCode
from ..inspect import inspect_package
from ..render import (
    print_inspection,
    print_verify_report,
)
from ..resolve import Indexes
from ..targets import chosen_arches, parse_glibc
from ..verify import DEFAULT_UV_VERSIONS, PROFILES, VerifyOptions, verify_package
from ._app import (
    arch_option,
    cache_option,
    cli,
    echo_json,
    glibc_option,
    index_options,
    make_reporter,
    python_option,
    uv_option,
    with_options,
)
from .bundle import (
    bundle_inspection_json,
    bundle_verification_json,
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
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON (schema 1) on stdout.")
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
    as_json: bool,
) -> int:
    """Prove that PACKAGE (or every package of a .difybndl bundle) installs with the network cut off.

    \b
    For each profile and uv version: extract like the daemon (files only, mode 0644), create the
    venv, run the daemon's install command with its replaced environment inside a network namespace
    (unshare -n), compileall, `import dify_plugin`, then start the plugin with INSTALL_METHOD=local and
    wait for its first heartbeat. Architectures this host cannot run get a static offline resolution
    for their platform. Exit code 0 only when every check passed.
    """
    arches = chosen_arches(arch, ()) or None
    options = VerifyOptions(
        profiles=profiles or tuple(PROFILES),
        uv_versions=uv_versions or DEFAULT_UV_VERSIONS,
        arches=arches,
        python=python_version,
        cache_dir=cache_dir,
        start=not no_start,
        index_args=Indexes(index_url, extra_index_urls).uv_args(),
        glibc=parse_glibc(glibc),
    )
    if is_bundle(package):
        verification = verify_bundle(package, options, make_reporter(as_json))
        if as_json:
            echo_json(bundle_verification_json(verification))
        else:
            print_bundle_verification(verification)
        return int(ExitCode.OK if verification.ok else ExitCode.VERIFY)
    report = verify_package(package, options, make_reporter(as_json))
    if as_json:
        echo_json(report.to_json())
    else:
        print_verify_report(report)
    return int(ExitCode.OK if report.ok else ExitCode.VERIFY)


# Inspect: a static reading of any .difypkg.


@cli.command("inspect")
@click.argument("package", type=click.Path(dir_okay=False))
@click.option(
    "--key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A public key (PEM PKCS#1) to verify the signature with, as the daemon would.",
)
@click.option("--json", "as_json", is_flag=True, help="Print everything as JSON (schema 1) on stdout instead.")
def inspect_command(package: str, key: Path | None, as_json: bool) -> None:
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
    read, whatever the verdicts; 3 when it is not a readable, safe Dify plugin package.
    """
    if is_bundle(Path(package)):
        bundled = inspect_bundle(Path(package), public_key=key)
        if as_json:
            echo_json(bundle_inspection_json(bundled))
        else:
            print_bundle_inspection(bundled)
        return
    result = inspect_package(Path(package), public_key=key)
    if as_json:
        echo_json(result.to_json())
        return
    print_inspection(result)
