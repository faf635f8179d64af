"""A Hydra callback that keeps a sweep's report current while it runs and writes it at the end.

    python -m snnexp -m sweep=recipes +hydra.callbacks.report._target_=snnexp.report.callback.ReportCallback

When the multirun starts, a ``python -m snnexp.report <sweep dir> --watch``
process is started beside it (a separate process: it never slows a job or
shares its memory); it rewrites ``report.html`` and ``results.csv`` in the
sweep directory as jobs finish, and the open page reloads itself. When the
multirun ends, the watcher is stopped as Ctrl-C would (it then writes the
final page, which no longer reloads). A config can switch it with
``enabled`` (for example ``enabled: ${report}`` under ``hydra.callbacks.report``).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

log = logging.getLogger(__name__)


class ReportCallback(Callback):
    """Watch the sweep directory during a multirun; the final report when it ends.

    Args:
        enabled: False makes every hook a no-op.
        interval: seconds between two looks at the sweep directory.
        stop_timeout: seconds to wait for the watcher's final report at the end.
    """

    def __init__(self, enabled: bool = True, interval: float = 10.0, stop_timeout: float = 120.0) -> None:
        self.enabled = bool(enabled)
        self.interval = float(interval)
        self.stop_timeout = float(stop_timeout)
        self._proc: subprocess.Popen | None = None
        self._dir: Path | None = None

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        """Start the watcher on ``hydra.sweep.dir``."""
        if not self.enabled:
            return
        self._dir = Path(str(config.hydra.sweep.dir)).resolve()
        self._dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "snnexp.report", str(self._dir), "--watch", "--interval", str(self.interval)]
        self._proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                      env={**os.environ, "PYTHONUNBUFFERED": "1"})
        log.info("live report: %s (reloads itself while the sweep runs)", self._dir / "report.html")

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        """Stop the watcher (it writes the final report), or write it here if the watcher is gone."""
        if not self.enabled or self._dir is None:
            return
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGINT)
            try:
                self._proc.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        try:
            from snnexp.report.make import build_report

            build_report([self._dir])  # the final page, whatever the watcher managed
            log.info("report: %s", self._dir / "report.html")
        except Exception as e:  # noqa: BLE001 - a report must never fail the sweep
            log.warning("report not written (%s: %s)", type(e).__name__, e)
