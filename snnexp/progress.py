"""Progress of a training epoch: a live bar on a terminal, nothing extra in logs.

On a terminal (stderr is a TTY) each epoch shows a transient ``rich`` bar
with the step, the last loss, steps/s and the time left, updated after every
jitted call (``trainer.steps_per_call`` sets how often; 0 updates once per
epoch after the first step). Off a terminal (CI, Slurm logs, pipes) it prints
nothing: the per-epoch log line (with its time) is the progress there.
``SNNEXP_PROGRESS=0`` switches the bar off, ``=1`` forces it.
"""

from __future__ import annotations

import os
import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


def bar_enabled() -> bool:
    """Whether to draw bars: ``SNNEXP_PROGRESS`` if set, else whether stderr is a terminal."""
    forced = os.environ.get("SNNEXP_PROGRESS")
    if forced in ("0", "1"):
        return forced == "1"
    return sys.stderr.isatty()


class EpochBar:
    """The bar of one epoch; a no-op when bars are off."""

    def __init__(self, phase: str, epoch: int, epochs: int, steps: int, done: int = 0):
        """Starts the bar of ``epoch``/``epochs`` of ``phase``, ``done`` of ``steps`` steps already run."""
        self._progress = None
        if not bar_enabled():
            return
        forced = os.environ.get("SNNEXP_PROGRESS") == "1"
        self._progress = Progress(
            TextColumn(f"[{phase}] epoch {epoch}/{epochs}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[rate]} steps/s"),
            TimeRemainingColumn(), console=Console(stderr=True, force_terminal=forced or None), transient=True,
        )
        self._task = self._progress.add_task("", total=steps, completed=done, loss="-", rate="-")
        self._progress.start()

    def update(self, done: int, loss: float, steps_per_s: float) -> None:
        """Moves the bar to ``done`` steps with the latest loss and speed."""
        if self._progress is not None:
            self._progress.update(self._task, completed=done, loss=f"{loss:.4f}", rate=f"{steps_per_s:.1f}")

    def close(self) -> None:
        """Removes the bar (the epoch's log line follows)."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
