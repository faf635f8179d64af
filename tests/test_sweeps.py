"""Real multiruns through every launcher and the optuna sweeper; W&B per job."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest
import yaml

from snnexp import launch
from tests.wandb_log import read_run

ROOT = Path(__file__).resolve().parents[1]
TINY = ["debug=fast", "trainer.batch_size=16"]


def multirun(sweep: Path, *overrides: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "snnexp", "-m", *TINY, *overrides, f"hydra.sweep.dir={sweep}"],
        cwd=ROOT, env={**os.environ, "WANDB_MODE": "offline", **(env or {})},
        capture_output=True, text=True, timeout=900,
    )


def statuses(sweep: Path) -> dict[str, dict]:
    return {d.name: json.loads((d / "status.json").read_text())
            for d in sorted(sweep.iterdir()) if (d / "status.json").exists()}


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["basic", "joblib", "submitit_local"])
def test_multirun_through_each_launcher_writes_every_job(launcher, tmp_path):
    extra = [] if launcher == "basic" else [f"hydra/launcher={launcher}"]
    proc = multirun(tmp_path, "quant=w8a8,ternary", "mode=ptq", *extra)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert statuses(tmp_path) == {"0": {"status": "ok"}, "1": {"status": "ok"}}
    recipes = sorted(json.loads((tmp_path / j / "metrics.json").read_text())["recipe"] for j in "01")
    assert recipes == ["ternary", "w8a8"]
    # on CPU there is no accelerator to choose: every job says where it ran
    assert {json.loads((tmp_path / j / "metrics.json").read_text())["device"] for j in "01"} == {"cpu:0"}


def test_sweep_jobs_take_the_devices_round_robin():
    """Job k of a local sweep computes on device k mod n (three host devices stand in for three GPUs)."""
    code = """
import os, jax, jax.numpy as jnp
from flax import nnx
from snnexp import launch
devices = jax.devices()
assert len(devices) == 3, devices
for job in range(5):
    chosen = launch.assign_device(job, devices)
    layer = nnx.Linear(4, 2, rngs=nnx.Rngs(job))  # parameters and results of the job land on its device
    y = layer(jnp.ones((1, 4)))
    assert chosen is devices[job % 3] and y.devices() == layer.kernel.value.devices() == {chosen}, (job, y.devices())
# nothing to choose on CPU, nor in a Slurm job (it uses what Slurm gave it)
assert launch.accelerator_for_job(1) is None
os.environ["SLURM_JOB_ID"] = "7"
assert launch.accelerator_for_job(1) is None
print("ok")
"""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=3", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]


@pytest.mark.skipif(launch.memory_map_count() is None, reason="no /proc/self/maps here")
def test_compiled_programs_are_released_only_past_the_share_of_memory_maps():
    """Each XLA:CPU program holds memory maps; past the share a job's end drops them, below it keeps them."""
    jax.clear_caches()
    before = launch.memory_map_count()[0]
    kept = [jax.jit(lambda x, i=i: jnp.sin(x * i) @ x + i) for i in range(50)]  # alive, like a module's functions
    for f in kept:
        f(jnp.ones((8, 8))).block_until_ready()
    grown = launch.memory_map_count()[0]
    assert grown > before + 100  # several maps a program
    assert not launch.release_compiled_programs(fraction=1.0)
    assert launch.memory_map_count()[0] > before + (grown - before) * 3 / 4  # kept: the next job may reuse them
    assert launch.release_compiled_programs(fraction=0.0)
    assert launch.memory_map_count()[0] < before + (grown - before) / 4


@pytest.mark.slow
def test_a_failing_job_does_not_lose_the_others(tmp_path):
    proc = multirun(tmp_path, "quant=w8a8", "mode=qat,ptq", "trainer.batch_size=16,0",
                    "hydra/launcher=joblib")
    jobs = statuses(tmp_path)
    assert len(jobs) == 4
    failed = {k: v for k, v in jobs.items() if v["status"] == "failed"}
    assert len(failed) == 2 and all("trainer.batch_size=0" in v["error"] for v in failed.values())
    ok = [k for k, v in jobs.items() if v["status"] == "ok"]
    assert len(ok) == 2 and all((tmp_path / k / "metrics.json").exists() for k in ok)
    assert "trainer.batch_size=0 must be an integer" in proc.stderr


@pytest.mark.slow
def test_optuna_search_returns_a_best_value_and_survives_a_failed_trial(tmp_path):
    proc = multirun(tmp_path, "hparams_search=lr", "hydra.sweeper.n_trials=3",
                    "trainer.batch_size=choice(0,16)")
    assert proc.returncode == 0, proc.stderr[-3000:]
    best = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    metrics = [json.loads((d / "metrics.json").read_text()) for d in tmp_path.iterdir()
               if (d / "metrics.json").exists()]
    ok = [m["quant_accuracy"] for m in metrics if m.get("status") == "ok"]
    assert ok and best["best_value"] == max(ok)
    assert 3e-4 <= best["best_params"]["optim.lr"] <= 3e-2


@pytest.mark.slow
def test_wandb_records_one_offline_run_per_job_grouped_by_sweep(tmp_path):
    proc = multirun(tmp_path, "logger=wandb", "quant=w8a8,weights_only", "mode=qat")
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = [read_run(tmp_path / j) for j in "01"]
    assert len({r["id"] for r in runs}) == 2
    assert {r["group"] for r in runs} == {tmp_path.as_posix()}
    for r, recipe in zip(runs, ["w8a8", "weights_only"], strict=True):
        assert {f"quant:{recipe}", "mode:qat", "neuron:lif", "data:synthetic"} <= set(r["tags"])
        metrics = json.loads((tmp_path / str(runs.index(r)) / "metrics.json").read_text())
        assert r["summary"]["quant_accuracy"] == metrics["quant_accuracy"]
        assert r["summary"]["weight_bytes_quant"] == metrics["weight_bytes_quant"]
        assert r["config"]["quant"]["name"] == recipe
        assert [h["epoch"] for h in r["history"]] == [1, 2]
        assert "fp32/test_accuracy" in r["history"][0] and "quant/test_accuracy" in r["history"][1]


def test_named_sweeps_compose_to_their_grids():
    from hydra import compose, initialize_config_dir

    from tests.conftest import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        recipes = compose("train", overrides=["sweep=recipes"], return_hydra_config=True)
        bits = compose("train", overrides=["sweep=bits"], return_hydra_config=True)
        seeds = compose("train", overrides=["sweep=seeds"], return_hydra_config=True)
    assert recipes.hydra.sweeper.params.quant.split(",") == ["fp32", "w8a8", "w4a8", "weights_only", "ternary"]
    assert recipes.hydra.sweeper.params.mode.split(",") == ["qat", "qt", "ptq", "srq"]
    assert bits.quant.name == "w8a8" and bits.quant.rules[0].weight_qtype == "int8"
    assert bits.hydra.sweeper.params["quant.weight_bits"] == "2,3,4,5,6,7,8"
    assert seeds.hydra.sweeper.params.seed == "0,1,2,3,4"
