"""``python -m snnexp [overrides]``: compose the config and call ``run``; nothing else."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from snnexp import launch
from snnexp.train import Preempted, run

_CONF = Path(__file__).resolve().parent / "conf"
CONFIG_PATH = str(_CONF if _CONF.is_dir() else _CONF.parent.parent / "conf")


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Runs one job; returns its objective (``quant_accuracy``) to a sweeper."""
    launch.configure(cfg)
    try:
        metrics = run(cfg, Path(HydraConfig.get().runtime.output_dir))
    except Preempted as e:
        print(f"snnexp: {e}", file=sys.stderr)
        sys.exit(128 + e.signum)
    return metrics.get(cfg.objective)


if __name__ == "__main__":
    main()
