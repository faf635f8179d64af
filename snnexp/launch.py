"""What depends on how a job was launched, set before it runs.

JAX's persistent compilation cache (a second job with the same shapes
compiles nothing), no GPU memory preallocation when jobs of a sweep may share
a device, and the W&B group and name of a sweep's jobs. The bench calls the
same functions.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, open_dict


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


def configure(cfg: DictConfig) -> None:
    """Applies the settings that depend on the launch (single run or sweep job) to the process and ``cfg``."""
    hc = HydraConfig.get()
    if hc.mode == RunMode.MULTIRUN:
        # Several jobs may share one accelerator: none may grab all its memory.
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
        with open_dict(cfg):
            if cfg.logger.get("group") is None and "group" in cfg.logger:
                cfg.logger.group = Path(hc.sweep.dir).as_posix().removeprefix("outputs/")
            if cfg.logger.get("name") is None and "name" in cfg.logger:
                cfg.logger.name = hc.job.override_dirname or f"job{hc.job.num}"
    if cfg.get("compile_cache"):
        enable_compile_cache(cfg.compile_cache)
