"""``run(cfg, out_dir)``: the pipeline of one mode, from config to metrics.

The mode decides the pipeline (plain code, no registry):

* ``qat``: fp32 training (or a given fp32 checkpoint), then qwix fake-quant
  and fine-tuning with straight-through gradients;
* ``qt``: quantized training from the start, quantized backward pass;
* ``ptq``: fp32 training (or checkpoint), then integer weights;
* ``srq``: fp32 training (or checkpoint), static activation scales calibrated
  on training batches, then integer weights with those scales.

Every mode ends by converting the network to integer weights (qwix
``PtqProvider``) and evaluating that converted network: ``quant_accuracy`` is
the accuracy of what would be handed to hardware.

Nothing finished is lost: training state is checkpointed every
``trainer.checkpoint_every`` epochs, at each phase boundary and on
SIGTERM/SIGINT; rerunning into the same directory continues where the run
stopped (bit-identical on CPU), and a finished run is not run again. Jitted
steps are pure; the Python loop owns the cadence (evaluate, log, checkpoint).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from omegaconf import DictConfig, OmegaConf

from snnexp import build, checkpoint, metrics, quant, tracking
from snnexp.compile_stats import CompileStats
from snnexp.data import Dataset

log = logging.getLogger(__name__)

MODES = ("qat", "qt", "ptq", "srq")
PHASES = ("fp32", "quant")
# Keys that may differ between a run and its resumption.
_RESUME_FREE_KEYS = ("resume", "logger", "compile_cache", "objective")


class ConfigError(ValueError):
    """A configuration that cannot run as written."""


class NumericalError(FloatingPointError):
    """A NaN or inf in the loss or the parameters."""


class Preempted(Exception):
    """The run was asked to stop (SIGTERM, SIGINT) and saved its state."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum


# ----------------------------------------------------------------- jitted steps


def loss_and_logits(model: nnx.Module, x: jax.Array, y: jax.Array):
    """Cross-entropy on the time-averaged LI readout.

    Args:
        model: the network.
        x: inputs ``[B, T, F]``.
        y: labels ``[B]``.

    Returns:
        ``(mean loss, (logits [B, C], rates [B, T, L]))``.
    """
    readout, rates = model(x)
    logits = readout.mean(axis=1)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return loss, (logits, rates)


@nnx.jit
def train_steps(model: nnx.Module, opt: nnx.Optimizer, xs: jax.Array, ys: jax.Array, perm: jax.Array,
                start: jax.Array, stop: jax.Array) -> jax.Array:
    """Optimizer steps ``start .. stop-1`` of an epoch in one call, on batches ``xs[perm[k]]``.

    ``start`` and ``stop`` are traced, so one compiled program serves every
    chunk of an epoch: the single first step (a fast first result), the
    rest of the epoch, ``trainer.steps_per_call`` chunks and resumes.

    Args:
        model: the network, updated in place.
        opt: its optimizer, updated in place.
        xs: all training inputs ``[N, T, F]`` (on the device).
        ys: all training labels ``[N]``.
        perm: the epoch's batch indices ``[S, B]``.
        start: first step to run, int32 scalar.
        stop: one past the last step to run, int32 scalar.

    Returns:
        Losses ``[S]``: step ``k``'s loss at ``k`` for the steps run, 0 elsewhere
        (fetched once per call).
    """

    def step(k, carry):
        model, opt, losses = carry
        idx = perm[k]
        grad_fn = nnx.value_and_grad(loss_and_logits, has_aux=True)
        (loss, _), grads = grad_fn(model, xs[idx], ys[idx])
        opt.update(model, grads)
        return model, opt, losses.at[k].set(loss)

    _, _, losses = nnx.fori_loop(start, stop, step, (model, opt, jnp.zeros(perm.shape[0], jnp.float32)))
    return losses


