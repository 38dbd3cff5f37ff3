"""SIGINT and SIGTERM as one exception, held back while a storage write is under way.

A worker must end its running trial cleanly on Ctrl-C or SIGTERM, so both raise
:class:`Interrupted` (a ``KeyboardInterrupt``) in the main thread. Raised at an arbitrary point,
though, it could land inside a storage call: in a journal append between taking Optuna's file lock
and releasing it (Optuna's lock then even releases a lock it does not hold), or in a journal read
between counting a log and applying it (the process then never sees that log). Code that must not
be cut runs inside :func:`deferred` (every storage method does, ``optispace.search.storage``): a
signal arriving there is remembered and raised when the outermost such block of the main thread ends.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

_state = threading.local()
_pending: list[int] = []


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM; ``str()`` is the signal's name."""


def _depth() -> int:
    return getattr(_state, "depth", 0)


def _handler(signum: int, frame: object) -> None:
    if _depth() > 0:
        _pending.append(signum)
        return
    raise Interrupted(signal.Signals(signum).name)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Within the block, an interrupt of the main thread waits until the block ends."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _state.depth = _depth() + 1
    try:
        yield
    finally:
        _state.depth -= 1
        if _state.depth == 0 and _pending:
            signum = _pending[0]
            _pending.clear()
            raise Interrupted(signal.Signals(signum).name)


@contextlib.contextmanager
def interrupts_raise() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM raise :class:`Interrupted` (main thread only)."""
    previous = {s: signal.signal(s, _handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
