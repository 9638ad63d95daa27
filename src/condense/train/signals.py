"""Clean stops: SIGINT / SIGTERM ask the training loop to stop at the next step boundary.

The loop then writes a checkpoint (when it has a folder) and raises `Interrupted`, whose exit
code is 130 (SIGINT) or 143 (SIGTERM). A second signal interrupts at once.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

from condense.core.errors import CondenseError


class Interrupted(CondenseError):
    """Training stopped on a signal; a checkpoint was written when possible."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum


class _StopFlag:
    def __init__(self) -> None:
        self.signum: int | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def clear(self) -> None:
        self.signum = None


STOP = _StopFlag()


@contextlib.contextmanager
def stop_on_signals() -> Iterator[_StopFlag]:
    """Within this block, SIGINT / SIGTERM set `STOP` instead of killing the process."""
    if threading.current_thread() is not threading.main_thread():
        yield STOP
        return

    def handler(signum: int, _frame: object) -> None:
        if STOP.requested:
            raise KeyboardInterrupt
        STOP.signum = signum

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    STOP.clear()
    try:
        yield STOP
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        STOP.clear()
