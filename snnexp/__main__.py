"""``python -m snnexp [overrides]``: compose the config and call ``run``.

Besides composing, the launcher sets what depends on how a job was launched:
JAX's persistent compilation cache, no GPU memory preallocation when jobs of
a sweep may share a device, and the W&B group and name of a sweep's jobs.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
import jax
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, open_dict

from snnexp.train import Preempted, run

_CONF = Path(__file__).resolve().parent / "conf"
CONFIG_PATH = str(_CONF if _CONF.is_dir() else _CONF.parent.parent / "conf")


def configure_launch(cfg: DictConfig) -> None:
    """Applies the settings that depend on the launch (single run or sweep job)."""
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    if multirun:
        # Several jobs may share one accelerator: none may grab all its memory.
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
        with open_dict(cfg):
            if cfg.logger.get("group") is None and "group" in cfg.logger:
                cfg.logger.group = Path(hc.sweep.dir).as_posix().removeprefix("outputs/")
            if cfg.logger.get("name") is None and "name" in cfg.logger:
                cfg.logger.name = hc.job.override_dirname or f"job{hc.job.num}"
    if cfg.get("compile_cache"):
        cache = Path(cfg.compile_cache).expanduser().absolute()
        jax.config.update("jax_compilation_cache_dir", str(cache))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Runs one job; returns its objective (``quant_accuracy``) to a sweeper."""
    configure_launch(cfg)
    try:
        metrics = run(cfg, Path(HydraConfig.get().runtime.output_dir))
    except Preempted as e:
        print(f"snnexp: {e}", file=sys.stderr)
        sys.exit(128 + e.signum)
    return metrics.get(cfg.objective)


if __name__ == "__main__":
    main()
