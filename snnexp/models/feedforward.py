"""``FeedForwardSNN``: Linear -> spiking neuron per hidden layer, Linear -> LI readout.

The base of ``RecurrentSNN``; the reasons for its forward pass (hoisted
projections, one intercepted step, three time loops) are in ``snnexp.models``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from spyx.nn import LI

from snnexp.models.decays import parameterise_decays
from snnexp.models.time_loop import (
    NeuronFactory,
    TimeLoop,
    check_loop,
    check_readout,
    delay_line,
    dropout_masks,
    li_readout,
    run_time,
)


class FeedForwardSNN(nnx.Module):
    """Linear -> spiking neuron per hidden layer, Linear -> LI readout.

    Module paths (what a quantization rule's ``module_path`` matches):
    ``fc/0`` .. ``fc/{L-1}`` for the hidden projections, ``neurons/i`` for the
    spyx neurons, ``readout`` for the output projection, ``li`` for the
    leaky-integrator readout neuron.
    """

    def __init__(
        self,
        n_in: int,
        hidden: Sequence[int],
        n_out: int,
        neuron: NeuronFactory,
        readout_beta: float | None = 0.9,
        *,
        readout: str = "mean",
        input_delays: int = 1,
        delay_stride: int = 1,
        rngs: nnx.Rngs,
    ):
        """Builds the network.

        Args:
            n_in: input features per time step.
            hidden: sizes of the hidden spiking layers, e.g. ``[128]``.
            n_out: number of classes.
            neuron: a spyx neuron class (or partial) called as
                ``neuron(hidden_shape=(h,), rngs=rngs)``.
            readout_beta: decay of the LI readout, fixed; ``None`` learns one per
                class (``snnexp.models.decays``: the decays of ``neuron`` too).
            readout: how the LI membrane over time becomes the class scores:
                ``mean``, ``max`` or ``last`` step (``time_loop.readout_logits``).
            input_delays: synaptic delays per input channel ``D``: each input reaches
                ``fc/0`` ``D`` times, delayed by ``0, s, ..., (D-1) s`` steps (a causal
                temporal convolution of the input, ``fc/0`` then has ``F * D`` inputs).
                1 is no delay line.
            delay_stride: ``s``, the steps between two delays.
            rngs: random streams for the parameters.
        """
        if not hidden:
            raise ValueError("model.hidden must name at least one hidden layer, got []")
        for name, v in (("input_delays", input_delays), ("delay_stride", delay_stride)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"model.{name}={v!r}: must be an integer >= 1")
        self.readout_mode = check_readout(readout)
        self.input_delays, self.delay_stride = input_delays, delay_stride
        sizes = [n_in * input_delays, *hidden]
        self.fc = nnx.List(
            [nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:], strict=True)]
        )
        self._init_layers(hidden, rngs=rngs)
        self.neurons = nnx.List([neuron(hidden_shape=(h,), rngs=rngs) for h in hidden])
        self.readout = nnx.Linear(hidden[-1], n_out, rngs=rngs)
        self.li = LI((n_out,), beta=readout_beta, rngs=rngs)
        parameterise_decays(self)  # a given decay stays fixed, a learned one trains as a logit

    def _init_layers(self, hidden: Sequence[int], *, rngs: nnx.Rngs) -> None:
        """Creates a subclass's extra per-layer modules, after ``fc`` and before the neurons.

        Here, nothing. Its place in the constructor fixes the order in which
        the parameters draw from ``rngs``, so a subclass adds layers without
        changing the initial weights of the others.
        """

    def layer_sizes(self) -> list[int]:
        """Widths ``[F, H_0, ..., H_{L-1}, n_out]`` (``F`` the input channels, before any delay line)."""
        n_in = self.fc[0].in_features // self.input_delays
        return [n_in, *(f.out_features for f in self.fc), self.readout.out_features]

    def delay_line(self, x: jax.Array) -> jax.Array:
        """The input as ``fc/0`` sees it, ``[B, T, F] -> [B, T, D * F]`` (``time_loop.delay_line``)."""
        return delay_line(x, self.input_delays, self.delay_stride)

    def synapses(self) -> list[tuple[int, int]]:
        """``(neurons, fan-out)`` of the input and of each spiking layer.

        An input channel reaches ``H_0`` synapses per delay: ``(F, D * H_0)`` first.
        """
        sizes = self.layer_sizes()
        pairs = list(zip(sizes[:-1], sizes[1:], strict=True))
        return [(sizes[0], sizes[1] * self.input_delays), *pairs[1:]]

    def _step(self, state: list[jax.Array], cur: jax.Array):
        """One time step of the hidden stack.

        Args:
            state: one neuron state per hidden layer, each ``[B, ...]``.
            cur: input current of the first hidden layer, ``[B, H0]``, or ``(current, keep)`` with
                ``keep[i] [B, H_i]`` the dropout mask (0 or ``1 / (1 - rate)``) of layer ``i``'s spikes.

        Returns:
            ``(new_state, (spikes_last [B, H_last], rates [B, L]))`` where
            ``rates[:, i]`` is the fraction of layer ``i`` that spiked.
        """
        x, keep = cur if isinstance(cur, tuple) else (cur, None)
        new_state, rates = [], []
        for i, neuron in enumerate(self.neurons):
            if i > 0:
                x = self.fc[i](x)
            x, s = neuron(self._current(i, x, state[i]), state[i])
            new_state.append(s)
            rates.append(jnp.mean(x, axis=-1))
            if keep is not None:  # dropout: what the next layer (or the readout) sees; the feedback is the state's
                x = x * keep[i]
        return new_state, (x, jnp.stack(rates, axis=-1))

    def _current(self, i: int, x: jax.Array, state_i: Any) -> jax.Array:
        """Input current of hidden layer ``i``: its feed-forward drive ``x [B, H_i]`` alone."""
        return x

    def __call__(self, x: jax.Array, *, loop: TimeLoop = "scan", dropout: float = 0.0,
                 key: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """Runs the network over a whole sequence.

        Args:
            x: inputs ``[B, T, n_in]``.
            loop: ``"scan"`` (training, evaluation), ``"unrolled"`` (qwix's
                first call), ``"carry"`` (static-range calibration).
            dropout: training only: the rate at which each hidden layer's spikes are
                dropped on their way to the next layer and the readout, one mask per
                sequence and neuron for all steps (variational dropout; Gal & Ghahramani
                2016), the kept ones scaled by ``1 / (1 - rate)``. The recurrent feedback
                and the spike rates are those of the neurons themselves.
            key: the PRNG key of the masks (needed when ``dropout > 0``).

        Returns:
            ``(readout [B, T, n_out], rates [B, T, L])``: the LI membrane per
            step, and the per-layer fraction of neurons that spiked per step.
        """
        check_loop(loop)
        if getattr(self, "integer_grid", None) is not None:  # QAT/QT for an integer profile (snnexp.hardware.qat)
            if dropout > 0.0:
                raise ValueError(f"dropout={dropout!r}: the integer grid (snnexp.hardware.qat) trains without dropout")
            return self.integer_grid(self, x)
        x = self.delay_line(x)
        b, t, n_in = x.shape
        cur = self.fc[0](x.reshape(b * t, n_in)).reshape(b, t, -1)
        cur = jnp.swapaxes(cur, 0, 1)  # [T, B, H0]
        state = [n.initial_state(b) for n in self.neurons]
        if dropout > 0.0:
            cur = (cur, dropout_masks(key, dropout, b, self.layer_sizes()[1:-1], cur.dtype, t))
        spikes, rates = run_time(self, self._step, state, cur, loop)
        return li_readout(self.readout, self.li, spikes), jnp.swapaxes(rates, 0, 1)
