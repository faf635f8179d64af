"""Integer neuron arithmetic and its profiles: what the deployed network computes beyond its weights.

* ``profiles``: ``Profile``, the knobs of the ``hardware`` config group;
* ``arith``: the fixed-point neuron update, exact in int32 and
  fake-quantized (straight-through) in float;
* ``integer``: ``IntegerNetwork``, a deployed network mapped onto a
  profile's integers (per-channel weight scales become per-neuron
  thresholds), its exact JAX forward and its evaluation;
* ``qat``: the fake-quant model that QAT/QT fine-tune with integer state.

The arithmetic is specified in docs/hardware.md; ``snnexp.reference``
re-implements it in NumPy from docs/export.md.
"""

from snnexp.hardware.profiles import HardwareError, Profile, from_config

__all__ = ["HardwareError", "Profile", "from_config"]
