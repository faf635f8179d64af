"""Do the README's numbers still come out of the commands printed next to them?

Reruns the cheap ones and compares them with what the README says:

* the default run's table (``python -m snnexp``, in the Quickstart): every
  row but the timings;
* the digits split the README quotes (train / test images);
* with ``--recipes``, the recipe x mode table on digits
  (``python -m snnexp -m sweep=recipes``, 20 jobs, ~7 min on 2 cores).

Accuracies may differ across CPUs (float reductions); ``--tol`` sets how far
(default 0.0: this machine must reproduce them exactly). Prints one line per
number and exits 1 if any differs.

    python bench/readme_numbers.py              # ~1 min
    python bench/readme_numbers.py --recipes    # + the recipes table
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
# README row label -> metrics.json key
DEFAULT_ROWS = {
    "fp32 accuracy": "fp32_accuracy",
    "quant accuracy": "quant_accuracy",
    "accuracy drop": "accuracy_drop",
    "weight bytes fp32": "weight_bytes_fp32",
    "weight bytes quant": "weight_bytes_quant",
    "weight bytes packed": "weight_bytes_packed",
    "bits per weight": "bits_per_weight",
    "spike rate (mean)": "spike_rate/mean",
    "synaptic ACs / sample": "synaptic_acs_per_sample",
    "synaptic MACs / sample": "synaptic_macs_per_sample",
    "synaptic ops / sample": "synaptic_ops_per_sample",
}


def _snnexp(*args: str, cwd: Path) -> None:
    env = {**os.environ, "WANDB_MODE": "disabled"}
    proc = subprocess.run([sys.executable, "-m", "snnexp", *args], cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"python -m snnexp {' '.join(args)} failed:\n{proc.stderr[-3000:]}")


def _dig(metrics: dict, key: str) -> float:
    for part in key.split("/"):
        metrics = metrics[part]
    return float(metrics)


def readme_default_table(text: str) -> dict[str, float]:
    """The rows of the default run's table in the README (``| label | value |``)."""
    block = text[text.index("## Quickstart"):text.index("## Config groups")]
    rows = dict(re.findall(r"^\| ([^|]+?) +\| ([^|]+?) +\|$", block, flags=re.M))
    return {label: float(rows[label]) for label in DEFAULT_ROWS if label in rows}


def readme_recipes_table(text: str) -> dict[tuple[str, str], float]:
    """``(recipe, mode) -> accuracy %`` from the README's recipes table."""
    block = text[text.index("## Recipes"):text.index("### Writing a recipe")]
    header = re.search(r"^\| recipe \| weight bytes \| packed bytes \|(.+)\|$", block, flags=re.M)
    modes = [m.strip() for m in header.group(1).split("|")]
    out = {}
    for row in re.findall(r"^\| `(\w+)` \| \d+ \| \d+ \|(.+)\|$", block, flags=re.M):
        for mode, value in zip(modes, row[1].split("|"), strict=True):
            out[(row[0], mode)] = float(value)
    return out


def compare(name: str, readme: float, measured: float, tol: float) -> bool:
    """Prints one comparison; True if they differ by at most ``tol``."""
    ok = abs(readme - measured) <= tol + 1e-12 * max(1.0, abs(readme))
    print(f"{'ok  ' if ok else 'DIFF'} {name:40} README {readme:<12g} measured {measured:<12g}")
    return ok


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipes", action="store_true", help="also rerun the recipes x modes table (20 jobs)")
    p.add_argument("--tol", type=float, default=0.0, help="allowed accuracy difference, as a fraction (0.005)")
    a = p.parse_args()
    text = README.read_text()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "default"
        _snnexp("logger=none", f"hydra.run.dir={run_dir}", cwd=ROOT)
        metrics = json.loads((run_dir / "metrics.json").read_text())
        for label, value in readme_default_table(text).items():
            measured = float(f"{_dig(metrics, DEFAULT_ROWS[label]):.4g}")  # the table prints 4 significant digits
            results.append(compare(f"default run: {label}", value, measured, a.tol if "accuracy" in label else 0.0))
        from hydra import compose, initialize_config_dir

        from snnexp import build

        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            digits = build.data(compose(config_name="train"))
        split = re.search(r"digits split is (\d+) train / (\d+)\s+test", text)
        if split:
            results.append(compare("digits train images", float(split.group(1)), len(digits.x_train), 0))
            results.append(compare("digits test images", float(split.group(2)), len(digits.x_test), 0))
        if a.recipes:
            sweep = Path(tmp) / "recipes"
            _snnexp("-m", "sweep=recipes", "logger=none", f"hydra.sweep.dir={sweep}", cwd=ROOT)
            measured = {}
            for m in sweep.glob("*/metrics.json"):
                r = json.loads(m.read_text())
                measured[(r["recipe"], r["mode"])] = 100 * r["quant_accuracy"]
            for key, value in readme_recipes_table(text).items():
                results.append(compare(f"recipes: {key[0]} {key[1]} (%)", value, round(measured[key], 1),
                                       100 * a.tol))
    bad = results.count(False)
    print(f"{len(results) - bad} of {len(results)} README numbers reproduce")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
