"""``run(cfg, out_dir)``: one composed experiment, from config to recorded metrics.

The flow: check the config (``snnexp.schema``, before any data loads), build data, model and
optimizer (``snnexp.build``), call the mode's pipeline
(``snnexp.train.pipelines``), record the metrics locally and in W&B. A
rerun into the same directory resumes (``snnexp.rundir``); a finished run is
not run again.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import jax.numpy as jnp
from omegaconf import DictConfig, OmegaConf

from snnexp import build, checkpoint, schema
from snnexp.compile_stats import CompileStats
from snnexp.console import results_table
from snnexp.rundir import RunDir
from snnexp.train.loop import Arrays, Trainer
from snnexp.train.pipelines import Setup
from snnexp.train.signals import Preempted, stop_on_signals

log = logging.getLogger(__name__)


def run(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    """Runs one composed experiment and records it; resumes an interrupted one.

    Args:
        cfg: the composed config (``conf/train.yaml`` and its groups).
        out_dir: the run directory (Hydra's output dir); created if missing.

    Returns:
        The metrics written to ``out_dir/metrics.json``.

    Raises:
        quant.RecipeError, ConfigError: a bad configuration, before any compute.
        NumericalError: NaN or inf during training (recorded as failed).
        Preempted: stopped by a signal after saving (recorded as preempted).
    """
    rd = RunDir(out_dir)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    finished = rd.prepare(cfg, resolved)
    if finished is not None:
        log.info("%s already finished; skipping (resume=false runs it again)", rd.path)
        return finished
    try:
        schema.validate(cfg)  # every key's type and range, before anything is built
        rules = build.rules(cfg)
        settings = build.loop_settings(cfg)
        pipeline = build.pipeline(cfg)
        profile = build.hardware(cfg)
        fp32_cache = build.fp32_cache(cfg, resolved)
    except ValueError as e:
        rd.failed(e, preempted=False)
        raise
    rd.running()
    CompileStats.register()
    compiles0, compile_s0, hits0 = CompileStats.snapshot()
    t_start = time.perf_counter()

    tracker = None
    try:
        # From here on a stop request (SIGTERM, SIGINT, submitit's signal in a Slurm job) waits for a step boundary.
        with stop_on_signals() as stop:
            data = build.data(cfg)
            settings = settings.fit(len(data.x_train), len(data.x_test))
            model, sample = build.network(cfg, data, rules, settings)
            rd.write_network(data.features, data.n_classes, data.steps, model.layer_sizes())
            state = checkpoint.TrainState(rd.checkpoints / "train")
            saved = state.latest_progress()
            tracker = build.tracker(cfg, rd.path, resolved, resume_step=saved["global_epoch"] if saved else 0)
            log.info(
                "%s: %d train / %d test, T=%d, F=%d, %d classes | model %s | %s %s",
                data.name, len(data.x_train), len(data.x_test), data.steps, data.features,
                data.n_classes, model.layer_sizes(), cfg.quant.name, cfg.mode.name,
            )
            setup = Setup(
                model=model, rules=rules, sample=sample,
                trainer=Trainer(Arrays.put(data), settings, tracker, state, stop),
                optimizer=lambda steps, lr_scale, **kw: build.optimizer(cfg, steps, lr_scale=lr_scale, **kw),
                run_dir=rd, recipe=cfg.quant.name, mode=cfg.mode.name, hardware=profile, fp32_cache=fp32_cache,
            )
            result = pipeline(setup)
            state.close()
            if stop.signum is not None:  # after the last step: finishing takes less than stopping would
                log.info("%s came after the last training step: finishing the run", stop.name())
    except BaseException as e:
        # SystemExit: a launcher's own handler (submitit's requeue) exited outside a step boundary
        preempted = isinstance(e, Preempted | KeyboardInterrupt | SystemExit)
        rd.failed(e, preempted=preempted)
        if tracker is not None:
            tracker.fail(f"{type(e).__name__}: {e}", preempted=preempted)
        raise
    compiles1, compile_s1, hits1 = CompileStats.snapshot()
    device = next(iter(jnp.zeros(()).devices()))  # where the job ran (a sweep job's round-robin accelerator)
    result = {"status": "ok", **result, "device": f"{device.platform}:{device.id}",
              "run_time_s": time.perf_counter() - t_start,
              "compile_time_s": compile_s1 - compile_s0, "compile_cache_hits": hits1 - hits0,
              # a persistent-cache hit is reported as a (short) compilation too
              "compilations": (compiles1 - compiles0) - (hits1 - hits0)}
    tracker.summary(result)
    if cfg.logger.get("log_checkpoint"):
        tracker.log_checkpoint(rd.checkpoints / "quant", f"{cfg.quant.name}-{cfg.mode.name}")
    tracker.finish(exit_code=0)
    rd.finished(result)
    log.info("results\n%s", results_table(result))
    return result
