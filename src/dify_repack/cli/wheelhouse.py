"""``wheelhouse list|check|prune|upload``: look after the static index that ``pack --wheelhouse`` grows."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import click
from rich.markup import escape
from rich.table import Table

from ..errors import ExitCode, VerificationError
from ..render import console, mib
from ..wheelhouse import check_wheelhouse, existing_wheelhouse, prune, read_wheelhouse, upload
from ._app import cert_option, cli, emit, output, output_options, with_options

house_argument = click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))


@cli.group("wheelhouse")
@with_options(output_options)
def wheelhouse_group() -> None:
    """Look after a wheelhouse: the static package index that `pack --wheelhouse DIR` writes.

    \b
      dify-repack wheelhouse list ./house
      dify-repack wheelhouse check ./house
      dify-repack wheelhouse prune ./house --plugin langgenius/openai_api_compatible:0.0.35
      dify-repack wheelhouse upload ./house --repository-url http://nexus.internal/repository/pypi-hosted/
    """


@wheelhouse_group.command("list")
@house_argument
@with_options(output_options)
def list_command(directory: Path) -> None:
    """List the plugins recorded in DIRECTORY and the files each needs."""
    house = existing_wheelhouse(directory)
    if output().as_json:
        emit("success", {"directory": str(directory), **house.to_json()})
        return
    out = console()
    table = Table(
        title=f"{escape(str(directory))}: {len(house.files)} files, {mib(sum(f.size for f in house.files.values()))}"
    )
    for column in ("plugin", "files", "size", "shared with others"):
        table.add_column(column)
    for key, names in sorted(house.plugins.items()):
        others = {name for other, files in house.plugins.items() if other != key for name in files}
        size = sum(house.files[name].size for name in names if name in house.files)
        table.add_row(escape(key), str(len(names)), mib(size), str(len(set(names) & others)))
    out.print(table)
    unclaimed = sorted(set(house.files) - house.needed())
    if unclaimed:
        out.print(f"{len(unclaimed)} files no plugin needs (a failed or replaced pack); `prune` drops them.")


@wheelhouse_group.command("check")
@house_argument
@with_options(output_options)
def check_command(directory: Path) -> int:
    """Check every file of DIRECTORY against the sha256 its index lists (exit 7 naming what is wrong)."""
    problems = check_wheelhouse(directory)
    files = len(read_wheelhouse(directory).files)
    if output().as_json:
        failure = VerificationError(f"{directory}: {problems[0]}", tip="pack the plugins again") if problems else None
        emit("error" if problems else "success", {"files": files, "problems": problems}, failure)
    else:
        out = console()
        for problem in problems:
            out.print(f"[bold red]FAIL[/] {escape(problem)}")
        out.print(f"{files} files checked: " + (f"{len(problems)} problems" if problems else "every hash matches"))
    return int(ExitCode.VERIFY if problems else ExitCode.OK)


@wheelhouse_group.command("prune")
@house_argument
@click.option(
    "--plugin",
    "plugins",
    required=True,
    multiple=True,
    metavar="ID[:VERSION]",
    help="Plugin to forget (author/name for every version, or author/name:version; repeatable).",
)
@with_options(output_options)
def prune_command(directory: Path, plugins: tuple[str, ...]) -> None:
    """Forget plugins and delete the files no remaining plugin needs."""
    existing_wheelhouse(directory)
    result = prune(directory, plugins)
    if output().as_json:
        emit("success", {"plugins": list(result.plugins), "removed": list(result.removed)})
        return
    out = console()
    out.print(f"forgot {', '.join(result.plugins)}; removed {len(result.removed)} files no other plugin needs")
    for name in result.removed:
        out.print(f"  {name}", markup=False)


@wheelhouse_group.command("upload")
@house_argument
@click.option(
    "--repository-url",
    required=True,
    metavar="URL",
    help="The upload URL of an existing repository (devpi index, Nexus/Artifactory PyPI hosted repository). "
    "Credentials: in the URL, ~/.netrc, or TWINE_USERNAME/TWINE_PASSWORD.",
)
@cert_option
@with_options(output_options)
def upload_command(directory: Path, repository_url: str) -> None:
    """Upload every wheel of DIRECTORY to an internal repository with twine (files it has are skipped).

    \b
    devpi:   --repository-url http://HOST:3141/USER/INDEX/
    Nexus:   --repository-url http://HOST/repository/pypi-hosted/
    Then pack with --mirror-url set to that repository's simple URL and --lock-from-mirror.
    """
    result = upload(directory, repository_url)  # checks the wheelhouse first
    if output().as_json:
        emit("success", asdict(result))
        return
    skipped = f"; {len(result.skipped)} it had already" if result.skipped else ""
    console().print(f"uploaded {len(result.uploaded)} files to {escape(result.repository)}{skipped}")
