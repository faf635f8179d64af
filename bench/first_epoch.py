"""How long until the default run prints its first epoch, cold and with a warm compilation cache?

Spawns the README's default run (``python -m snnexp``: digits, w8a8 QAT, W&B
offline) from an empty working directory with its own user cache directory
(``XDG_CACHE_HOME``, where the JAX compilation cache lives by default): the
first job of a round finds the cache empty (cold), the second finds it
filled by the first (warm). Each job's stdout is read line by line and
timestamped from the moment the process was spawned: the first finished
training step (``[fp32] first step done``) and the first epoch line
(``[fp32] epoch 1/``). Writes ``bench/results/first_epoch.{json,md}``.

    python bench/first_epoch.py              # 3 rounds, ~1-2 min on 2 CPU cores
    python bench/first_epoch.py --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARKS = {"first_step_s": "[fp32] first step done", "first_epoch_s": "[fp32] epoch 1/"}
TARGETS = {"cold": 10.0, "warm": 4.0}  # issue 14: first epoch line <= 10 s cold, <= 4 s warm


def job(cwd: Path, cache_home: Path, args: list[str]) -> dict[str, float]:
    """Runs one default job; seconds from spawn to each mark and to the process's end."""
    env = {**os.environ, "XDG_CACHE_HOME": str(cache_home), "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}
    env.pop("SNNEXP_COMPILE_CACHE", None)
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "snnexp", *args, f"hydra.run.dir={cwd / 'run'}"], cwd=cwd,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen: dict[str, float] = {}
    lines = []
    for line in proc.stdout:
        lines.append(line)
        for key, mark in MARKS.items():
            if key not in seen and mark in line:
                seen[key] = time.perf_counter() - t0
    if proc.wait() != 0 or len(seen) != len(MARKS):
        raise RuntimeError(f"the default run failed or printed no epoch:\n{''.join(lines[-30:])}")
    return {**seen, "process_s": time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    p.add_argument("overrides", nargs="*", help="overrides of the default run (none: the README's default run)")
    a = p.parse_args(argv)
    load0 = os.getloadavg()[0]
    jobs: dict[str, list[dict[str, float]]] = {"cold": [], "warm": []}
    for r in range(a.rounds):
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            for kind in ("cold", "warm"):
                (tmp / kind).mkdir()
                jobs[kind].append(job(tmp / kind, tmp / "cache", a.overrides))
                print(f"round {r + 1} {kind}: " + ", ".join(f"{k} {v:.2f}" for k, v in jobs[kind][-1].items()),
                      flush=True)
    medians = {kind: {k: statistics.median(j[k] for j in js) for k in js[0]} for kind, js in jobs.items()}
    record = {
        "command": "python bench/first_epoch.py" + "".join(f" {o}" for o in a.overrides),
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, load {load0:.2f} before, "
                   f"{os.getloadavg()[0]:.2f} after",
        "rounds": a.rounds,
        "jobs": jobs,
        "median": medians,
        "targets": {kind: {"first_epoch_s": t, "met": medians[kind]["first_epoch_s"] <= t}
                    for kind, t in TARGETS.items()},
    }
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "first_epoch.json").write_text(json.dumps(record, indent=2) + "\n")
    rows = [f"| {kind} | {m['first_step_s']:.2f} | {m['first_epoch_s']:.2f} | {TARGETS[kind]:.0f} | "
            f"{'met' if m['first_epoch_s'] <= TARGETS[kind] else 'missed'} | {m['process_s']:.2f} |"
            for kind, m in medians.items()]
    (a.out / "first_epoch.md").write_text(
        f"# Time to the default run's first epoch\n\n`{record['command']}` on {record['when']}: "
        f"{record['machine']}; medians of {a.rounds} rounds, seconds from spawning `python -m snnexp`.\n\n"
        "| compilation cache | first step s | first epoch line s | target s | | whole run s |\n"
        "|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n")
    print((a.out / "first_epoch.md").read_text())


if __name__ == "__main__":
    main()
