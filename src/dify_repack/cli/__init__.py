"""The command line: a thin layer over the core API; each module registers its commands on the group."""

from __future__ import annotations

from . import bundle, cache, keys, pack, verify, wheelhouse
from ._app import cli, main

__all__ = ["bundle", "cache", "cli", "keys", "main", "pack", "verify", "wheelhouse"]
