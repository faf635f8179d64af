"""The integer network a chip runs, built from a deployed snnexp network, and its exact JAX forward.

``IntegerNetwork.from_deployed`` maps the qwix network (integer weight codes
with per-channel float scales, float neuron parameters) onto one profile's
integers (docs/hardware.md, "From scales to integers"):

* every neuron ``j`` gets one unit ``u_j``: the float value of one weight
  step of its synaptic sum. For a layer fed by one matrix it is qwix's
  channel scale ``sigma_j`` (times the input scale on analog data), so the
  codes are qwix's own. A recurrent layer's two matrices share the larger of
  their two scales, and the readout one scale for all classes (so that the
  class decision is an integer comparison); codes fed a coarser unit are
  re-rounded;
* the threshold becomes a per-neuron integer ``round(theta / u_j)``, the bias
  ``round(b_j / u_j)``: the per-channel weight scales end as per-neuron
  thresholds, and the float scales leave the network;
* decays become the profile's multiplier or shift.

``forward`` runs it in int32 (the matmuls of 0/1 spikes and small codes in
float32, exact below 2**24, checked); ``evaluate`` gives ``quant_accuracy``.
``simulate`` is the time loop both this forward and the QAT fake-quant model
(``snnexp.hardware.qat``) run.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import spyx.nn

from snnexp.hardware.arith import IntOps, bounds, neuron_step
from snnexp.hardware.profiles import HardwareError, Profile
from snnexp.models.time_loop import delay_line

KINDS = {spyx.nn.LIF: "lif", spyx.nn.CuBaLIF: "cuba_lif", spyx.nn.IF: "if"}
_F32_EXACT = 2**24
# Worths within this (relative, and in log2) of a power-of-two ratio are that ratio: qwix's per-channel scales
# of one ternary matrix differ in the last float32 bit, which must not become a shift and a re-rounding.
SHIFT_TOLERANCE = 1e-4


def neuron_kind(neuron: Any) -> str:
    """``lif``, ``cuba_lif`` or ``if`` for a spyx neuron; ``HardwareError`` for any other."""
    for cls, kind in KINDS.items():
        if type(neuron) is cls:
            return kind
    raise HardwareError(f"integer neuron state supports neuron=lif, cuba_lif, if; got {type(neuron).__name__} "
                        "(ALIF's adaptive threshold has no integer form here yet: use hardware=float)")


def code_bits(qtype: str | None) -> int:
    """Width of a weight code: ``intN`` -> N, ``ternary`` -> 2; ``HardwareError`` otherwise."""
    if qtype == "ternary":
        return 2
    if qtype is not None and (m := re.fullmatch(r"int(\d+)", qtype)):
        return int(m.group(1))
    raise HardwareError(f"integer neuron state needs integer weights (intN or ternary) in every layer; got {qtype!r}")


def entry_shift(ratio: Any, qtype: str, xp: Any = np) -> Any:
    """The left shift ``k >= 0`` by which a matrix whose codes are worth ``ratio`` units enters the sum.

    Its codes are then re-rounded by ``ratio / 2**k``. Codes of three bits or
    more take ``k = ceil(log2(ratio))``: the factor is in ``(0.5, 1]`` and the
    codes shrink, losing under one bit. Codes of two bits or fewer (ternary)
    cannot shrink (``round(+-1 * f)`` is ``+-1`` for every such factor, which
    would leave the matrix up to 2x too strong), so they enter by the
    nearest power of two, ``k = round(log2(ratio))``: a factor in
    ``[1/sqrt(2), sqrt(2))``, their codes unchanged.

    Args:
        ratio: a code's worth over the unit, per neuron ``[H]`` (numpy or jax).
        qtype: the matrix's qtype.
        xp: ``numpy`` or ``jax.numpy``.
    """
    log = xp.log2(ratio)
    k = xp.ceil(log - SHIFT_TOLERANCE) if code_bits(qtype) > 2 else xp.round(log)
    return xp.maximum(k, 0)


def code_range(qtype: str) -> tuple[int, int]:
    """The codes a weight of ``qtype`` can take: ``[-1, 1]`` for ternary, two's complement otherwise."""
    return (-1, 1) if qtype == "ternary" else bounds(code_bits(qtype))


def quantize_decay(beta: np.ndarray, profile: Profile) -> np.ndarray:
    """The profile's integer form of decays ``beta`` ``[H]``: multiplier ``m`` or shift ``dash`` (int32)."""
    beta = np.clip(np.asarray(beta, np.float64), 0.0, 1.0)
    k = profile.decay_bits
    if profile.decay == "multiply":
        return np.clip(np.rint(beta * 2**k), 0, 2**k).astype(np.int32)
    with np.errstate(divide="ignore"):
        dash = np.rint(-np.log2(np.maximum(1.0 - beta, 1e-12)))
    return np.clip(dash, 1, 2**k - 1).astype(np.int32)


