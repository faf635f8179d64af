"""The fp32 network cache: a job that reuses the fp32 phase ends exactly as one that trained it.

The key is made from what determines the fp32 network and nothing else; two
jobs racing for a key compute it once, a job killed while computing lets the
next one compute it, and what a killed writer leaves is never read.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp
import pytest
from omegaconf import OmegaConf

from snnexp import checkpoint
from snnexp.shared_cache import ENTRY, EntryCache
from snnexp.train import run
from snnexp.train.fp32_cache import environment, key_of, keyed_config
from tests.conftest import make_cfg

ROOT = Path(__file__).resolve().parents[1]
# A tiny digits job: 2 fp32 epochs of 22 steps, 1 quantized epoch.
TINY = ["logger=none", "model.hidden=[16]", "data.steps=8", "trainer.epochs=2", "mode.quant_epochs=1",
        "quant=w8a8", "mode=qat"]
NO_MODE = [o for o in TINY if not o.startswith(("mode=", "mode."))]  # ptq and srq have no quant_epochs
PTQ = [*NO_MODE, "mode=ptq"]
TIMING = {"train_time_s", "steps_per_s", "run_time_s", "compile_time_s", "compilations", "compile_cache_hits"}


def key(*overrides: str) -> str:
    other_mode = any(o.startswith("mode=") for o in overrides)
    cfg = make_cfg(*(NO_MODE if other_mode else TINY), *overrides)
    return key_of(keyed_config(OmegaConf.to_container(cfg, resolve=True), cfg.mode.fp32_epochs, ENV))


ENV = environment()


def test_the_key_changes_with_what_trains_the_fp32_network_and_with_nothing_else():
    base = key()
    changed = ["seed=1", "neuron=alif", "surrogate=arctan", "optim.lr=0.01", "optim=adamw", "optim/schedule=constant",
               "optim.grad_clip_norm=1.0", "mode.fp32_epochs=3", "trainer.epochs=4", "trainer.batch_size=32",
               "trainer.eval_batch_size=128", "data.steps=12", "data.encoding=latency", "model.hidden=[32]",
               "model=recurrent", "model.readout=max", "neuron.beta=null", "trainer.augment.shift=2"]
    keys = {o: key(o) for o in changed}
    assert base not in keys.values(), [o for o, k in keys.items() if k == base]
    assert len(set(keys.values())) == len(changed)
    same = ["quant=ternary", "quant=fp32", "mode=ptq", "mode=srq", "mode.quant_epochs=5", "mode.lr_scale=0.1",
            "hardware=loihi", "hardware=xylo", "logger=wandb", "compile_cache=null", "resume=false", "report=true",
            "objective=fp32_accuracy", "trainer.steps_per_call=3", "trainer.checkpoint_every=2",
            "fp32_cache_dir=/elsewhere", "fp32_cache=false"]
    assert {o: key(o) for o in same} == dict.fromkeys(same, base)
    # the code and the packages are in it: an upgrade trains anew
    cfg = OmegaConf.to_container(make_cfg(*TINY), resolve=True)
    assert key_of(keyed_config(cfg, 2, {**ENV, "source": "0" * 64})) != base
    assert key_of(keyed_config(cfg, 2, {**ENV, "packages": {**ENV["packages"], "jax": "0.0.1"}})) != base
    assert key_of(keyed_config(cfg, 2, ENV)) == base


def test_what_a_killed_writer_left_is_ignored_and_replaced(tmp_path):
    cache = EntryCache(tmp_path)
    k = "k" * 24
    half = tmp_path / f"{k}.tmp-host-123-abcdef12"  # a job died writing its entry: no entry.json
    (half / "checkpoint").mkdir(parents=True)
    (half / "checkpoint" / "partial").write_text("x")
    broken = tmp_path / k  # a copy cut short: the directory without a complete entry.json
    broken.mkdir()
    (broken / ENTRY).write_text('{"key": "' + k + '", "compl')
    assert cache.lookup(k) is None
    made = []

    def create(tmp: Path) -> dict:
        made.append(tmp)
        (tmp / "payload").write_text("trained")
        return {"value": 7}

    entry, created = cache.get_or_create(k, {"what": 1}, create, owner={"run_dir": "here"})
    assert created and len(made) == 1
    assert entry.meta["value"] == 7 and entry.meta["config"] == {"what": 1} and entry.meta["complete"] is True
    assert (entry.path / "payload").read_text() == "trained"
    assert not half.exists() and sorted(p.name for p in tmp_path.iterdir()) == [k, f"{k}.lock", f"{k}.owner.json"]
    again, created = cache.get_or_create(k, {"what": 1}, create)
    assert not created and again.path == entry.path and len(made) == 1
    # an entry.json of another key, or not marked complete, is no entry
    (entry.path / ENTRY).write_text(json.dumps({**entry.meta, "key": "other"}))
    assert cache.lookup(k) is None
    (entry.path / ENTRY).write_text(json.dumps({**entry.meta, "complete": False}))
    assert cache.lookup(k) is None


# Each process: wait until all are started (so that they race), then ask for the key. The first to
# compute it writes half an entry and dies (SIGKILL, holding the lock); the next computes it for real.
RACER = r"""
import json, logging, os, signal, sys, time
from pathlib import Path
from snnexp.shared_cache import EntryCache

logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)
root, n = Path(sys.argv[1]), int(sys.argv[2])
(root / f"ready-{os.getpid()}").touch()
while len(list(root.glob("ready-*"))) < n:
    time.sleep(0.02)

def create(tmp):
    with open(root / "ran.log", "a") as f:
        f.write(f"{os.getpid()}\n")
    if not (root / "killed").exists():
        (root / "killed").touch()
        (tmp / "checkpoint").mkdir()
        (tmp / "checkpoint" / "half").write_text("x")
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(1.0)
    (tmp / "payload").write_text(str(os.getpid()))
    return {"by": os.getpid()}

entry, created = EntryCache(root / "cache", poll_s=0.1).get_or_create(
    "k" * 24, {"what": 1}, create, owner={"run_dir": f"job-{os.getpid()}"})
print(json.dumps({"pid": os.getpid(), "created": created, "by": entry.meta["by"], "path": str(entry.path)}))
"""


@pytest.mark.slow
def test_racing_processes_compute_a_key_once_and_a_killed_one_lets_the_next_compute_it(tmp_path):
    n = 3
    procs = [subprocess.Popen([sys.executable, "-c", RACER, str(tmp_path), str(n)], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(n)]
    outs = [p.communicate(timeout=120) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [-9, 0, 0], [o[1][-2000:] for o in outs]
    ran = (tmp_path / "ran.log").read_text().split()
    assert len(ran) == 2  # the killed one, then the one that computed it: the third did not
    results = [json.loads(o[0]) for p, o in zip(procs, outs) if p.returncode == 0]
    assert sorted(r["created"] for r in results) == [False, True]
    assert {r["by"] for r in results} == {int(ran[1])} and len({r["path"] for r in results}) == 1
    entry = Path(results[0]["path"])
    assert (entry / "payload").read_text() == ran[1] and not (entry / "checkpoint").exists()
    assert not list((tmp_path / "cache").glob("*.tmp-*"))  # the half-written entry was removed
    said = [o[1] for p, o in zip(procs, outs) if p.returncode == 0]
    assert any("waiting for key" in e and "job-" in e for e in said), said  # a waiter said whom it waited for


def _arrays(path: Path) -> dict[str, np.ndarray]:
    with ocp.StandardCheckpointer() as c:
        tree = c.restore(path.absolute())
    import jax

    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _same_arrays(a: Path, b: Path) -> None:
    x, y = _arrays(a), _arrays(b)
    assert x.keys() == y.keys() and x
    for name in x:
        assert x[name].dtype == y[name].dtype and np.array_equal(x[name], y[name]), name


@pytest.mark.slow
def test_a_job_reusing_the_fp32_network_ends_exactly_as_one_that_trained_it(tmp_path, caplog):
    cache = tmp_path / "cache"
    on = ["fp32_cache=true", f"fp32_cache_dir={cache}"]
    k = key()
    (cache / f"{k}.tmp-host-1-dead").mkdir(parents=True)  # left by a job killed while writing the entry
    caplog.set_level(logging.INFO, logger="snnexp")
    trained = run(make_cfg(*TINY, *on), tmp_path / "trained")
    assert f"no entry for key {k}" in caplog.text
    caplog.clear()
    reused = run(make_cfg(*TINY, *on), tmp_path / "reused")
    own = run(make_cfg(*TINY, "fp32_cache=false", f"fp32_cache_dir={cache}"), tmp_path / "own")

    entry = cache / k
    assert trained["fp32_cache"] == {**reused["fp32_cache"], "hit": False}
    assert reused["fp32_cache"]["hit"] and reused["fp32_reused"] and not trained["fp32_reused"]
    assert reused["fp32_cache"]["entry"] == str(entry)
    assert reused["fp32_cache"]["source"] == str(tmp_path / "trained")
    assert own["fp32_cache"] is None and not own["fp32_reused"]
    assert f"reused from the cache (not trained here): key {k}, entry {entry}, trained by {tmp_path / 'trained'}" \
        in caplog.text
    assert not list(cache.glob("*.tmp-*"))
    # this job trained the quantized epoch alone; the entry keeps the fp32 phase's steps and time
    steps = 1438 // 64
    assert (trained["train_steps"], reused["train_steps"], own["train_steps"]) == (3 * steps, steps, 3 * steps)
    assert reused["fp32_cache"]["train_steps"] == 2 * steps and reused["fp32_cache"]["train_time_s"] > 0

    def same(m: dict) -> dict:
        return {k: v for k, v in m.items() if k not in TIMING | {"train_steps", "fp32_cache", "fp32_reused"}}

    assert same(reused) == same(trained) == same(own)  # quant and fp32 accuracy, spike rates, bytes, ...
    histories = [(tmp_path / d / "history.jsonl").read_text() for d in ("trained", "reused", "own")]
    assert histories[0] == histories[1] == histories[2]  # fp32 epochs (replayed) and the quantized epoch
    for d in ("reused", "own"):  # the fp32 network and the deployed integer network, bit for bit
        _same_arrays(tmp_path / "trained" / "checkpoints" / "fp32", tmp_path / d / "checkpoints" / "fp32")
        _same_arrays(tmp_path / "trained" / "checkpoints" / "quant", tmp_path / d / "checkpoints" / "quant")
    _same_arrays(entry / "checkpoint", tmp_path / "own" / "checkpoints" / "fp32")
    meta = json.loads((entry / ENTRY).read_text())
    assert meta["config"]["seed"] == 0 and meta["config"]["fp32_epochs"] == 2 and meta["config"]["model"]["hidden"] \
        == [16] and "quant" not in meta["config"] and "mode" not in meta["config"]
    # a given fp32 checkpoint bypasses the cache
    given = run(make_cfg(*PTQ, *on, f"mode.fp32_checkpoint={tmp_path / 'own' / 'checkpoints' / 'fp32'}"),
                tmp_path / "given")
    assert given["fp32_cache"] is None and given["fp32_accuracy"] == trained["fp32_accuracy"]
    assert sorted(p.name for p in cache.iterdir()) == [k, f"{k}.lock", f"{k}.owner.json"]
    # the reused phase ends with a training-state save, as a trained one does: a resume keeps its history rows
    state = checkpoint.TrainState(tmp_path / "reused" / "checkpoints" / "train")
    only_progress = ocp.args.Composite(progress=ocp.args.JsonRestore())
    first = state.manager.restore(state.manager.all_steps()[0], args=only_progress)["progress"]
    assert (first["phase"], first["done"], first["global_epoch"]) == ("fp32", True, 2)
    state.close()
