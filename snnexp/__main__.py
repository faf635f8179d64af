"""``python -m snnexp [overrides]``: compose the config and call ``run``."""

from __future__ import annotations

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from snnexp.train import run

_CONF = Path(__file__).resolve().parent / "conf"
CONFIG_PATH = str(_CONF if _CONF.is_dir() else _CONF.parent.parent / "conf")


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Runs one job; returns its quantized accuracy (the sweepers' objective)."""
    metrics = run(cfg, Path(HydraConfig.get().runtime.output_dir))
    return metrics.get("quant_accuracy")


if __name__ == "__main__":
    main()
