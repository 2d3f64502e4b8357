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
)


@cli.group("cache")
def cache_group() -> None:
    """The shared wheel cache (downloads and wheels built from sdists, addressed by sha256)."""


@cache_group.command("info")
@cache_option
def cache_info(cache_dir: Path | None) -> None:
    """Show where the cache is and how much it holds."""
    cache = WheelCache(cache_dir or default_cache_dir())
    files, size = cache.size()
    click.echo(f"{cache.root}: {files} files, {mib(size)}")


@cache_group.command("clean")
@cache_option
def cache_clean(cache_dir: Path | None) -> None:
    """Delete everything in the cache (only a folder dify-repack created: it carries a CACHEDIR.TAG)."""
    cache = WheelCache(cache_dir or default_cache_dir())
    cache.clean()
    click.echo(f"emptied {cache.root}")