@nnx.jit
def eval_step(model: nnx.Module, xs: jax.Array, ys: jax.Array, idx: jax.Array, mask: jax.Array):
    """Sums of correct predictions, loss and spike rates over a padded batch.

    Args:
        model: the network.
        xs: all inputs ``[N, T, F]``; ys: labels ``[N]``.
        idx: batch indices ``[B]`` (the last batch padded with index 0).
        mask: 1.0 for real samples, 0.0 for padding ``[B]``.

    Returns:
        ``(correct, loss_sum, rate_sum [L])`` summed over the real samples.
    """
    x, y = xs[idx], ys[idx]
    readout, rates = model(x)
    logits = readout.mean(axis=1)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    correct = ((jnp.argmax(logits, -1) == y) * mask).sum()
    rate_sum = (rates.mean(axis=1) * mask[:, None]).sum(axis=0)
    return correct, (losses * mask).sum(), rate_sum


@nnx.jit
def calibrate_step(model: nnx.Module, xs: jax.Array, idx: jax.Array) -> None:
    """Updates qwix's static activation statistics on one batch."""
    model(xs[idx], loop="carry")


# -------------------------------------------------------------- stop requests


class StopFlag:
    """Set by SIGTERM/SIGINT; the training loop saves and stops at the next check."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def check(self, what: str) -> None:
        """Raises ``Preempted`` if a stop was requested."""
        if self.signum is not None:
            name = signal.Signals(self.signum).name
            raise Preempted(self.signum, f"stopped by {name} {what}; rerun the same command to resume")


@contextlib.contextmanager
def stop_on_signals() -> Iterator[StopFlag]:
    """Turns SIGTERM/SIGINT into a ``StopFlag`` while the block runs.

    A second signal of the same kind stops at once (the default handler).
    Outside the main thread (some launchers) signals are left alone.
    """
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        if flag.signum is not None:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        flag.signum = signum
        log.warning("%s received: saving a checkpoint at the next step boundary",
                    signal.Signals(signum).name)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


# ------------------------------------------------------------------- the loop


@dataclass
class Arrays:
    """A data set resident on the device."""

    x_train: jax.Array
    y_train: jax.Array
    x_test: jax.Array
    y_test: jax.Array

    @classmethod
    def put(cls, d: Dataset) -> Arrays:
        """Copies the four arrays of ``d`` to the default device once."""
        return cls(*(jax.device_put(a) for a in (d.x_train, d.y_train, d.x_test, d.y_test)))


def evaluate(model: nnx.Module, arrays: Arrays, batch_size: int) -> dict[str, Any]:
    """Accuracy, loss and per-layer spike rates on the whole test set.

    The last batch is padded and masked, so no sample is dropped and every
    batch has one shape (one compilation).
    """
    n = arrays.x_test.shape[0]
    bs = min(batch_size, n)
    n_batches = -(-n // bs)
    idx = np.zeros(n_batches * bs, np.int32)
    idx[:n] = np.arange(n)
    mask = (np.arange(n_batches * bs) < n).astype(np.float32)
    results = [
        eval_step(model, arrays.x_test, arrays.y_test, idx[i * bs:(i + 1) * bs], mask[i * bs:(i + 1) * bs])
        for i in range(n_batches)
    ]
    correct, loss, rates = jax.device_get(jax.tree.map(lambda *a: sum(a), *results))
    layer_rates = np.asarray(rates) / n
    return {
        "accuracy": float(correct) / n,
        "loss": float(loss) / n,
        "spike_rate": {**{f"layer_{i}": float(r) for i, r in enumerate(layer_rates)},
                       "mean": float(layer_rates.mean())},
    }


@dataclass
class Loop:
    """What every training phase of a run shares."""

    arrays: Arrays
    batch_size: int
    eval_batch_size: int
    steps_per_call: int
    checkpoint_every: int
    seed: int
    tracker: tracking.Tracker
    state: checkpoint.TrainState
    stop: StopFlag
    epoch0: dict[str, int] = field(default_factory=dict)  # global epoch where each phase starts


@dataclass
class FitResult:
    """What a training phase took."""

    steps: int
    seconds: float


def step_chunks(start: int, stop: int, size: int, first: bool = False) -> list[tuple[int, int]]:
    """The ``train_steps`` calls of an epoch: ``[start, stop)`` cut at multiples of ``size``.

    The cuts fall at the same steps after a resume. ``first``: the process's
    first call, which runs one step alone so that the first loss (and any
    error) comes as soon as the program is compiled.
    """
    cuts, s = [], start
    if first and s < stop:
        cuts.append((s, s + 1))
        s += 1
    while s < stop:
        e = min((s // size + 1) * size, stop)
        cuts.append((s, e))
        s = e
    return cuts


def fit(model: nnx.Module, tx: optax.GradientTransformation, loop: Loop, *, phase: str, epochs: int) -> FitResult:
    """Trains ``model`` in place for ``epochs``; resumes a saved phase.

    Each epoch shuffles with a generator seeded by ``(seed, phase, epoch)``,
    so a resumed run sees exactly the batches an uninterrupted one would.

    Args:
        model: the network (fp32 or qwix-quantized for QAT/QT).
        tx: the optax optimizer.
        loop: data, batch sizes, cadence, tracker, checkpoints, stop flag.
        phase: ``"fp32"`` or ``"quant"``: the prefix of logged keys.
        epochs: epochs to run (0 skips).

    Returns:
        Steps taken and seconds spent training (evaluation excluded),
        including what a resumed run had done before.

    Raises:
        NumericalError: the loss became NaN or inf (the last good checkpoint
            is kept).
        Preempted: a stop was requested; the state was saved first.
    """
    opt = nnx.Optimizer(model, tx, wrt=nnx.Param)
    n = loop.arrays.x_train.shape[0]
    steps_per_epoch = n // loop.batch_size
    k = loop.steps_per_call or steps_per_epoch
    epoch0 = loop.epoch0[phase]
    progress = {"phase": phase, "epoch": 0, "step": 0, "losses": [], "steps": 0, "seconds": 0.0,
                "done": False, "global_epoch": epoch0}
    saved = loop.state.latest_progress()
    if saved is not None and saved["phase"] == phase:
        progress = loop.state.restore(model, opt)
        log.info("[%s] resumed at epoch %d step %d", phase, progress["epoch"] + 1, progress["step"])
    if progress["done"] or epochs <= 0:
        return FitResult(progress["steps"], progress["seconds"])

    def save() -> None:
        loop.state.save(loop.state.next_step(), model, opt, progress)

    first_call = True
    for epoch in range(progress["epoch"] + 1, epochs + 1):
        rng = np.random.default_rng([loop.seed, PHASES.index(phase), epoch])
        perm = rng.permutation(n)[: steps_per_epoch * loop.batch_size]
        perm = jax.device_put(perm.reshape(steps_per_epoch, loop.batch_size).astype(np.int32))
        for start, stop in step_chunks(progress["step"], steps_per_epoch, k, first=first_call):
            first_call = False
            t0 = time.perf_counter()
            losses = np.asarray(train_steps(model, opt, loop.arrays.x_train, loop.arrays.y_train, perm,
                                            np.int32(start), np.int32(stop)))[start:stop]
            dt = time.perf_counter() - t0
            bad = np.flatnonzero(~np.isfinite(losses))
            if bad.size:
                raise NumericalError(
                    f"[{phase}] the training loss is {losses[bad[0]]} at epoch {epoch}, step "
                    f"{start + bad[0] + 1}/{steps_per_epoch}; the last good checkpoint is kept in "
                    f"{loop.state.directory}. Lower optim.lr or set optim.grad_clip_norm."
                )
            progress.update(step=stop, steps=progress["steps"] + stop - start,
                            seconds=progress["seconds"] + dt,
                            losses=progress["losses"] + [float(v) for v in losses])
            if stop < steps_per_epoch and loop.stop.signum is not None:
                save()
                loop.stop.check(f"in {phase} epoch {epoch} at step {stop}/{steps_per_epoch}")
        train_loss = float(np.mean(np.asarray(progress["losses"], np.float32)))
        ev = evaluate(model, loop.arrays, loop.eval_batch_size)
        if not np.isfinite(ev["loss"]):
            raise NumericalError(
                f"[{phase}] the test loss is {ev['loss']} after epoch {epoch}: the parameters hold NaN "
                f"or inf; the last good checkpoint is kept in {loop.state.directory}. Lower optim.lr "
                "or set optim.grad_clip_norm."
            )
        progress.update(epoch=epoch, step=0, losses=[], global_epoch=epoch0 + epoch,
                        done=epoch == epochs)
        loop.tracker.log(
            {
                f"{phase}/train_loss": train_loss,
                f"{phase}/test_loss": ev["loss"],
                f"{phase}/test_accuracy": ev["accuracy"],
                f"{phase}/spike_rate": ev["spike_rate"]["mean"],
                "epoch": epoch0 + epoch,
            },
            step=epoch0 + epoch,
        )
        log.info("[%s] epoch %d/%d  loss %.4f  test acc %.2f%%  spike rate %.3f",
                 phase, epoch, epochs, train_loss, 100 * ev["accuracy"], ev["spike_rate"]["mean"])
        if epoch == epochs or epoch % loop.checkpoint_every == 0 or loop.stop.signum is not None:
            save()
        loop.stop.check(f"after {phase} epoch {epoch}")
    return FitResult(progress["steps"], progress["seconds"])


def calibrate(model: nnx.Module, arrays: Arrays, batches: int, batch_size: int, seed: int) -> int:
    """Runs ``batches`` training batches through a calibration model, then freezes it.

    Returns:
        The number of batches used.
    """
    n = arrays.x_train.shape[0]
    rng = np.random.default_rng([seed, len(PHASES)])
    for _ in range(batches):
        idx = jnp.asarray(rng.choice(n, batch_size, replace=False), jnp.int32)
        calibrate_step(model, arrays.x_train, idx)
    model.set_attributes(disable_quant_stats_update=True, raise_if_not_found=False)
    return batches


# ------------------------------------------------------------- config checks


def check_config(cfg: DictConfig, rules: list[quant.Rule]) -> None:
    """Rejects a configuration before any data is loaded or compiled."""
    mode = cfg.mode.name
    if mode not in MODES:
        raise ConfigError(f"mode.name={mode!r}; valid choices: {list(MODES)}")
    for key, low in (("epochs", 0), ("batch_size", 1), ("eval_batch_size", 1), ("steps_per_call", 0),
                     ("checkpoint_every", 1)):
        value = cfg.trainer[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ConfigError(f"trainer.{key}={value!r} must be an integer >= {low}")
    if mode == "qt" and cfg.mode.bwd_qtype is not None and cfg.mode.bwd_qtype not in quant.ACT_QTYPES:
        raise ConfigError(
            f"mode.bwd_qtype={cfg.mode.bwd_qtype!r}; valid choices: {list(quant.ACT_QTYPES)} or null"
        )
    if mode == "srq" and rules and not any(r.act_qtype for r in rules):
        log.warning("srq with a weights-only recipe: there are no activation scales to calibrate")
    ckpt = cfg.mode.get("fp32_checkpoint")
    if ckpt and not Path(ckpt).exists():
        raise ConfigError(f"mode.fp32_checkpoint={ckpt!r} does not exist")


def check_shapes(model: nnx.Module, batch_rows: list[int]) -> None:
    """Refuses a square layer whose input has as many rows as the layer is wide.

    qwix tells weights from activations by shape; such a layer crashes inside
    qwix ("lhs and rhs cannot be both weights").
    """
    for path, m in nnx.iter_modules(model):
        if isinstance(m, nnx.Linear) and m.in_features == m.out_features and m.in_features in batch_rows:
            name = "/".join(map(str, path))
            raise ConfigError(
                f"layer {name} is {m.in_features}x{m.out_features} and a batch has "
                f"{m.in_features} rows: qwix cannot tell its weight from its input. "
                "Choose another trainer.batch_size / trainer.eval_batch_size."
            )


def _config_diff(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two plain config trees."""
    diffs = []
    for key in sorted(set(old) | set(new)):
        if not prefix and key in _RESUME_FREE_KEYS:
            continue
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += _config_diff(a, b, f"{prefix}{key}.")
        elif a != b:
            diffs.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return diffs