def effective_decay(m: np.ndarray, profile: Profile) -> np.ndarray:
    """The float decay the integer ``m`` (or ``dash``) stands for."""
    m = np.asarray(m, np.float64)
    return m / 2**profile.decay_bits if profile.decay == "multiply" else 1.0 - 2.0**-m


@dataclasses.dataclass
class IntLayer:
    """One layer of the integer network (all arrays NumPy, per neuron ``[H]`` unless said).

    Attributes:
        name: ``hidden/i`` or ``readout``.
        kind: ``lif``, ``cuba_lif``, ``if`` or ``li``.
        weight: codes ``[n_in, H]`` (int32).
        recurrent: codes ``[H, H]`` of the layer's own spikes (``None``: none).
        weight_qtype: the recipe's qtype of these codes (``int8``, ``ternary``, ...).
        recurrent_qtype: that of the ``recurrent`` codes (``None`` without; ``quant=w8in_ternary``:
            int8 ``weight``, ternary ``recurrent``).
        bias: integer bias in weight steps.
        unit: the float value of one weight step of the synaptic sum (float32).
        threshold: the integer threshold in state units (already shifted; 0 for ``li``).
        beta: membrane decay (multiplier or shift); ``alpha``: ``cuba_lif``'s current decay.
        weight_shift: per neuron, the left shift of the ``weight`` sum into the unit (``None``: 0);
            ``recurrent_shift`` that of the ``recurrent`` sum.
    """

    name: str
    kind: str
    weight: np.ndarray
    recurrent: np.ndarray | None
    weight_qtype: str
    bias: np.ndarray
    unit: np.ndarray
    threshold: np.ndarray
    beta: np.ndarray
    alpha: np.ndarray | None = None
    weight_shift: np.ndarray | None = None
    recurrent_shift: np.ndarray | None = None
    recurrent_qtype: str | None = None

    @property
    def size(self) -> int:
        """Neurons in the layer."""
        return int(self.weight.shape[1])


