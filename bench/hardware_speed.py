"""What integer neuron state costs in time: QAT epochs and deployed forward passes, float state vs integer state.

    python bench/hardware_speed.py                 # H=128, 2048 samples, ~4 min on 2 cores
    python bench/hardware_speed.py --hidden 512

The workload of ``bench/perf.py`` (SHD-shaped spikes 700 -> H LIF -> 20, T=100,
batches of 256, w8a8), in one process, interleaved rounds:

* QAT epoch (``train.train_steps`` over the epoch, as ``train.fit`` runs it)
  of ``pipelines.training_model("qat", ...)`` with ``hardware=float`` and with
  ``hardware=loihi`` and ``xylo`` (the integer grid with straight-through
  gradients). Goal: at most 1.3x the float-state epoch.
* Deployed forward over all samples: qwix's integer-weight network with float
  state (``train.evaluate``) against the integer network
  (``hardware.integer.evaluate``). Goal: at most 2x.

Writes ``bench/results/hardware_speed.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "disabled")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import _workload as W  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Times every variant ``--rounds`` times, interleaved, after one warm-up each."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--samples", type=int, default=2048)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)

    import jax
    import numpy as np
    from flax import nnx
    from omegaconf import OmegaConf

    from snnexp import build, train
    from snnexp.data import Dataset
    from snnexp.hardware import from_config, integer
    from snnexp.train import Arrays, pipelines

    x, y = W.make_data(args.samples)
    cfg = W.snnexp_config(args.hidden, quant="w8a8", mode="qat")
    rules, settings = build.rules(cfg), build.loop_settings(cfg)
    data = Dataset(x, y, x, y, n_classes=W.CLASSES, name="shd-synthetic")
    settings = settings.fit(len(x), len(x))
    model, sample = build.network(cfg, data, rules, settings)
    arrays = Arrays.put(data)
    steps = args.samples // W.BATCH
    profiles = {name: from_config(OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "hardware" / f"{name}.yaml")))
                for name in ("float", "loihi", "xylo")}

    trainers = {}
    for name, prof in profiles.items():
        trained = pipelines.training_model("qat", model, rules, sample, hardware=prof, x_train=x[:64])
        opt = nnx.Optimizer(trained, build.optimizer(cfg, 100 * steps), wrt=nnx.Param)
        trainers[name] = (trained, opt)
    perm = jax.device_put(train.epoch_perm(0, "quant", 1, args.samples, W.BATCH))

    def epoch(name: str) -> float:
        trained, opt = trainers[name]
        t0 = time.perf_counter()
        np.asarray(train.train_steps(trained, opt, arrays.x_train, arrays.y_train, perm, np.int32(0),
                                     np.int32(steps)))
        return time.perf_counter() - t0

    deployed = pipelines.integer_model(trainers["float"][0], rules, sample, "ptq")
    nets = {name: integer.IntegerNetwork.from_deployed(deployed, rules, prof, x[:64])
            for name, prof in profiles.items() if prof.integer}

    def forward(name: str) -> float:
        t0 = time.perf_counter()
        if name == "float":
            train.evaluate(deployed, arrays, 256)
        else:
            integer.evaluate(nets[name], arrays.x_test, y, 256)  # device-resident, as train.evaluate's
        return time.perf_counter() - t0

    times: dict[str, list[float]] = {}
    for name in profiles:  # warm-up: compile every program once
        epoch(name)
        forward(name)
    for _ in range(args.rounds):
        for name in profiles:
            times.setdefault(f"qat_epoch/{name}", []).append(epoch(name))
            times.setdefault(f"forward/{name}", []).append(forward(name))
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {"hidden": args.hidden, "samples": args.samples, "batch": W.BATCH, "steps": W.STEPS,
              "rounds": args.rounds, "times_s": times, "median_s": med, "machine": W.machine(),
              "versions": W.versions(),
              "ratios": {f"{kind}/{name}": med[f"{kind}/{name}"] / med[f"{kind}/float"]
                         for kind in ("qat_epoch", "forward") for name in ("loihi", "xylo")}}
    out = ROOT / "bench" / "results" / f"hardware_speed_h{args.hidden}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"| H={args.hidden} | float state | loihi | xylo | goal |")
    print("|---|---|---|---|---|")
    for kind, goal in (("qat_epoch", 1.3), ("forward", 2.0)):
        cells = [f"{med[f'{kind}/float']:.2f} s"]
        for name in ("loihi", "xylo"):
            r = result["ratios"][f"{kind}/{name}"]
            cells.append(f"{med[f'{kind}/{name}']:.2f} s ({r:.2f}x)")
        print(f"| {kind.replace('_', ' ')} | " + " | ".join(cells) + f" | <= {goal}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
