"""Stop requests: SIGTERM and SIGINT become a flag the training loop checks between steps.

The loop saves its state at the next step boundary and raises ``Preempted``;
the launcher exits ``128 + signal``, and rerunning the same command resumes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterator

log = logging.getLogger(__name__)


class Preempted(Exception):
    """The run was asked to stop (SIGTERM, SIGINT) and saved its state."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum


class StopFlag:
    """Set by SIGTERM/SIGINT; the training loop saves and stops at the next check."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def check(self, what: str) -> None:
        """Raises ``Preempted`` if a stop was requested."""
        if self.signum is not None:
            name = signal.Signals(self.signum).name
            raise Preempted(self.signum, f"stopped by {name} {what}; rerun the same command to resume")


@contextlib.contextmanager
def stop_on_signals() -> Iterator[StopFlag]:
    """Turns SIGTERM/SIGINT into a ``StopFlag`` while the block runs.

    A second signal of the same kind stops at once (the default handler).
    Outside the main thread (some launchers) signals are left alone.
    """
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        if flag.signum is not None:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        flag.signum = signum
        log.warning("%s received: saving a checkpoint at the next step boundary",
                    signal.Signals(signum).name)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