@dataclasses.dataclass
class IntegerNetwork:
    """A spiking network in a profile's integers: hidden layers then the LI readout.

    Attributes:
        profile: the arithmetic.
        layers: hidden layers, then the readout (``kind == "li"``).
        input_binary: the inputs are 0/1 spikes (codes = inputs).
        input_scale: float value of one input code (1.0 for spikes).
        steps: time steps T the network was built for.
        threshold_clipped: neurons whose threshold did not fit ``threshold_bits``.
        readout: the class decision over the readout membrane ``U [T, C]``:
            ``mean`` (``argmax sum_t U``), ``max`` (``argmax max_t U``) or ``last`` (``argmax U[T-1]``).
        input_delays: delays per input channel ``D`` into the first layer (``model.input_delays``):
            its ``weight`` is ``[D * F, H0]``, row ``j * F + f`` for input ``f`` delayed by ``j * delay_stride``.
        delay_stride: steps between two delays.
    """

    profile: Profile
    layers: list[IntLayer]
    input_binary: bool
    input_scale: float
    steps: int
    threshold_clipped: int = 0
    readout: str = "mean"
    input_delays: int = 1
    delay_stride: int = 1

    # ------------------------------------------------------------ building

    @classmethod
    def from_deployed(cls, deployed: Any, rules: Sequence[Any], profile: Profile, x_train: np.ndarray | jax.Array
                      ) -> IntegerNetwork:
        """Maps a deployed snnexp network onto ``profile``'s integers.

        Args:
            deployed: the qwix-deployed ``FeedForwardSNN`` or ``RecurrentSNN``
                (integer codes, per-channel scales).
            rules: the recipe it was quantized with.
            profile: an integer profile.
            x_train: training inputs ``[N, T, F]``: tell spikes from analog
                data and give the static input scale.

        Raises:
            HardwareError: a model, neuron, recipe or width the profile cannot take.
        """
        from snnexp import metrics

        if not profile.integer:
            raise HardwareError("hardware=float has no integer network")
        if not hasattr(deployed, "neurons") or not hasattr(deployed, "fc") or hasattr(deployed, "conv"):
            raise HardwareError(f"integer neuron state supports model=feedforward and recurrent; "
                                f"got {type(deployed).__name__}")
        mats = {m.path: m for m in metrics.matrices(deployed)}
        binary, in_scale = input_coding(x_train, profile)

        def source(path: str) -> tuple[np.ndarray, np.ndarray, str]:
            m = mats.get(path)
            qtype = metrics.qtype_of(path, rules)
            if m is None or not m.quantized:
                raise HardwareError(f"integer neuron state needs integer weights in every layer; {path} is float "
                                    f"(recipe {'leaves it unquantized' if qtype is None else qtype})")
            bits = code_bits(qtype)
            if bits > profile.weight_bits:
                raise HardwareError(f"hardware={profile.name} takes weights of at most {profile.weight_bits} bits; "
                                    f"{path} is {qtype}")
            codes = np.asarray(m.codes, np.int64)
            scale = np.asarray(m.scales[0], np.float64) if m.scales else np.ones(1)
            if scale.size not in (1, codes.shape[1]):
                raise HardwareError(f"{path}: scales of shape {scale.shape} (tiled weights) have no per-neuron "
                                    "integer form; use tile_size: null with integer neuron state")
            return codes, np.broadcast_to(scale.reshape(-1), (codes.shape[1],)).astype(np.float64), qtype

        layers, clipped = [], 0
        for i, neuron in enumerate(deployed.neurons):
            kind = neuron_kind(neuron)
            paths = [f"fc/{i}"] + ([f"rec/{i}"] if hasattr(deployed, "rec") else [])
            srcs = [source(p) for p in paths]
            # what one code is worth: the input layer's codes are of inputs coded at in_scale, the rest of spikes
            worth = [s[1].astype(np.float32) * np.float32(in_scale if i == 0 and k == 0 else 1.0)
                     for k, s in enumerate(srcs)]  # float32 products, as the QAT grid computes them
            qtype = srcs[0][2]
            codes, unit, shifts = share_unit([s[0] for s in srcs], worth, [s[2] for s in srcs], per_neuron=True,
                                             floor=unit_floor(float(neuron.threshold), profile))
            theta, n_clip = _threshold(float(neuron.threshold), unit, profile)
            clipped += n_clip
            layers.append(IntLayer(
                name=f"hidden/{i}", kind=kind, weight=codes[0], recurrent=codes[1] if len(codes) > 1 else None,
                weight_qtype=qtype, recurrent_qtype=srcs[1][2] if len(srcs) > 1 else None,
                weight_shift=shifts[0], recurrent_shift=shifts[1] if len(shifts) > 1 else None,
                bias=_bias(deployed.fc[i], unit, profile), unit=unit.astype(np.float32),
                threshold=theta, beta=_decay(neuron, "beta", kind != "if", profile),
                alpha=_decay(neuron, "alpha", kind == "cuba_lif", profile),
            ))
        r_codes, r_scale, qtype = source("readout")
        codes, unit, shifts = share_unit([r_codes], [r_scale], [qtype], per_neuron=False)
        n_out = codes[0].shape[1]
        li_beta = np.broadcast_to(np.asarray(deployed.li.beta[...], np.float64), (n_out,))
        layers.append(IntLayer(
            name="readout", kind="li", weight=codes[0], recurrent=None, weight_qtype=qtype, weight_shift=shifts[0],
            bias=_bias(deployed.readout, unit, profile), unit=unit.astype(np.float32),
            threshold=np.zeros(n_out, np.int32), beta=quantize_decay(li_beta, profile),
        ))
        net = cls(profile, layers, binary, float(in_scale), int(np.shape(x_train)[1]), clipped,
                  getattr(deployed, "readout_mode", "mean"), deployed.input_delays, deployed.delay_stride)
        net.check_exact()
        return net

    def check_exact(self) -> None:
        """Refuses a network whose int32 arithmetic could overflow (a wider profile than int32 allows)."""
        x_max = 1 if self.input_binary else 2 ** (self.profile.input_bits - 1)
        for i, layer in enumerate(self.layers):
            shift = int(np.max(_zeros_if_none(layer.weight_shift, layer.size), initial=0))
            w_max = int(np.max(np.abs(layer.weight), initial=1))
            worst = layer.weight.shape[0] * (x_max if i == 0 else 1) * w_max << shift
            if layer.recurrent is not None:
                r_shift = int(np.max(_zeros_if_none(layer.recurrent_shift, layer.size), initial=0))
                worst += layer.recurrent.shape[0] * int(np.max(np.abs(layer.recurrent), initial=1)) << r_shift
            worst += int(np.max(np.abs(layer.bias), initial=0))
            if worst >= 2**31:
                raise HardwareError(f"{layer.name}: a synaptic sum can reach {worst}, past int32")

    def f32_exact(self, i: int) -> bool:
        """Whether layer ``i``'s matmul is exact in float32 (every partial sum below 2**24)."""
        layer = self.layers[i]
        x_max = 1 if (self.input_binary or i > 0) else 2 ** (self.profile.input_bits - 1)
        return layer.weight.shape[0] * x_max * int(np.max(np.abs(layer.weight), initial=1)) < _F32_EXACT

    # ------------------------------------------------------------ running

    def encode(self, x: np.ndarray) -> np.ndarray:
        """Input codes ``[B, T, F]`` int32: spikes as they are, analog ``clip(rint(x / input_scale))``.

        NumPy float32 arithmetic, as the docs specify (the reference does the same).
        """
        x = np.asarray(x, np.float32)
        if self.input_binary:
            return x.astype(np.int32)
        q = 2 ** (self.profile.input_bits - 1) - 1
        return np.clip(np.rint(x / np.float32(self.input_scale)), -q, q).astype(np.int32)

    def arrays(self) -> dict[str, Any]:
        """The network's integer parameters as a pytree of jnp arrays (what ``forward`` takes)."""
        out = []
        for layer in self.layers:
            entry = {"w": jnp.asarray(layer.weight, jnp.int32), "b": jnp.asarray(layer.bias, jnp.int32),
                     "theta": jnp.asarray(layer.threshold, jnp.int32), "beta": jnp.asarray(layer.beta, jnp.int32),
                     "unit": jnp.asarray(layer.unit, jnp.float32)}
            if layer.recurrent is not None:
                entry["rec"] = jnp.asarray(layer.recurrent, jnp.int32)
            if layer.alpha is not None:
                entry["alpha"] = jnp.asarray(layer.alpha, jnp.int32)
            entry["w_shift"] = jnp.asarray(_zeros_if_none(layer.weight_shift, layer.size), jnp.int32)
            if layer.recurrent is not None:
                entry["rec_shift"] = jnp.asarray(_zeros_if_none(layer.recurrent_shift, layer.size), jnp.int32)
            out.append(entry)
        return {"layers": out, "input_scale": jnp.float32(self.input_scale)}

    @property
    def structure(self) -> tuple:
        """What ``forward`` compiles for: profile, kinds, exactness of the float32 matmuls, spike input, delays."""
        return (self.profile, tuple(layer.kind for layer in self.layers),
                tuple(self.f32_exact(i) for i in range(len(self.layers))), self.input_binary,
                (self.input_delays, self.delay_stride))

    def run(self, codes: np.ndarray, *, record: bool = False) -> dict[str, np.ndarray]:
        """Runs input codes ``[B, T, F]`` (``encode``'s) through the integer network, on host arrays."""
        out = _forward(self.structure, record, True, self.arrays(), jnp.asarray(codes, jnp.int32))
        return jax.device_get(out)

    def run_inputs(self, x: jax.Array, arrays: dict[str, Any] | None = None) -> dict[str, Any]:
        """Runs raw inputs ``x [B, T, F]`` (e.g. device-resident data), encoding them on the device.

        The device encoding is ``encode``'s float32 arithmetic (IEEE division and
        round-half-to-even), so the codes are the same; ``arrays`` may be passed
        to skip converting the parameters again.
        """
        return _forward(self.structure, False, False, self.arrays() if arrays is None else arrays, x)


