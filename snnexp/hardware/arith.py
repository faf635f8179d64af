"""The fixed-point operations of an integer neuron, exact in int32 and fake-quantized in float.

Two implementations of one specification (docs/hardware.md):

* ``IntOps``: the deployed network, int32 arrays, exact (the decay multiply
  is split so that no product leaves int32);
* ``SteOps``: QAT/QT fine-tuning, float32 arrays holding integer values;
  the forward pass takes the same grid, the gradient is that of the float
  operation (straight-through), as in snnTorch's ``state_quant`` and SQUAT.

``neuron_step`` is the one neuron update both use; ``snnexp.reference``
re-implements it in NumPy from the docs alone.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from snnexp.hardware.profiles import Overflow, Profile


def bounds(bits: int) -> tuple[int, int]:
    """``(lo, hi)`` of a two's-complement integer of ``bits`` bits."""
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


@dataclasses.dataclass(frozen=True)
class Overflowed:
    """The result of an overflow rule, and which elements were past the width (int32 0/1, ``x``'s shape)."""

    value: jax.Array
    count: jax.Array


class IntOps:
    """Exact int32 arithmetic of the deployed network."""

    def __init__(self, profile: Profile):
        self.p = profile

    def fit(self, x: jax.Array, bits: int, rule: Overflow) -> Overflowed:
        """Saturates or wraps ``x`` into ``bits`` bits; marks the elements out of range.

        The marks stay elementwise (summed once after the time loop), so the
        loop body stays one fused elementwise computation.
        """
        lo, hi = bounds(bits)
        out = ((x < lo) | (x > hi)).astype(jnp.int32)
        if rule == "saturate":
            value = jnp.clip(x, lo, hi)
        else:
            value = ((x - lo) & (2**bits - 1)) + lo
        return Overflowed(value, out)

    def decay(self, v: jax.Array, m: jax.Array) -> jax.Array:
        """``v`` after one step of leak with the integer decay ``m`` (per neuron)."""
        k = self.p.decay_bits
        if self.p.decay == "multiply":
            a = jnp.abs(v)
            hi, lo = a >> k, a & (2**k - 1)
            mag = hi * m + ((lo * m) >> k)  # == (|v| * m) >> k, no product past 2**30
            return jnp.where(v < 0, -mag, mag)
        d = jax.lax.shift_right_arithmetic(v, jnp.broadcast_to(m, v.shape).astype(v.dtype))
        d = jnp.where((d == 0) & (v != 0), jnp.sign(v), d)
        return v - d

    def spike(self, v: jax.Array, theta: jax.Array, unit: jax.Array) -> jax.Array:
        """``1`` where ``v > theta``, as the state's dtype."""
        return (v > theta).astype(v.dtype)

    def to_state(self, a: jax.Array) -> jax.Array:
        """The accumulated input ``a`` in state units (shifted left by ``shift``)."""
        return a << self.p.shift


class SteOps(IntOps):
    """The same grid on float32 values, with straight-through gradients (QAT/QT)."""

    def __init__(self, profile: Profile, surrogate: Any):
        super().__init__(profile)
        self.surrogate = surrogate

    def fit(self, x: jax.Array, bits: int, rule: Overflow) -> Overflowed:
        """Saturates (clip, zero gradient outside) or wraps (identity gradient) ``x`` into ``bits`` bits."""
        lo, hi = bounds(bits)
        if rule == "saturate":
            value = jnp.clip(x, lo, hi)
        else:
            value = x + jax.lax.stop_gradient(jnp.mod(x - lo, 2.0**bits) + lo - x)
        return Overflowed(value, ((x < lo) | (x > hi)).astype(jnp.int32))

    def decay(self, v: jax.Array, m: jax.Array) -> jax.Array:
        """The integer leak forward; the gradient of ``beta * v`` with the decay ``m`` stands for."""
        k = self.p.decay_bits
        if self.p.decay == "multiply":
            beta = m / 2.0**k
            exact = jnp.sign(v) * jnp.floor(jnp.abs(v) * beta)
        else:
            beta = 1.0 - 2.0 ** (-m.astype(jnp.float32))
            d = jnp.floor(v * 2.0 ** (-m.astype(jnp.float32)))
            d = jnp.where((d == 0) & (v != 0), jnp.sign(v), d)
            exact = v - d
        smooth = beta * v
        return smooth + jax.lax.stop_gradient(exact - smooth)

    def spike(self, v: jax.Array, theta: jax.Array, unit: jax.Array) -> jax.Array:
        """Heaviside forward on the integer grid; the surrogate sees ``v - theta`` in float units."""
        return self.surrogate((v - theta) * unit)

    def to_state(self, a: jax.Array) -> jax.Array:
        """``a * 2**shift`` (exact in float)."""
        return a * 2.0**self.p.shift


def ste_round(x: jax.Array) -> jax.Array:
    """``round(x)`` forward, identity gradient."""
    return x + jax.lax.stop_gradient(jnp.round(x) - x)


@dataclasses.dataclass
class Counts:
    """Elements past their width in one step of one layer (0/1 marks, or 0): accumulator, current, membrane."""

    acc: jax.Array
    current: jax.Array
    membrane: jax.Array


def neuron_step(kind: str, ops: IntOps, state: tuple[jax.Array, ...], a: jax.Array, p: dict[str, jax.Array],
                ) -> tuple[jax.Array, tuple[jax.Array, ...], Counts]:
    """One time step of an integer neuron (docs/hardware.md, "The neuron update").

    Args:
        kind: ``lif``, ``cuba_lif``, ``if`` or ``li`` (the readout).
        ops: ``IntOps`` (deployed) or ``SteOps`` (fake-quant training).
        state: ``(v,)`` or, for ``cuba_lif``, ``(v, i)``; each ``[B, H]``.
        a: this step's accumulator ``[B, H]`` (weights x inputs + bias, already
            fitted to ``accumulator_bits``), in weight steps.
        p: per-neuron parameters ``[H]``: ``theta`` (in state units), ``unit``
            (the float value of one state unit, for the surrogate),
            ``beta`` (membrane decay), ``alpha`` (``cuba_lif``'s current decay).

    Returns:
        ``(spikes [B, H], new_state, counts)``; ``li`` returns its membrane as
        the "spikes".
    """
    prof = ops.p
    x = ops.to_state(a)
    v = state[0]
    if kind == "li":
        v = ops.fit(ops.decay(v, p["beta"]) + x, prof.state_bits, prof.overflow)
        return v.value, (v.value,), Counts(jnp.int32(0), jnp.int32(0), v.count)
    s = ops.spike(v, p["theta"], p["unit"])
    reset = s * p["theta"]
    i_count = jnp.int32(0)
    if kind == "cuba_lif":  # spyx CuBaLIF: reset, then current and membrane leak
        v = v - reset if prof.reset == "subtract" else v * (1 - s)
        i = ops.fit(ops.decay(state[1], p["alpha"]) + x, prof.state_bits, prof.acc_overflow)
        i_count, x = i.count, i.value
        v = ops.fit(ops.decay(v, p["beta"]) + x, prof.state_bits, prof.overflow)
        return s, (v.value, x), Counts(jnp.int32(0), i_count, v.count)
    # spyx LIF (IF without the leak): the reset is subtracted after the leak
    if prof.reset == "zero":
        v = v * (1 - s)
    if kind == "lif":
        v = ops.decay(v, p["beta"])
    if prof.reset == "subtract":
        v = v - reset
    v = ops.fit(v + x, prof.state_bits, prof.overflow)
    return s, (v.value,), Counts(jnp.int32(0), i_count, v.count)
