"""snnexp's Slurm launcher: hydra-submitit-launcher's, waiting for every array task before it reports.

``hydra/launcher=slurm`` (``conf/hydra/launcher/slurm.yaml``) names it. It
submits exactly as ``SlurmLauncher`` of hydra-submitit-launcher does (one
sbatch array, submitit's requeue protocol). What differs is the end: the
plugin raises at the first task that died outright (killed, out of memory,
no result) while the others still run, so the launcher exits 1 and the sweep
table never prints. This one waits for every task; a task that died without
recording its end gets ``status.json`` ``failed`` with submitit's one-line
reason, and the sweep's summary (``snnexp.callbacks.SweepSummary``) lists it
with the others and exits 1. Hydra imports plugins only from the
``hydra_plugins`` package: hence this module's place.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher import submitit_launcher
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from omegaconf import OmegaConf, open_dict

log = logging.getLogger(__name__)

#: Statuses a job writes at its end; any other (running, requeued, none) means it died without saying so.
FINAL = ("ok", "failed", "preempted")


class SlurmLauncher(submitit_launcher.SlurmLauncher):
    """hydra-submitit-launcher's Slurm launcher that waits for every task and records the ones that died."""

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        """Submits the jobs as one array; returns once every task has ended."""
        import submitit  # lazily, as the plugin does: plugin discovery stays fast

        assert self.config is not None and self.hydra_context is not None
        params = dict(self.params)
        init = {"folder": params["submitit_folder"], "slurm_max_num_timeout": params.get("max_num_timeout", 0)}
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, **init)
        base = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{k if k in base else f"{self._EXECUTOR}_{k}": v for k, v in params.items()
                                      if k not in ("submitit_folder", "max_num_timeout")})
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:
            os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))
        log.info(f"Submitit '{self._EXECUTOR}' sweep output dir : {sweep_dir}")
        job_params: list[Any] = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            job_params.append((list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state()))
        jobs = executor.map_array(self, *zip(*job_params))
        return [self._wait(job, list(p[0]), p[2]) for job, p in zip(jobs, job_params)]

    def _wait(self, job: Any, overrides: list[str], num: int) -> JobReturn:
        """The job's ``JobReturn``; for a task that died, a completed one with no value, its death recorded."""
        try:
            return job.results()[0]
        except Exception as e:  # noqa: BLE001 - submitit's UncompletedJobError, FailedJobError, ...
            job_dir = self._job_dir(overrides, num)
            reason = (f"Slurm job {job.job_id} ended without a result ({job.state}): killed, out of memory, or a "
                      f"crash; its log: {job.paths.stderr}")
            log.debug("[job %d] submitit: %s", num, e)
            status = _read(job_dir / "status.json")
            if status.get("status") in FINAL:  # it recorded its end (stopped by scancel, say): that says more
                log.warning("[job %d] Slurm job %s ended %s after recording %r", num, job.job_id, job.state,
                            status.get("status"))
            else:
                job_dir.mkdir(parents=True, exist_ok=True)
                _write(job_dir / "status.json", {"status": "failed", "error": reason})
                if not (job_dir / "metrics.json").exists():
                    _write(job_dir / "metrics.json", {"status": "failed", "error": reason})
                log.error("[job %d] %s", num, reason)
            ret = JobReturn(overrides=overrides, working_dir=str(job_dir), task_name="snnexp")
            ret.status, ret.return_value = JobStatus.COMPLETED, None
            return ret

    def _job_dir(self, overrides: list[str], num: int) -> Path:
        assert self.config is not None and self.hydra_context is not None
        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        with open_dict(cfg.hydra.job):
            cfg.hydra.job.num = num
        return Path(str(cfg.hydra.sweep.dir)) / str(cfg.hydra.sweep.subdir)


def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, path)