def _zeros_if_none(a: np.ndarray | None, n: int) -> np.ndarray:
    return np.zeros(n, np.int32) if a is None else a


def input_coding(x_train: np.ndarray | jax.Array, profile: Profile) -> tuple[bool, float]:
    """``(binary, scale)``: spikes are their own codes (scale 1); analog data get ``absmax / (2**(input_bits-1) - 1)``.

    Args:
        x_train: the training inputs ``[N, T, F]`` (the static range of the input codes); a
            device-resident array is reduced where it lies, not copied to the host.
        profile: gives ``input_bits``.
    """
    x = jnp.asarray(x_train)
    if bool(jnp.all((x == 0) | (x == 1))):
        return True, 1.0
    absmax = float(jnp.max(jnp.abs(x)))
    return False, absmax / (2 ** (profile.input_bits - 1) - 1) if absmax > 0 else 1.0


def unit_floor(theta: float, profile: Profile) -> np.float32:
    """The finest unit whose threshold ``round(theta / unit)`` still fits ``threshold_bits`` (float32).

    A neuron whose finest worth is below it (an input weight far smaller than
    its threshold: per-channel int8 codes of a 1-channel input, MNIST-1D's,
    give some neurons a worth of ~1e-7) takes this unit instead, its finer codes re-rounded down onto it, rather
    than a clipped threshold that fires it far too often.
    """
    return np.float32(theta) / np.float32(2**profile.threshold_bits - 1)


