from __future__ import annotations

import os
import signal
import sys
from types import FrameType

from . import cancel


def _end_at_once(signum: int, _frame: FrameType | None) -> None:
    os.write(2, b"error: interrupted\n")
    os._exit(128 + signum)


def entrypoint() -> None:
    # Until main() installs its own handlers nothing has started, and after it everything has ended: a signal
    # then just ends the process, without a KeyboardInterrupt traceback.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _end_at_once)
    from .cli import main  # after the handlers: importing takes a noticeable moment

    code = main(sys.argv[1:])
    if cancel.cancelled():
        # Interrupted: the work has unwound; a thread that could not (stuck in a connect) must not delay the exit.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    entrypoint()
