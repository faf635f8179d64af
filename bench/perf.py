"""Training speed of snnexp against Spyx's own training loops and a matmul ceiling.

Every measurement runs in its own fresh process (this file re-invoked with
``--worker NAME``; the worker prints its result as one JSON line), so no
measurement inherits another's compiled programs, caches or heap. Each
worker warms up, then repeats (at least 3 times) and reports medians.

Workload: SHD-shaped synthetic spikes (700 channels, Bernoulli p = 0.05,
T = 100), batch 256, 8192 samples per epoch (32 steps), ``Linear(700, H) ->
LIF(H) -> Linear(H, 20) -> LI``, Adam, cross-entropy on the time-averaged
readout; H = 128 and 512. See ``bench/README.md`` for what each number means.

    python bench/perf.py                     # full run, ~40-60 min on 2 quiet cores, ~12 GB RAM
    python bench/perf.py --quick             # 1024 samples, 3 repetitions: a smoke test (~10 min)
    python bench/perf.py --hidden 128 --only snnexp_fp32 spyx_fit matmul

Writes ``bench/results/perf.json`` and ``bench/results/perf.md``
(``perf_quick.*`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import _workload as W  # noqa: E402  (numpy only)

RESULT_TAG = "PERF_RESULT "

# name -> (per hidden size?, what it measures)
MEASUREMENTS: dict[str, tuple[bool, str]] = {
    "matmul": (False, "plain XLA fp32 jnp.dot, the ceiling"),
    "snnexp_fp32": (True, "snnexp.train.train_steps called as train.fit calls it, fp32"),
    "snnexp_cli": (True, "python -m snnexp on the workload: shuffling, evaluation, checkpoints, fp32"),
    "spyx_fit": (True, "spyx.optimize.fit, per-batch make_train_step, batch-major (spyx.nn.run batch_major=True)"),
    "spyx_fit_tm": (True, "spyx.optimize.fit on time-major batches [T, B, F]: Spyx's default layout"),
    "snnexp_rec_fp32": (True, "the same with model=recurrent (RecurrentSNN, LIF)"),
    "snnexp_rec_cli": (True, "python -m snnexp model=recurrent on the workload"),
    "spyx_rec_fit": (True, "spyx.optimize.fit with spyx.nn.RLIF: the recurrent model, batch-major"),
    "spyx_rec_fit_tm": (True, "spyx.optimize.fit with spyx.nn.RLIF on time-major batches"),
    "snnexp_qat": (True, "the same with the qwix QAT w8a8 model"),
    "snnexp_qt": (True, "the same with the qwix QT w8a8 model, int8 backward"),
    "spyx_compile_fit": (True, "spyx.optimize.compile_fit, the whole run as one XLA program"),
    "snnexp_fp32_eval": (True, "snnexp.train.evaluate, fp32 model (reference)"),
    "snnexp_ptq_eval": (True, "snnexp.train.evaluate, PTQ w8a8 deployed model"),
    "snnexp_srq_eval": (True, "snnexp.train.evaluate, SRQ w8a8 deployed model"),
    "ttfs_snnexp_cached": (True, "as snnexp_fp32's first epoch, second job on a warm compilation cache"),
    "ttfs_spyx_fit": (True, "process start -> spyx.optimize.fit over one batch returns"),
    "hlo": (True, "compiled HLO of train_steps: what runs inside the time loops"),
    "sweep_cache": (False, "two equal jobs, persistent compilation cache off / on"),
}
GROUPS = {
    "snnexp": ["snnexp_fp32", "snnexp_qat", "snnexp_qt"],
    "eval": ["snnexp_fp32_eval", "snnexp_ptq_eval", "snnexp_srq_eval"],
    "spyx": ["spyx_fit", "spyx_fit_tm", "spyx_compile_fit", "spyx_rec_fit", "spyx_rec_fit_tm"],
    "recurrent": ["snnexp_rec_fp32", "snnexp_rec_cli", "spyx_rec_fit", "spyx_rec_fit_tm"],
    "headline": ["snnexp_fp32", "snnexp_cli", "spyx_fit", "spyx_fit_tm", "snnexp_rec_fp32", "snnexp_rec_cli",
                 "spyx_rec_fit", "spyx_rec_fit_tm", "snnexp_qat", "snnexp_qt"],
    "ttfs": ["snnexp_fp32", "ttfs_snnexp_cached", "ttfs_spyx_fit", "spyx_compile_fit"],
    "targets": ["matmul", "snnexp_fp32", "snnexp_cli", "snnexp_qat", "snnexp_qt", "spyx_fit", "spyx_fit_tm",
                "spyx_compile_fit", "snnexp_rec_fp32", "snnexp_rec_cli", "spyx_rec_fit", "spyx_rec_fit_tm",
                "sweep_cache"],
}

TARGETS = {
    # snnexp's steady epoch as python -m snnexp trains it at least 1.3x faster than Spyx's faster fit loop
    # (time-major or batch-major, whichever is faster), feed-forward and recurrent
    "speedup_vs_spyx_best": 1.3,
    "speedup_vs_spyx_best_recurrent": 1.3,
    "ceiling_fraction": 0.5,  # at least 50 % of the plain-matmul GFLOP/s (FLOPs the step really needs)
    "ttfs_ratio_vs_compile_fit": 1 / 20,  # time to first step at most 1/20 of compile_fit's
    "qat_over_fp32": 1.15,
    "qt_over_fp32": 1.5,
    "sweep_second_job_compilations": 0,
}


# =================================================================== workers


def _now() -> float:
    return time.time()


def _median(xs: list[float]) -> float | None:
    import numpy as np

    return float(np.median(xs)) if xs else None


def _compile_counter():
    """``snnexp.compile_stats.CompileStats``, listening from now on (its module imports only jax)."""
    from snnexp.compile_stats import CompileStats

    CompileStats.register()
    return CompileStats


def _timed_epochs(fn, n_calls: int, counter) -> dict[str, Any]:
    """Calls ``fn()`` ``n_calls`` times; wall and CPU seconds and compilations of each call."""
    wall, cpu, compiles = [], [], []
    for i in range(n_calls):
        c0 = counter.compilations
        t0, p0 = time.perf_counter(), time.process_time()
        fn(i)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - p0)
        compiles.append(counter.compilations - c0)
    return {"wall_s": wall, "cpu_s": cpu, "compilations": compiles}


def _summarize_calls(calls: dict[str, Any], warmup: int) -> dict[str, Any]:
    wall, cpu, comp = calls["wall_s"], calls["cpu_s"], calls["compilations"]
    steady = wall[warmup:]
    return {
        "first_s": wall[0],
        "first_compilations": comp[0],
        "warmup_s": wall[:warmup],
        "steady_s": steady,
        "median_s": _median(steady),
        "min_s": min(steady) if steady else None,
        "cpu_median_s": _median(cpu[warmup:]),
        "steady_compilations": sum(comp[warmup:]),
    }


def worker_matmul(a: argparse.Namespace) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp
    import numpy as np

    shapes = [(2048, 2048, 2048)]
    for h in a.hidden_all:
        shapes += [(W.BATCH * W.STEPS, W.FEATURES, h), (W.FEATURES, W.BATCH * W.STEPS, h)]
    dot = jax.jit(jnp.dot)
    out = []
    key = jax.random.PRNGKey(0)
    for m, k, n in shapes:
        lhs = jax.random.normal(key, (m, k), jnp.float32)
        rhs = jax.random.normal(key, (k, n), jnp.float32)
        for _ in range(2):
            dot(lhs, rhs).block_until_ready()
        ts = []
        for _ in range(max(a.reps, 7)):
            t0 = time.perf_counter()
            dot(lhs, rhs).block_until_ready()
            ts.append(time.perf_counter() - t0)
        med = float(np.median(ts))
        out.append({"shape": [m, k, n], "median_s": med, "gflops": 2.0 * m * k * n / med / 1e9,
                    "best_gflops": 2.0 * m * k * n / min(ts) / 1e9})
    return {"dots": out, "ceiling_gflops": max(d["gflops"] for d in out)}


def _snnexp_setup(a: argparse.Namespace, quant_name: str, mode: str, marks: dict[str, float],
                  evaluation: bool = False, model_name: str = "feedforward"):
    """What ``snnexp.train.run`` builds before training, through the same ``snnexp.build`` calls.

    The recipe, loop settings and pipeline are built and checked from the composed config, then the
    network for the data with the recipe checked against it (the up-front dry quantization).
    ``evaluation``: the test split holds all samples (the train split a slice, for calibration);
    otherwise the train split holds all samples.
    """
    from snnexp import build
    from snnexp.data import Dataset
    from snnexp.train import Arrays

    marks["imported"] = _now()
    x, y = W.make_data(a.samples)
    marks["generated"] = _now()
    cfg = W.snnexp_config(a.hidden, quant=quant_name, mode=mode, model=model_name)
    rules, settings, pipeline = build.rules(cfg), build.loop_settings(cfg), build.pipeline(cfg)
    n_small = min(len(x), 8 * W.BATCH)
    if evaluation:  # evaluate over all samples; calibrate on a slice
        data = Dataset(x[:n_small], y[:n_small], x, y, n_classes=W.CLASSES, name="shd-synthetic")
    else:  # train on all samples
        data = Dataset(x, y, x[:W.BATCH], y[:W.BATCH], n_classes=W.CLASSES, name="shd-synthetic")
    settings = settings.fit(len(data.x_train), len(data.x_test))
    model, sample = build.network(cfg, data, rules, settings)
    arrays = Arrays.put(data)
    del x, y, data
    marks["built"] = _now()
    return cfg, rules, pipeline, settings, model, sample, arrays


def worker_snnexp_train(a: argparse.Namespace, kind: str, first_only: bool = False,
                        model_name: str = "feedforward") -> dict[str, Any]:
    """snnexp's epoch as ``train.fit`` runs it: ``train_steps`` over the epoch's perm ``[steps, 256]``.

    The model and optimizer are the ones the mode's pipeline trains (``snnexp.train.pipelines``:
    ``training_model`` with the mode's knobs, ``build.optimizer`` with its ``lr_scale``); the batches
    are ``train.epoch_perm``'s and the calls ``train.step_chunks``' (``trainer.steps_per_call=0``):
    the process's first call runs one step alone, then the rest of that epoch; every later epoch is
    one call. ``first_only``: stop after the first step (time to first step).
    """
    marks = {"start": _now()}
    import jax
    import numpy as np
    from flax import nnx

    from snnexp import build, launch, train
    from snnexp.train import pipelines

    cache = os.environ.get("SNNEXP_BENCH_CACHE")
    if cache:  # what the launcher does with compile_cache
        launch.enable_compile_cache(cache)
    counter = _compile_counter()
    quant_name, mode = {"fp32": ("fp32", "qat"), "qat": ("w8a8", "qat"), "qt": ("w8a8", "qt")}[kind]
    cfg, rules, pipeline, settings, model, sample, arrays = _snnexp_setup(a, quant_name, mode, marks,
                                                                          model_name=model_name)
    steps = a.samples // W.BATCH
    epochs = a.warmup + a.reps
    knobs = pipeline.keywords  # the mode's knobs, as its pipeline gets them
    trained = pipelines.training_model("fp32" if kind == "fp32" else mode, model, rules, sample,
                                       bwd_qtype=knobs.get("bwd_qtype"))
    lr_scale = knobs.get("lr_scale", 1.0) if kind == "qat" else 1.0
    tx = build.optimizer(cfg, epochs * steps, lr_scale=lr_scale)
    opt = nnx.Optimizer(trained, tx, wrt=nnx.Param)
    marks["optimizer"] = _now()
    perm_phase = "fp32" if kind == "fp32" else "quant"
    perms = [train.epoch_perm(settings.seed, perm_phase, e + 1, a.samples, settings.batch_size)
             for e in range(epochs)]
    if kind == "fp32":  # the Spyx side (no snnexp imports) draws the same batches
        assert np.array_equal(perms[0], W.epoch_perm(a.samples, 1))
    perms = [jax.device_put(p) for p in perms]
    losses_seen = []

    def epoch(i: int) -> None:
        losses = []
        for start, stop in train.step_chunks(0, 1 if first_only else steps, steps, first=i == 0):
            out = np.asarray(train.train_steps(trained, opt, arrays.x_train, arrays.y_train, perms[i],
                                               np.int32(start), np.int32(stop)))
            losses.append(out[start:stop])
            if "first_step" not in marks:
                marks["first_step"] = _now()
        losses_seen.append(float(np.concatenate(losses).mean()))

    if first_only:  # time to first step only
        calls = _timed_epochs(epoch, 1, counter)
        return {"marks": marks, "first_call_s": calls["wall_s"][0], "compilations": counter.compilations,
                "cache_hits": counter.cache_hits}
    calls = _timed_epochs(epoch, epochs, counter)
    out = _summarize_calls(calls, a.warmup)
    out.update(marks=marks, steps_per_epoch=steps, model=model_name,
               loss_first=losses_seen[0], loss_last=losses_seen[-1],
               finite=bool(np.isfinite(losses_seen).all()), total_compilations=counter.compilations)
    return out


def worker_snnexp_eval(a: argparse.Namespace, kind: str) -> dict[str, Any]:
    """``snnexp.train.evaluate`` of the deployed model over all samples (``pipelines.integer_model``)."""
    marks = {"start": _now()}
    from snnexp import train
    from snnexp.train import pipelines

    counter = _compile_counter()
    quant_name, mode = ("fp32", "ptq") if kind == "fp32" else ("w8a8", kind)
    cfg, rules, pipeline, settings, model, sample, arrays = _snnexp_setup(a, quant_name, mode, marks,
                                                                          evaluation=True)
    if kind == "fp32":
        deployed = model
    else:
        trained = model
        if kind == "srq":
            trained = pipelines.calibrated_model(model, rules, sample, arrays, pipeline.keywords["calib_batches"],
                                                 settings)
        deployed = pipelines.integer_model(trained, rules, sample, kind)
    marks["deployed"] = _now()
    ebs = settings.eval_batch_size
    results = []

    def one(i: int) -> None:
        results.append(train.evaluate(deployed, arrays, ebs))

    calls = _timed_epochs(one, a.warmup + a.reps, counter)
    out = _summarize_calls(calls, a.warmup)
    out.update(marks=marks, eval_batch_size=ebs, samples=int(arrays.x_test.shape[0]),
               accuracy=results[-1]["accuracy"], spike_rate=results[-1]["spike_rate"]["mean"])
    return out


def _spyx_data(a: argparse.Namespace, marks: dict[str, float], time_major: bool = False):
    """The first epoch's batches as device arrays ``[n_batches, 256, T, F]`` (same order as snnexp);
    ``time_major``: ``[n_batches, T, 256, F]``, transposed once here."""
    import jax

    x, y = W.make_data(a.samples)
    marks["generated"] = _now()
    perm = W.epoch_perm(a.samples, 1)
    xb = x[perm.reshape(-1)].reshape(*perm.shape, W.STEPS, W.FEATURES)
    xb = jax.device_put(xb.transpose(0, 2, 1, 3).copy() if time_major else xb)
    yb = jax.device_put(y[perm])
    del x, y
    return xb, yb


def worker_spyx_fit(a: argparse.Namespace, one_batch: bool = False, recurrent: bool = False,
                    time_major: bool = False) -> dict[str, Any]:
    """``spyx.optimize.fit`` fed a list of device-resident ``(x, y)`` batches.

    ``time_major``: batches ``[T, B, F]`` and ``spyx.nn.run``'s default layout (Spyx's documented,
    faster usage); otherwise ``[B, T, F]`` with ``batch_major=True``.
    """
    marks = {"start": _now()}
    import jax
    import spyx

    marks["imported"] = _now()
    counter = _compile_counter()
    xb, yb = _spyx_data(a, marks, time_major=time_major)
    batches = [(xb[i], yb[i]) for i in range(xb.shape[0])]  # device slices, made once
    jax.block_until_ready(batches)
    del xb, yb
    marks["data"] = _now()
    model = W.spyx_model(a.hidden, recurrent=recurrent)
    warmup = max(a.warmup, 2)  # epoch 1 compiles twice (a weakly typed beta becomes strong)
    epochs = 1 if one_batch else warmup + a.reps
    tx = W.adam(epochs * len(batches))
    marks["built"] = _now()
    stamps, cpu_stamps, compiles, losses = [], [], [], []

    def on_epoch_end(epoch: int, metrics: dict[str, float]) -> None:
        stamps.append(time.perf_counter())
        cpu_stamps.append(time.process_time())
        compiles.append(counter.compilations)
        losses.append(metrics["train_loss"])
        if epoch == 0:
            marks["first_step"] = _now()

    source = (lambda: batches[:1]) if one_batch else (lambda: batches)
    t0, p0 = time.perf_counter(), time.process_time()
    c0 = counter.compilations
    loss = W.spyx_loss_time_major if time_major else W.spyx_loss
    spyx.optimize.fit(model, tx, loss, source, epochs=epochs, on_epoch_end=on_epoch_end)
    wall = [stamps[0] - t0] + [b - a_ for a_, b in zip(stamps[:-1], stamps[1:])]
    cpu = [cpu_stamps[0] - p0] + [b - a_ for a_, b in zip(cpu_stamps[:-1], cpu_stamps[1:])]
    comp = [compiles[0] - c0] + [b - a_ for a_, b in zip(compiles[:-1], compiles[1:])]
    if one_batch:
        return {"marks": marks, "first_call_s": wall[0], "compilations": comp[0]}
    out = _summarize_calls({"wall_s": wall, "cpu_s": cpu, "compilations": comp}, warmup)
    out.update(marks=marks, warmup_epochs=warmup, steps_per_epoch=len(batches), compilations_per_epoch=comp,
               model="recurrent" if recurrent else "feedforward", layout="time-major" if time_major else "batch-major",
               loss_first=losses[0], loss_last=losses[-1])
    return out


EPOCH_LINE = re.compile(r"\[fp32\] epoch (\d+)/\d+ .* ([0-9.]+) s \(train ([0-9.]+) s, eval ([0-9.]+) s\)")


def worker_snnexp_cli(a: argparse.Namespace, model_name: str = "feedforward") -> dict[str, Any]:
    """``python -m snnexp`` training the workload (``W.snnexp_cli_args``), timed from its epoch lines.

    Per steady epoch: ``epoch_s``, from one epoch line to the next (training with the epoch's
    shuffle gathered on the device, the test evaluation, the checkpoint, the history row);
    ``train_s`` and ``eval_s``, the two parts the run itself reports.
    """
    epochs = a.warmup + a.reps
    with tempfile.TemporaryDirectory() as tmp:
        args = [sys.executable, "-m", "snnexp", *W.snnexp_cli_args(a.hidden, a.samples, epochs, model_name),
                f"hydra.run.dir={tmp}/run"]
        proc = subprocess.Popen(args, cwd=W.ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        stamps, train, evals, tail = [], [], [], []
        for line in proc.stdout:
            tail = (tail + [line])[-40:]
            m = EPOCH_LINE.search(line)
            if m:
                stamps.append(time.perf_counter())
                train.append(float(m.group(3)))
                evals.append(float(m.group(4)))
        if proc.wait() != 0 or len(stamps) != epochs:
            raise RuntimeError("python -m snnexp failed:\n" + "".join(tail))
    whole = [b - a_ for a_, b in zip(stamps[:-1], stamps[1:])]  # epoch k (k >= 2): line k-1 -> line k
    steady = slice(max(a.warmup - 1, 0), None)
    return {"steady_s": whole[steady], "median_s": _median(whole[steady]), "min_s": min(whole[steady]),
            "first_s": train[0] + evals[0], "steady_compilations": 0, "train_s": train[a.warmup:],
            "eval_s": evals[a.warmup:], "train_median_s": _median(train[a.warmup:]),
            "eval_median_s": _median(evals[a.warmup:]), "model": model_name,
            "args": W.snnexp_cli_args(a.hidden, a.samples, epochs, model_name)}


class _JitRecorder:
    """Stands in for the ``jax`` module inside ``spyx.optimize`` to keep the jitted ``_run``.

    ``compile_fit`` builds and jits a fresh ``_run`` per call and runs it once;
    keeping the jitted function lets us run the SAME compiled program again
    (one epoch from the initial parameters) and time its steady state, without
    counting its compile.
    """

    def __init__(self, jax_module):
        self._jax = jax_module
        self.jitted = []

    def __getattr__(self, name):
        return getattr(self._jax, name)

    def jit(self, fun, **kwargs):
        f = self._jax.jit(fun, **kwargs)
        self.jitted.append(f)
        return f


def worker_spyx_compile_fit(a: argparse.Namespace) -> dict[str, Any]:
    """``spyx.optimize.compile_fit`` on the data staged ``[n_batches, 256, ...]`` (as documented)."""
    marks = {"start": _now()}
    import jax
    import spyx
    import spyx.optimize

    marks["imported"] = _now()
    counter = _compile_counter()
    xb, yb = _spyx_data(a, marks)
    marks["data"] = _now()
    model = W.spyx_model(a.hidden)
    tx = W.adam(xb.shape[0])
    marks["built"] = _now()
    recorder = _JitRecorder(jax)
    spyx.optimize.jax = recorder
    try:
        t0 = time.perf_counter()
        _, history = spyx.optimize.compile_fit(model, tx, W.spyx_loss, (xb, yb), epochs=1)
        jax.block_until_ready(history)
        first = time.perf_counter() - t0
        marks["first_step"] = _now()
    finally:
        spyx.optimize.jax = jax
    first_compiles, first_compile_s = counter.compilations, counter.compile_seconds
    run = recorder.jitted[-1]
    key = jax.random.PRNGKey(0)
    calls = _timed_epochs(lambda i: jax.block_until_ready(run(key)), a.warmup + a.reps, counter)
    out = _summarize_calls(calls, a.warmup)
    out.update(marks=marks, first_run_s=first, first_run_compilations=first_compiles,
               first_run_compile_s=first_compile_s, steps_per_epoch=int(xb.shape[0]),
               loss=float(history["train_loss"][0]),
               note="first_run_s: compile_fit(epochs=1) from call to return; steady epochs: the same "
                    "compiled program run again")
    return out


def worker_ttfs_snnexp_cached(a: argparse.Namespace) -> dict[str, Any]:
    return worker_snnexp_train(a, "fp32", first_only=True)


def worker_ttfs_spyx_fit(a: argparse.Namespace) -> dict[str, Any]:
    return worker_spyx_fit(a, one_batch=True)


def worker_hlo(a: argparse.Namespace) -> dict[str, Any]:
    """Compiles ``train_steps`` (2 steps) and reports what runs inside the time loops."""
    import _hlo
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from snnexp import build, train
    from snnexp.train import pipelines

    n = 2 * W.BATCH
    x, y = W.make_data(n)
    xs, ys = jax.device_put(x), jax.device_put(y)
    perm = jnp.asarray(np.arange(n, dtype=np.int32).reshape(2, W.BATCH))
    out = {}
    for kind, (qname, mode) in {"fp32": ("fp32", "qat"), "qat": ("w8a8", "qat"), "qt": ("w8a8", "qt")}.items():
        cfg = W.snnexp_config(a.hidden, quant=qname, mode=mode)
        model = pipelines.training_model(kind, build.model(cfg, W.FEATURES, W.CLASSES), build.rules(cfg), xs[:1],
                                         bwd_qtype=build.pipeline(cfg).keywords.get("bwd_qtype"))
        opt = nnx.Optimizer(model, build.optimizer(cfg, 10), wrt=nnx.Param)
        text = train.train_steps.lower(model, opt, xs, ys, perm, np.int32(0), np.int32(2)).compile().as_text()
        out[kind] = _hlo.loop_report(text, time_steps=W.STEPS)
    return out


def worker_sweep_cache(a: argparse.Namespace) -> dict[str, Any]:
    """Two equal ``python -m snnexp`` jobs, compile cache off then on (bench/compile_cache.py's jobs)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("compile_cache", Path(__file__).parent / "compile_cache.py")
    cc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cc)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for label, cache in (("cache_off", ""), ("cache_on", str(tmp / "cache"))):
            results[label] = [cc.job(tmp / label / str(s), s, cache) for s in (0, 1)]
    return {"job": cc.JOB, "results": results,
            "second_job_compilations": results["cache_on"][1]["compilations"]}


