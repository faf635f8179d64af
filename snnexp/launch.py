"""What depends on how a job was launched, set before it runs.

JAX's persistent compilation cache (a second job with the same shapes
compiles nothing), one accelerator per job of a local parallel sweep, no GPU
memory preallocation when jobs of a sweep may share a device, and the W&B
group and name of a sweep's jobs, and the release of a finished job's
compiled programs when a process runs many jobs. The bench calls the same
functions.
"""

from __future__ import annotations

import logging
import os
import shlex
from pathlib import Path

import jax
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger(__name__)


def job_name(sweep_dir: str, sweep: str | None = None) -> str:
    """The name of a sweep's Slurm jobs: ``snnexp-<sweep>`` for a named grid, else after the sweep directory.

    ``conf/hydra/launcher/slurm.yaml`` uses it as ``${snnexp_job_name:${hydra.sweep.dir},...}``.
    """
    if sweep:
        return f"snnexp-{sweep}"
    parts = Path(str(sweep_dir)).parts[-2:]
    return "snnexp-" + "_".join(p for p in parts if p not in ("outputs", "multirun")).replace(" ", "_")


if not OmegaConf.has_resolver("snnexp_job_name"):
    OmegaConf.register_new_resolver("snnexp_job_name", job_name)


def enable_compile_cache(directory: str | Path) -> Path:
    """Turns on JAX's persistent compilation cache in ``directory``, for every program.

    Returns:
        The absolute cache directory.
    """
    cache = Path(directory).expanduser().absolute()
    jax.config.update("jax_compilation_cache_dir", str(cache))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return cache


def memory_map_count() -> tuple[int, int] | None:
    """This process's memory mappings and the kernel's limit on them, or None where /proc does not tell (not Linux)."""
    try:
        with open("/proc/self/maps") as maps:
            used = sum(1 for _ in maps)
        limit = int(Path("/proc/sys/vm/max_map_count").read_text())
    except (OSError, ValueError):
        return None
    return used, limit


def release_compiled_programs(fraction: float = 0.5) -> bool:
    """Drops JAX's in-memory compiled programs once they hold over ``fraction`` of the process's memory maps.

    Every program XLA:CPU compiles keeps about six memory mappings until its
    cache entry goes; a process that runs job after job (Hydra's basic
    launcher runs a whole sweep in one process, an optuna search too) reaches
    Linux's ``vm.max_map_count`` (65530 by default) after some thousands of
    programs, and XLA then segfaults while compiling the next. Called between
    jobs, this clears the caches (``jax.clear_caches``) before that; the next
    job compiles again what it needs (or reads it from the persistent cache).

    Returns:
        Whether the caches were cleared.
    """
    counts = memory_map_count()
    if counts is None or counts[0] <= fraction * counts[1]:
        return False
    log.info("releasing compiled programs: %d of the %d memory maps allowed are in use", *counts)
    jax.clear_caches()
    return True


def assign_device(job_num: int, devices: list[jax.Device]) -> jax.Device:
    """Makes ``devices[job_num % len(devices)]`` this process's default device (round robin) and returns it.

    Every array and computation of the job lands there: the jobs of a local
    parallel sweep (joblib, submitit local), numbered consecutively, spread
    over the node's accelerators.
    """
    device = devices[job_num % len(devices)]
    jax.config.update("jax_default_device", device)
    return device


def accelerator_for_job(job_num: int) -> jax.Device | None:
    """The round-robin accelerator of a sweep job, set as its default; None where there is nothing to choose.

    Nothing is chosen on CPU, with a single visible accelerator, or in a
    Slurm job (``SLURM_JOB_ID``): there the job uses the devices Slurm gave it
    (``CUDA_VISIBLE_DEVICES``).
    """
    if os.environ.get("SLURM_JOB_ID"):
        return None
    devices = jax.devices()
    if devices[0].platform == "cpu" or len(devices) < 2:
        return None
    device = assign_device(job_num, devices)
    log.info("job %d runs on %s (round robin over %d %s devices)", job_num, device, len(devices),
             device.platform)
    return device


class _JobPrefix(logging.Filter):
    """Prefixes every log record of a sweep job with ``[job N]``."""

    def __init__(self, num: int):
        super().__init__()
        self.prefix = f"[job {num}] "

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(self.prefix):
            record.msg = self.prefix + str(record.msg)
        return True


def label_job_logs() -> None:
    """In a multirun, prefixes every log line of this job with ``[job N]`` (first thing a job does)."""
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return
    for handler in logging.getLogger().handlers:
        for f in [f for f in handler.filters if isinstance(f, _JobPrefix)]:
            handler.removeFilter(f)  # a previous job's, in the same process
        handler.addFilter(_JobPrefix(hc.job.num))


def configure(cfg: DictConfig) -> None:
    """Applies the settings that depend on the launch (single run or sweep job) to the process and ``cfg``."""
    hc = HydraConfig.get()
    with open_dict(cfg):
        if hc.mode == RunMode.MULTIRUN:
            # Several jobs may share one accelerator: none may grab all its memory.
            os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
            accelerator_for_job(hc.job.num)
            if cfg.logger.get("group") is None and "group" in cfg.logger:
                cfg.logger.group = Path(hc.sweep.dir).as_posix().removeprefix("outputs/")
            if cfg.logger.get("name") is None and "name" in cfg.logger:
                cfg.logger.name = hc.job.override_dirname or f"job{hc.job.num}"
        elif cfg.logger.get("name") is None and "name" in cfg.logger:  # a single run: a readable W&B name
            cfg.logger.name = f"{cfg.quant.name}-{cfg.mode.name}-{cfg.data.name}-seed{cfg.seed}"
    if cfg.get("compile_cache"):
        enable_compile_cache(cfg.compile_cache)


def resume_command(hc: DictConfig) -> str:
    """The exact command that resumes this job (Hydra's config of the job: ``HydraConfig.get()``)."""
    if hc.mode == RunMode.MULTIRUN:
        return f"rerun the same multirun with hydra.sweep.dir={shlex.quote(str(hc.sweep.dir))}"
    overrides = [o for o in OmegaConf.to_container(hc.overrides.task) if not o.startswith("hydra.run.dir=")]
    args = ["python", "-m", "snnexp", *overrides, f"hydra.run.dir={hc.runtime.output_dir}"]
    return " ".join(shlex.quote(a) for a in args)
