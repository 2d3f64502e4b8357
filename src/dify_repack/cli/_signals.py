"""Ctrl-C and SIGTERM during a command: a stop request the work unwinds from, never a traceback.

Before ``main`` installs these (while the CLI is imported) and after it, ``__main__``'s own handler ends the
process at once: nothing has started, or everything has ended.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from .. import cancel

# After a stop request the run has this long to unwind (kill children, remove temp files) before it is ended
# from outside: a thread stuck where no check reaches (a TCP connect to a silent host) must not keep it alive.
STOP_GRACE_SECONDS = 5.0


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Ctrl-C and SIGTERM ask the run to stop (``cancel.request``) instead of raising where they land.

    Work checks the request at its step boundaries and unwinds through its cleanups; the request kills child
    process groups and shuts sockets at once. Repeated signals only repeat that, so they never print a traceback.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    finished = threading.Event()

    def last_resort(signum: int) -> None:
        if not finished.wait(STOP_GRACE_SECONDS):
            sys.stderr.write("error: interrupted\n")
            sys.stderr.flush()
            os._exit(128 + signum)

    def handler(signum: int, _frame: FrameType | None) -> None:
        first = not cancel.cancelled()
        cancel.request(signum)
        if first:
            threading.Thread(target=last_resort, args=(signum,), daemon=True).start()

    previous = {signum: signal.signal(signum, handler) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        finished.set()
        if not cancel.cancelled():  # else keep absorbing signals until the process is gone
            for signum, old in previous.items():
                signal.signal(signum, old)