WORKERS = {
    "matmul": worker_matmul,
    "snnexp_fp32": lambda a: worker_snnexp_train(a, "fp32"),
    "snnexp_qat": lambda a: worker_snnexp_train(a, "qat"),
    "snnexp_qt": lambda a: worker_snnexp_train(a, "qt"),
    "snnexp_fp32_eval": lambda a: worker_snnexp_eval(a, "fp32"),
    "snnexp_ptq_eval": lambda a: worker_snnexp_eval(a, "ptq"),
    "snnexp_srq_eval": lambda a: worker_snnexp_eval(a, "srq"),
    "snnexp_cli": worker_snnexp_cli,
    "spyx_fit": worker_spyx_fit,
    "spyx_fit_tm": lambda a: worker_spyx_fit(a, time_major=True),
    "snnexp_rec_fp32": lambda a: worker_snnexp_train(a, "fp32", model_name="recurrent"),
    "snnexp_rec_cli": lambda a: worker_snnexp_cli(a, model_name="recurrent"),
    "spyx_rec_fit": lambda a: worker_spyx_fit(a, recurrent=True),
    "spyx_rec_fit_tm": lambda a: worker_spyx_fit(a, recurrent=True, time_major=True),
    "spyx_compile_fit": worker_spyx_compile_fit,
    "ttfs_snnexp_cached": worker_ttfs_snnexp_cached,
    "ttfs_spyx_fit": worker_ttfs_spyx_fit,
    "hlo": worker_hlo,
    "sweep_cache": worker_sweep_cache,
}
assert set(WORKERS) == set(MEASUREMENTS)


