"""Fine-tuning for an integer profile: the fake-quant network of QAT/QT with integer neuron state.

``IntegerGrid``, set on the qwix fake-quant model (integer weights,
straight-through), runs its time loop on the profile's grid
(``snnexp.hardware.integer.simulate`` with ``SteOps``): every synaptic sum
is rounded onto the unit of its neuron, the state, leak and threshold take
the integer values the deployed network will compute, and the gradients
pass straight through (as in SQUAT and snnTorch's ``state_quant``). The
units follow the weights as they train: the qwix channel scale of the
current kernels, as ``IntegerNetwork.from_deployed`` will compute them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from snnexp.hardware.arith import SteOps, ste_round
from snnexp.hardware.integer import (
    SHIFT_TOLERANCE,
    Accumulated,
    IntegerNetwork,
    code_bits,
    code_range,
    entry_shift,
    finest_unit,
    neuron_kind,
    simulate,
    unit_floor,
)
from snnexp.hardware.profiles import HardwareError, Profile
from snnexp.quant import ternarize, unquantized_matmul


def kernel_scale(w: jax.Array, qtype: str, per_channel: bool = False) -> jax.Array:
    """Qwix's per-output-channel scale of a kernel ``[in, out]`` -> ``[out]`` (ternary: ``mean|w|``).

    intN: symmetric absmax with qwix's bound ``qmax + 0.5``; ternary: ``mean|w|`` of the
    matrix, or of each column with ``per_channel`` (``ternary_scale: channel``).
    """
    if qtype == "ternary":
        return jnp.broadcast_to(jnp.mean(jnp.abs(w), axis=0 if per_channel else None) + 1e-6, (w.shape[1],))
    return jnp.max(jnp.abs(w), axis=0) / (2 ** (code_bits(qtype) - 1) - 0.5)


def kernel_codes(w: jax.Array, qtype: str, per_channel: bool = False) -> tuple[jax.Array, jax.Array]:
    """``(codes, scale [out])`` of a kernel ``[in, out]`` as qwix's deployed network holds them, straight-through.

    intN: ``clip(round(w / scale), -qmax - 1, qmax)`` in float32 (qwix divides); ternary:
    ``snnexp.quant.ternarize``'s codes. The gradient of ``codes`` is ``w / scale``'s.
    """
    scale = kernel_scale(w, qtype, per_channel)
    if qtype == "ternary":
        codes, _ = ternarize(w, per_channel=per_channel)
    else:
        lo, hi = code_range(qtype)
        codes = jnp.clip(jnp.round(w / scale), lo, hi)
    smooth = w / scale
    return smooth + jax.lax.stop_gradient(codes - smooth), jax.lax.stop_gradient(scale)


def decay_code(beta: jax.Array, profile: Profile) -> jax.Array:
    """The integer decay (multiplier or shift) of ``beta``, straight-through (learned decays train)."""
    k = profile.decay_bits
    beta = jnp.clip(beta, 0.0, 1.0)
    if profile.decay == "multiply":
        return jnp.clip(ste_round(beta * 2.0**k), 0, 2**k)
    dash = jax.lax.stop_gradient(jnp.round(-jnp.log2(jnp.maximum(1.0 - beta, 1e-12))))
    return jnp.clip(dash, 1, 2**k - 1)


def grid_qtypes(model: nnx.Module, rules: Any) -> tuple[str | None, ...]:
    """The weight qtype per layer of ``IntegerGrid`` (``fc/i`` of each hidden layer, then ``readout``).

    Raises:
        HardwareError: a recurrent layer whose ``rec/i`` has another qtype (or another
            ``ternary_scale``) than its ``fc/i`` (``quant=w8in_ternary``): the grid shares one qtype per layer. Train
            such a recipe with ``hardware=float`` and map it with ``snnexp.export --hardware``.
    """
    from snnexp import metrics

    n = len(model.neurons)
    for i in range(n if hasattr(model, "rec") else 0):
        fc, rec = metrics.rule_of(f"fc/{i}", rules), metrics.rule_of(f"rec/{i}", rules)
        kinds = [(None, "tensor") if r is None else (r.weight_qtype, r.ternary_scale) for r in (fc, rec)]
        if kinds[0] != kinds[1]:
            what = [q if q != "ternary" or scale == "tensor" else f"ternary (ternary_scale: {scale})"
                    for q, scale in kinds]
            raise HardwareError(f"integer-state QAT/QT shares one weight qtype per layer; fc/{i} is {what[0]} and "
                                f"rec/{i} is {what[1]}: train with hardware=float and map the run with "
                                "python -m snnexp.export RUN_DIR --hardware int")
    return tuple(metrics.qtype_of(p, rules) for p in _grid_paths(n))


def grid_channels(model: nnx.Module, rules: Any) -> tuple[bool, ...]:
    """Per layer of ``IntegerGrid`` (as ``grid_qtypes``): ternary with one scale per channel (``ternary_scale``)."""
    from snnexp import metrics

    rules_of = [metrics.rule_of(p, rules) for p in _grid_paths(len(model.neurons))]
    return tuple(r is not None and r.weight_qtype == "ternary" and r.ternary_scale == "channel" for r in rules_of)


def _grid_paths(n: int) -> list[str]:
    return [*(f"fc/{i}" for i in range(n)), "readout"]


@dataclasses.dataclass(frozen=True)
class IntegerGrid:
    """Makes a fake-quant model compute its neurons on ``profile``'s integer grid (QAT/QT with ``hardware=int*``).

    Set as a model's ``integer_grid`` (a static attribute), it replaces the
    model's forward pass inside its ``__call__``, where qwix intercepts the
    matmuls: the weights stay qwix's fake-quant ones, the neurons become the
    profile's. ``x [B, T, F] -> (readout [B, T, C], rates [B, T, L])``, the
    readout in float units (``unit * U / 2**shift``); with ``record`` the
    hidden spikes ``[T, B, H]`` per layer instead.

    Attributes:
        profile: an integer profile.
        qtypes: the weight qtype per layer: ``fc/i`` of each hidden layer, then ``readout``.
        per_channel: per layer, ternary with a scale per channel (``grid_channels``; empty: none).
        input_binary: the data are spikes (else analog, coded at ``input_scale``).
        input_scale: the float value of one input code.
        record: return the hidden spikes instead of the readout.
    """

    profile: Profile
    qtypes: tuple[str, ...]
    input_binary: bool
    input_scale: float
    record: bool = False
    per_channel: tuple[bool, ...] = ()  # per layer: ternary with one scale per channel (grid_channels)

    def _codes(self, w: jax.Array, i: int) -> tuple[jax.Array, jax.Array]:
        return kernel_codes(w, self.qtypes[i], bool(self.per_channel and self.per_channel[i]))

    def _sources(self, m: nnx.Module) -> list[list[tuple[jax.Array, jax.Array]]]:
        """Per layer, its matrices as ``(codes, worth [H])``: straight-through codes and what one code is worth."""
        out = []
        for i in range(len(m.neurons)):
            codes, scale = self._codes(m.fc[i].kernel[...], i)
            layer = [(codes, scale * (self.input_scale if i == 0 else 1.0))]  # layer 0's codes: of input codes
            if hasattr(m, "rec"):  # fed spikes: one spike is worth its scale
                layer.append(self._codes(m.rec[i].kernel[...], i))
            out.append(layer)
        out.append([self._codes(m.readout.kernel[...], len(m.neurons))])
        return out

    def layers(self, m: nnx.Module) -> list[tuple[jax.Array, list[tuple[jax.Array, jax.Array]]]]:
        """Per layer ``(unit [H], [(codes on the unit, shift [H]) per matrix])``, as ``share_unit`` maps them.

        The unit is the finest worth, at least ``unit_floor`` in a hidden layer
        (the readout's one value for all classes);
        a coarser matrix enters shifted left by ``entry_shift(worth / unit)``
        (``ceil(log2)``; the nearest power of two for ternary codes), its codes
        re-rounded by the rest (straight-through).
        """
        out = []
        sources = self._sources(m)
        for i, layer in enumerate(sources):
            hidden = i < len(sources) - 1  # a hidden layer: its threshold fits threshold_bits
            floor = unit_floor(float(m.neurons[i].threshold), self.profile) if hidden else None
            unit = jax.lax.stop_gradient(finest_unit([c for c, _ in layer], [w for _, w in layer], per_neuron=hidden,
                                                     floor=floor, xp=jnp))
            lo, hi = code_range(self.qtypes[i])
            mats = []
            for codes, w in layer:
                ratio = jnp.where(w > 0, w / unit, 1.0)
                k = jax.lax.stop_gradient(entry_shift(ratio, self.qtypes[i], jnp))
                factor = jax.lax.stop_gradient(ratio / 2.0**k)
                same = jnp.all(jnp.abs(factor - 1) < SHIFT_TOLERANCE)
                mats.append((jnp.where(same, codes, jnp.clip(ste_round(codes * factor), lo, hi)), k))
            out.append((unit, mats))
        return out

    def units(self, m: nnx.Module) -> list[jax.Array]:
        """The unit ``[H]`` of every layer of ``m`` (the readout's one value for all classes), no gradient."""
        return [unit for unit, _ in self.layers(m)]

    def __call__(self, m: nnx.Module, x: jax.Array) -> Any:
        """Runs ``m`` on ``x [B, T, F]`` on the integer grid (called from ``m.__call__``)."""
        prof = self.profile
        kinds = (*(neuron_kind(n) for n in m.neurons), "li")
        ops = SteOps(prof, m.neurons[0].spike)
        grid = self.layers(m)
        units = [unit for unit, _ in grid]
        params = []
        for i, kind in enumerate(kinds):
            neuron = m.li if kind == "li" else m.neurons[i]
            top = 2**prof.threshold_bits - 1
            theta = 0.0 if kind == "li" else float(neuron.threshold)
            p: dict[str, Any] = {
                "unit": units[i] / 2.0**prof.shift,
                "theta": jnp.clip(jnp.round(theta / units[i]), 1, top) * 2.0**prof.shift,
                "beta": decay_code(jnp.broadcast_to(neuron.beta[...], units[i].shape), prof) if kind != "if"
                else jnp.zeros_like(units[i]),
            }
            if kind == "cuba_lif":
                p["alpha"] = decay_code(jnp.broadcast_to(neuron.alpha[...], units[i].shape), prof)
            params.append(p)
        if not self.input_binary:  # the input codes themselves (the integer network's encode)
            q = 2 ** (prof.input_bits - 1) - 1
            x = jnp.clip(ste_round(x / self.input_scale), -q, q)
        x = m.delay_line(x)  # codes, delayed as the integer network delays them
        b, t, f = x.shape
        has_rec = hasattr(m, "rec")

        def summed(i: int, k: int, inputs: jax.Array) -> jax.Array:  # matrix k of layer i on the unit
            codes, shift = grid[i][1][k]
            return unquantized_matmul(inputs, codes) * 2.0**shift

        def drive(i: int, s: jax.Array) -> jax.Array:
            if not has_rec and (i > 0 or self.input_binary):
                # spikes into one matrix on its own scale: qwix's fake-quant matmul is exactly codes x unit
                return m.fc[i](s) / units[i]
            return summed(i, 0, s) + m.fc[i].bias[...] / units[i]  # s: spikes, or layer 0's input codes

        d0 = drive(0, x.reshape(b * t, f)).reshape(b, t, -1)

        def accumulate(i: int, raw: jax.Array) -> Accumulated:
            fitted = ops.fit(ste_round(raw), prof.accumulator_bits, prof.acc_overflow)
            return Accumulated(fitted.value, fitted.count, jnp.zeros_like(fitted.count))

        def readout(spikes: jax.Array) -> jax.Array:  # one unit for all classes: the codes, shifted
            tt, bb, h = spikes.shape
            out = summed(len(grid) - 1, 0, spikes.reshape(tt * bb, h)) + m.readout.bias[...] / units[-1]
            return out.reshape(tt, bb, -1)

        res = simulate(
            ops, kinds, params, jnp.swapaxes(d0, 0, 1), drive=drive,
            recur=lambda i, s: summed(i, 1, s) if has_rec else 0.0,
            accumulate=accumulate, readout=readout, dtype=jnp.float32, record=self.record,
        )
        if self.record:
            return res["spikes"]
        return res["out"] * (units[-1] / 2.0**prof.shift), res["rates"]


@nnx.jit
def _spikes(model: nnx.Module, x: jax.Array) -> list[jax.Array]:
    return model(x)


def spike_agreement(model: nnx.Module, net: IntegerNetwork, x: np.ndarray, batch_size: int) -> float:
    """The share of hidden spikes on which the fake-quant model and the integer network agree.

    Every layer, step, neuron and sample of inputs ``x [N, T, F]`` counts once.

    Args:
        model: a fake-quant model with an ``integer_grid``.
        net: the deployed integer network.
        x: test inputs.
        batch_size: samples per call.
    """
    recording = nnx.clone(model)
    recording.integer_grid = dataclasses.replace(model.integer_grid, record=True)
    same = total = 0
    codes = net.encode(x)
    for start in range(0, x.shape[0], batch_size):
        ours = jax.device_get(_spikes(recording, jnp.asarray(x[start:start + batch_size])))
        theirs = net.run(codes[start:start + batch_size], record=True)["spikes"]
        for a, b in zip(ours, theirs, strict=True):
            same += int(np.sum(np.asarray(a) == np.asarray(b)))
            total += a.size
    return same / total if total else 1.0
