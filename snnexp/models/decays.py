"""Decays that mean what the config says: a number is fixed, ``null`` is learned.

spyx turns every decay it is given into an ``nnx.Param``, so with
``nnx.Optimizer(model, tx, wrt=nnx.Param)`` a "fixed" ``beta: 0.9`` trains
too, and spyx's clip to ``[0, 1]`` in the forward pass gives a decay trained
past 1 a gradient of exactly 0, where it stays. ``parameterise_decays``
rewrites the decays of the spyx neurons of a built model (the neurons
themselves are untouched):

* a **given** decay (spyx stores it as a scalar, shape ``()``) becomes a
  ``FixedDecay``: an ``nnx.Variable`` but not an ``nnx.Param``, so the
  optimizer's ``wrt=nnx.Param`` filter skips it, while ``nnx.state`` and
  therefore every checkpoint still hold it;
* a **learned** decay (spyx draws one per neuron, shape ``hidden_shape``)
  becomes a ``DecayLogit``: an ``nnx.Param`` that stores the unconstrained
  logit ``p`` and reads as ``sigmoid(p)``. The neuron's ``self.beta[...]``
  then lies in ``(0, 1)``, inside spyx's clip, where its gradient never
  vanishes; the optimizer updates ``p``.

The decay attributes are ``alpha`` (CuBaLIF's synaptic current), ``beta``
(the membrane of LIF, CuBaLIF, ALIF and the LI readout) and ``gamma`` (ALIF's
threshold adaptation). IF has none.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

DECAY_NAMES = ("alpha", "beta", "gamma")
# A learned decay starts where spyx drew it, clipped away from 0 and 1 so its logit is finite.
_EPS = 1e-4


class FixedDecay(nnx.Variable):
    """A decay given as a number in the config: saved with the model, never trained."""


class DecayLogit(nnx.Param):
    """A learned decay stored as its logit ``p``; every read returns ``sigmoid(p)`` in ``(0, 1)``.

    ``decay[...]`` (what spyx's neurons read) and ``get_value()`` return the
    decay; the stored (raw) value that the optimizer updates and checkpoints
    save is the logit.
    """

    def get_value(self, **kwargs) -> jax.Array:
        """The decay ``sigmoid(p)``, of the logit's shape (or its ``index`` slice)."""
        return jax.nn.sigmoid(super().get_value(**kwargs))


def decay_logit(decay: jax.Array | float) -> jax.Array:
    """The logit whose sigmoid is ``decay`` (clipped to ``[1e-4, 1 - 1e-4]``), float32."""
    d = jnp.clip(jnp.asarray(decay, jnp.float32), _EPS, 1.0 - _EPS)
    return jnp.log(d) - jnp.log1p(-d)


def _is_spyx(module: nnx.Module) -> bool:
    return type(module).__module__.split(".")[0] == "spyx"


def parameterise_decays(model: nnx.Module) -> nnx.Module:
    """Makes every given spyx decay of ``model`` fixed and every learned one a logit, in place.

    Args:
        model: a built network whose spyx neurons (and LI readout) still hold
            spyx's own ``nnx.Param`` decays.

    Returns:
        ``model``.

    Raises:
        ValueError: a given decay lies outside ``[0, 1]`` (spyx would clip it
            silently), naming the module and the decay.
    """
    for path, module in nnx.iter_modules(model):
        if not _is_spyx(module):
            continue
        for name in DECAY_NAMES:
            var = getattr(module, name, None)
            if type(var) is not nnx.Param:  # already converted, or no such decay
                continue
            value = jnp.asarray(var.get_value(), jnp.float32)
            where = "/".join(map(str, (*path, name)))
            if value.shape == ():
                if not 0.0 <= float(value) <= 1.0:
                    raise ValueError(f"{where}={float(value):.6g} must lie in [0, 1] (a decay per step); "
                                     "null learns one per neuron")
                setattr(module, name, FixedDecay(value))
            else:
                setattr(module, name, DecayLogit(decay_logit(value)))
    return model


def decays(model: nnx.Module) -> dict[str, tuple[str, np.ndarray]]:
    """Every decay of ``model``: ``{path: ("fixed" | "learned", value)}``, the value as the neurons read it.

    Args:
        model: a network built with ``parameterise_decays``.

    Returns:
        For each ``alpha``/``beta``/``gamma`` of a spyx module, keyed by its
        ``/``-joined path (``neurons/0/beta``, ``li/beta``): whether it is
        fixed or learned and its value (a scalar, or one per neuron).
    """
    out = {}
    for path, module in nnx.iter_modules(model):
        if not _is_spyx(module):
            continue
        for name in DECAY_NAMES:
            var = getattr(module, name, None)
            if isinstance(var, (FixedDecay, DecayLogit)):
                kind = "fixed" if isinstance(var, FixedDecay) else "learned"
                out["/".join(map(str, (*path, name)))] = (kind, np.asarray(var[...]))
    return out
