"""The training loop: ``fit`` one phase, ``evaluate``, ``calibrate``, and the epoch's batches.

The loop owns the cadence the jitted steps (``snnexp.train.steps``) must not:
shuffling, evaluation, logging, checkpoints and stop requests. Nothing
finished is lost: the training state is saved every ``checkpoint_every``
epochs, at the end of a phase and on SIGTERM/SIGINT at the next step
boundary; a rerun continues where the run stopped (bit-identical on CPU),
because each epoch's shuffle is seeded by ``(seed, phase, epoch)``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from snnexp import checkpoint, tracking
from snnexp.data import Dataset
from snnexp.errors import NumericalError
from snnexp.progress import EpochBar
from snnexp.train.signals import StopFlag
from snnexp.train.steps import NO_AUGMENT, Augment, calibrate_step, distill_steps, eval_step, train_steps

log = logging.getLogger(__name__)

PHASES = ("fp32", "quant")
# QAT's progressive stages (``mode.stages``) are phases ``stage1``, ``stage2``, ...
STAGE = "stage"


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


@dataclass(frozen=True)
class LoopSettings:
    """The ``trainer`` group, checked (``snnexp.build.loop_settings``)."""

    batch_size: int
    eval_batch_size: int
    steps_per_call: int  # optimizer steps per jitted call; 0 = the whole epoch
    checkpoint_every: int  # epochs between training-state checkpoints
    seed: int
    augment: Augment = NO_AUGMENT  # random transforms of the training batches (every training phase)

    def fit(self, n_train: int, n_test: int) -> LoopSettings:
        """These settings with batch sizes no larger than the splits."""
        return dataclasses.replace(self, batch_size=min(self.batch_size, n_train),
                                   eval_batch_size=min(self.eval_batch_size, n_test))


@dataclass
class Trainer:
    """What every training phase of a run shares: data, settings, record, checkpoints, stop flag."""

    arrays: Arrays
    settings: LoopSettings
    tracker: tracking.Tracker
    state: checkpoint.TrainState
    stop: StopFlag


@dataclass
class Progress:
    """Where a phase stands; saved with every training-state checkpoint (as JSON)."""

    phase: str
    epoch: int = 0  # epochs of this phase finished
    step: int = 0  # steps of the current epoch done
    losses: list[float] = field(default_factory=list)  # losses of the current epoch so far
    steps: int = 0  # steps of this phase done
    seconds: float = 0.0  # seconds spent in those steps
    done: bool = False  # the phase has run all its epochs
    global_epoch: int = 0  # epochs of the whole run finished (the W&B step)

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> Progress:
        """The progress of a saved record (a plain dict)."""
        return cls(**{f.name: record[f.name] for f in dataclasses.fields(cls) if f.name in record})

    def to_json(self) -> dict[str, Any]:
        """A plain dict for the checkpoint."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Distillation:
    """Soft targets for a training phase: the frozen ``teacher``'s readout (``steps.distillation_loss``)."""

    teacher: nnx.Module  # never trained: not in the phase's optimizer, no gradient into it
    weight: float  # w in (0, 1]: the weight of the soft term
    temperature: float  # T > 0


@dataclass
class FitResult:
    """What a training phase took."""

    steps: int
    seconds: float


def stage_phase_name(k: int) -> str:
    """The phase name of QAT's ``k``-th progressive stage (1-based): ``stage1``, ``stage2``, ..."""
    return f"{STAGE}{k}"


def phase_index(phase: str) -> int:
    """The number that seeds a phase's shuffles: ``fp32`` 0, ``quant`` 1, ``stage<k>`` ``2 + k``.

    2 belongs to the calibration batches of SRQ (``calibrate``).

    Raises:
        ValueError: naming the phases there are.
    """
    if phase in PHASES:
        return PHASES.index(phase)
    k = phase.removeprefix(STAGE)
    if phase.startswith(STAGE) and k.isdigit() and int(k) >= 1:
        return len(PHASES) + int(k)
    raise ValueError(f"phase={phase!r}; valid choices: {list(PHASES)} or {STAGE}<k> (k >= 1)")