def run_worker(a: argparse.Namespace) -> None:
    load0 = os.getloadavg()
    result = WORKERS[a.worker](a)
    result["loadavg_before"], result["loadavg_after"] = list(load0), list(os.getloadavg())
    print(RESULT_TAG + json.dumps(result), flush=True)


# ============================================================== orchestrator


def spawn(name: str, hidden: int | None, a: argparse.Namespace, extra_env: dict[str, str] | None = None,
          label: str | None = None) -> dict[str, Any]:
    """Runs one worker in a fresh process; adds the spawn-relative times of its marks."""
    args = [sys.executable, str(Path(__file__).resolve()), "--worker", name,
            "--samples", str(a.samples), "--reps", str(a.reps), "--warmup", str(a.warmup),
            "--hidden-all", *map(str, a.hidden)]
    if hidden is not None:
        args += ["--hidden", str(hidden)]
    env = {k: v for k, v in os.environ.items()
           if k not in ("JAX_COMPILATION_CACHE_DIR", "SNNEXP_COMPILE_CACHE")}
    env.setdefault("WANDB_MODE", "disabled")
    env.update(extra_env or {})
    label = label or (name if hidden is None else f"{name}@{hidden}")
    print(f"[perf] {label} ...", end=" ", flush=True)
    t_spawn = time.time()
    t0 = time.perf_counter()
    proc = subprocess.run(args, cwd=W.ROOT, env=env, capture_output=True, text=True, timeout=a.timeout)
    wall = time.perf_counter() - t0
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_TAG)]
    if proc.returncode != 0 or not lines:
        print(f"FAILED ({proc.returncode}) after {wall:.0f}s")
        return {"error": f"exit {proc.returncode}", "stderr_tail": proc.stderr[-3000:], "process_s": wall}
    result = json.loads(lines[-1][len(RESULT_TAG):])
    result["process_s"] = wall
    marks = result.get("marks")
    if marks:
        result["since_spawn_s"] = {k: v - t_spawn for k, v in marks.items()}
    print(f"{wall:.0f}s", flush=True)
    return result


