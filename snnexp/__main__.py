"""``python -m snnexp [overrides]``: compose the config and call ``run``; nothing else.

A user's mistake (a config, recipe, data or checkpoint error, a NaN) prints
its one-line message and exits 2; ``HYDRA_FULL_ERROR=1`` shows the traceback.
In a multirun a failed job is recorded (``status.json``, ``metrics.json``)
and returns no objective, the sweep goes on, and the summary at the end
(``snnexp.callbacks.SweepSummary``) lists every job and every failure.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from snnexp import launch, schema, slurm
from snnexp.confdir import conf_dir
from snnexp.errors import USER_ERRORS, ConfigError
from snnexp.rundir import RunDir
from snnexp.train import Preempted, run

CONFIG_PATH = str(conf_dir())

log = logging.getLogger("snnexp")


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Runs one job; returns its objective (``quant_accuracy``) to a sweeper."""
    hc = HydraConfig.get()
    out_dir = Path(hc.runtime.output_dir)
    launch.label_job_logs()
    try:
        try:
            schema.validate(cfg)  # before the launch settings read the config (run() checks again)
        except ConfigError as e:
            RunDir(out_dir).failed(e, preempted=False)  # recorded like any refused job
            raise
        launch.configure(cfg)
        metrics = run(cfg, out_dir)
    except Preempted as e:
        try:
            if slurm.hand_back(e, RunDir(out_dir), hc.launcher if "timeout_min" in hc.launcher else None):
                print(f"snnexp: stopped by {signal.Signals(e.signum).name} {e.where}, saved, and requeued on Slurm: "
                      "it resumes when it starts again", file=sys.stderr)
                sys.exit(128 + e.signum)
        except slurm.TimeLimitError as limit:
            RunDir(out_dir).failed(limit, preempted=False)
            log.error("TimeLimitError: %s (recorded in %s)", limit, out_dir)
            if hc.mode == RunMode.MULTIRUN:
                return None
            sys.exit(2)
        print(f"snnexp: {e}.\nTo resume: {launch.resume_command(hc)}", file=sys.stderr)
        sys.exit(128 + e.signum)
    except Exception as e:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        message = f"{type(e).__name__}: {e}"
        if hc.mode == RunMode.MULTIRUN:  # recorded as failed; the sweep goes on and its summary lists it
            (log.error if isinstance(e, USER_ERRORS) else log.exception)("%s (recorded in %s)", message, out_dir)
            return None
        if not isinstance(e, USER_ERRORS):
            raise  # a bug: Hydra prints the traceback
        print(f"snnexp: {message}", file=sys.stderr)
        sys.exit(2)
    finally:
        if hc.mode == RunMode.MULTIRUN:  # the next job of this process may be the one that runs out of maps
            launch.release_compiled_programs()
    return metrics.get(cfg.objective)


if __name__ == "__main__":
    main()
