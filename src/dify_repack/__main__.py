from __future__ import annotations

import os
import sys

from . import cancel
from .cli import main


def entrypoint() -> None:
    code = main(sys.argv[1:])
    if cancel.cancelled():
        # Interrupted: the work has unwound; a thread that could not (stuck in a connect) must not delay the exit.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    entrypoint()
