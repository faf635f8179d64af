"""What integer neuron state costs: fp32, integer weights with float state, and full integer state per profile.

    python bench/hardware_table.py                  # digits and MNIST-1D (recurrent preset), ~15 min on 2 cores
    python bench/hardware_table.py --only digits

For each data set, one fp32 network is trained (seed 0) and every job
restores it (``mode.fp32_checkpoint``), then fine-tunes it with QAT for each
recipe (w8a8, w4a8, ternary, ternary_channel) and each ``hardware`` (``float``: integer weights,
float neuron state; ``int``, ``loihi``, ``xylo``: integer state, leak and
threshold on the profile's grid, evaluated as the integer network). Writes
``bench/results/hardware.{json,md}``; the README's table is the markdown one.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "disabled")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hydra import compose, initialize_config_dir  # noqa: E402

from snnexp.train.experiment import run  # noqa: E402

DATASETS = {"digits": [], "mnist1d_recurrent": ["experiment=mnist1d_recurrent"]}
RECIPES = ("w8a8", "w4a8", "ternary", "ternary_channel")
HARDWARE = ("float", "int", "loihi", "xylo")


def cfg(*overrides: str):
    """The run config ``python -m snnexp`` composes for ``overrides``."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="train", overrides=["logger=none", *overrides])


def main(argv: list[str] | None = None) -> int:
    """Runs the grid and writes the results."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", choices=list(DATASETS), default=None)
    ap.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench_hardware")
    args = ap.parse_args(argv)
    rows = []
    for name, preset in DATASETS.items():
        if args.only and name != args.only:
            continue
        base = args.out / name
        fp32_dir = base / "fp32"
        t0 = time.perf_counter()
        first = run(cfg(*preset, "quant=w8a8", "hardware=float"), fp32_dir)
        rows.append({"data": name, "recipe": "w8a8", "hardware": "float", **_pick(first),
                     "seconds": time.perf_counter() - t0})
        print(json.dumps(rows[-1]), flush=True)
        for recipe in RECIPES:
            for hw in HARDWARE:
                if (recipe, hw) == ("w8a8", "float"):
                    continue
                t0 = time.perf_counter()
                m = run(cfg(*preset, f"quant={recipe}", f"hardware={hw}",
                            f"mode.fp32_checkpoint={fp32_dir / 'checkpoints' / 'fp32'}"), base / f"{recipe}_{hw}")
                rows.append({"data": name, "recipe": recipe, "hardware": hw, **_pick(m),
                             "fp32_accuracy": first["fp32_accuracy"], "seconds": time.perf_counter() - t0})
                print(json.dumps(rows[-1]), flush=True)
    out = ROOT / "bench" / "results"
    suffix = f"_{args.only}" if args.only else ""
    (out / f"hardware{suffix}.json").write_text(json.dumps(rows, indent=2) + "\n")
    (out / f"hardware{suffix}.md").write_text(table(rows))
    print(table(rows))
    return 0


def _pick(m: dict) -> dict:
    keys = ("fp32_accuracy", "quant_accuracy", "float_state_accuracy", "qat_spike_agreement", "overflow_events",
            "accumulator_bits_needed", "integer_memory_bits")
    return {k: m.get(k) for k in keys}


def table(rows: list[dict]) -> str:
    """The markdown table: one row per data set and recipe, a column per hardware."""
    lines = ["| data | recipe | fp32 | integer weights, float state | int | loihi | xylo |",
             "|---|---|---|---|---|---|---|"]
    for name in dict.fromkeys(r["data"] for r in rows):
        for recipe in RECIPES:
            got = {r["hardware"]: r for r in rows if r["data"] == name and r["recipe"] == recipe}
            if not got:
                continue
            fp32 = next(iter(got.values()))["fp32_accuracy"]
            cells = [f"{100 * got[h]['quant_accuracy']:.1f}" if h in got else "-" for h in HARDWARE]
            lines.append(f"| {name} | {recipe} | {100 * fp32:.1f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
