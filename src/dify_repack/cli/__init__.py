"""The command line: a thin layer over the core API; each module registers its commands on the group.

The modules are imported when a command runs (``_app.LazyGroup``), so ``--version`` starts fast.
"""

from __future__ import annotations

from ._app import cli, main

__all__ = ["cli", "main"]