def finest_unit(codes: Sequence[Any], worth: Sequence[Any], *, per_neuron: bool, floor: float | None = None,
                xp: Any = np) -> Any:
    """The unit before any shift (``share_unit`` and the QAT grid): the finest worth, at least ``floor``.

    Only a matrix with a nonzero code for the neuron counts: an all-zero column (qwix
    stores its scale as 1.0) carries no worth. A neuron fed no code at all gets 1.

    Args:
        codes: codes ``[n_in, H]`` per matrix; worth: one code's value ``[H]`` per matrix (float32).
        per_neuron: one unit per neuron, or the finest for all (the readout).
        floor: the smallest unit (``unit_floor``), or None.
        xp: ``numpy`` or ``jax.numpy``.

    Returns:
        ``unit [H]`` (float32).
    """
    stack = xp.stack([xp.where((w > 0) & xp.any(c != 0, axis=0), w, xp.inf) for c, w in zip(codes, worth, strict=True)])
    unit = xp.min(stack, axis=0)
    if not per_neuron:
        unit = xp.full_like(unit, xp.min(unit))
    unit = xp.where(xp.isfinite(unit), unit, 1.0).astype(np.float32)
    return unit if floor is None else xp.maximum(unit, np.float32(floor))


def share_unit(codes: Sequence[np.ndarray], worth: Sequence[np.ndarray], qtypes: Sequence[str], *,
               per_neuron: bool, floor: np.float32 | None = None
               ) -> tuple[list[np.ndarray], np.ndarray, list[np.ndarray]]:
    """One unit per neuron (or per layer) for the matrices that feed the same neurons.

    The unit is the finest worth among the matrices with a nonzero code for the neuron,
    at least ``floor``; a coarser matrix's sum enters shifted left by
    ``k = entry_shift(worth / unit)`` bits (per neuron): ``ceil(log2)``, its codes
    re-rounded by the remaining factor ``worth / (unit * 2**k)`` in ``(0.5, 1]``
    (1: the codes are unchanged, as for a layer fed by one matrix); a matrix finer
    than a floored unit keeps ``k = 0`` and its codes are re-rounded by ``worth / unit < 1``.
    Ternary codes cannot be re-rounded down, so a ternary matrix enters by the nearest
    power of two instead (``quant=ternary``: ``fc/i`` and ``rec/i`` of one neuron have
    independent scales, and no shift maps both exactly; each is off by under ``sqrt(2)``,
    against up to 2x with ``ceil``). A network fine-tuned on the integer grid
    (``hardware=int mode=qat``) trains with this mapping and exports exactly.

    Matrices of different qtypes (``quant=w8in_ternary``: int8 ``fc/0``, ternary
    ``rec/0``): re-rounding ternary codes by a factor in ``(0.5, 1]`` would round
    every one back to +-1 and make the matrix up to 2x too strong, so the unit is
    raised until the matrix of the fewest code bits enters by an exact power of two
    (``unit = worth / 2**(k-1)``, codes unchanged) and the finer-coded matrix is
    re-rounded instead (by a factor in ``(0.5, 1]``: under one bit of its resolution).

    Args:
        codes: integer codes ``[n_in, H]`` per matrix.
        worth: the float value of one code of each matrix, per neuron ``[H]``.
        qtypes: each matrix's qtype (its code range).
        per_neuron: one unit per neuron, or one for the whole layer (the readout).
        floor: the smallest unit (``unit_floor``; ``None``: no floor).

    Returns:
        ``(codes, unit [H], shifts)``: re-rounded codes and a shift ``[H]`` (int32) per matrix.
    """
    worth = [np.asarray(w, np.float32) for w in worth]  # float32, as the QAT grid computes it
    unit = finest_unit(codes, worth, per_neuron=per_neuron, floor=floor)
    if len(set(qtypes)) > 1:  # keep the coarsest-coded matrix exact: it enters by a power of two
        j = int(np.argmin([code_bits(q) for q in qtypes]))
        w = worth[j]
        k = np.ceil(np.log2(np.where(w > 0, w / unit, np.float32(1.0))) - np.float32(SHIFT_TOLERANCE))
        live = np.any(codes[j] != 0, axis=0)
        unit = np.where((k >= 1) & live, w / np.exp2(k - 1).astype(np.float32), unit).astype(np.float32)
    out, shifts = [], []
    for c, w, qtype in zip(codes, worth, qtypes, strict=True):
        lo, hi = code_range(qtype)
        ratio = np.where(w > 0, w / unit, np.float32(1.0)).astype(np.float32)
        k = entry_shift(ratio, qtype).astype(np.int32)
        factor = (ratio / np.exp2(k).astype(np.float32)).astype(np.float32)
        same = np.all(np.abs(factor - 1) < SHIFT_TOLERANCE)
        out.append(c if same else np.clip(np.rint(c.astype(np.float32) * factor), lo, hi).astype(np.int32))
        shifts.append(k)
    return [o.astype(np.int32) for o in out], unit, shifts


def _threshold(theta: float, unit: np.ndarray, profile: Profile) -> tuple[np.ndarray, int]:
    raw = np.rint(np.float32(theta) / unit.astype(np.float32))  # float32, as the QAT grid
    top = 2**profile.threshold_bits - 1
    clipped = int(np.sum((raw < 1) | (raw > top)))
    return (np.clip(raw, 1, top).astype(np.int64) << profile.shift).astype(np.int32), clipped


