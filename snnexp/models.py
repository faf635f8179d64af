"""Spiking networks whose matmuls qwix can see and whose time loop is fast.

A feedforward SNN here is ``Linear -> neuron`` per hidden layer, then
``Linear -> leaky integrator`` as the readout. The neurons are spyx's
(``spyx.nn.LIF``, ``CuBaLIF``, ``ALIF``, ``IF``); this module only wires them.

Why the forward pass looks the way it does:

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
  sees each weight exactly once per step: ``fc/0``, ``fc/1``, ..., ``readout``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx
from spyx.nn import LI

Loop = Literal["scan", "unrolled", "carry"]
NeuronFactory = Callable[..., nnx.Module]


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
        rngs: nnx.Rngs,
    ):
        """Builds the network.

        Args:
            n_in: input features per time step.
            hidden: sizes of the hidden spiking layers, e.g. ``[128]``.
            n_out: number of classes.
            neuron: a spyx neuron class (or partial) called as
                ``neuron(hidden_shape=(h,), rngs=rngs)``.
            readout_beta: decay of the LI readout; ``None`` learns one per class.
            rngs: random streams for the parameters.
        """
        if not hidden:
            raise ValueError("model.hidden must name at least one hidden layer, got []")
        sizes = [n_in, *hidden]
        self.fc = nnx.List(
            [nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:], strict=True)]
        )
        self.neurons = nnx.List([neuron(hidden_shape=(h,), rngs=rngs) for h in hidden])
        self.readout = nnx.Linear(hidden[-1], n_out, rngs=rngs)
        self.li = LI((n_out,), beta=readout_beta, rngs=rngs)

    def layer_sizes(self) -> list[int]:
        """Widths ``[F, H_0, ..., H_{L-1}, n_out]``."""
        return [self.fc[0].in_features, *(f.out_features for f in self.fc), self.readout.out_features]

    def synapses(self) -> list[tuple[int, int]]:
        """``(neurons, fan-out)`` of the input and of each spiking layer."""
        sizes = self.layer_sizes()
        return list(zip(sizes[:-1], sizes[1:], strict=True))

    def _step(self, state: list[jax.Array], cur: jax.Array):
        """One time step of the hidden stack.

        Args:
            state: one neuron state per hidden layer, each ``[B, ...]``.
            cur: input current of the first hidden layer, ``[B, H0]``.

        Returns:
            ``(new_state, (spikes_last [B, H_last], rates [B, L]))`` where
            ``rates[:, i]`` is the fraction of layer ``i`` that spiked.
        """
        new_state, rates = [], []
        x = cur
        for i, neuron in enumerate(self.neurons):
            if i > 0:
                x = self.fc[i](x)
            x, s = neuron(x, state[i])
            new_state.append(s)
            rates.append(jnp.mean(x, axis=-1))
        return new_state, (x, jnp.stack(rates, axis=-1))

    def __call__(self, x: jax.Array, *, loop: Loop = "scan") -> tuple[jax.Array, jax.Array]:
        """Runs the network over a whole sequence.

        Args:
            x: inputs ``[B, T, n_in]``.
            loop: ``"scan"`` (training, evaluation), ``"unrolled"`` (qwix's
                first call), ``"carry"`` (static-range calibration).

        Returns:
            ``(readout [B, T, n_out], rates [B, T, L])``: the LI membrane per
            step, and the per-layer fraction of neurons that spiked per step.
        """
        b, t, n_in = x.shape
        cur = self.fc[0](x.reshape(b * t, n_in)).reshape(b, t, -1)
        cur = jnp.swapaxes(cur, 0, 1)  # [T, B, H0]
        state = [n.initial_state(b) for n in self.neurons]

        if loop == "scan":
            _, (spikes, rates) = jax.lax.scan(self._step, state, cur)
        elif loop == "unrolled":
            outs = []
            for k in range(t):
                state, out = self._step(state, cur[k])
                outs.append(out)
            spikes, rates = jax.tree.map(lambda *a: jnp.stack(a), *outs)
        elif loop == "carry":

            @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=(nnx.Carry, 0))
            def body(carry, cur_t):
                model, st = carry
                st, out = model._step(st, cur_t)
                return (model, st), out

            _, (spikes, rates) = body((self, state), cur)
        else:
            raise ValueError(f"loop={loop!r}; valid choices: scan, unrolled, carry")

        h = spikes.shape[-1]
        drive = self.readout(spikes.reshape(t * b, h)).reshape(t, b, -1)

        def integrate(v, d):
            out, v = self.li(d, v)
            return v, out

        _, readout = jax.lax.scan(integrate, self.li.initial_state(b), drive)
        return jnp.swapaxes(readout, 0, 1), jnp.swapaxes(rates, 0, 1)
