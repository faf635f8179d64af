"""What every model shares: the three ways to run its time steps, the LI readout, dropout masks.

``TimeLoop`` names them (see ``snnexp.models``): ``scan`` for training and
evaluation, ``unrolled`` for qwix's first call, ``carry`` for static-range
calibration (the only loop in which qwix's ``QuantStat`` updates).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
from flax import nnx
from spyx.nn import LI

TimeLoop = Literal["scan", "unrolled", "carry"]
READOUTS = ("mean", "max", "last")  # how the LI membrane over time becomes the class scores


def check_readout(readout: str) -> str:
    """Returns ``readout``; ``ValueError`` naming the choices for any other."""
    if readout not in READOUTS:
        raise ValueError(f"model.readout={readout!r}; valid choices: {', '.join(READOUTS)}")
    return readout


def readout_logits(trace: jax.Array, readout: str) -> jax.Array:
    """Class scores ``[B, C]`` from the LI membrane ``[B, T, C]``: its ``mean``, ``max`` or ``last`` step.

    All three are exact under quantization: no arithmetic beyond the membrane's.
    """
    if readout == "max":
        return trace.max(axis=1)
    if readout == "last":
        return trace[:, -1]
    return trace.mean(axis=1)
NeuronFactory = Callable[..., nnx.Module]


def delay_line(x: jax.Array, taps: int, stride: int) -> jax.Array:
    """Every input channel at each of its delays: a causal, strided temporal convolution's input.

    The float network, the integer network and its QAT grid all feed ``fc/0``
    this (on floats or on integer input codes alike: a delay only moves values).

    Args:
        x: inputs ``[B, T, F]``.
        taps: delays per channel ``D`` (1: ``x`` itself).
        stride: steps ``s`` between two delays.

    Returns:
        ``[B, T, D * F]``; channels ``j * F .. (j + 1) * F - 1`` hold the input
        delayed by ``j * s`` steps, zero before the sequence starts.
    """
    if taps == 1:
        return x
    t = x.shape[1]
    return jnp.concatenate([jnp.pad(x, ((0, 0), (j * stride, 0), (0, 0)))[:, :t] for j in range(taps)], axis=-1)


def check_loop(loop: str) -> None:
    """Raises ``ValueError`` naming the choices for an unknown ``loop``."""
    if loop not in ("scan", "unrolled", "carry"):
        raise ValueError(f"loop={loop!r}; valid choices: scan, unrolled, carry")


def run_time(model: nnx.Module, step: Callable, state, cur, loop: TimeLoop):
    """Runs ``step(state, cur_t) -> (state, out_t)`` over the leading axis of ``cur``.

    The three loops of a model's ``__call__`` (see ``snnexp.models``):
    ``scan`` closes over the model, ``unrolled`` is a Python loop (qwix's first
    call), ``carry`` scans with the model in the carry (static-range
    calibration). ``step`` must be a method of ``model``; it is looked up by
    name on the carried model in ``carry``.

    Returns:
        The outputs of every step, stacked on a leading time axis.
    """
    check_loop(loop)
    if loop == "scan":
        _, outs = jax.lax.scan(step, state, cur)
        return outs
    if loop == "unrolled":
        t = jax.tree.leaves(cur)[0].shape[0]
        per_step = []
        for k in range(t):
            state, out = step(state, jax.tree.map(lambda a, k=k: a[k], cur))
            per_step.append(out)
        return jax.tree.map(lambda *a: jnp.stack(a), *per_step)
    name = step.__name__

    @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=(nnx.Carry, 0))
    def body(carry, cur_t):
        m, st = carry
        st, out = getattr(m, name)(st, cur_t)
        return (m, st), out

    _, outs = body((model, state), cur)
    return outs


def li_readout(readout: nnx.Linear, li: LI, spikes: jax.Array) -> jax.Array:
    """Readout projection over all ``T*B`` rows at once, then the LI scan.

    Args:
        readout: the output projection ``[D, n_out]``.
        li: the leaky-integrator neuron.
        spikes: last-layer spikes ``[T, B, D]``.

    Returns:
        The LI membrane ``[B, T, n_out]``.
    """
    t, b, d = spikes.shape
    drive = readout(spikes.reshape(t * b, d)).reshape(t, b, -1)

    def integrate(v, x):
        out, v = li(x, v)
        return v, out

    _, out = jax.lax.scan(integrate, li.initial_state(b), drive)
    return jnp.swapaxes(out, 0, 1)


def dropout_masks(key: jax.Array | None, rate: float, batch: int, widths: Sequence[int], dtype: Any,
                  steps: int) -> tuple[jax.Array, ...]:
    """Variational dropout masks of the hidden spikes: one per sequence and neuron, the same at every step.

    Args:
        key: the PRNG key (one per training step).
        rate: the fraction dropped, in ``[0, 1)``.
        batch: ``B``; widths: ``H_i`` of each hidden layer; dtype: the spikes' dtype.
        steps: ``T``, the masks' leading axis (``run_time`` scans over it).

    Returns:
        ``keep[i] [T, B, H_i]``: 0 where a spike is dropped, ``1 / (1 - rate)`` where it is kept.

    Raises:
        ValueError: ``rate`` outside ``[0, 1)`` or no ``key``.
    """
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"dropout={rate!r} must be in [0, 1)")
    if key is None:
        raise ValueError(f"dropout={rate!r} needs a PRNG key; none was given")
    keep = []
    for i, h in enumerate(widths):
        kept = jax.random.bernoulli(jax.random.fold_in(key, i), 1.0 - rate, (batch, h))
        keep.append(jnp.broadcast_to(kept.astype(dtype) / (1.0 - rate), (steps, batch, h)))
    return tuple(keep)
