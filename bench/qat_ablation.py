"""The QAT ablation table: what each fine-tuning option (conf/finetune) does to each recipe, per seed.

Reads the jobs of a ``sweep=qat_ablation`` multirun (each job's
``.hydra/overrides.yaml`` and ``metrics.json``) into a pandas table and
writes ``bench/results/qat_ablation.{json,md}``: the deployed accuracy per
seed, mean ± sd, and the change against ``finetune=plain`` of the same recipe
and seed, with the fp32 accuracy of every seed.

    python -m snnexp -m experiment=mnist1d_recurrent sweep=qat_ablation
    python bench/qat_ablation.py outputs/multirun/<date>/<time> [more sweep dirs]

Several sweep directories (of the same experiment) make one table. A job's
``mode.*`` overrides (``mode.quant_epochs=20``) join its fine-tuning label
("plain, quant_epochs=20"); "vs plain" compares a job with ``finetune=plain``
under the same ``mode.*`` overrides.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
OPTIONS = ("plain", "schedule", "distill", "stages", "all")


def label(overrides: dict[str, str], option: str | None = None) -> str:
    """The fine-tuning label of a job: its ``finetune`` option (or ``option``), then its ``mode.*`` overrides."""
    extra = [f"{k.removeprefix('mode.')}={v}" for k, v in sorted(overrides.items()) if k.startswith("mode.")]
    return ", ".join([option or overrides.get("finetune", "plain"), *extra])


def jobs(sweeps: list[Path]) -> pd.DataFrame:
    """One row per finished job: finetune, recipe, seed, fp32 and deployed accuracy, train time, fp32 reuse."""
    rows = []
    for metrics_path in sorted(p for sweep in sweeps for p in sweep.glob("*/metrics.json")):
        m = json.loads(metrics_path.read_text())
        if m.get("status") != "ok":
            continue
        overrides = dict(o.split("=", 1) for o in yaml.safe_load(
            (metrics_path.parent / ".hydra" / "overrides.yaml").read_text()))
        rows.append({"finetune": label(overrides), "plain": label(overrides, "plain"), "recipe": m["recipe"],
                     "seed": int(overrides.get("seed", 0)), "fp32": 100 * m["fp32_accuracy"],
                     "quant": 100 * m["quant_accuracy"], "train_s": m["train_time_s"],
                     "fp32_reused": bool(m.get("fp32_reused"))})
    if not rows:
        raise SystemExit(f"no finished job in {', '.join(map(str, sweeps))}")
    return pd.DataFrame(rows)


def table(df: pd.DataFrame) -> pd.DataFrame:
    """Per recipe x option: accuracy per seed, mean ± sd, and the mean change against ``plain``."""
    base = df[df.finetune == df.plain].set_index(["recipe", "finetune", "seed"])["quant"]
    df = df.assign(delta=[q - base.get((r, p, s), float("nan"))
                          for q, r, p, s in zip(df.quant, df.recipe, df.plain, df.seed)])
    per_seed = df.pivot_table(index=["recipe", "finetune"], columns="seed", values="quant")
    per_seed.columns = [f"seed {s}" for s in per_seed.columns]
    stats = df.groupby(["recipe", "finetune"]).agg(mean=("quant", "mean"), sd=("quant", "std"),
                                                   delta=("delta", "mean"), train_s=("train_s", "mean"))
    out = per_seed.join(stats).reset_index()
    order = {o: i for i, o in enumerate(OPTIONS)}

    def key(c: pd.Series) -> pd.Series:  # the options in OPTIONS order, each bare one before its variants
        return c.map(lambda f: (order.get(f.split(", ")[0], len(order)), f)) if c.name == "finetune" else c

    return out.sort_values(["recipe", "finetune"], key=key)


def markdown(df: pd.DataFrame, t: pd.DataFrame, sweeps: list[Path]) -> str:
    fp32 = df.groupby("seed")["fp32"].first()
    seeds = [c for c in t.columns if c.startswith("seed ")]
    lines = [f"QAT ablation of {', '.join(f'`{s}`' for s in sweeps)} ({len(df)} jobs; fp32 trained by "
             f"{int((~df.fp32_reused).sum())} of them, reused by the others): fp32 "
             + ", ".join(f"seed {s} {v:.1f} %" for s, v in fp32.items())
             + f" (mean {fp32.mean():.1f} %).", "",
             "| recipe | fine-tuning | " + " | ".join(seeds) + " | mean ± sd | vs plain (mean of seeds) | "
             "train s |", "|---|---|" + "---|" * len(seeds) + "---|---|---|"]
    for _, r in t.iterrows():
        cells = " | ".join(f"{r[s]:.1f}" for s in seeds)
        delta = "-" if r.finetune.split(", ")[0] == "plain" else f"{r.delta:+.1f}"
        lines.append(f"| {r.recipe} | {r.finetune} | {cells} | {r['mean']:.1f} ± {r.sd:.1f} | {delta} | "
                     f"{r.train_s:.0f} |")
    lines += ["", "Deployed (integer-weight) test accuracy in %. `vs plain`: the mean over seeds of the change against "
              "`finetune=plain` of the same recipe, seed and `mode.*` overrides. `train s`: what the job trained "
              "itself, so it includes the fp32 phase in the jobs that trained the fp32 network for the others "
              "(the fp32 cache)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("sweeps", type=Path, nargs="+", help="sweep directories (a sweep=qat_ablation multirun, ...)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    a = p.parse_args(argv)
    df = jobs(a.sweeps)
    t = table(df)
    md = markdown(df, t, a.sweeps)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "qat_ablation.json").write_text(json.dumps({
        "command": "python bench/qat_ablation.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "jobs": df.to_dict("records"), "table": t.to_dict("records")}, indent=2) + "\n")
    (a.out / "qat_ablation.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
