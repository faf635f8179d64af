"""Spiking networks whose matmuls qwix can see and whose time loop is fast.

A feed-forward SNN here is ``Linear -> neuron`` per hidden layer, then
``Linear -> leaky integrator`` as the readout (``feedforward``).
``RecurrentSNN`` adds a recurrent ``Linear`` per layer (spyx
``RLIF``/``RCuBaLIF`` dynamics with any neuron; ``recurrent``); ``ConvSNN``
has ``Conv -> neuron -> pooling`` layers for event frames (``conv``). The
neurons are spyx's (``spyx.nn.LIF``, ``CuBaLIF``, ``ALIF``, ``IF``); these
modules only wire them. ``time_loop`` holds what they share: the three ways
of running the time steps and the LI readout. ``decays`` makes the neurons'
decays mean what the config says: a number is fixed (never trained), ``None``
is learned through a sigmoid, so it keeps a gradient inside ``(0, 1)``.

Why the forward pass looks the way it does (docs/qwix_on_snns.md has the
qwix side):

* The first projection and the readout projection do not depend on the
  recurrent state, so each is ONE matmul over all ``B*T`` rows, outside the
  time scan. Only the layers between them run per time step.
* qwix intercepts ``__call__`` and patches ``dot_general`` while it runs. Its
  first call (inside ``qwix.quantize_model``) must not happen inside a scan,
  so ``loop="unrolled"`` runs the steps as a Python loop; training and
  evaluation use ``loop="scan"`` (``jax.lax.scan``, the model closed over);
  static-range calibration uses ``loop="carry"`` (``nnx.scan`` with the model
  in the carry), the only loop in which qwix's ``QuantStat`` updates.
* Every matmul goes through an ``nnx.Linear`` (``lax.dot_general``), so qwix
  sees each weight exactly once per step: ``fc/0``, ``fc/1``, ..., ``readout``
  (and ``rec/i`` for recurrent weights: a bare ``@`` would stay fp32 silently).
  Convolutions are ``nnx.Conv`` computed as one ``dot_general`` over patches
  by default (``snnexp.quant.conv_as_dot_general``), the only form in which
  qwix 0.1.8 takes every recipe.
"""

from snnexp.models.conv import ConvSNN
from snnexp.models.feedforward import FeedForwardSNN
from snnexp.models.recurrent import RecurrentSNN
from snnexp.models.time_loop import TimeLoop

__all__ = ["ConvSNN", "FeedForwardSNN", "RecurrentSNN", "TimeLoop"]