def epoch_perm(seed: int, phase: str, epoch: int, n: int, batch_size: int) -> np.ndarray:
    """The batches of one epoch: sample indices ``[n // batch_size, batch_size]``, int32.

    Seeded by ``(seed, phase, epoch)`` alone, so a resumed run sees exactly the
    batches an uninterrupted one would. The last ``n % batch_size`` samples
    of the shuffle are left out of that epoch.
    """
    steps = n // batch_size
    rng = np.random.default_rng([seed, phase_index(phase), epoch])
    return rng.permutation(n)[: steps * batch_size].reshape(steps, batch_size).astype(np.int32)


def epoch_key(seed: int, phase: str, epoch: int) -> jax.Array:
    """The PRNG key of one epoch's batch augmentation, seeded by ``(seed, phase, epoch)`` like its shuffle."""
    return jax.random.key_data(jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), phase_index(phase)),
                                                  epoch))


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


def evaluate(model: nnx.Module, arrays: Arrays, batch_size: int) -> dict[str, Any]:
    """Accuracy, loss and per-layer spike rates on the whole test set.

    The last batch is padded and masked, so no sample is dropped and every
    batch has one shape (one compilation).

    Returns:
        ``{"accuracy", "loss", "spike_rate": {"layer_i", ..., "mean"}}``.
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


def _nan_error(phase: str, what: str, where: str, trainer: Trainer) -> NumericalError:
    return NumericalError(
        f"[{phase}] the {what} {where}; the last good checkpoint is kept in {trainer.state.directory}. "
        "Lower optim.lr or set optim.grad_clip_norm."
    )


def _commit_like_the_outputs(model: nnx.Module, opt: nnx.Optimizer) -> None:
    """Commits the optimizer's fresh arrays to their device when the model's are (restored ones are).

    The step's outputs are committed arrays. Inputs that mix committed
    (restored from a checkpoint) and uncommitted (a fresh optimizer count)
    arrays compile the step once for the first call and again for the next;
    all uncommitted (a fresh network) or all committed compile it once.
    """
    if any(getattr(a, "committed", False) for a in jax.tree.leaves(nnx.state(model))):
        nnx.update(opt, jax.tree.map(lambda a: jax.device_put(a, a.sharding), nnx.state(opt)))


def fit(model: nnx.Module, tx: optax.GradientTransformation, trainer: Trainer, *, phase: str, epochs: int,
        epoch0: int = 0, distill: Distillation | None = None) -> FitResult:
    """Trains ``model`` in place for ``epochs``; resumes a saved phase.

    Args:
        model: the network (fp32 or qwix-quantized for QAT/QT).
        tx: the optax optimizer.
        trainer: data, settings, tracker, checkpoints, stop flag.
        phase: ``"fp32"``, ``"quant"`` or a QAT stage (``"stage1"``, ...): the prefix of logged keys.
        epochs: epochs to run (0 skips).
        epoch0: epochs of the run before this phase (the W&B step offset).
        distill: soft targets from a frozen teacher (``distill_steps``), or None: cross-entropy alone
            (``train_steps``).

    Returns:
        Steps taken and seconds spent training (evaluation excluded),
        including what a resumed run had done before.

    Raises:
        NumericalError: the loss became NaN or inf (the last good checkpoint
            is kept).
        Preempted: a stop was requested; the state was saved first.
    """
    s = trainer.settings
    opt = nnx.Optimizer(model, tx, wrt=nnx.Param)
    n = trainer.arrays.x_train.shape[0]
    steps_per_epoch = n // s.batch_size
    k = s.steps_per_call or steps_per_epoch
    progress = Progress(phase, global_epoch=epoch0)
    saved = trainer.state.latest_progress()
    if saved is not None and saved["phase"] == phase:
        progress = Progress.from_json(trainer.state.restore(model, opt))
        log.info("[%s] resumed at epoch %d step %d", phase, progress.epoch + 1, progress.step)
    if progress.done or epochs <= 0:
        return FitResult(progress.steps, progress.seconds)
    _commit_like_the_outputs(model, opt)

    def save() -> None:
        trainer.state.save(trainer.state.next_step(), model, opt, progress.to_json())

    xs, ys = trainer.arrays.x_train, trainer.arrays.y_train
    if distill is None:
        def run_steps(perm: jax.Array, start: np.int32, stop: np.int32, key: jax.Array) -> jax.Array:
            return train_steps(model, opt, xs, ys, perm, start, stop, key, s.augment)
    else:
        weight, temperature = np.float32(distill.weight), np.float32(distill.temperature)

        def run_steps(perm: jax.Array, start: np.int32, stop: np.int32, key: jax.Array) -> jax.Array:
            return distill_steps(model, opt, distill.teacher, xs, ys, perm, start, stop, weight, temperature,
                                 key, s.augment)

    first_call = True
    for epoch in range(progress.epoch + 1, epochs + 1):
        t_epoch = time.perf_counter()
        perm = jax.device_put(epoch_perm(s.seed, phase, epoch, n, s.batch_size))
        key = epoch_key(s.seed, phase, epoch) if s.augment else None
        bar = EpochBar(phase, epoch, epochs, steps_per_epoch, progress.step)
        try:
            for start, stop in step_chunks(progress.step, steps_per_epoch, k, first=first_call):
                if first_call:
                    log.info("[%s] compiling the training step (the first call runs one step)", phase)
                t0 = time.perf_counter()
                losses = np.asarray(run_steps(perm, np.int32(start), np.int32(stop), key))[start:stop]
                dt = time.perf_counter() - t0
                if first_call:
                    log.info("[%s] first step done in %.1f s", phase, dt)
                    first_call = False
                bad = np.flatnonzero(~np.isfinite(losses))
                if bad.size:
                    raise _nan_error(phase, "training loss", f"is {losses[bad[0]]} at epoch {epoch}, step "
                                     f"{start + bad[0] + 1}/{steps_per_epoch}", trainer)
                progress.step = stop
                progress.steps += stop - start
                progress.seconds += dt
                progress.losses += [float(v) for v in losses]
                bar.update(stop, float(losses[-1]), (stop - start) / max(dt, 1e-9))
                if stop < steps_per_epoch and trainer.stop.signum is not None:
                    save()
                    trainer.stop.check(f"in {phase} epoch {epoch} at step {stop}/{steps_per_epoch}")
        finally:
            bar.close()
        t_train = time.perf_counter() - t_epoch
        train_loss = float(np.mean(np.asarray(progress.losses, np.float32)))
        ev = evaluate(model, trainer.arrays, s.eval_batch_size)
        t_eval = time.perf_counter() - t_epoch - t_train
        if not np.isfinite(ev["loss"]):
            raise _nan_error(phase, "test loss", f"is {ev['loss']} after epoch {epoch}: the parameters hold "
                             "NaN or inf", trainer)
        progress.epoch, progress.step, progress.losses = epoch, 0, []
        progress.global_epoch, progress.done = epoch0 + epoch, epoch == epochs
        trainer.tracker.log(
            {
                f"{phase}/train_loss": train_loss,
                f"{phase}/test_loss": ev["loss"],
                f"{phase}/test_accuracy": ev["accuracy"],
                f"{phase}/spike_rate": ev["spike_rate"]["mean"],
                "epoch": epoch0 + epoch,
            },
            step=epoch0 + epoch,
        )
        log.info("[%s] epoch %d/%d  loss %.4f  test acc %.2f%%  spike rate %.3f  %.2f s (train %.2f s, eval %.2f s)",
                 phase, epoch, epochs, train_loss, 100 * ev["accuracy"], ev["spike_rate"]["mean"],
                 t_train + t_eval, t_train, t_eval)
        if epoch == epochs or epoch % s.checkpoint_every == 0 or trainer.stop.signum is not None:
            save()
        trainer.stop.check(f"after {phase} epoch {epoch}")
    return FitResult(progress.steps, progress.seconds)


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