def _bias(linear: Any, unit: np.ndarray, profile: Profile) -> np.ndarray:
    if getattr(linear, "bias", None) is None:
        return np.zeros(unit.shape, np.int32)
    lo, hi = bounds(profile.accumulator_bits)
    bias = np.asarray(linear.bias[...], np.float32) / unit.astype(np.float32)
    return np.clip(np.rint(bias), lo, hi).astype(np.int32)


def _decay(neuron: Any, name: str, present: bool, profile: Profile) -> np.ndarray | None:
    if not present:
        return None if name == "alpha" else np.zeros(neuron.hidden_shape, np.int32)
    beta = np.broadcast_to(np.asarray(getattr(neuron, name)[...], np.float64), neuron.hidden_shape)
    return quantize_decay(beta, profile)


# ------------------------------------------------------------------ the time loop


def simulate(ops: IntOps, kinds: Sequence[str], params: Sequence[dict[str, Any]], drive0: jax.Array,
             drive: Callable[[int, jax.Array], jax.Array], recur: Callable[[int, jax.Array], jax.Array],
             accumulate: Callable[[int, jax.Array], jax.Array], readout: Callable[[jax.Array], jax.Array],
             dtype: Any, record: bool = False) -> dict[str, Any]:
    """The integer network's time loop, shared by the deployed forward and the fake-quant model.

    Args:
        ops: ``IntOps`` or ``SteOps``.
        kinds: neuron kind per layer, the readout (``li``) last.
        params: per-layer ``theta``, ``unit``, ``beta`` (and ``alpha``).
        drive0: the first layer's synaptic sums, hoisted ``[T, B, H0]`` (before bias and fitting).
        drive: ``(i, spikes [B, H_{i-1}]) -> [B, H_i]``, layer ``i > 0``'s feed-forward sum.
        recur: ``(i, spikes [B, H_i]) -> [B, H_i]`` the recurrent sum of layer ``i``
            from the spikes it fires this step, or 0.
        accumulate: ``(i, raw) -> accumulator``: adds the bias and fits ``accumulator_bits``
            (and, for fake quant, rounds).
        readout: ``spikes [T, B, H_last] -> [T, B, C]`` the readout's accumulators.
        dtype: the state's dtype (int32 or float32).
        record: also return every hidden layer's spikes ``[T, B, H]``.

    Returns:
        ``{"out": [B, T, C] readout membrane, "rates": [B, T, L], "counts": [L+1, 3],
        "acc_max": [L+1]}`` and, with ``record``, ``"spikes"``: a list of ``[T, B, H]``.
    """
    hidden = list(kinds[:-1])
    b = drive0.shape[1]

    def init(i: int, kind: str) -> tuple[jax.Array, ...]:
        h = params[i]["theta"].shape[0]
        z = jnp.zeros((b, h), dtype)
        return (z, z) if kind == "cuba_lif" else (z,)

    def step(carry, d0):
        state, tally = carry
        new_state, new_tally, rates, spikes = [], [], [], []
        x = None
        for i, kind in enumerate(hidden):
            raw = d0 if i == 0 else drive(i, x)
            fired = ops.spike(state[i][0], params[i]["theta"], params[i]["unit"])
            raw = raw + recur(i, fired)
            a = accumulate(i, raw)
            x, st, c = neuron_step(kind, ops, state[i], a.value, params[i])
            new_state.append(st)
            acc_n, cur_n, mem_n, peak = tally[i]  # elementwise: summed once after the loop
            new_tally.append((acc_n + a.count, cur_n + c.current, mem_n + c.membrane,
                              jnp.maximum(peak, jax.lax.stop_gradient(a.peak))))
            rates.append(jnp.mean(x, axis=-1))
            spikes.append(x.astype(jnp.int8) if record else None)
        return (new_state, new_tally), (x, jnp.stack(rates, -1), spikes if record else None)

    n = len(kinds)
    zeros = [jnp.zeros((b, params[i]["theta"].shape[0]), jnp.int32) for i in range(n - 1)]
    carry0 = ([init(i, k) for i, k in enumerate(hidden)], [(z, z, z, z) for z in zeros])
    (_, tally), (last, rates, spikes) = jax.lax.scan(step, carry0, drive0)
    a_out = accumulate(n - 1, readout(last))

    def integrate(v, a_t):
        out, (v,), c = neuron_step("li", ops, (v,), a_t, params[-1])
        return v, (out, c.membrane)

    c_out = params[-1]["theta"].shape[0]
    _, (out, v_count) = jax.lax.scan(integrate, jnp.zeros((b, c_out), dtype), a_out.value)
    total = functools.partial(jnp.sum, dtype=jnp.int32)
    counts = jnp.stack([jnp.stack([total(a), total(c), total(m)]) for a, c, m, _ in tally]
                       + [jnp.stack([total(a_out.count), jnp.int32(0), total(v_count)])])
    acc_max = jnp.stack([jnp.max(p).astype(jnp.int32) for *_, p in tally]
                        + [jnp.max(jax.lax.stop_gradient(a_out.peak)).astype(jnp.int32)])
    result = {"out": jnp.swapaxes(out, 0, 1), "rates": jnp.swapaxes(rates, 0, 1), "counts": counts,
              "acc_max": acc_max}
    if record:
        result["spikes"] = spikes
    return result


