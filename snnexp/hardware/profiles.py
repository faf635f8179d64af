"""What arithmetic the deployed network uses beyond its weights: the ``hardware`` config group.

``Profile`` holds the knobs of ``conf/hardware/*.yaml``. ``float`` keeps the
neuron state in float32 (only the matmuls are integer); every other profile
makes the deployed network integer end to end: accumulators, synaptic
current, membrane, leak and threshold (``snnexp.hardware.integer``). The
arithmetic itself is specified in docs/hardware.md.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Literal

from snnexp.errors import ConfigError

Overflow = Literal["saturate", "wrap"]
OVERFLOWS = ("saturate", "wrap")
DECAYS = ("multiply", "shift")
RESETS = ("subtract", "zero")


class HardwareError(ConfigError):
    """A hardware profile or its use is invalid; the message names the value and the choices."""


@dataclasses.dataclass(frozen=True)
class Profile:
    """One fixed-point arithmetic for the deployed network (all widths are two's-complement bits).

    Attributes:
        name: the profile's name (``float`` keeps float neuron state).
        state_bits: width of the membrane and the synaptic current.
        decay: ``multiply``: ``v - v*d`` as ``sign(v) * ((|v| * m) >> decay_bits)``
            with the integer multiplier ``m = round(beta * 2**decay_bits)``;
            ``shift``: ``v - max(v >> dash, sign(v))`` with ``dash`` in
            ``[1, 2**decay_bits - 1]``, the decay ``1 - 2**-dash`` nearest ``beta``.
        decay_bits: bits of the decay multiplier (``multiply``) or of the shift (``shift``).
        threshold_bits: the per-neuron threshold is an unsigned integer below
            ``2**threshold_bits`` (before ``shift``).
        accumulator_bits: width of the synaptic sum ``sum_i w_ij x_i + b_j``.
        overflow: what the membrane does past its width: ``saturate`` or ``wrap``.
        current_overflow: the same for the synaptic current and the
            accumulator; ``None``: as ``overflow``.
        reset: after a spike, ``subtract`` the threshold or set the membrane to ``zero``.
        shift: the accumulated input and the threshold are shifted left by
            this many bits into the state (Lava's ``act_shift``/``vth_shift``):
            the state has ``shift`` bits of resolution below one weight step.
        weight_bits: the widest weight code the profile accepts.
        input_bits: width of the input codes of analog (non-spike) data.
        follows: what published arithmetic the profile follows (documentation).
    """

    name: str = "float"
    state_bits: int = 16
    decay: Literal["multiply", "shift"] = "multiply"
    decay_bits: int = 12
    threshold_bits: int = 15
    accumulator_bits: int = 24
    overflow: Overflow = "saturate"
    current_overflow: Overflow | None = None
    reset: Literal["subtract", "zero"] = "subtract"
    shift: int = 0
    weight_bits: int = 8
    input_bits: int = 8
    follows: str = ""

    @property
    def integer(self) -> bool:
        """Whether the deployed network's neuron state is integer."""
        return self.name != "float"

    @property
    def acc_overflow(self) -> Overflow:
        """The overflow rule of the accumulator and the synaptic current."""
        return self.current_overflow or self.overflow

    def check(self) -> Profile:
        """Raises ``HardwareError`` naming the first invalid knob; returns ``self``."""
        if not self.integer:
            return self
        where = f"hardware={self.name}"
        _choice(where, "decay", self.decay, DECAYS)
        _choice(where, "overflow", self.overflow, OVERFLOWS)
        if self.current_overflow is not None:
            _choice(where, "current_overflow", self.current_overflow, OVERFLOWS)
        _choice(where, "reset", self.reset, RESETS)
        _between(where, "state_bits", self.state_bits, 2, 30)
        _between(where, "decay_bits", self.decay_bits, 1, 15 if self.decay == "multiply" else 4)
        _between(where, "threshold_bits", self.threshold_bits, 1, self.state_bits - 1 - self.shift)
        _between(where, "accumulator_bits", self.accumulator_bits, 2, 30 - self.shift)
        _between(where, "shift", self.shift, 0, 16)
        _between(where, "weight_bits", self.weight_bits, 2, 16)
        _between(where, "input_bits", self.input_bits, 2, 16)
        return self


def _choice(where: str, key: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise HardwareError(f"{where}: {key}={value!r}; valid choices: {', '.join(choices)}")


def _between(where: str, key: str, value: Any, lo: int, hi: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise HardwareError(f"{where}: {key}={value!r}; must be an integer in [{lo}, {hi}]")


def from_config(cfg: Mapping[str, Any] | None) -> Profile:
    """The checked ``Profile`` of a ``hardware`` config node (``None``: ``float``).

    Raises:
        HardwareError: an unknown key (naming the valid ones) or an invalid value.
    """
    if cfg is None:
        return Profile()
    values = dict(cfg)
    fields = {f.name for f in dataclasses.fields(Profile)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise HardwareError(f"hardware: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(fields))}")
    return Profile(**values).check()
