"""``pack``: parse the options, run the core, render the outcome."""

from __future__ import annotations

from pathlib import Path

import click
from rich.markup import escape

from ..batch import BatchItem, BatchOptions, pack_many
from ..dsl import is_dsl_source
from ..errors import UsageError
from ..packing import PackOptions, PackResult
from ..render import print_pack_result
from ..resolve import Indexes
from ..review import ReviewPaths, packed_dossier, write_documents
from ..sources import parse_source, read_source_list
from ..targets import parse_glibc
from ..verify import DEFAULT_UV_VERSIONS, PROFILES, VerifyOptions
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
    print_error,
    python_option,
    review_options,
    stderr,
    uv_option,
    with_options,
)
from .bundle import batch_fields, check_signing_flags, langgenius_option, print_batch_report, sign_key_option


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
    help="Replay even when a package with the same files already passed with the same settings (so does --refresh).",
)
@click.option(
    "--no-start",
    is_flag=True,
    help="Verify install and `import dify_plugin` only, without starting the plugin to wait for its heartbeat.",
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
@click.option(
    "--packages-dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Folder of .difypkg files for the `package` dependencies of app DSLs (matched by plugin id and version).",
)
@click.option(
    "--bundle",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write every offline package into this .difybndl, for one upload in Dify.",
)
@sign_key_option
@langgenius_option
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
    packages_dir: Path | None,
    bundle: Path | None,
    langgenius_category: bool,
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
      ./app.yml                            an app DSL exported from Dify: every plugin it depends on

    \b
    Writes AUTHOR-NAME_VERSION-offline.difypkg with every dependency as a wheel for the daemon's
    CPython on Linux (per architecture), requirements.txt / pyproject.toml / uv.lock set to install
    only from those wheels, and checks the result by replaying each daemon's install offline.
    Then prints the Dify settings the upload needs.

    \b
    A batch (several sources, -r, or app DSLs) packs each plugin version once, goes on after a
    failure, and ends with one table. For each app DSL it writes APP.offline.yml beside the packages,
    its dependencies naming the repacked packages; --bundle also puts every package in one .difybndl.

    \b
    Examples:
      dify-repack pack ./langgenius-openai_api_compatible_0.0.35.difypkg
      dify-repack pack langgenius/openai_api_compatible --arch x86_64 -o offline/
      dify-repack pack -r plugins.txt -o offline/ -j 2 --json > report.json
      dify-repack pack app1.yml app2.yml -o out/ --bundle out/plugins.difybndl
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
        raise UsageError("give at least one SOURCE (a .difypkg, a plugin folder, NAME:VERSION, a URL or an app DSL)")
    check_signing_flags(sign_key, langgenius_category)
    glibc_version = parse_glibc(glibc)
    as_json = output().as_json
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
    options = BatchOptions(
        pack=PackOptions(
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
        ),
        verify=verify_options if verify else None,
        jobs=jobs,
        marketplace_url=marketplace_url,
        packages_dir=packages_dir,
        bundle=bundle,
        langgenius_category=langgenius_category,
    )
    reporter = make_reporter()
    # One plain source keeps the single-plugin output: its summary, and its own error and exit code.
    single = len(parsed) == 1 and not is_dsl_source(parsed[0])

    def done(item: BatchItem) -> None:
        if as_json:
            return
        if isinstance(item.outcome, PackResult):
            print_pack_result(item.outcome)
        elif not single:
            message = one_line(item.outcome.message)
            where = "" if message.startswith(item.sources[0]) else f"{item.sources[0]}: "
            print_error(where + message, item.outcome.tip)

    result = pack_many(parsed, options, reporter, on_item=done)
    if single and result.failures:
        raise result.failures[0]
    code = int(result.exit_code)
    packed = [item.outcome for item in result.items if isinstance(item.outcome, PackResult)]
    documents = ReviewPaths(sbom, report)
    written = (
        write_documents([packed_dossier(item) for item in packed], documents, bundle=result.bundle)
        if documents and packed
        else []
    )
    if as_json:
        problem = None
        if result.status != "success":
            failed = len(result.failures)
            message = f"{failed} of {len(result.items)} plugins failed; each result says why"
            tip: str | None = "the other packages were written; fix these and pack them again"
            if not failed:
                message, tip = "not every output was written; `bundle_skipped` and `dsl_copies` say why", None
            problem = error_json(message, tip, code)
        emit(result.status, {**batch_fields(result), "documents": [str(path) for path in written]}, problem)
        return code
    if not single or result.bundle is not None or result.bundle_skipped:
        print_batch_report(result)
    for path in written:
        stderr().print(f"wrote {escape(str(path))}")
    return code
