"""The console entry point (``dify-repack``, ``python -m dify_repack``).

No ``from __future__`` import and nothing but ``os``, ``signal`` and ``sys`` (loaded by the interpreter already)
before the signal handlers: the earlier they are in place, the smaller the window where Ctrl-C shows a
``KeyboardInterrupt`` traceback from the middle of an import.
"""

import os
import signal
import sys
from types import FrameType

# Written by hand: json would be one more import, and the envelope is fixed (cli/_app.py's, schema 1). The
# command is not known yet: the command line has not been read.
_EARLY_JSON = (
    '{{"schema": 1, "command": null, "status": "error", '
    '"error": {{"message": "interrupted", "tip": null, "exit_code": {code}}}}}\n'
)


def _end_at_once(signum: int, _frame: FrameType | None) -> None:
    """Nothing has started yet (or everything has ended): say so as every interrupted run does, and exit."""
    options = sys.argv[1 : sys.argv.index("--")] if "--" in sys.argv else sys.argv[1:]
    if "--json" in options:
        os.write(1, _EARLY_JSON.format(code=128 + signum).encode())
    os.write(2, b"error: interrupted\n")
    os._exit(128 + signum)


def entrypoint() -> None:
    # Before main() installs its own handlers nothing has started, and after it everything has ended: a signal
    # then just ends the process, without a KeyboardInterrupt traceback.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _end_at_once)
    from . import cancel  # after the handlers: importing the CLI and its libraries takes a noticeable moment
    from .cli import main

    code = main(sys.argv[1:])
    if cancel.cancelled():
        # Interrupted: the work has unwound; a thread that could not (stuck in a connect) must not delay the exit.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    entrypoint()