def plan(names: list[str], hidden: list[int]) -> list[tuple[str, str, int | None]]:
    """``(key, name, hidden)`` in run order: per hidden size the measurements that are compared
    run next to each other (load drifts); the matmul ceiling first and again last."""
    out: list[tuple[str, str, int | None]] = []
    if "matmul" in names:
        out.append(("matmul", "matmul", None))
    for i, h in enumerate(hidden):
        for name in names:
            if MEASUREMENTS[name][0] and (name != "hlo" or i == 0):
                out.append((f"{name}@{h}", name, h))
    if "sweep_cache" in names:
        out.append(("sweep_cache", "sweep_cache", None))
    if "matmul" in names:
        out.append(("matmul_end", "matmul", None))
    return out


def merge_rounds(results: list[dict[str, Any]]) -> dict[str, Any]:
    """One worker's results over ``--rounds``: timed repetitions pooled, single times by median."""
    import statistics

    ok = [r for r in results if "error" not in r]
    if not ok:
        return results[-1]
    if len(ok) == 1:
        return ok[0]
    merged = dict(ok[-1])
    merged["rounds"] = ok
    if "steady_s" in merged:
        steady = [t for r in ok for t in r["steady_s"]]
        merged.update(steady_s=steady, median_s=statistics.median(steady), min_s=min(steady),
                      first_s=statistics.median(r["first_s"] for r in ok),
                      steady_compilations=sum(r["steady_compilations"] for r in ok))
    for key in ("first_run_s", "first_call_s"):
        if key in merged:
            merged[key] = statistics.median(r[key] for r in ok)
    if "since_spawn_s" in merged:
        merged["since_spawn_s"] = {k: statistics.median(r["since_spawn_s"][k] for r in ok)
                                   for k in merged["since_spawn_s"]}
    if "ceiling_gflops" in merged:
        merged["ceiling_gflops"] = max(r["ceiling_gflops"] for r in ok)
    return merged


