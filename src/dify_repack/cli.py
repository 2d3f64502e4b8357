"""The command line: a thin layer over the core API. ``main(argv) -> int`` is the one error boundary."""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.markup import escape

from . import __version__
from .errors import DifyRepackError, ExitCode, UsageError
from .inspect import inspect_package
from .manifest import Manifest
from .packing import PackOptions, PackResult, pack
from .render import Outcome, mib, pack_json, print_batch_table, print_inspection, print_pack_result, print_verify_report
from .report import ConsoleReporter, PrefixedReporter, Reporter
from .resolve import DEFAULT_INDEX, Indexes
from .signing import CATEGORIES, generate_keypair, sign_package, trust_instructions, verify_signature
from .sources import Source, fetch_source, parse_source, read_source_list
from .targets import ARCH_CHOICES, DEFAULT_PYTHON, Target, chosen_arches, parse_glibc
from .verify import DEFAULT_UV_VERSIONS, PROFILES, VerifyOptions, VerifyReport, require_pass, verify_package
from .wheels import WheelCache, default_cache_dir

F = TypeVar("F", bound=Callable[..., Any])

stderr = Console(stderr=True, highlight=False, soft_wrap=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="dify-repack")
@click.option("-v", "--verbose", is_flag=True, help="Show commands run and tracebacks of unexpected errors.")
@click.pass_context
def cli(ctx: click.Context, verbose: bool) -> None:
    """Repackage Dify plugins so they install on a Dify deployment with no internet access.

    \b
    Typical use, on a machine with internet access:
      dify-repack pack ./author-plugin_1.0.0.difypkg   # writes ./author-plugin_1.0.0-offline.difypkg
      dify-repack inspect ./author-plugin_1.0.0-offline.difypkg
    Then carry the -offline.difypkg across the air gap and upload it in Dify's plugin page.
    """
    ctx.ensure_object(dict)
    ctx.obj["verbose"] = verbose
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format="%(name)s: %(message)s")


def _echo_json(payload: dict[str, object]) -> None:
    click.echo(json.dumps(payload, indent=2, default=str))


def _reporter(quiet: bool) -> ConsoleReporter:
    return ConsoleReporter(stderr, quiet=quiet)


_index_options = [
    click.option(
        "--index-url",
        envvar=["UV_DEFAULT_INDEX", "UV_INDEX_URL", "PIP_INDEX_URL"],
        default=DEFAULT_INDEX,
        show_default=True,
        metavar="URL",
        help="Package index to resolve and download from (a private mirror works). "
        "Env: UV_DEFAULT_INDEX, UV_INDEX_URL, PIP_INDEX_URL.",
    ),
    click.option(
        "--extra-index-url",
        "extra_index_urls",
        multiple=True,
        envvar=["UV_EXTRA_INDEX_URL", "PIP_EXTRA_INDEX_URL"],
        metavar="URL",
        help="Another index to use as well (repeatable). Env: UV_EXTRA_INDEX_URL, PIP_EXTRA_INDEX_URL.",
    ),
]
_cache_option = click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="DIFY_REPACK_CACHE_DIR",
    help="Wheel cache shared by all runs (default: the platform's user cache dir). Env: DIFY_REPACK_CACHE_DIR.",
)
_uv_option = click.option(
    "--uv",
    "uv_versions",
    multiple=True,
    metavar="VERSION",
    help=f"uv version to replay the daemon with (repeatable; 'latest' allowed). "
    f"Default: {' and '.join(DEFAULT_UV_VERSIONS)}, the oldest and newest in the daemon's images.",
)


_arch_option = click.option(
    "--arch",
    type=click.Choice(ARCH_CHOICES),
    help="CPU architectures: amd64, arm64 or all (default: the manifest's meta.arch).",
)
_glibc_option = click.option(
    "--glibc",
    default="2.28",
    show_default=True,
    metavar="2.N",
    help="Newest glibc of the Dify daemon's host: wheels for up to manylinux_2_N are accepted.",
)
_python_option = click.option(
    "--python",
    "python_version",
    default=DEFAULT_PYTHON,
    show_default=True,
    help="CPython version of the daemon's venv (always 3.12 today, whatever the manifest says).",
)


