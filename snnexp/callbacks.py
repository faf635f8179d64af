"""Hydra callbacks: the sweep directory made up front, and what a sweep prints when it ends.

``SweepSummary`` (registered in ``conf/train.yaml``) reads every job
directory of the sweep (``status.json``, ``metrics.json``,
``.hydra/overrides.yaml``), so it sees jobs run by any launcher, in this
process or in others, and prints one table: job, overrides, status, quantized
accuracy, and a one-line error for each failed job. A grid sweep with a
failed job exits 1 after the table; a search (optuna) exits 0, since a failed
trial is part of searching.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger("snnexp")


def sweep_table(sweep_dir: Path) -> pd.DataFrame:
    """One row per job directory of ``sweep_dir``: job, overrides, status, quant_accuracy, error.

    ``overrides`` leaves out those every job shares, so the column shows what was swept.
    """
    files = Path(sweep_dir).glob("*/.hydra/overrides.yaml")
    jobs = {f.parent.parent: yaml.safe_load(f.read_text()) or [] for f in files}
    common = set.intersection(*map(set, jobs.values())) if len(jobs) > 1 else set()
    rows = []
    for job, overrides in jobs.items():
        status = _read(job / "status.json") or {}
        metrics = _read(job / "metrics.json") or {}
        error = str(status.get("error") or metrics.get("error") or "").splitlines()
        rows.append({
            "job": job.name,
            "overrides": " ".join(o for o in overrides if o not in common),  # what differs between the jobs
            "status": status.get("status", "not started"),
            "quant_accuracy": metrics.get("quant_accuracy"),
            "error": error[0] if error else "",
        })
    table = pd.DataFrame(rows, columns=["job", "overrides", "status", "quant_accuracy", "error"])
    return table.sort_values("job", key=lambda s: s.map(lambda j: (len(j), j)), ignore_index=True)


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


class SweepDir(Callback):
    """Creates the sweep directory when a multirun starts, so that a persistent optuna study can live in it."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Makes ``config.hydra.sweep.dir``."""
        Path(config.hydra.sweep.dir).mkdir(parents=True, exist_ok=True)


class SweepSummary(Callback):
    """Prints the table of a finished sweep; exits 1 if a job failed."""

    def __init__(self, max_error: int = 100):
        """``max_error``: characters of each error shown (the whole one is in the job's ``status.json``)."""
        self.max_error = max_error

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Prints the summary of ``config.hydra.sweep.dir``."""
        sweep_dir = Path(config.hydra.sweep.dir)
        table = sweep_table(sweep_dir)
        if table.empty:
            return
        shown = table.assign(error=table.error.str.slice(0, self.max_error))
        failed = table[table.status != "ok"]
        text = shown.to_string(index=False, na_rep="-", float_format=lambda v: f"{v:.4f}")
        print(f"\nsnnexp sweep {sweep_dir}: {len(table) - len(failed)} of {len(table)} jobs ok\n{text}",
              file=sys.stderr)
        if len(failed) and "optuna" not in str(config.hydra.sweeper.get("_target_", "")):
            print(f"snnexp: {len(failed)} job(s) failed; each job's status.json has its whole error",
                  file=sys.stderr)
            sys.exit(1)