@dataclasses.dataclass(frozen=True)
class Accumulated:
    """An accumulator fitted to its width: value, 0/1 marks past the width, magnitudes before fitting."""

    value: jax.Array
    count: jax.Array
    peak: jax.Array


def _matmul(x: jax.Array, w: jax.Array, exact_f32: bool) -> jax.Array:
    """``x @ w`` of integers, int32 result: float32 where that is exact, else an int32 dot."""
    if exact_f32:
        return jnp.dot(x.astype(jnp.float32), w.astype(jnp.float32)).astype(jnp.int32)
    return jax.lax.dot(x.astype(jnp.int32), w, preferred_element_type=jnp.int32)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _forward(structure: tuple, record: bool, encoded: bool, arrays: dict[str, Any], codes: jax.Array
             ) -> dict[str, Any]:
    """The deployed integer forward: input codes ``[B, T, F]`` (or raw inputs, unless ``encoded``) -> ``simulate``.

    The first layer takes the codes through the delay line (``[B, T, D * F]``), if any.
    """
    profile, kinds, exact, binary, (taps, stride) = structure
    ops = IntOps(profile)
    layers = arrays["layers"]
    if not encoded and not (binary and exact[0]):  # spikes are their own codes for the float32 matmul
        codes = _encode(codes, arrays["input_scale"], profile, binary)
    codes = delay_line(codes, taps, stride)
    b, t, f = codes.shape
    d0 = (_matmul(codes.reshape(b * t, f), layers[0]["w"], exact[0]) << layers[0]["w_shift"]).reshape(b, t, -1)

    def accumulate(i: int, raw: jax.Array) -> Accumulated:
        raw = raw + layers[i]["b"]
        fitted = ops.fit(raw, profile.accumulator_bits, profile.acc_overflow)
        return Accumulated(fitted.value, fitted.count, jnp.abs(raw))

    def readout(spikes: jax.Array) -> jax.Array:
        tt, bb, h = spikes.shape
        out = _matmul(spikes.reshape(tt * bb, h), layers[-1]["w"], exact[-1]) << layers[-1]["w_shift"]
        return out.reshape(tt, bb, -1)

    return simulate(
        ops, kinds, layers, jnp.swapaxes(d0, 0, 1),
        drive=lambda i, x: _matmul(x, layers[i]["w"], exact[i]) << layers[i]["w_shift"],
        recur=lambda i, s: _matmul(s, layers[i]["rec"], True) << layers[i]["rec_shift"] if "rec" in layers[i] else 0,
        accumulate=accumulate, readout=readout, dtype=jnp.int32, record=record,
    )


def _encode(x: jax.Array, scale: jax.Array, profile: Profile, binary: bool) -> jax.Array:
    """``IntegerNetwork.encode`` on the device: the same float32 operations."""
    if binary:
        return x.astype(jnp.int32)
    q = 2 ** (profile.input_bits - 1) - 1
    return jnp.clip(jnp.round(x.astype(jnp.float32) / scale), -q, q).astype(jnp.int32)


def bits_needed(peak: int) -> int:
    """Two's-complement bits that hold every value of magnitude up to ``peak``."""
    return max(2, math.ceil(math.log2(int(peak) + 1)) + 1)


def decision_scores(trace: np.ndarray, readout: str) -> np.ndarray:
    """Integer class scores ``[B, C]`` from the readout membrane ``[B, T, C]``: sum, max or last step over T."""
    trace = np.asarray(trace, np.int64)
    if readout == "max":
        return trace.max(axis=1)
    if readout == "last":
        return trace[:, -1]
    return trace.sum(axis=1)