def selected(a: argparse.Namespace) -> list[str]:
    if not a.only:
        return list(MEASUREMENTS)
    names: list[str] = []
    for pat in a.only:
        hits = GROUPS.get(pat) or [n for n in MEASUREMENTS if fnmatch.fnmatch(n, pat)]
        if not hits:
            raise SystemExit(f"--only {pat!r} matches nothing; names: {list(MEASUREMENTS)}; "
                             f"groups: {list(GROUPS)}")
        names += [n for n in hits if n not in names]
    return [n for n in MEASUREMENTS if n in names]  # the canonical order


def matmul_floor(mm: list[dict[str, Any] | None], hidden: int) -> float | None:
    """Seconds of one step's input-projection matmuls timed alone (forward ``[B*T, F] @ [F, H]`` and
    the weight gradient ``[F, B*T] @ [B*T, H]``): no framework doing these FLOPs in XLA steps faster."""
    forward, wgrad = [W.BATCH * W.STEPS, W.FEATURES, hidden], [W.FEATURES, W.BATCH * W.STEPS, hidden]
    best: dict[str, float] = {}
    for m in mm:
        for d in (m or {}).get("dots", []):
            for name, shape in (("forward", forward), ("wgrad", wgrad)):
                if d["shape"] == shape:
                    best[name] = min(best.get(name, float("inf")), d["median_s"])
    return best["forward"] + best["wgrad"] if len(best) == 2 else None


