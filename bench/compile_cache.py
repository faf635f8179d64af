"""Does the persistent compilation cache make the second job of a sweep compile nothing?

Runs the same small job twice as separate processes (as joblib, submitit and
Slurm run sweep jobs), first with the cache off, then with a fresh cache
directory, and reads each job's ``metrics.json`` (wall time, XLA compilations
really performed, compile seconds, cache hits). Writes
``bench/results/compile_cache.json`` and prints a table.

    python bench/compile_cache.py            # ~1-2 minutes on 2 CPU cores
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax

ROOT = Path(__file__).resolve().parents[1]
JOB = ["quant=w8a8", "mode=qat", "trainer.epochs=3", "mode.quant_epochs=1", "logger=none"]
KEYS = ("run_time_s", "compilations", "compile_time_s", "compile_cache_hits", "train_time_s")


def job(out: Path, seed: int, cache: str) -> dict:
    env = {**os.environ, "SNNEXP_COMPILE_CACHE": cache} if cache else dict(os.environ)
    args = [sys.executable, "-m", "snnexp", *JOB, f"seed={seed}", f"hydra.run.dir={out}"]
    if not cache:
        args.append("compile_cache=null")
    t0 = time.perf_counter()
    subprocess.run(args, cwd=ROOT, env=env, check=True, capture_output=True)
    metrics = json.loads((out / "metrics.json").read_text())
    return {"process_s": time.perf_counter() - t0, **{k: metrics[k] for k in KEYS}}


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        results = {}
        for label, cache in (("cache off", ""), ("cache on", str(tmp / "cache"))):
            results[label] = [job(tmp / label.replace(" ", "_") / str(s), s, cache) for s in (0, 1)]
    record = {
        "command": "python bench/compile_cache.py",
        "job": JOB,
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}",
        "versions": {"jax": jax.__version__, "python": platform.python_version()},
        "results": results,
    }
    out = ROOT / "bench" / "results" / "compile_cache.json"
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"{'':10} {'job':>3} {'process s':>9} {'run s':>6} {'compiled':>8} {'compile s':>9} {'hits':>5}")
    for label, jobs in results.items():
        for i, r in enumerate(jobs):
            print(f"{label:10} {i + 1:>3} {r['process_s']:9.1f} {r['run_time_s']:6.1f} {r['compilations']:8d} "
                  f"{r['compile_time_s']:9.2f} {r['compile_cache_hits']:5d}")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
