"""Cooperative cancellation: a signal sets a flag that long loops check, and hooks stop what cannot check.

The CLI's signal handler calls ``request(signum)``. Work in any thread calls ``check()`` at its step boundaries
(per download chunk, zip entry, replay step) and unwinds through its ``finally`` blocks, which remove temp
folders and partial files. What blocks outside Python (a child process, a socket read) is stopped by hooks
that ``request`` runs: the runner kills its process groups, the HTTP layer shuts its sockets.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from typing import TypeVar

from .errors import Interrupted

T = TypeVar("T")

_requested: int | None = None
# Plain dict operations are atomic under the GIL, so a signal handler may read this while a thread writes it.
_hooks: dict[int, Callable[[], None]] = {}


def request(signum: int = signal.SIGINT) -> None:
    """Ask every running job to stop; the first signal decides the exit code. Safe in a signal handler."""
    global _requested
    if _requested is None:
        _requested = signum
    for hook in tuple(_hooks.values()):
        hook()


def cancelled() -> bool:
    return _requested is not None


def check() -> None:
    """Raise ``Interrupted`` once a stop was requested."""
    if _requested is not None:
        raise Interrupted(_requested)


def sleep(seconds: float) -> None:
    """``time.sleep`` that ends early with ``Interrupted`` on a stop request."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        check()
        time.sleep(min(left, 0.05))
    check()


def reset() -> None:
    """Forget a request (a new run in the same process starts afresh)."""
    global _requested
    _requested = None


def on_request(hook: Callable[[], None]) -> None:
    """Run ``hook`` on every ``request``: for what blocks where ``check`` cannot reach (it must not block)."""
    _hooks[id(hook)] = hook


@contextmanager
def executor(workers: int) -> Iterator[ThreadPoolExecutor]:
    """A thread pool that drops its queued jobs when the block fails (an interrupt among them).

    Running jobs still finish unwinding, so their temp folders are gone when this block exits.
    """
    pool = ThreadPoolExecutor(workers)
    try:
        yield pool
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def as_completed(futures: Iterable[Future[T]], poll: float = 0.1) -> Iterator[Future[T]]:
    """Like ``concurrent.futures.as_completed``, but the waiting thread notices a stop request too."""
    pending = set(futures)
    while pending:
        done, pending = wait(pending, timeout=poll, return_when=FIRST_COMPLETED)
        yield from done
        check()
