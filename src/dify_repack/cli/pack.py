"""``pack``: parse the options, run the core, render the outcome."""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path

import click
from rich.markup import escape

from .. import cancel
from ..errors import DifyRepackError, ExitCode, Interrupted, UsageError
from ..manifest import Manifest
from ..packing import PackOptions, PackResult, check_folders, pack
from ..redaction import redact
from ..render import (
    Outcome,
    pack_json,
    print_batch_table,
    print_pack_result,
)
from ..report import PrefixedReporter, Reporter
from ..resolve import Indexes
from ..review import ReviewPaths, packed_dossier, write_documents
from ..sources import Source, fetch_source, latest_on_marketplace, parse_source, read_source_list
from ..targets import Target, parse_glibc
from ..uvbin import require_python
from ..verify import DEFAULT_UV_VERSIONS, PROFILES, VerifyOptions, VerifyReport, require_pass, verify_package
from ..wheels import default_cache_dir
from ._app import (
    arch_option,
    cache_option,
    check_urls,
    cli,
    emit,
    error_json,
    glibc_option,
    index_options,
    make_reporter,
    one_line,
    output,
    output_options,
    python_option,
    review_options,
    stderr,
    uv_option,
    with_options,
)


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
@arch_option
@python_option
@glibc_option
@with_options(index_options)
@cache_option
@click.option(
    "--verify/--no-verify",
    default=True,
    show_default=True,
    help="Replay every daemon install profile with the network cut off before writing the package.",
)
@click.option(
    "--profile",
    "profiles",
    multiple=True,
    type=click.Choice(list(PROFILES)),
    help="Daemon profile to replay (repeatable; default all, see `dify-repack verify --help`).",
)
@uv_option
@click.option(
    "--reverify",
    is_flag=True,
    help="Replay even when this byte-identical package already passed with the same settings (so does --refresh).",
)
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
    callback=check_urls,
    help="Marketplace for ORG/NAME[:VERSION] sources (default: Dify's public one). Env: DIFY_MARKETPLACE_URL.",
)
@click.option(
    "--refresh",
    is_flag=True,
    help="Resolve again now (and replay the verification); by default a resolution of the same input from the "
    "last 24 hours is reused.",
)
@click.option(
    "--follow-symlinks",
    is_flag=True,
    help="Package what every symbolic link of a plugin folder points to, even outside the folder and its "
    "git repository (by default such links are refused).",
)
@click.option(
    "-j",
    "--jobs",
    type=click.IntRange(1, 8),
    default=2,
    show_default=True,
    help="Plugins of a batch packed side by side (they share the cache, so a wheel is still fetched once).",
)
@click.option(
    "--wheelhouse",
    type=click.Path(file_okay=False, path_type=Path),
    help="Also put every wheel into this static index (PEP 503), grown run after run; "
    "see `dify-repack wheelhouse`. Default with --mirror-url: OUTPUT_DIR/wheelhouse.",
)
@click.option(
    "--mirror-url",
    metavar="URL",
    help="Write slim packages (no wheels inside) that install from the wheelhouse served at this index URL, "
    "e.g. http://pypi.internal:8080/simple.",
)
@click.option(
    "--lock-from-mirror",
    is_flag=True,
    help="Take uv.lock's file URLs from the mirror itself (reachable from here, the wheelhouse already uploaded): "
    "for repositories whose file URLs differ from the wheelhouse's files/ (devpi, Nexus, Artifactory).",
)
@with_options(review_options)
@with_options(output_options)
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
    profiles: tuple[str, ...],
    uv_versions: tuple[str, ...],
    reverify: bool,
    no_start: bool,
    sign_key: Path | None,
    marketplace_url: str | None,
    refresh: bool,
    follow_symlinks: bool,
    jobs: int,
    wheelhouse: Path | None,
    mirror_url: str | None,
    lock_from_mirror: bool,
    sbom: Path | None,
    report: Path | None,
) -> int:
    """Repackage plugins so that every Dify daemon version installs them with no internet access.

    \b
    SOURCE is any of:
      ./author-name_1.0.0.difypkg          a package file
      ./my-plugin/                         a plugin source directory (with manifest.yaml)
      langgenius/openai_api_compatible:0.0.35[@CHECKSUM]   a Marketplace plugin
      langgenius/openai_api_compatible     its latest version on the Marketplace
      github:OWNER/REPO@TAG/ASSET.difypkg  a GitHub release asset
      https://host/path/plugin.difypkg     any URL

    \b
    Writes AUTHOR-NAME_VERSION-offline.difypkg with every dependency as a wheel for the daemon's
    CPython on Linux (per architecture), requirements.txt / pyproject.toml / uv.lock set to install
    only from those wheels, and checks the result by replaying each daemon's install offline.
    Then prints the Dify settings the upload needs.

    \b
    Examples:
      dify-repack pack ./langgenius-openai_api_compatible_0.0.35.difypkg
      dify-repack pack langgenius/openai_api_compatible --arch x86_64 -o offline/
      dify-repack pack -r plugins.txt -o offline/ -j 2 --json > report.json
      dify-repack pack ./plugin.difypkg --sign-key keys/offline.private.pem
      dify-repack pack ./plugin.difypkg --index-url https://nexus.example.com/repository/pypi/simple
      dify-repack pack ./plugin.difypkg --no-verify -q      # on a host without Linux/unshare
      dify-repack pack -r plugins.txt --wheelhouse ./house --mirror-url http://pypi.internal:8080/simple -o slim/

    \b
    Wheelhouse mode (README): --wheelhouse collects every wheel into one static index, --mirror-url
    writes slim packages (no wheels inside) that install from it; serve ./house
    (python3 -m http.server 8080 --directory house) or upload it (dify-repack wheelhouse upload).
    """
    parsed = [parse_source(text) for text in sources] + (read_source_list(sources_file) if sources_file else [])
    if not parsed:
        raise UsageError("give at least one SOURCE (a .difypkg, a plugin folder, NAME:VERSION or a URL)")
    glibc_version = parse_glibc(glibc)
    as_json = output().as_json
    console_reporter = make_reporter(output().quiet or as_json)
    cache = cache_dir or default_cache_dir()
    indexes = Indexes(index_url, extra_index_urls)
    if mirror_url is not None and wheelhouse is None:
        wheelhouse = (output_dir or Path.cwd()) / "wheelhouse"
    verify_options = VerifyOptions(
        profiles=profiles or tuple(PROFILES),
        uv_versions=uv_versions or DEFAULT_UV_VERSIONS,
        python=python_version,
        cache_dir=cache,
        start=not no_start,
        indexes=indexes,
        glibc=glibc_version,
        reuse=not (reverify or refresh),
        wheelhouse=wheelhouse,
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
        wheelhouse=wheelhouse,
        mirror_url=mirror_url,
        lock_from_mirror=lock_from_mirror,
        follow_symlinks=follow_symlinks,
    )
    parallel = jobs > 1 and len(parsed) > 1
    check_folders(base_options)  # before the sources are downloaded
    if verify:  # before any source is downloaded: the replays need the daemon's CPython
        require_python(python_version, console_reporter.step)

    def pack_one(number: int, source: Source, downloads: Path) -> Outcome:
        shown = redact(source.text)  # a URL source may carry a login
        # Plugins packed side by side share one console and its live view: their lines carry the plugin.
        reporter: Reporter = PrefixedReporter(console_reporter, shown) if parallel else console_reporter

        def check(staged: Path, _manifest: Manifest, targets: tuple[Target, ...]) -> VerifyReport:
            arches = [target.arch for target in targets]
            report = verify_package(staged, dataclasses.replace(verify_options, arches=arches), reporter)
            require_pass(report)
            return report

        # Errors name the source as typed (a URL, a Marketplace id), not the download's temp path.
        options = dataclasses.replace(base_options, check=check if verify else None, origin=source.text)
        started = time.monotonic()
        try:
            if source.plugin is not None and source.plugin.version is None:
                source = latest_on_marketplace(source, marketplace_url=marketplace_url)
                reporter.step(f"{source.text}: the latest version on the Marketplace is {source.plugin}")
            # One folder a source: two URLs may end in the same file name.
            local = fetch_source(source, downloads / str(number), marketplace_url=marketplace_url)
            result: PackResult | DifyRepackError = pack(local, options, reporter)
        except DifyRepackError as error:
            if len(parsed) == 1 or isinstance(error, Interrupted):
                raise
            stderr().print(f"[bold red]error:[/] {escape(shown)}: {escape(one_line(error.message))}")
            result = error
        if isinstance(result, PackResult) and not as_json:
            print_pack_result(result)
        return shown, result, time.monotonic() - started

    with (
        tempfile.TemporaryDirectory(prefix="dify-repack-sources-") as downloads,
        cancel.executor(jobs if parallel else 1) as pool,
    ):
        futures = [pool.submit(pack_one, number, source, Path(downloads)) for number, source in enumerate(parsed)]
        outcomes = [future.result() for future in futures]
    failures = [outcome for _, outcome, _ in outcomes if isinstance(outcome, DifyRepackError)]
    code = int(ExitCode.OK if not failures else failures[0].exit_code if len(outcomes) == 1 else ExitCode.PARTIAL)
    packed = [outcome for _, outcome, _ in outcomes if isinstance(outcome, PackResult)]
    documents = ReviewPaths(sbom, report)
    written = write_documents([packed_dossier(result) for result in packed], documents) if documents and packed else []
    if as_json:
        status = "success" if not failures else "partial" if len(failures) < len(outcomes) else "error"
        message = f"{len(failures)} of {len(outcomes)} plugins failed; each result says why"
        problem = error_json(message, "the other packages were written; fix these and pack them again", code)
        fields = {"results": [pack_json(*outcome) for outcome in outcomes], "documents": [str(p) for p in written]}
        emit(status, fields, problem if failures else None)
    else:
        if len(outcomes) > 1:
            print_batch_table(outcomes)
        for path in written:
            stderr().print(f"wrote {escape(str(path))}")
    return code
