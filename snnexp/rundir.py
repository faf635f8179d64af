"""A run directory: prepare, resume or refuse it; its JSON records; reading its deployed network back.

What a run leaves (README "Where the outputs go"): ``config.yaml``,
``status.json``, ``metrics.json``, ``history.jsonl``, ``network.json`` (the
shapes the network was built for) and ``checkpoints/``. Every JSON record is
written atomically: a kill leaves the old file or the new one.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import traceback
from pathlib import Path
from typing import Any

import jax.numpy as jnp
from flax import nnx
from omegaconf import DictConfig, OmegaConf

from snnexp import checkpoint, tracking
from snnexp.errors import ConfigError

log = logging.getLogger(__name__)

# Keys that may differ between a run and its resumption. The fp32 cache is one of them: a run's own
# checkpoints/fp32 comes before the cache, and a network from the cache is the one the run would train.
RESUME_FREE_KEYS = ("resume", "logger", "compile_cache", "objective", "report", "fp32_cache", "fp32_cache_dir")
# Keys added after run directories were written, each with the value that does what a run without it did:
# a stored config that lacks the key resumes under that value (and only under it).
ADDED_KEYS: dict[str, Any] = {"trainer.augment.dropout": 0.0, "data.repeat": 1}


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Writes JSON atomically (a kill leaves the old file or the new one)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(tracking.clean(payload), indent=2) + "\n")
    os.replace(tmp, path)


def read_json(path: Path, default: Any = None) -> Any:
    """The JSON at ``path``, or ``default`` when there is no file."""
    return json.loads(path.read_text()) if path.exists() else default


def config_diff(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two plain config trees (launch-only keys left out).

    A key of ``ADDED_KEYS`` missing from ``old`` counts as holding its neutral value there.
    """
    diffs = []
    for key in sorted(set(old) | set(new)):
        if not prefix and key in RESUME_FREE_KEYS:
            continue
        a, b = old.get(key, ADDED_KEYS.get(f"{prefix}{key}")), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += config_diff(a, b, f"{prefix}{key}.")
        elif a != b:
            diffs.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return diffs


class RunDir:
    """The files of one run directory."""

    def __init__(self, path: Path):
        """Opens ``path`` (created if missing)."""
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.checkpoints = self.path / "checkpoints"

    def prepare(self, cfg: DictConfig, resolved: dict) -> dict[str, Any] | None:
        """Checks what the directory already holds; returns the metrics of a finished run.

        A directory with another configuration is refused (listing the keys
        that differ); with ``resume=false`` earlier state is cleared instead.
        Otherwise the resolved config is (re)written.

        Raises:
            ConfigError: the directory holds a run of another configuration.
        """
        stored_cfg = self.path / "config.yaml"
        finished = None
        if stored_cfg.exists() and not cfg.resume:
            for name in ("metrics.json", "status.json", "history.jsonl", "wandb_id.txt", "network.json"):
                (self.path / name).unlink(missing_ok=True)
            shutil.rmtree(self.checkpoints, ignore_errors=True)
            log.info("resume=false: cleared the earlier state in %s", self.path)
        elif stored_cfg.exists():
            diffs = config_diff(OmegaConf.to_container(OmegaConf.load(stored_cfg), resolve=True), resolved)
            if diffs:
                raise ConfigError(
                    f"{self.path} holds a run of another configuration ({'; '.join(diffs[:6])}). Use a new "
                    "output directory, or resume=false to start this one over."
                )
            if self.status().get("status") == "ok" and (self.path / "metrics.json").exists():
                finished = read_json(self.path / "metrics.json")
        if finished is None:
            stored_cfg.write_text(OmegaConf.to_yaml(cfg, resolve=True))
        return finished

    def status(self) -> dict[str, Any]:
        """The content of ``status.json`` (``{}`` when there is none)."""
        return read_json(self.path / "status.json", {})

    def running(self) -> None:
        """Marks the run as running in this process."""
        write_json(self.path / "status.json", {"status": "running", "pid": os.getpid(), "started": time.time()})

    def failed(self, error: BaseException, *, preempted: bool) -> None:
        """Records a failure (``metrics.json`` too) or a preemption (metrics kept)."""
        message = f"{type(error).__name__}: {error}"
        write_json(self.path / "status.json", {"status": "preempted" if preempted else "failed", "error": message,
                                               "traceback": traceback.format_exc(limit=20)})
        if not preempted:
            write_json(self.path / "metrics.json", {"status": "failed", "error": message})

    def requeued(self, reason: str) -> None:
        """Marks a stopped run that Slurm starts again (``metrics.json`` keeps its last content)."""
        write_json(self.path / "status.json", {"status": "requeued", "reason": reason})

    def finished(self, metrics: dict[str, Any]) -> None:
        """Writes the final metrics, then marks the run ok."""
        write_json(self.path / "metrics.json", metrics)
        write_json(self.path / "status.json", {"status": "ok"})

    def phases(self) -> dict[str, dict[str, float]]:
        """Steps and seconds of the finished training phases (``checkpoints/phases.json``)."""
        return read_json(self.checkpoints / "phases.json", {})

    def finish_phase(self, name: str, steps: int, seconds: float) -> None:
        """Records a finished training phase."""
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        write_json(self.checkpoints / "phases.json", {**self.phases(), name: {"steps": steps, "seconds": seconds}})

    def write_network(self, n_in: int, n_out: int, steps: int, layer_sizes: list[int]) -> None:
        """Records the shapes the network is built for (what ``load_deployed`` needs)."""
        write_json(self.path / "network.json",
                   {"n_in": n_in, "n_out": n_out, "steps": steps, "layer_sizes": layer_sizes})


def load_deployed(run_dir: Path) -> tuple[DictConfig, nnx.Module]:
    """The config and the deployed integer network of a finished run.

    Reads the shapes from the run's ``network.json``, not from the data set.

    Args:
        run_dir: a run directory (with ``config.yaml`` and ``checkpoints/quant``).

    Returns:
        ``(cfg, model)``: each quantized weight is a qwix ``QArray`` with
        integer ``qvalue`` codes ``[in, out]`` and float ``scale`` ``[1, out]``.

    Raises:
        FileNotFoundError: the directory holds no finished run.
    """
    from snnexp import build, quant  # build imports the training loop, which imports this module

    run_dir = Path(run_dir)
    for name in ("config.yaml", "network.json", "checkpoints/quant"):
        if not (run_dir / name).exists():
            raise FileNotFoundError(f"{run_dir} has no {name}: not a finished snnexp run")
    cfg = OmegaConf.load(run_dir / "config.yaml")
    net = read_json(run_dir / "network.json")
    rules = build.rules(cfg)
    model = build.model(cfg, net["n_in"], net["n_out"])
    sample = jnp.zeros((1, net["steps"], net["n_in"]), jnp.float32)
    analog = checkpoint.info(run_dir / "checkpoints" / "quant").get("analog_inputs")  # as it was deployed
    if cfg.mode.name == "srq":
        calibrated = quant.quantize(model, rules, "calibrate", sample, analog_inputs=analog)
        template = quant.quantize(calibrated, rules, "srq", sample, analog_inputs=analog)
    else:
        template = quant.quantize(model, rules, "ptq", sample, analog_inputs=analog)
    return cfg, checkpoint.restore(run_dir / "checkpoints" / "quant", template)