def summarize(workers: dict[str, Any], hidden: list[int], samples: int) -> tuple[dict, list[dict]]:
    """Per hidden size: epoch times, throughput, GFLOP/s, ratios; then the targets."""
    steps = samples // W.BATCH

    def get(name: str, h: int | None = None) -> dict[str, Any] | None:
        r = workers.get(name if h is None else f"{name}@{h}")
        return None if r is None or "error" in r else r

    mm = [get(k) for k in workers if k.startswith("matmul")]
    ceiling = max((m["ceiling_gflops"] for m in mm if m), default=None)
    summary: dict[str, Any] = {"ceiling_gflops": ceiling}
    targets: list[dict[str, Any]] = []

    def target(key: str, h: int | None, value: float | None, ok: bool | None, text: str) -> None:
        targets.append({"target": key, "hidden": h, "threshold": TARGETS[key], "value": value,
                        "met": ok, "detail": text})

    for h in hidden:
        s: dict[str, Any] = {"flops_per_step": W.flops_per_step(h),
                             "flops_per_step_recurrent": W.flops_per_step(h, recurrent=True)}
        epochs = {}
        rows = []
        for name in ("snnexp_fp32", "snnexp_cli", "snnexp_qat", "snnexp_qt", "spyx_fit", "spyx_fit_tm",
                     "spyx_compile_fit", "snnexp_rec_fp32", "snnexp_rec_cli", "spyx_rec_fit", "spyx_rec_fit_tm"):
            r = get(name, h)
            if r is None or r.get("median_s") is None:
                continue
            if name.endswith("_cli"):  # the run's training part alone, then the whole epoch line to line
                rows.append((name + "_train", r, r["train_median_s"], min(r["train_s"])))
            rows.append((name, r, r["median_s"], r["min_s"]))
        for name, r, e, e_min in rows:
            fl = W.flops_per_step(h, recurrent="_rec_" in name)
            epochs[name] = {
                "epoch_s": e,
                "epoch_min_s": e_min,
                "first_epoch_s": r.get("first_run_s", r["first_s"]),
                "samples_per_s": steps * W.BATCH / e,
                "gflops": fl["train"] * steps / e / 1e9,
                "gflops_exact": fl["train_exact"] * steps / e / 1e9,
                "steady_compilations": r["steady_compilations"],
            }
            if ceiling:
                epochs[name]["ceiling_fraction"] = epochs[name]["gflops_exact"] / ceiling
        s["epochs"] = epochs
        floor = matmul_floor(mm, h)
        if floor is not None:  # the two input-projection matmuls of a step, timed alone
            s["matmul_floor"] = {"step_s": floor, "epoch_s": floor * steps,
                                 "fraction_of_snnexp_epoch": floor * steps / epochs["snnexp_fp32"]["epoch_s"]
                                 if "snnexp_fp32" in epochs else None,
                                 "bound_speedup_vs_fit": epochs["spyx_fit"]["epoch_s"] / (floor * steps)
                                 if "spyx_fit" in epochs else None}
        evals = {}
        for kind in ("fp32", "ptq", "srq"):
            r = get(f"snnexp_{kind}_eval", h)
            if r is None:
                continue
            evals[kind] = {"pass_s": r["median_s"], "samples": r["samples"],
                           "samples_per_s": r["samples"] / r["median_s"],
                           "gflops": W.eval_flops_per_sample(h) * r["samples"] / r["median_s"] / 1e9,
                           "first_pass_s": r["first_s"]}
        s["eval"] = evals

        def ratio(num: str, den: str, epochs: dict = epochs) -> float | None:
            if num in epochs and den in epochs:
                return epochs[num]["epoch_s"] / epochs[den]["epoch_s"]
            return None

        s["speedup_vs_fit"] = ratio("spyx_fit", "snnexp_fp32")
        s["speedup_vs_fit_recurrent"] = ratio("spyx_rec_fit", "snnexp_rec_fp32")
        for suffix, spyx_names, ours in (("", ("spyx_fit", "spyx_fit_tm"), "snnexp_cli"),
                                         ("_recurrent", ("spyx_rec_fit", "spyx_rec_fit_tm"), "snnexp_rec_cli")):
            have = [n for n in spyx_names if n in epochs]
            best = min(have, key=lambda n: epochs[n]["epoch_s"]) if have else None
            s[f"spyx_best{suffix}"] = best  # Spyx's faster layout: the headline's peer
            s[f"speedup_vs_spyx_best{suffix}"] = ratio(best, ours + "_train") if best else None
            s[f"speedup_vs_spyx_best{suffix}_whole_epoch"] = ratio(best, ours) if best else None
            s[f"speedup_vs_spyx_best{suffix}_train_steps"] = (
                ratio(best, "snnexp_rec_fp32" if suffix else "snnexp_fp32") if best else None)
        s["speedup_vs_compile_fit"] = ratio("spyx_compile_fit", "snnexp_fp32")
        s["ceiling_fraction"] = epochs.get("snnexp_fp32", {}).get("ceiling_fraction")
        s["qat_over_fp32"] = ratio("snnexp_qat", "snnexp_fp32")
        s["qt_over_fp32"] = ratio("snnexp_qt", "snnexp_fp32")

        ttfs = {}
        for key, name in (("snnexp", "snnexp_fp32"),
                          ("snnexp_cached", "ttfs_snnexp_cached"), ("spyx_fit", "ttfs_spyx_fit"),
                          ("spyx_compile_fit", "spyx_compile_fit")):
            r = get(name, h)
            if r is None or "first_step" not in r.get("since_spawn_s", {}):
                continue
            since = r["since_spawn_s"]
            data_s = since.get("generated", 0.0) - since.get("imported", 0.0)
            ttfs[key] = {"from_spawn_s": since["first_step"], "data_generation_s": data_s,
                         "without_data_s": since["first_step"] - data_s, "worker": name}
        s["ttfs"] = ttfs
        if "snnexp" in ttfs and "spyx_compile_fit" in ttfs:
            s["ttfs_ratio_vs_compile_fit"] = ttfs["snnexp"]["from_spawn_s"] / ttfs["spyx_compile_fit"]["from_spawn_s"]
            s["ttfs_ratio_vs_compile_fit_without_data"] = (
                ttfs["snnexp"]["without_data_s"] / ttfs["spyx_compile_fit"]["without_data_s"])
        if "snnexp_cached" in ttfs and "spyx_compile_fit" in ttfs:
            s["ttfs_ratio_cached_vs_compile_fit"] = (
                ttfs["snnexp_cached"]["from_spawn_s"] / ttfs["spyx_compile_fit"]["from_spawn_s"])
        summary[str(h)] = s

        for key, ours, label in (("speedup_vs_spyx_best", "snnexp_cli", ""),
                                 ("speedup_vs_spyx_best_recurrent", "snnexp_rec_cli", "recurrent: ")):
            v, best = s[key], s["spyx_best" + key.removeprefix("speedup_vs_spyx_best")]
            text = "" if v is None else (
                f"{label}{best} (Spyx's faster layout) {epochs[best]['epoch_s']:.2f} s / python -m snnexp's "
                f"training {epochs[ours + '_train']['epoch_s']:.2f} s per epoch = {v:.2f}x (need >= 1.3x); "
                f"the whole epoch with evaluation and checkpoint {epochs[ours]['epoch_s']:.2f} s = "
                f"{s[key + '_whole_epoch']:.2f}x")
            floor = s.get("matmul_floor", {})
            if not label and v is not None and v < 1.3 and floor.get("epoch_s"):
                text += (f"; the step's two input-projection matmuls alone take {floor['epoch_s']:.2f} s an "
                         f"epoch, so even with everything else free snnexp could be at most "
                         f"{epochs[best]['epoch_s'] / floor['epoch_s']:.2f}x faster")
            target(key, h, v, None if v is None else v >= 1.3, text)
        v = s["ceiling_fraction"]
        target("ceiling_fraction", h, v, None if v is None else v >= 0.5,
               "" if v is None else f"{epochs['snnexp_fp32']['gflops_exact']:.1f} GFLOP/s (FLOPs the step "
               f"needs) of a {ceiling:.1f} GFLOP/s matmul = {100 * v:.0f} % (need >= 50 %)")
        v = s.get("ttfs_ratio_vs_compile_fit")
        target("ttfs_ratio_vs_compile_fit", h, v, None if v is None else v <= 1 / 20,
               "" if v is None else f"snnexp {ttfs['snnexp']['from_spawn_s']:.1f} s / compile_fit "
               f"{ttfs['spyx_compile_fit']['from_spawn_s']:.1f} s = 1/{1 / v:.1f} (need <= 1/20); "
               f"without data generation 1/{1 / s['ttfs_ratio_vs_compile_fit_without_data']:.1f}")
        for key, lim, name in (("qat_over_fp32", 1.15, "QAT"), ("qt_over_fp32", 1.5, "QT")):
            v = s[key]
            target(key, h, v, None if v is None else v <= lim,
                   "" if v is None else f"{name} epoch {v:.2f}x fp32 (need <= {lim}x)")
    sw = get("sweep_cache")
    if sw is not None:
        v = sw["second_job_compilations"]
        target("sweep_second_job_compilations", None, v, v == 0,
               f"second job with the cache on compiled {v} programs "
               f"({sw['results']['cache_on'][1]['compile_cache_hits']} cache hits); cache off: "
               f"{sw['results']['cache_off'][1]['compilations']}")
    return summary, targets


