"""Stop requests: SIGTERM and SIGINT become a flag the training loop checks between steps.

The loop saves its state at the next step boundary and raises ``Preempted``;
the launcher exits ``128 + signal``, and rerunning the same command resumes.
In a Slurm job started by submitit, submitit's preemption and time-limit
signal (``SIGUSR2``, or ``SUBMITIT_PREEMPT_SIGNAL``) is caught the same way,
so that submitit's own handler, which requeues the job and exits at once,
runs only after the save (``snnexp.slurm.hand_back``), never inside it.
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

    def __init__(self, signum: int, message: str, where: str = ""):
        super().__init__(message)
        self.signum = signum
        self.where = where  # "in fp32 epoch 3 at step 5/22": where the state was saved


class StopFlag:
    """Set by SIGTERM/SIGINT; the training loop saves and stops at the next check."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def name(self) -> str:
        """The name of the signal received (``SIGTERM``), or ``""``."""
        return signal.Signals(self.signum).name if self.signum is not None else ""

    def check(self, what: str) -> None:
        """Raises ``Preempted`` if a stop was requested."""
        if self.signum is not None:
            name = signal.Signals(self.signum).name
            raise Preempted(self.signum, f"stopped by {name} {what}; rerun the same command to resume", what)


def submitit_signal() -> signal.Signals | None:
    """The preemption and time-limit signal of a submitit Slurm job (default ``SIGUSR2``), else None."""
    if os.environ.get("SUBMITIT_EXECUTOR") != "slurm":
        return None
    return getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"), None)


def stop_signals() -> tuple[signal.Signals, ...]:
    """The signals that ask a run to save and stop: SIGTERM, SIGINT, and submitit's in a submitit Slurm job."""
    extra = submitit_signal()
    return (signal.SIGTERM, signal.SIGINT) + ((extra,) if extra is not None else ())


@contextlib.contextmanager
def stop_on_signals() -> Iterator[StopFlag]:
    """Turns the ``stop_signals`` into a ``StopFlag`` while the block runs.

    A second SIGINT, or a second SIGTERM outside a Slurm job, stops at once
    (the default handler); in a Slurm job a second SIGTERM or submitit signal
    is only noted. Outside the main thread (some launchers)
    signals are left alone.
    """
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        if flag.signum is not None:
            if signum == submitit_signal() or (signum == signal.SIGTERM and "SLURM_JOB_ID" in os.environ):
                # Slurm may signal twice (srun forwards, then the kill): the save must not be cut short;
                # Slurm's SIGKILL follows anyway, and submitit's handler runs once, after the save.
                log.info("%s received again: still saving", signal.Signals(signum).name)
                return
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        flag.signum = signum
        log.warning("%s received: saving a checkpoint at the next step boundary",
                    signal.Signals(signum).name)

    previous = {s: signal.signal(s, handler) for s in stop_signals()}
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
