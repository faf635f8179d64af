"""``ConvSNN``: Conv -> spiking neuron -> pooling per layer, Linear -> LI readout."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from spyx.nn import LI

from snnexp.models.decays import parameterise_decays
from snnexp.models.time_loop import NeuronFactory, TimeLoop, check_loop, check_readout, li_readout, run_time
from snnexp.quant.conv import conv_as_dot_general

POOLINGS = ("max", "avg")
CONV_IMPLS = ("patches", "lax")


def _per_layer(name: str, value: int | Sequence[int], n: int) -> list[int]:
    """``value`` for each of ``n`` layers: an int for all, or a list of ``n`` positive ints."""
    values = [value] * n if isinstance(value, int) else list(value)
    if len(values) != n or any(isinstance(v, bool) or int(v) != v or v < 1 for v in values):
        raise ValueError(f"model.{name}={value!r} must be a positive integer or a list of {n} (one per layer)")
    return [int(v) for v in values]


class ConvSNN(nnx.Module):
    """Conv -> spiking neuron -> pooling per layer, Linear -> LI readout.

    For event-camera frames such as N-MNIST: the inputs arrive flattened as
    ``[B, T, F]`` with ``F = C*H*W`` in ``(channel, y, x)`` order (what
    ``snnexp.data.nmnist`` produces: polarity-major). Each frame is viewed as
    an NHWC image. The first convolution does not depend on the network's
    state, so it runs once over all ``B*T`` frames outside the time scan; the
    later convolutions run per step inside it. Pooling (``max`` keeps spikes
    binary, so int8 activation scales stay exact; ``avg`` gives fractions)
    follows each spiking layer; the last pooled map is flattened into the
    readout, which again runs over all ``T*B`` rows outside the scan.

    Every convolution is an ``nnx.Conv`` (kernel ``[k, k, C_in, C_out]``,
    ``SAME`` padding, stride 1) computed one of two ways (``impl``):

    * ``"patches"`` (default): as one ``dot_general`` over the ``k x k``
      patches (``snnexp.quant.conv_as_dot_general``). qwix quantizes it under every recipe
      (int4, ternary and weights-only included).
    * ``"lax"``: ``lax.conv_general_dilated``, which qwix intercepts as a
      convolution. qwix 0.1.8 handles it only when the activation and weight
      qtypes are equal (``w8a8``); other recipes raise an error naming the layer.

    Both give the same numbers in fp32 and share the parameter layout, so a
    checkpoint of one restores into the other.

    Module paths (what a quantization rule's ``module_path`` matches):
    ``conv/0`` .. ``conv/{L-1}`` for the convolutions, ``neurons/i`` for the
    spyx neurons (one per ``(H_i, W_i, C_i)`` map), ``readout`` for the output
    projection, ``li`` for the leaky-integrator readout neuron.
    """

    def __init__(
        self,
        n_in: int,
        hidden: Sequence[int],
        n_out: int,
        neuron: NeuronFactory,
        kernel_size: int | Sequence[int] = 3,
        pool: int | Sequence[int] = 2,
        pooling: str = "max",
        image: Sequence[int] | None = None,
        readout_beta: float | None = 0.9,
        impl: str = "patches",
        *,
        readout: str = "mean",
        rngs: nnx.Rngs,
    ):
        """Builds the network.

        Args:
            n_in: input features per time step, ``C*H*W``.
            hidden: output channels of each convolution (one spiking layer
                each), e.g. ``[16, 32]``.
            n_out: number of classes.
            neuron: a spyx neuron class (or partial) called as
                ``neuron(hidden_shape=(H, W, C), rngs=rngs)``.
            kernel_size: square kernel size of every convolution, or one per
                convolution, e.g. ``[5, 3]``.
            pool: pooling window (and stride) after every spiking layer, or one
                per layer; 1 pools nothing.
            pooling: ``"max"`` or ``"avg"``.
            image: ``[C, H, W]`` of one frame; ``None`` infers a square frame
                from ``n_in``: ``2*H*H`` (ON/OFF polarity) or else ``H*H``.
            readout_beta: decay of the LI readout, fixed; ``None`` learns one per
                class (``snnexp.models.decays``: the decays of ``neuron`` too).
            impl: ``"patches"`` or ``"lax"`` (see the class docstring).
            readout: ``mean``, ``max`` or ``last`` step of the LI membrane (``FeedForwardSNN``).
            rngs: random streams for the parameters.
        """
        channels = list(hidden)
        if not channels:
            raise ValueError("model.hidden must name at least one convolution (its channels), got []")
        kernel_sizes = _per_layer("kernel_size", kernel_size, len(channels))
        pool = _per_layer("pool", pool, len(channels))
        if pooling not in POOLINGS:
            raise ValueError(f"model.pooling={pooling!r}; valid choices: {list(POOLINGS)}")
        if impl not in CONV_IMPLS:
            raise ValueError(f"model.impl={impl!r}; valid choices: {list(CONV_IMPLS)}")
        self.image = self._image_shape(n_in, image)
        self.pool = tuple(pool)
        self.pooling = pooling
        self.impl = impl
        self.kernel_sizes = tuple(kernel_sizes)
        conv_fn = {"patches": conv_as_dot_general, "lax": jax.lax.conv_general_dilated}[impl]
        c, h, w = self.image
        convs, neurons, maps = [], [], []
        for cout, k, p in zip(channels, self.kernel_sizes, self.pool, strict=True):
            if h < p or w < p:
                raise ValueError(f"model.pool={list(self.pool)}: a {p}x{p} window does not fit a {h}x{w} map")
            convs.append(nnx.Conv(c, cout, (k, k), padding="SAME", conv_general_dilated=conv_fn, rngs=rngs))
            neurons.append(neuron(hidden_shape=(h, w, cout), rngs=rngs))
            maps.append((h, w, cout))
            c, h, w = cout, h // p, w // p
        self.maps = tuple(maps)
        self.conv = nnx.List(convs)
        self.neurons = nnx.List(neurons)
        self.readout = nnx.Linear(c * h * w, n_out, rngs=rngs)
        self.li = LI((n_out,), beta=readout_beta, rngs=rngs)
        self.readout_mode = check_readout(readout)
        parameterise_decays(self)  # a given decay stays fixed, a learned one trains as a logit

    @staticmethod
    def _image_shape(n_in: int, image: Sequence[int] | None) -> tuple[int, int, int]:
        if image is None:  # 2*H*H and H*H never coincide: sqrt(2) is irrational
            for c in (2, 1):
                side = round((n_in / c) ** 0.5)
                if c * side * side == n_in:
                    return c, side, side
            raise ValueError(
                f"{n_in} input features are neither a square two-channel frame 2*H*H nor a square H*H; "
                "set model.image=[C, H, W]"
            )
        image = list(image)
        if len(image) != 3 or any(int(d) != d or d < 1 for d in image):
            raise ValueError(f"model.image={image} must be [C, H, W] with positive integers")
        c, h, w = (int(d) for d in image)
        if c * h * w != n_in:
            raise ValueError(f"model.image={[c, h, w]} holds {c * h * w} features but the data has {n_in}")
        return c, h, w

    def layer_sizes(self) -> list[int]:
        """Sizes ``[F, N_0, ..., N_{L-1}, n_out]``; ``N_i = H_i*W_i*C_i`` neurons of layer ``i``."""
        c, h, w = self.image
        return [c * h * w, *(a * b * d for a, b, d in self.maps), self.readout.out_features]

    def synapses(self) -> list[tuple[int, int]]:
        """``(neurons, fan-out)`` of the input and of each spiking layer.

        A unit feeding convolution ``i`` reaches ``k_i * k_i * C_i`` synapses
        (fewer at the border); the last layer reaches ``n_out`` (through its
        pooled unit). Pooling may merge several spikes into one pooled unit, so
        with pooling this bounds the synaptic operations from above.
        """
        sizes = self.layer_sizes()
        fan = [k * k * m[2] for k, m in zip(self.kernel_sizes, self.maps, strict=True)]
        return list(zip(sizes[:-1], [*fan, sizes[-1]], strict=True))

    def _conv(self, i: int, x: jax.Array) -> jax.Array:
        """``conv/i`` on ``[N, H, W, C]``; names the layer if qwix refuses a ``lax`` convolution."""
        if self.impl == "patches":
            return self.conv[i](x)
        try:
            return self.conv[i](x)
        except (TypeError, ValueError) as e:
            if "conv_general_dilated" not in str(e):
                raise
            raise ValueError(
                f"conv/{i}: qwix quantizes a lax convolution only when its activation and weight qtypes are "
                f"equal (w8a8); this recipe mixes them ({e}). Use model.impl=patches (the convolution as a "
                "dot_general, every recipe works) or a recipe with equal qtypes for conv/.*"
            ) from e

    def _pool(self, s: jax.Array, p: int) -> jax.Array:
        if p == 1:
            return s
        f = nnx.max_pool if self.pooling == "max" else nnx.avg_pool
        return f(s, window_shape=(p, p), strides=(p, p))

    def _step(self, state: list[jax.Array], cur: jax.Array):
        """One time step of the convolutional stack.

        Args:
            state: one neuron state per layer, each ``[B, H_i, W_i, ...]``.
            cur: output of ``conv/0`` for this step, ``[B, H_0, W_0, C_0]``.

        Returns:
            ``(new_state, (pooled_last [B, D], rates [B, L]))``: the last
            layer's pooled spikes flattened, and the fraction of each layer's
            neurons that spiked.
        """
        new_state, rates = [], []
        x = cur
        for i, neuron in enumerate(self.neurons):
            if i > 0:
                x = self._conv(i, x)
            x, s = neuron(x, state[i])
            new_state.append(s)
            rates.append(jnp.mean(x, axis=(1, 2, 3)))
            x = self._pool(x, self.pool[i])
        return new_state, (x.reshape(x.shape[0], -1), jnp.stack(rates, axis=-1))

    def __call__(self, x: jax.Array, *, loop: TimeLoop = "scan") -> tuple[jax.Array, jax.Array]:
        """Runs the network over a whole sequence of frames.

        Args:
            x: inputs ``[B, T, C*H*W]``, each frame flattened in ``(C, H, W)`` order.
            loop: ``"scan"`` (training, evaluation), ``"unrolled"`` (qwix's
                first call), ``"carry"`` (static-range calibration).

        Returns:
            ``(readout [B, T, n_out], rates [B, T, L])``: the LI membrane per
            step, and the per-layer fraction of neurons that spiked per step.
        """
        check_loop(loop)
        b, t, f = x.shape
        c, h, w = self.image
        if f != c * h * w:
            raise ValueError(f"input has {f} features per step, the model expects {c}x{h}x{w}={c * h * w}")
        frames = x.reshape(b * t, c, h, w).transpose(0, 2, 3, 1)  # NHWC
        cur = self._conv(0, frames)
        cur = jnp.swapaxes(cur.reshape(b, t, *cur.shape[1:]), 0, 1)  # [T, B, H0, W0, C0]
        state = [n.initial_state(b) for n in self.neurons]
        spikes, rates = run_time(self, self._step, state, cur, loop)
        return li_readout(self.readout, self.li, spikes), jnp.swapaxes(rates, 0, 1)