def markdown(record: dict[str, Any]) -> str:
    """The results as markdown tables."""
    s, m = record["summary"], record["machine"]
    v = record["versions"]
    lines = [
        f"# snnexp training speed ({'quick' if record['quick'] else 'full'} run)",
        "",
        f"`{record['command']}` on {m['when']}: {m['cpu']}, nproc {m['nproc']}, load average "
        f"{m['loadavg_before'][0]:.2f} before / {m['loadavg_after'][0]:.2f} after.",
        f"jax {v['jax']}, flax {v['flax']}, spyx {v['spyx']}, qwix {v['qwix']}, optax {v['optax']}, "
        f"snnexp {v['snnexp']}.",
        f"Workload: {record['config']['samples']} samples/epoch, batch {W.BATCH}, T={W.STEPS}, "
        f"700 -> H -> 20, Adam; medians of {record['config']['reps']} repetitions x {record['config']['rounds']} "
        f"round(s) after "
        f"{record['config']['warmup']} warm-up epoch(s) (Spyx fit: at least 2), each measurement in a "
        "fresh process.",
        "",
    ]
    if s.get("ceiling_gflops"):
        lines += [f"Plain XLA fp32 matmul ceiling: **{s['ceiling_gflops']:.1f} GFLOP/s** (best median over "
                  "2048^3 and the workload's matmul shapes).", ""]
    head = [(h, suffix) for h in record["config"]["hidden"] for suffix in ("", "_recurrent")
            if s.get(str(h), {}).get("speedup_vs_spyx_best" + suffix) is not None]
    if head:
        lines += ["## Headline: snnexp as `python -m snnexp` trains, against Spyx at its fastest", "",
                  "| H | model | Spyx batch-major s | Spyx time-major s | Spyx best | snnexp run: training s "
                  "| speedup | + eval & checkpoint s | speedup | snnexp train_steps alone s | speedup |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for h, suffix in head:
            hs, rec = s[str(h)], "_rec" if suffix else ""
            e = hs["epochs"]

            def sec(name: str, e: dict = e) -> str:
                return f"{e[name]['epoch_s']:.2f}" if name in e else "-"

            steps_ratio = hs["speedup_vs_spyx_best" + suffix + "_train_steps"]
            lines.append(
                f"| {h} | {'recurrent' if suffix else 'feed-forward'} | {sec(f'spyx{rec}_fit')} | "
                f"{sec(f'spyx{rec}_fit_tm')} | {hs['spyx_best' + suffix]} | {sec(f'snnexp{rec}_cli_train')} | "
                f"**{hs['speedup_vs_spyx_best' + suffix]:.2f}x** | {sec(f'snnexp{rec}_cli')} | "
                f"{hs['speedup_vs_spyx_best' + suffix + '_whole_epoch']:.2f}x | "
                f"{sec('snnexp_rec_fp32' if suffix else 'snnexp_fp32')} | "
                f"{'-' if steps_ratio is None else f'{steps_ratio:.2f}x'} |")
        lines += ["", "Speedup: the faster Spyx loop's epoch over snnexp's (above 1 = snnexp faster). The snnexp run "
                  "is `python -m snnexp` on the workload (`bench/_workload.py` `snnexp_cli_args`): its training part "
                  "includes the epoch's shuffle, gathered from device-resident data; `+ eval & checkpoint` is line to "
                  "line between two epoch lines, with the test pass over a quarter of the training samples and the "
                  "per-epoch checkpoint. `train_steps alone`: the in-process worker, the same jitted step without the "
                  "run around it. Spyx `fit` does no evaluation.", ""]
    lines += ["## Training epoch", "",
              "| H | path | epoch s | min s | first epoch s | samples/s | GFLOP/s (3x fwd) | GFLOP/s exact | "
              "exact of ceiling | vs snnexp fp32 |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for h in record["config"]["hidden"]:
        hs = s.get(str(h), {})
        for name, e in hs.get("epochs", {}).items():
            ref = "snnexp_rec_fp32" if "rec" in name else "snnexp_fp32"
            base = hs.get("epochs", {}).get(ref, {}).get("epoch_s")
            rel = f"{e['epoch_s'] / base:.2f}x" if base else "-"
            frac = f"{100 * e['ceiling_fraction']:.0f} %" if "ceiling_fraction" in e else "-"
            lines.append(f"| {h} | {name} | {e['epoch_s']:.2f} | {e['epoch_min_s']:.2f} | {e['first_epoch_s']:.2f} "
                         f"| {e['samples_per_s']:.0f} | {e['gflops']:.1f} | {e['gflops_exact']:.1f} | {frac} "
                         f"| {rel} |")
    lines += ["", "GFLOP/s (3x fwd): the usual training convention, backward = 2x forward; GFLOP/s exact: the "
              "FLOPs this step really needs (the input spikes need no gradient: 2/3 of that); the ceiling "
              "target uses the exact count. `*_rec_*`: the recurrent model (snnexp `model=recurrent`, Spyx "
              "`RLIF`), compared with snnexp's recurrent fp32 epoch.", ""]
    floors = {h: s[str(h)]["matmul_floor"] for h in record["config"]["hidden"]
              if s.get(str(h), {}).get("matmul_floor")}
    if floors:
        lines += ["### What bounds the epoch: the input projection", "",
                  "| H | its 2 matmuls alone, s/epoch | share of snnexp's epoch | best possible speedup vs spyx fit |",
                  "|---|---|---|---|"]
        for h, f in floors.items():
            share = f"{100 * f['fraction_of_snnexp_epoch']:.0f} %" if f["fraction_of_snnexp_epoch"] else "-"
            bound = f"{f['bound_speedup_vs_fit']:.2f}x" if f["bound_speedup_vs_fit"] else "-"
            lines.append(f"| {h} | {f['epoch_s']:.2f} | {share} | {bound} |")
        lines += ["", "The forward `[B*T, 700] @ [700, H]` and weight-gradient `[700, B*T] @ [B*T, H]` matmuls, "
                  "timed alone by the matmul worker, are work every framework must do for this model (Spyx does "
                  "the same FLOPs per time step); an epoch can be no faster than they are."]
    lines += ["", "## Evaluation pass (snnexp.train.evaluate)", "",
              "| H | model | pass s | samples | samples/s | GFLOP/s | first pass s |", "|---|---|---|---|---|---|---|"]
    for h in record["config"]["hidden"]:
        for kind, e in s.get(str(h), {}).get("eval", {}).items():
            lines.append(f"| {h} | {kind} | {e['pass_s']:.2f} | {e['samples']} | {e['samples_per_s']:.0f} | "
                         f"{e['gflops']:.1f} | {e['first_pass_s']:.2f} |")
    lines += ["", "## Time from process start to the first finished training step", "",
              "| H | path | from spawn s | of which data generation s | without data s |", "|---|---|---|---|---|"]
    for h in record["config"]["hidden"]:
        for key, t in s.get(str(h), {}).get("ttfs", {}).items():
            lines.append(f"| {h} | {key} | {t['from_spawn_s']:.1f} | {t['data_generation_s']:.1f} | "
                         f"{t['without_data_s']:.1f} |")
    lines += ["", "snnexp: the first `train_steps` call as `train.fit` makes it (one step alone, compiled "
              "once for the whole epoch's chunks); snnexp_cached: the snnexp row as the second job of a sweep "
              "sees it (persistent compilation cache filled by an equal job); spyx_fit: `fit` over one batch; "
              "spyx_compile_fit: a whole 1-epoch `compile_fit` run (its first step is only available when it "
              "returns).", ""]
    lines += ["## Targets", "", "| target | H | met | detail |", "|---|---|---|---|"]
    for t in record["targets"]:
        met = "n/a" if t["met"] is None else ("**met**" if t["met"] else "**not met**")
        lines.append(f"| {t['target']} | {t['hidden'] or '-'} | {met} | {t['detail']} |")
    hlo = {k: w for k, w in record["workers"].items() if k.startswith("hlo@") and "error" not in w}
    if hlo:
        lines += ["", "## Compiled step (HLO): inside the time loops", "",
                  "| H | model | time loops | dots in time loops | quant ops in time loops | "
                  "quant ops per step | dots per step |", "|---|---|---|---|---|---|---|"]
        for k, w in hlo.items():
            h = k.split("@")[1]
            for kind in ("fp32", "qat", "qt"):
                r = w.get(kind)
                if r:
                    lines.append(f"| {h} | {kind} | {r['time_loops']} | {r['dots_in_time_loops']} | "
                                 f"{r['quant_ops_in_time_loops']} | {r['quant_ops_in_step']} | "
                                 f"{r['dots_in_step']} |")
    if any(t["met"] is False for t in record["targets"]):
        lines += ["", "Why the targets marked not met are not: `bench/README.md`, section \"The recorded run: what "
                  "is not met, and why\" (profiles, HLO, the matmul floor above)."]
    failed = [k for k, w in record["workers"].items() if "error" in w]
    if failed:
        lines += ["", f"Failed workers: {', '.join(failed)} (stderr in perf.json)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1024 samples, 3 repetitions: development and smoke tests")
    p.add_argument("--hidden", type=int, nargs="+", default=None, help="hidden sizes (default 128 512)")
    p.add_argument("--only", nargs="+", default=None,
                   help=f"measurement names or globs ({', '.join(MEASUREMENTS)}) or groups ({', '.join(GROUPS)})")
    p.add_argument("--samples", type=int, default=None, help="samples per epoch (default 8192; quick 1024)")
    p.add_argument("--reps", type=int, default=None, help="timed repetitions (default 5; quick 3; at least 3)")
    p.add_argument("--warmup", type=int, default=1, help="warm-up epochs/passes before timing (Spyx fit: >= 2)")
    p.add_argument("--rounds", type=int, default=1,
                   help="run the whole plan this many times (fresh processes each) and pool: for busy machines")
    p.add_argument("--out", type=Path, default=None, help="results directory (default bench/results)")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per worker process")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--hidden-all", type=int, nargs="+", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        a.hidden = a.hidden[0] if isinstance(a.hidden, list) else a.hidden
        a.hidden_all = a.hidden_all or [128, 512]
        run_worker(a)
        return
    a.hidden = a.hidden or [128, 512]
    a.samples = a.samples or (1024 if a.quick else 8192)
    a.reps = max(a.reps or (3 if a.quick else 5), 3)
    if a.samples % W.BATCH:
        raise SystemExit(f"--samples must be a multiple of the batch size {W.BATCH}, got {a.samples}")
    out_dir = a.out or (W.ROOT / "bench" / "results")
    stem = "perf_quick" if a.quick else "perf"
    names = selected(a)
    machine = W.machine()
    record: dict[str, Any] = {
        "command": "python bench/perf.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "quick": a.quick,
        "config": {"samples": a.samples, "reps": a.reps, "warmup": a.warmup, "hidden": a.hidden,
                   "rounds": a.rounds,
                   "batch": W.BATCH, "steps": W.STEPS, "features": W.FEATURES, "classes": W.CLASSES,
                   "p_spike": W.P_SPIKE, "measurements": names},
        "flop_formula": W.flops_per_step.__doc__,
        "versions": W.versions(),
        "machine": {**machine, "loadavg_before": machine.pop("loadavg")},
        "workers": {},
    }
    t0 = time.perf_counter()
    rounds: dict[str, list[dict[str, Any]]] = {}
    for _ in range(a.rounds):
        for key, name, h in plan(names, a.hidden):
            if name == "ttfs_snnexp_cached":
                with tempfile.TemporaryDirectory() as cache:
                    env = {"SNNEXP_BENCH_CACHE": cache}
                    spawn(name, h, a, env, label=f"{key} (filling the cache)")
                    result = spawn(name, h, a, env)
            else:
                result = spawn(name, h, a)
            rounds.setdefault(key, []).append(result)
    record["workers"] = {k: merge_rounds(v) for k, v in rounds.items()}
    record["machine"]["loadavg_after"] = list(os.getloadavg())
    record["total_s"] = time.perf_counter() - t0
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{stem}.json").write_text(json.dumps(record, indent=2) + "\n")  # the raw times, kept if below fails
    record["summary"], record["targets"] = summarize(record["workers"], a.hidden, a.samples)
    (out_dir / f"{stem}.json").write_text(json.dumps(record, indent=2) + "\n")
    md = markdown(record)
    (out_dir / f"{stem}.md").write_text(md)
    print(md)
    print(f"written to {out_dir / (stem + '.json')} and {stem}.md")


if __name__ == "__main__":
    main()
