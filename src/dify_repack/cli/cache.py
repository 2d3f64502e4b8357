"""``cache info|clean``."""

from __future__ import annotations

from pathlib import Path

import click

from ..render import (
    mib,
)
from ..wheels import WheelCache, default_cache_dir
from ._app import (
    cache_option,
    cli,
    emit,
    output,
    output_options,
    with_options,
)


@cli.group("cache")
@with_options(output_options)
def cache_group() -> None:
    """The shared wheel cache (downloads and wheels built from sdists, addressed by sha256).

    \b
    Examples:
      dify-repack cache info
      dify-repack cache clean --cache-dir /var/cache/dify-repack
    """


@cache_group.command("info")
@cache_option
@with_options(output_options)
def cache_info(cache_dir: Path | None) -> None:
    """Show where the cache is and how much it holds.

    \b
    Examples:
      dify-repack cache info
      DIFY_REPACK_CACHE_DIR=/srv/cache dify-repack cache info --json
    """
    cache = WheelCache(cache_dir or default_cache_dir())
    files, size = cache.size()
    if output().as_json:
        emit("success", {"cache_dir": str(cache.root), "files": files, "bytes": size})
    else:
        click.echo(f"{cache.root}: {files} files, {mib(size)}")


@cache_group.command("clean")
@cache_option
@with_options(output_options)
def cache_clean(cache_dir: Path | None) -> None:
    """Delete everything in the cache (only a folder dify-repack created: it carries a CACHEDIR.TAG).

    \b
    Examples:
      dify-repack cache clean
      dify-repack cache clean --cache-dir ./cache
    """
    cache = WheelCache(cache_dir or default_cache_dir())
    cache.clean()
    if output().as_json:
        emit("success", {"cache_dir": str(cache.root), "emptied": True})
    else:
        click.echo(f"emptied {cache.root}")