def evaluate(net: IntegerNetwork, x: np.ndarray, y: np.ndarray, batch_size: int = 512) -> dict[str, Any]:
    """``net``'s accuracy, loss, spike rates and overflow record on ``(x [N, T, F], y [N])``.

    The class is ``argmax_c`` of ``decision_scores`` (``sum_t U[t, c]`` for the
    ``mean`` readout, ``max_t`` or the last step), an integer comparison (ties go
    to the lowest class). The loss is the cross-entropy of the float logits
    ``unit * score / 2**shift`` (divided by T for ``mean``: what the float
    network's loss reads).

    Returns:
        ``{"accuracy", "loss", "spike_rate": {"layer_i", "mean"}, "overflow": {...},
        "accumulator_peak": [L+1]}``.
    """
    x = jnp.asarray(x)  # stays on the device: batches are sliced and encoded there
    y = np.asarray(y)
    arrays = net.arrays()
    n = x.shape[0]
    bs = min(batch_size, n)
    correct, loss, rate_sum = 0, 0.0, 0.0
    counts = np.zeros((len(net.layers), 3), np.int64)
    peak = np.zeros(len(net.layers), np.int64)
    unit = np.float64(net.layers[-1].unit[0]) / 2**net.profile.shift
    for start in range(0, n, bs):  # the last, shorter batch compiles once more: padding rows would count
        out = jax.device_get(net.run_inputs(x[start:start + bs], arrays))
        labels = y[start:start + bs]
        trace = np.asarray(out["out"], np.int64)
        scores = decision_scores(trace, net.readout)
        correct += int(np.sum(np.argmax(scores, axis=-1) == labels))
        logits = scores * unit / (trace.shape[1] if net.readout == "mean" else 1)
        logits = logits - logits.max(axis=-1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
        loss += float(-logp[np.arange(len(labels)), labels].sum())
        rate_sum = rate_sum + np.asarray(out["rates"]).mean(axis=1).sum(axis=0)
        counts += np.asarray(out["counts"])
        peak = np.maximum(peak, np.asarray(out["acc_max"]))
    rates = np.asarray(rate_sum) / n
    names = [layer.name for layer in net.layers]
    return {
        "accuracy": correct / n,
        "loss": loss / n,
        "spike_rate": {**{f"layer_{i}": float(r) for i, r in enumerate(rates)}, "mean": float(rates.mean())},
        "overflow": {name: {"accumulator": int(c[0]), "current": int(c[1]), "membrane": int(c[2])}
                     for name, c in zip(names, counts, strict=True)},
        "accumulator_peak": [int(p) for p in peak],
    }


def hardware_metrics(net: IntegerNetwork, evaluation: dict[str, Any]) -> dict[str, Any]:
    """What the integer network costs on a chip, as ``metrics.json`` keys.

    Args:
        net: the integer network.
        evaluation: its ``evaluate`` on the test set (overflow counts, accumulator peaks).

    Returns:
        ``integer_memory_bits``: per layer, the bits of its weights at their
        packed width, state (neurons x ``state_bits`` per state variable),
        thresholds, decays, biases, 4-bit per-neuron shifts where a matrix
        has them, the first layer's input delay line where it has one (the
        ``(D-1) s`` past steps of its ``F`` input codes: 1 bit each for spikes,
        ``input_bits`` for analog codes), and ``total``;
        ``accumulator_bits_needed`` per layer (the widest synaptic sum seen on
        the test set) against ``accumulator_bits``; ``overflow`` per layer and
        variable, and ``overflow_events`` in all; ``threshold_clipped``.
    """
    p = net.profile
    memory: dict[str, Any] = {}
    for layer in net.layers:
        n = layer.size
        states = 2 if layer.kind == "cuba_lif" else 1
        decays = {"if": 0, "cuba_lif": 2}.get(layer.kind, 1)
        entry = {
            "weights": layer.weight.size * code_bits(layer.weight_qtype)
            + (0 if layer.recurrent is None else layer.recurrent.size * code_bits(layer.recurrent_qtype)),
            "state": n * states * p.state_bits,
            "thresholds": 0 if layer.kind == "li" else n * p.threshold_bits,
            "decays": n * decays * p.decay_bits,
            "biases": n * p.accumulator_bits,
            # a 4-bit exponent per neuron for each matrix whose sum is shifted (a shared unit)
            "shifts": 4 * n * sum(int(np.any(k)) for k in (layer.weight_shift, layer.recurrent_shift)
                                  if k is not None),
        }
        if layer is net.layers[0] and net.input_delays > 1:  # the last (D-1) s steps of input codes
            codes = (net.input_delays - 1) * net.delay_stride * layer.weight.shape[0] // net.input_delays
            entry["delay_line"] = codes * (1 if net.input_binary else p.input_bits)
        entry["total"] = sum(entry.values())
        memory[layer.name] = entry
    memory["total"] = sum(v["total"] for v in memory.values())
    overflow = evaluation["overflow"]
    return {
        "integer_memory_bits": memory,
        "accumulator_bits": p.accumulator_bits,
        "accumulator_bits_needed": {layer.name: bits_needed(peak)
                                    for layer, peak in zip(net.layers, evaluation["accumulator_peak"], strict=True)},
        "overflow": overflow,
        "overflow_events": sum(sum(v.values()) for v in overflow.values()),
        "threshold_clipped": net.threshold_clipped,
    }
