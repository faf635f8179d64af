"""``RecurrentSNN``: recurrent spiking layers (spyx ``RLIF``/``RCuBaLIF`` style), LI readout."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from snnexp.models.feedforward import FeedForwardSNN
from snnexp.models.time_loop import NeuronFactory


class RecurrentSNN(FeedForwardSNN):
    """Recurrent spiking layers (spyx ``RLIF``/``RCuBaLIF`` style), LI readout.

    Shares ``FeedForwardSNN``'s forward pass (hoisted projections, the three
    loops, the LI readout) and widths; only a layer's input current
    (``_current``) and the synapses differ.

    Hidden layer ``i`` at step ``t`` receives the previous layer's spikes
    through ``fc/i`` and its own spikes through ``rec/i`` (no bias); the two
    currents are summed and handed to the configured spyx neuron::

        s_t   = spikes the neuron emits at step t (decided by its state alone)
        x_t   = fc_i(input_t) + rec_i(s_t)
        s_t, state = neuron_i(x_t, state)

    As in spyx's ``RLIF``/``RCuBaLIF``, the feedback uses the spikes the layer
    fires this step, which every spyx neuron decides from the membrane left by
    the previous step (``spikes = H(V - threshold)`` before ``x`` is
    integrated). They are read by calling the neuron once on a zero input and
    discarding its state: with ``neuron=LIF`` (``CuBaLIF``) the hidden layer is
    exactly spyx's ``RLIF`` (``RCuBaLIF``) with ``recurrent_w = rec/i.kernel``,
    but the recurrent matrix lives in an ``nnx.Linear``, so qwix quantizes it
    (a bare ``@`` as in spyx stays silently fp32; see docs/qwix_on_snns.md). Any spyx
    neuron works: LIF, CuBaLIF, ALIF, IF.

    The recurrent kernels start orthogonal times ``rec_gain / sqrt(H)``
    (entries of about ``rec_gain / H``), small next to the input current, so
    early activity neither dies nor runs away.

    Module paths (what a quantization rule's ``module_path`` matches):
    ``fc/0`` .. ``fc/{L-1}`` for the input projections of the hidden layers,
    ``rec/0`` .. ``rec/{L-1}`` for the recurrent matrices ``[H_i, H_i]``,
    ``neurons/i`` for the spyx neurons, ``readout`` for the output projection,
    ``li`` for the leaky-integrator readout neuron. A recipe's ``.*`` covers
    the recurrent matrices; ``rec/.*`` picks them alone.

    qwix tells a weight from an activation by shape when it cannot trace it:
    a ``rec/i`` matrix ``[H, H]`` fed a batch of ``H`` rows crashes qwix's QAT
    ("lhs and rhs cannot be both weights"); ``snnexp.quant.check_shapes``
    refuses such a batch size before any compute.
    """

    def __init__(
        self,
        n_in: int,
        hidden: Sequence[int],
        n_out: int,
        neuron: NeuronFactory,
        readout_beta: float | None = 0.9,
        rec_gain: float = 1.0,
        *,
        readout: str = "mean",
        input_delays: int = 1,
        delay_stride: int = 1,
        rngs: nnx.Rngs,
    ):
        """Builds the network.

        Args:
            n_in: input features per time step.
            hidden: sizes of the recurrent spiking layers, e.g. ``[128]``.
            n_out: number of classes.
            neuron: a spyx neuron class (or partial) called as
                ``neuron(hidden_shape=(h,), rngs=rngs)``.
            readout_beta: decay of the LI readout, fixed; ``None`` learns one per
                class (``snnexp.models.decays``: the decays of ``neuron`` too).
            rec_gain: the recurrent kernels start as an orthogonal matrix times
                ``rec_gain / sqrt(H)``; 0 starts without feedback.
            readout: ``mean``, ``max`` or ``last`` step of the LI membrane (``FeedForwardSNN``).
            input_delays: synaptic delays per input channel (``FeedForwardSNN``).
            delay_stride: steps between two of them.
            rngs: random streams for the parameters.
        """
        if rec_gain < 0:
            raise ValueError(f"model.rec_gain must be >= 0, got {rec_gain}")
        self.rec_gain = rec_gain
        super().__init__(n_in, hidden, n_out, neuron, readout_beta, readout=readout, input_delays=input_delays,
                         delay_stride=delay_stride, rngs=rngs)

    def _init_layers(self, hidden: Sequence[int], *, rngs: nnx.Rngs) -> None:
        """The recurrent matrices ``rec/i`` ``[H_i, H_i]``, drawn right after ``fc``."""
        self.rec = nnx.List(
            [
                nnx.Linear(h, h, use_bias=False, rngs=rngs,
                           kernel_init=nnx.initializers.orthogonal(scale=self.rec_gain / h**0.5))
                for h in hidden
            ]
        )

    def synapses(self) -> list[tuple[int, int]]:
        """``(neurons, fan-out)`` of the input and of each spiking layer.

        A recurrent layer's fan-out counts its recurrent synapses too:
        ``[(F, D * H_0), (H_0, H_0 + H_1), ..., (H_{L-1}, H_{L-1} + n_out)]``.
        """
        sizes = self.layer_sizes()
        out = [(sizes[0], sizes[1] * self.input_delays)]
        for i, h in enumerate(sizes[1:-1]):
            out.append((h, h + sizes[i + 2]))
        return out

    def _current(self, i: int, x: jax.Array, state_i: Any) -> jax.Array:
        """Feed-forward drive ``x [B, H_i]`` plus the layer's own spikes of this step through ``rec/i``.

        This step's spikes are decided by the state alone; they are read by
        calling the neuron on a zero input and discarding its new state.
        """
        fired, _ = self.neurons[i](jnp.zeros_like(x), state_i)
        return x + self.rec[i](fired)