# ------------------------------------------------------------------ the run


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    """Writes JSON atomically (a kill leaves the old file or the new one)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(tracking.clean(payload), indent=2) + "\n")
    os.replace(tmp, path)


def _prepare_dir(cfg: DictConfig, out_dir: Path, resolved: dict) -> dict[str, Any] | None:
    """Checks what ``out_dir`` already holds; returns the metrics of a finished run.

    A directory with another configuration is refused (listing the keys that
    differ); with ``resume=false`` earlier state is cleared instead.
    """
    stored_cfg = out_dir / "config.yaml"
    if not stored_cfg.exists():
        return None
    if not cfg.resume:
        for name in ("metrics.json", "status.json", "history.jsonl", "wandb_id.txt"):
            (out_dir / name).unlink(missing_ok=True)
        shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)
        log.info("resume=false: cleared the earlier state in %s", out_dir)
        return None
    old = OmegaConf.to_container(OmegaConf.load(stored_cfg), resolve=True)
    diffs = _config_diff(old, resolved)
    if diffs:
        raise ConfigError(
            f"{out_dir} holds a run of another configuration ({'; '.join(diffs[:6])}). Use a new "
            "output directory, or resume=false to start this one over."
        )
    status = json.loads((out_dir / "status.json").read_text()) if (out_dir / "status.json").exists() else {}
    if status.get("status") == "ok" and (out_dir / "metrics.json").exists():
        return json.loads((out_dir / "metrics.json").read_text())
    return None


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
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    finished = _prepare_dir(cfg, out_dir, resolved)
    if finished is not None:
        log.info("%s already finished; skipping (resume=false runs it again)", out_dir)
        return finished
    (out_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    status_path = out_dir / "status.json"
    try:
        rules = quant.parse_recipe(OmegaConf.to_container(cfg.quant.rules, resolve=True))
        check_config(cfg, rules)
    except ValueError as e:
        _write_json(status_path, {"status": "failed", "error": f"{type(e).__name__}: {e}"})
        raise
    _write_json(status_path, {"status": "running", "pid": os.getpid(), "started": time.time()})
    CompileStats.register()
    compiles0, compile_s0, hits0 = CompileStats.snapshot()
    t_start = time.perf_counter()

    tracker = None
    try:
        data = build.data(cfg)
        model = build.model(cfg, data.features, data.n_classes)
        bs = min(cfg.trainer.batch_size, len(data.x_train))
        ebs = min(cfg.trainer.eval_batch_size, len(data.x_test))
        check_shapes(model, [1, bs, ebs, bs * data.steps, ebs * data.steps, data.steps])
        sample = jnp.asarray(data.x_train[:1])
        quant.quantize(model, rules, "ptq", sample)  # a rule that matches nothing fails here
        state = checkpoint.TrainState(out_dir / "checkpoints" / "train")
        saved = state.latest_progress()
        tracker = tracking.Tracker.from_config(cfg, out_dir, resolved,
                                               resume_step=saved["global_epoch"] if saved else 0)
        log.info(
            "%s: %d train / %d test, T=%d, F=%d, %d classes | model %s | %s %s",
            data.name, len(data.x_train), len(data.x_test), data.steps, data.features,
            data.n_classes, model.layer_sizes(), cfg.quant.name, cfg.mode.name,
        )
        with stop_on_signals() as stop:
            loop = Loop(Arrays.put(data), bs, ebs, cfg.trainer.steps_per_call, cfg.trainer.checkpoint_every,
                        cfg.seed, tracker, state, stop)
            result = _pipeline(cfg, rules, model, data, sample, loop, out_dir)
        state.close()
    except BaseException as e:
        preempted = isinstance(e, Preempted | KeyboardInterrupt)
        _write_json(status_path, {"status": "preempted" if preempted else "failed",
                                  "error": f"{type(e).__name__}: {e}",
                                  "traceback": traceback.format_exc(limit=20)})
        if not preempted:
            _write_json(out_dir / "metrics.json", {"status": "failed", "error": f"{type(e).__name__}: {e}"})
        if tracker is not None:
            tracker.fail(f"{type(e).__name__}: {e}", preempted=preempted)
        raise
    compiles1, compile_s1, hits1 = CompileStats.snapshot()
    result = {"status": "ok", **result, "run_time_s": time.perf_counter() - t_start,
              "compile_time_s": compile_s1 - compile_s0, "compile_cache_hits": hits1 - hits0,
              # a persistent-cache hit is reported as a (short) compilation too
              "compilations": (compiles1 - compiles0) - (hits1 - hits0)}
    tracker.summary(result)
    if cfg.logger.get("log_checkpoint"):
        tracker.log_checkpoint(out_dir / "checkpoints" / "quant", f"{cfg.quant.name}-{cfg.mode.name}")
    tracker.finish(exit_code=0)
    _write_json(out_dir / "metrics.json", result)
    _write_json(status_path, {"status": "ok"})
    log.info("results\n%s", results_table(result))
    return result


def _pipeline(cfg, rules, model, data, sample, loop: Loop, out_dir: Path) -> dict[str, Any]:
    mode, m = cfg.mode.name, cfg.mode
    steps_per_epoch = len(data.x_train) // loop.batch_size
    fp32_epochs = 0 if mode == "qt" or m.fp32_checkpoint else m.fp32_epochs
    loop.epoch0 = {"fp32": 0, "quant": fp32_epochs}
    fits: list[FitResult] = []
    fp32_eval = None
    ckpts = out_dir / "checkpoints"

    done_path = ckpts / "phases.json"  # steps and seconds of finished phases
    done = json.loads(done_path.read_text()) if done_path.exists() else {}

    def finish_phase(name: str, result: FitResult) -> None:
        fits.append(result)
        done[name] = {"steps": result.steps, "seconds": result.seconds}
        _write_json(done_path, done)

    quant_epochs = {"qt": m.get("epochs", 0), "qat": m.get("quant_epochs", 0)}.get(mode, 0)
    if mode == "qt":
        trained = quant.quantize(model, rules, "qt", sample, bwd_qtype=m.bwd_qtype)
        tx = build.optimizer(cfg, quant_epochs * steps_per_epoch)
        finish_phase("quant", fit(trained, tx, loop, phase="quant", epochs=quant_epochs))
    else:
        if (ckpts / "fp32").exists():
            checkpoint.restore(ckpts / "fp32", model)
            fits.append(FitResult(**done.get("fp32", {"steps": 0, "seconds": 0.0})))
        elif m.fp32_checkpoint:
            checkpoint.restore(Path(m.fp32_checkpoint), model)
            log.info("fp32 weights restored from %s", m.fp32_checkpoint)
        else:
            tx = build.optimizer(cfg, m.fp32_epochs * steps_per_epoch)
            finish_phase("fp32", fit(model, tx, loop, phase="fp32", epochs=m.fp32_epochs))
        fp32_eval = evaluate(model, loop.arrays, loop.eval_batch_size)
        if not (ckpts / "fp32").exists():
            checkpoint.save(ckpts / "fp32", model)
        loop.stop.check("after the fp32 phase")
        if mode == "qat":
            trained = quant.quantize(model, rules, "qat", sample)
            tx = build.optimizer(cfg, quant_epochs * steps_per_epoch, lr_scale=m.lr_scale)
            finish_phase("quant", fit(trained, tx, loop, phase="quant", epochs=quant_epochs))
        elif mode == "srq":
            trained = quant.quantize(model, rules, "calibrate", sample)
            if (ckpts / "calibrated").exists():
                checkpoint.restore(ckpts / "calibrated", trained)
                trained.set_attributes(disable_quant_stats_update=True, raise_if_not_found=False)
            else:
                used = calibrate(trained, loop.arrays, m.calib_batches, loop.batch_size, cfg.seed)
                checkpoint.save(ckpts / "calibrated", trained)
                log.info("calibrated static activation scales on %d batches of %d", used, loop.batch_size)
        else:
            trained = model

    deployed = quant.quantize(trained, rules, "srq" if mode == "srq" else "ptq", sample)
    q_eval = evaluate(deployed, loop.arrays, loop.eval_batch_size)
    checkpoint.save(ckpts / "quant", deployed)

    train_time = sum(f.seconds for f in fits)
    train_steps_done = sum(f.steps for f in fits)
    n_layers = len(q_eval["spike_rate"]) - 1
    layer_rates = np.asarray([q_eval["spike_rate"][f"layer_{i}"] for i in range(n_layers)])
    fp32_acc = fp32_eval["accuracy"] if fp32_eval else None
    return {
        "recipe": cfg.quant.name,
        "mode": mode,
        "fp32_accuracy": fp32_acc,
        "quant_accuracy": q_eval["accuracy"],
        "accuracy_drop": None if fp32_acc is None else fp32_acc - q_eval["accuracy"],
        "quant_loss": q_eval["loss"],
        "weight_bytes_fp32": metrics.weight_bytes(model),
        "weight_bytes_quant": metrics.weight_bytes(deployed),
        "bits_per_weight": metrics.bits_per_weight(deployed),
        "spike_rate": q_eval["spike_rate"],
        "fp32_spike_rate": fp32_eval["spike_rate"] if fp32_eval else None,
        "synaptic_ops_per_sample": metrics.synaptic_ops(
            float(np.mean(data.x_test)), layer_rates, model.synapses(), data.steps
        ),
        "train_time_s": train_time,
        "train_steps": train_steps_done,
        "steps_per_s": train_steps_done / train_time if train_time > 0 else None,
        "epochs": loop.epoch0["quant"] + quant_epochs,
    }


def load_deployed(run_dir: Path) -> tuple[DictConfig, nnx.Module]:
    """The config and the deployed integer network of a finished run.

    Args:
        run_dir: a run directory (with ``config.yaml`` and ``checkpoints/quant``).

    Returns:
        ``(cfg, model)``: each quantized weight is a qwix ``QArray`` with
        integer ``qvalue`` codes ``[in, out]`` and float ``scale`` ``[1, out]``.
    """
    run_dir = Path(run_dir)
    cfg = OmegaConf.load(run_dir / "config.yaml")
    rules = quant.parse_recipe(OmegaConf.to_container(cfg.quant.rules, resolve=True))
    data = build.data(cfg)
    model = build.model(cfg, data.features, data.n_classes)
    sample = jnp.asarray(data.x_train[:1])
    if cfg.mode.name == "srq":
        template = quant.quantize(quant.quantize(model, rules, "calibrate", sample), rules, "srq", sample)
    else:
        template = quant.quantize(model, rules, "ptq", sample)
    return cfg, checkpoint.restore(run_dir / "checkpoints" / "quant", template)


def results_table(result: dict[str, Any]) -> str:
    """Formats the final console table of a run."""

    def fmt(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    rows = [
        ("recipe / mode", f"{result['recipe']} / {result['mode']}"),
        ("fp32 accuracy", fmt(result["fp32_accuracy"])),
        ("quant accuracy", fmt(result["quant_accuracy"])),
        ("accuracy drop", fmt(result["accuracy_drop"])),
        ("weight bytes fp32", fmt(result["weight_bytes_fp32"])),
        ("weight bytes quant", fmt(result["weight_bytes_quant"])),
        ("bits per weight", fmt(result["bits_per_weight"])),
        ("spike rate (mean)", fmt(result["spike_rate"]["mean"])),
        ("synaptic ops / sample", fmt(result["synaptic_ops_per_sample"])),
        ("train time (s)", fmt(result["train_time_s"])),
        ("steps / s", fmt(result["steps_per_s"])),
    ]
    width = max(len(k) for k, _ in rows)
    line = "+" + "-" * (width + 2) + "+" + "-" * 24 + "+"
    body = "\n".join(f"| {k:<{width}} | {v:<22} |" for k, v in rows)
    return f"{line}\n{body}\n{line}"
