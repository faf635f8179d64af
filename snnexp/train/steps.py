"""The pure jitted steps: loss, training, evaluation and calibration.

No logging, no config reads: the Python loop (``snnexp.train.loop``) owns the
cadence. Data stays on the device; a step gathers its batch by index.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from snnexp.models.time_loop import readout_logits


@dataclass(frozen=True)
class Augment:
    """The randomness of training alone (``trainer.augment``); the evaluation never sees it.

    Transforms of each training batch, and dropout on the hidden spikes. A
    static argument of the jitted steps: with all off the steps compile
    exactly what they did without it.
    """

    shift: int = 0  # each sample moves by s ~ U{-shift .. shift} time steps, the steps it leaves zero-filled
    noise: float = 0.0  # standard deviation of Gaussian noise added to every input value
    dropout: float = 0.0  # rate of dropout on each hidden layer's spikes (one mask per sequence)

    def __bool__(self) -> bool:
        return self.shift > 0 or self.noise > 0.0 or self.dropout > 0.0


_DROPOUT_STREAM = 1 << 30  # folded into a step's key for the dropout masks; the batch transforms split it


def dropout_key(key: jax.Array | None, k: jax.Array, augment: Augment) -> jax.Array | None:
    """Step ``k``'s dropout key, a stream of the epoch's key apart from the batch transforms' (``None``: no dropout)."""
    if augment.dropout <= 0.0:
        return None
    if key is None:
        raise ValueError(f"trainer.augment={augment} needs the epoch's PRNG key; none was given")
    return jax.random.fold_in(jax.random.fold_in(key, k), _DROPOUT_STREAM)



NO_AUGMENT = Augment()


def augment_batch(x: jax.Array, key: jax.Array | None, k: jax.Array, augment: Augment) -> jax.Array:
    """``x [B, T, F]``, step ``k``'s batch, with each sample shifted in time and noised as ``augment`` says.

    The randomness is ``fold_in(key, k)``: the epoch's key and the step, so a
    resumed epoch draws what an uninterrupted one would.

    A sample moved by ``s`` steps holds ``x[t - s]`` at step ``t`` and 0
    where ``t - s`` falls outside ``0 .. T-1`` (0 is the mean of an
    encoded analog input and "no spike" for a spike train).
    """
    if augment.shift <= 0 and augment.noise <= 0.0:
        return x
    if key is None:
        raise ValueError(f"trainer.augment={augment} needs the epoch's PRNG key; none was given")
    k_shift, k_noise = jax.random.split(jax.random.fold_in(key, k))
    if augment.shift > 0:
        b, t = x.shape[0], x.shape[1]
        s = jax.random.randint(k_shift, (b, 1), -augment.shift, augment.shift + 1)
        src = jnp.arange(t)[None, :] - s  # [B, T]
        inside = (src >= 0) & (src < t)
        x = jnp.take_along_axis(x, jnp.clip(src, 0, t - 1)[..., None], axis=1)
        x = jnp.where(inside[..., None], x, jnp.zeros((), x.dtype))
    if augment.noise > 0.0:
        x = x + augment.noise * jax.random.normal(k_noise, x.shape, x.dtype)
    return x


def _forward(model: nnx.Module, x: jax.Array, dropout: float, key: jax.Array | None):
    """``model(x)``, with dropout on the hidden spikes where ``key`` is given."""
    return model(x) if key is None else model(x, dropout=dropout, key=key)


def loss_and_logits(model: nnx.Module, x: jax.Array, y: jax.Array, dropout: float = 0.0,
                    key: jax.Array | None = None):
    """Cross-entropy on the LI readout (``model.readout``: mean, max or last step).

    Args:
        model: the network.
        x: inputs ``[B, T, F]``.
        y: labels ``[B]``.
        dropout: rate of dropout on the hidden spikes (training), used where ``key`` is given.
        key: the dropout masks' PRNG key, or ``None`` (no dropout).

    Returns:
        ``(mean loss, (logits [B, C], rates [B, T, L]))``.
    """
    readout, rates = _forward(model, x, dropout, key)
    logits = readout_logits(readout, getattr(model, "readout_mode", "mean"))
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return loss, (logits, rates)


def distillation_loss(logits: jax.Array, teacher_logits: jax.Array, y: jax.Array, weight: jax.Array | float,
                      temperature: jax.Array | float) -> jax.Array:
    """Knowledge distillation (Hinton, Vinyals & Dean 2015): cross-entropy blended with a softened KL term.

    ``(1 - w) * CE(y, student) + w * T**2 * KL(softmax(teacher / T) || softmax(student / T))``,
    averaged over the batch. ``T**2`` keeps the soft term's gradient on the
    scale of the hard one as ``T`` changes. At ``w = 0`` it is the
    cross-entropy of ``loss_and_logits`` exactly.

    Args:
        logits: the student's class scores ``[B, C]``.
        teacher_logits: the teacher's class scores ``[B, C]`` (no gradient is taken through them).
        y: labels ``[B]``.
        weight: ``w`` in ``[0, 1]``, a scalar.
        temperature: ``T > 0``, a scalar.

    Returns:
        The mean loss, a scalar.
    """
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    log_student = jax.nn.log_softmax(logits / temperature, axis=-1)
    log_teacher = jax.nn.log_softmax(jax.lax.stop_gradient(teacher_logits) / temperature, axis=-1)
    kl = jnp.sum(jnp.exp(log_teacher) * (log_teacher - log_student), axis=-1)
    return ((1.0 - weight) * ce + weight * temperature**2 * kl).mean()