def _with(options: list[Callable[[F], F]]) -> Callable[[F], F]:
    def decorate(function: F) -> F:
        for option in reversed(options):
            function = option(function)
        return function

    return decorate


@cli.command("pack")
@click.argument("sources", nargs=-1)
@click.option(
    "-r",
    "--sources-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A file listing sources, one a line ('#' comments allowed), to repackage as a batch.",
)
@click.option(
    "-o",
    "--output-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for the NAME-offline.difypkg files (default: the current directory).",
)
@_arch_option
@_python_option
@_glibc_option
@_with(_index_options)
@_cache_option
@click.option(
    "--verify/--no-verify",
    default=True,
    show_default=True,
    help="Replay every daemon install profile with the network cut off before writing the package.",
)
@_uv_option
@click.option(
    "--no-start",
    is_flag=True,
    help="Verify install and `import dify_plugin` only, without starting the plugin to wait for its heartbeat.",
)
@click.option(
    "--sign-key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Sign the package with this private key (see `dify-repack keygen`).",
)
@click.option(
    "--marketplace-url",
    metavar="URL",
    envvar="DIFY_MARKETPLACE_URL",
    help="Marketplace for NAME:VERSION sources.",
)
@click.option(
    "--refresh",
    is_flag=True,
    help="Resolve again now; by default a resolution of the same input from the last 24 hours is reused.",
)
@click.option(
    "-j",
    "--jobs",
    type=click.IntRange(1, 8),
    default=2,
    show_default=True,
    help="Plugins of a batch packed side by side (they share the cache, so a wheel is still fetched once).",
)
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable result (schema 1) on stdout.")
@click.option("-q", "--quiet", is_flag=True, help="Only print the result and errors.")
def pack_command(
    sources: tuple[str, ...],
    sources_file: Path | None,
    output_dir: Path | None,
    arch: str | None,
    python_version: str,
    glibc: str,
    index_url: str,
    extra_index_urls: tuple[str, ...],
    cache_dir: Path | None,
    verify: bool,
    uv_versions: tuple[str, ...],
    no_start: bool,
    sign_key: Path | None,
    marketplace_url: str | None,
    refresh: bool,
    jobs: int,
    as_json: bool,
    quiet: bool,
) -> int:
    """Repackage plugins so that every Dify daemon version installs them with no internet access.

    \b
    SOURCE is any of:
      ./author-name_1.0.0.difypkg          a package file
      ./my-plugin/                         a plugin source directory (with manifest.yaml)
      langgenius/openai_api_compatible:0.0.35[@CHECKSUM]   a Marketplace plugin
      github:OWNER/REPO@TAG/ASSET.difypkg  a GitHub release asset
      https://host/path/plugin.difypkg     any URL

    \b
    Writes AUTHOR-NAME_VERSION-offline.difypkg with every dependency as a wheel for the daemon's
    CPython on Linux (per architecture), requirements.txt / pyproject.toml / uv.lock set to install
    only from those wheels, and checks the result by replaying each daemon's install offline.
    Then prints the Dify settings the upload needs.
    """
    parsed = [parse_source(text) for text in sources] + (read_source_list(sources_file) if sources_file else [])
    if not parsed:
        raise UsageError("give at least one SOURCE (a .difypkg, a plugin folder, NAME:VERSION or a URL)")
    glibc_version = parse_glibc(glibc)
    console_reporter = _reporter(quiet or as_json)
    cache = cache_dir or default_cache_dir()
    indexes = Indexes(index_url, extra_index_urls)
    verify_options = VerifyOptions(
        uv_versions=uv_versions or DEFAULT_UV_VERSIONS,
        python=python_version,
        cache_dir=cache,
        start=not no_start,
        index_args=indexes.uv_args(),
        glibc=glibc_version,
    )
    base_options = PackOptions(
        output_dir=output_dir,
        arch=arch,
        python=python_version,
        indexes=indexes,
        cache_dir=cache,
        sign_key=sign_key,
        refresh=refresh,
        glibc=glibc_version,
    )
    parallel = jobs > 1 and len(parsed) > 1

    def pack_one(number: int, source: Source, downloads: Path) -> Outcome:
        # Plugins packed side by side share one console: their lines carry the plugin, and no live bars.
        reporter: Reporter = PrefixedReporter(console_reporter, source.text) if parallel else console_reporter

        def check(staged: Path, _manifest: Manifest, targets: tuple[Target, ...]) -> VerifyReport:
            reporter.step("verifying: replaying each daemon profile with the network cut off")
            arches = [target.arch for target in targets]
            report = verify_package(staged, dataclasses.replace(verify_options, arches=arches), reporter)
            require_pass(report)
            return report

        options = dataclasses.replace(base_options, check=check if verify else None)
        started = time.monotonic()
        try:
            # One folder a source: two URLs may end in the same file name.
            local = fetch_source(source, downloads / str(number), marketplace_url=marketplace_url)
            result: PackResult | DifyRepackError = pack(local, options, reporter)
        except DifyRepackError as error:
            if len(parsed) == 1:
                raise
            stderr.print(f"[bold red]error:[/] {escape(source.text)}: {escape(_one_line(error.message))}")
            result = error
        if isinstance(result, PackResult) and not as_json:
            print_pack_result(result)
        return source.text, result, time.monotonic() - started

    with (
        tempfile.TemporaryDirectory(prefix="dify-repack-sources-") as downloads,
        ThreadPoolExecutor(jobs if parallel else 1) as pool,
    ):
        futures = [pool.submit(pack_one, number, source, Path(downloads)) for number, source in enumerate(parsed)]
        outcomes = [future.result() for future in futures]
    failures = [outcome for _, outcome, _ in outcomes if isinstance(outcome, DifyRepackError)]
    if as_json:
        _echo_json(
            {
                "schema": 1,
                "status": "error" if len(failures) == len(outcomes) else "partial" if failures else "success",
                "results": [pack_json(text, outcome, seconds) for text, outcome, seconds in outcomes],
            }
        )
    elif len(outcomes) > 1:
        print_batch_table(outcomes)
    if not failures:
        return int(ExitCode.OK)
    return int(failures[0].exit_code) if len(outcomes) == 1 else int(ExitCode.PARTIAL)


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
@_uv_option
@_arch_option
@_python_option
@_glibc_option
@click.option("--no-start", is_flag=True, help="Skip starting the plugin and waiting for its heartbeat.")
@_with(_index_options)
@_cache_option
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
    """Prove that PACKAGE installs with the network cut off, as each Dify daemon version installs it.

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
    report = verify_package(package, options, _reporter(as_json))
    if as_json:
        _echo_json(report.to_json())
    else:
        print_verify_report(report)
    return int(ExitCode.OK if report.ok else ExitCode.VERIFY)


@cli.group("cache")
def cache_group() -> None:
    """The shared wheel cache (downloads and wheels built from sdists, addressed by sha256)."""


@cache_group.command("info")
@_cache_option
def cache_info(cache_dir: Path | None) -> None:
    """Show where the cache is and how much it holds."""
    cache = WheelCache(cache_dir or default_cache_dir())
    files, size = cache.size()
    click.echo(f"{cache.root}: {files} files, {mib(size)}")


@cache_group.command("clean")
@_cache_option
def cache_clean(cache_dir: Path | None) -> None:
    """Delete everything in the cache."""
    cache = WheelCache(cache_dir or default_cache_dir())
    cache.clean()
    click.echo(f"emptied {cache.root}")


def _one_line(text: str) -> str:
    return " | ".join(line.strip() for line in text.splitlines() if line.strip())


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return its exit code instead of exiting (tests call this in-process)."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        code = cli.main(args=args, prog_name="dify-repack", standalone_mode=False)
    except DifyRepackError as error:
        stderr.print(f"[bold red]error:[/] {escape(_one_line(error.message))}")
        if error.tip:
            stderr.print(f"[bold]tip:[/] {escape(error.tip)}")
        return int(error.exit_code)
    except click.exceptions.Abort:
        stderr.print("[bold red]error:[/] interrupted")
        return 130
    except click.ClickException as error:
        error.show()
        return error.exit_code
    except click.exceptions.Exit as exit_:
        return exit_.exit_code
    except Exception as error:
        if "-v" in args or "--verbose" in args:
            traceback.print_exc()
        stderr.print(
            f"[bold red]error:[/] unexpected {type(error).__name__}: {escape(str(error))} (run with -v for the traceback)"
        )
        return int(ExitCode.FAILURE)
    return code if isinstance(code, int) else int(ExitCode.OK)


# Signing: keys, signatures and their verification as the daemon does it.


@cli.command("keygen")
@click.argument("name", type=click.Path(dir_okay=False))
@click.option("--bits", type=int, default=4096, show_default=True, help="RSA key size (2048 at least).")
def keygen_command(name: str, bits: int) -> None:
    """Create the key pair NAME.private.pem and NAME.public.pem for signing packages.

    \b
    Sign packages with the private key (written mode 0600; keep it off the Dify host). Give the
    plugin daemon the public key: it then installs the packages you signed while
    FORCE_VERIFYING_SIGNATURE stays true. Prints the docker compose lines that do it.
    Existing files are never overwritten.

    \b
    Example:
      dify-repack keygen keys/offline
      dify-repack sign plugin-offline.difypkg --key keys/offline.private.pem
    """
    private, public = generate_keypair(Path(name), bits=bits)
    click.echo(f"private key: {private}  (mode 0600: signs packages; never copy it to Dify or into a plugin)")
    click.echo(f"public key:  {public}")
    click.echo()
    click.echo(trust_instructions(public))


@cli.command("sign")
@click.argument("package", type=click.Path(dir_okay=False))
@click.option(
    "--key",
    required=True,
    type=click.Path(dir_okay=False),
    help="The private key, PEM (NAME.private.pem from `dify-repack keygen NAME`).",
)
@click.option(
    "--category",
    type=click.Choice(CATEGORIES),
    default="community",
    show_default=True,
    help="The authorized_category written into the package; Dify's installation scopes filter on it.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False),
    help="Where to write the signed package.  [default: PACKAGE with .signed.difypkg, beside it]",
)
def sign_command(package: str, key: str, category: str, output: str | None) -> None:
    """Sign PACKAGE so a plugin daemon that trusts your public key installs it.

    \b
    Replaces any earlier signature, writes a new package and checks the signature on it;
    PACKAGE itself is left untouched unless -o names it.

    \b
    Example:
      dify-repack sign plugin-offline.difypkg --key keys/offline.private.pem
      # writes plugin-offline.signed.difypkg
    """
    source = Path(package)
    target = Path(output) if output else source.with_name(source.stem + ".signed.difypkg")
    info = sign_package(source, Path(key), target, category=category)
    signed_at = datetime.fromtimestamp(info.time, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    click.echo(f"signed: {target}  (category {info.category}, {signed_at})")
    stem = key.removesuffix(".private.pem")
    public = f"{stem}.public.pem" if stem != key else "NAME.public.pem"
    click.echo(f"check:  dify-repack verify-signature {target} --key {public}")


@cli.command("verify-signature")
@click.argument("package", type=click.Path(dir_okay=False))
@click.option(
    "--key",
    required=True,
    type=click.Path(dir_okay=False),
    help="The public key the daemon trusts: PEM PKCS#1, 'BEGIN RSA PUBLIC KEY' (NAME.public.pem).",
)
def verify_signature_command(package: str, key: str) -> None:
    """Check PACKAGE's signature against one public key, exactly as the plugin daemon does.

    \b
    Exits 0 when it verifies. Exits 8 when the package is unsigned, changed after signing or
    signed with another key, or when the key file is in a form the daemon would refuse (SPKI
    'BEGIN PUBLIC KEY', or anything after the END line): one refused key file makes the daemon
    verify no package at all, so check the exact file you mount into the daemon.
    """
    info = verify_signature(Path(package), Path(key))
    signed_at = datetime.fromtimestamp(info.time, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    category = info.category or "none"
    click.echo(f"verified: {package}  (signed {signed_at}, category {category}, key {key})")


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
    """Show what PACKAGE holds and predict, per daemon version, whether it installs offline.

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
    result = inspect_package(Path(package), public_key=key)
    if as_json:
        _echo_json(result.to_json())
        return
    print_inspection(result)