def distill_loss_and_logits(model: nnx.Module, x: jax.Array, y: jax.Array, teacher_logits: jax.Array,
                            weight: jax.Array | float, temperature: jax.Array | float, dropout: float = 0.0,
                            key: jax.Array | None = None):
    """``loss_and_logits`` with the loss of ``distillation_loss`` against ``teacher_logits [B, C]``.

    Returns:
        ``(mean loss, (logits [B, C], rates [B, T, L]))``.
    """
    readout, rates = _forward(model, x, dropout, key)
    logits = readout_logits(readout, getattr(model, "readout_mode", "mean"))
    return distillation_loss(logits, teacher_logits, y, weight, temperature), (logits, rates)


@functools.partial(nnx.jit, static_argnames=("augment",))
def train_steps(model: nnx.Module, opt: nnx.Optimizer, xs: jax.Array, ys: jax.Array, perm: jax.Array,
                start: jax.Array, stop: jax.Array, key: jax.Array | None = None,
                augment: Augment = NO_AUGMENT) -> jax.Array:
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
        key: the epoch's PRNG key; step ``k`` augments its batch with ``fold_in(key, k)``
            and draws its dropout masks from a stream of it (``dropout_key``).
        augment: the batch transforms and the dropout rate (static).

    Returns:
        Losses ``[S]``: step ``k``'s loss at ``k`` for the steps run, 0 elsewhere
        (fetched once per call).
    """

    def step(k, carry):
        model, opt, losses = carry
        idx = perm[k]
        x = augment_batch(xs[idx], key, k, augment)
        grad_fn = nnx.value_and_grad(loss_and_logits, has_aux=True)
        (loss, _), grads = grad_fn(model, x, ys[idx], augment.dropout, dropout_key(key, k, augment))
        opt.update(model, grads)
        return model, opt, losses.at[k].set(loss)

    _, _, losses = nnx.fori_loop(start, stop, step, (model, opt, jnp.zeros(perm.shape[0], jnp.float32)))
    return losses


@functools.partial(nnx.jit, static_argnames=("augment",))
def distill_steps(model: nnx.Module, opt: nnx.Optimizer, teacher: nnx.Module, xs: jax.Array, ys: jax.Array,
                  perm: jax.Array, start: jax.Array, stop: jax.Array, weight: jax.Array,
                  temperature: jax.Array, key: jax.Array | None = None,
                  augment: Augment = NO_AUGMENT) -> jax.Array:
    """``train_steps`` with the loss of ``distillation_loss`` against a frozen ``teacher``.

    The teacher runs once per batch, its whole time loop in one forward pass,
    as a graph definition and state split off outside the loop: it is no
    argument of the gradient, not in ``opt`` and never updated. ``weight``
    and ``temperature`` are traced, so one compiled program serves a phase
    whatever their values.

    Args:
        model: the student, updated in place.
        opt: its optimizer, updated in place.
        teacher: the frozen network whose readout gives the soft targets.
        xs: all training inputs ``[N, T, F]``; ys: labels ``[N]``.
        perm: the epoch's batch indices ``[S, B]``.
        start: first step to run, int32 scalar; stop: one past the last.
        weight: the distillation weight ``w``, float32 scalar.
        temperature: ``T``, float32 scalar.
        key: the epoch's PRNG key; augment: the batch transforms (static), as in ``train_steps``
            (the teacher sees the augmented batch too).

    Returns:
        Losses ``[S]``: step ``k``'s loss at ``k`` for the steps run, 0 elsewhere.
    """
    graphdef, frozen = nnx.split(teacher)
    readout = getattr(teacher, "readout_mode", "mean")

    def step(k, carry):
        model, opt, losses = carry
        idx = perm[k]
        x, y = augment_batch(xs[idx], key, k, augment), ys[idx]
        trace, _ = nnx.merge(graphdef, frozen)(x)
        targets = jax.lax.stop_gradient(readout_logits(trace, readout))
        grad_fn = nnx.value_and_grad(distill_loss_and_logits, has_aux=True)
        (loss, _), grads = grad_fn(model, x, y, targets, weight, temperature, augment.dropout,
                                   dropout_key(key, k, augment))
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
    logits = readout_logits(readout, getattr(model, "readout_mode", "mean"))
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    correct = ((jnp.argmax(logits, -1) == y) * mask).sum()
    rate_sum = (rates.mean(axis=1) * mask[:, None]).sum(axis=0)
    return correct, (losses * mask).sum(), rate_sum


@nnx.jit
def calibrate_step(model: nnx.Module, xs: jax.Array, idx: jax.Array) -> None:
    """Updates qwix's static activation statistics on one batch ``xs[idx]``."""
    model(xs[idx], loop="carry")
