"""Spiking networks whose matmuls qwix can see and whose time loop is fast.

A feedforward SNN here is ``Linear -> neuron`` per hidden layer, then
``Linear -> leaky integrator`` as the readout. ``RecurrentSNN`` adds a
recurrent ``Linear`` per layer (spyx ``RLIF``/``RCuBaLIF`` dynamics with any
neuron); ``ConvSNN`` has ``Conv -> neuron -> pooling`` layers for event
frames. The neurons are spyx's (``spyx.nn.LIF``, ``CuBaLIF``, ``ALIF``,
``IF``); this module only wires them.

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
  sees each weight exactly once per step: ``fc/0``, ``fc/1``, ..., ``readout``
  (and ``rec/i`` for recurrent weights: a bare ``@`` would stay fp32 silently).
  Convolutions are ``nnx.Conv`` computed as one ``dot_general`` over patches
  by default, the only form in which qwix 0.1.8 takes every recipe.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

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
            x, s = neuron(self._current(i, x, state[i]), state[i])
            new_state.append(s)
            rates.append(jnp.mean(x, axis=-1))
        return new_state, (x, jnp.stack(rates, axis=-1))

    def _current(self, i: int, x: jax.Array, state_i: Any) -> jax.Array:
        """Input current of hidden layer ``i``: its feed-forward drive ``x [B, H_i]`` alone."""
        return x

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
        _check_loop(loop)
        b, t, n_in = x.shape
        cur = self.fc[0](x.reshape(b * t, n_in)).reshape(b, t, -1)
        cur = jnp.swapaxes(cur, 0, 1)  # [T, B, H0]
        state = [n.initial_state(b) for n in self.neurons]
        spikes, rates = _run_time(self, self._step, state, cur, loop)
        return _li_readout(self.readout, self.li, spikes), jnp.swapaxes(rates, 0, 1)


def _check_loop(loop: str) -> None:
    """Raises ``ValueError`` naming the choices for an unknown ``loop``."""
    if loop not in ("scan", "unrolled", "carry"):
        raise ValueError(f"loop={loop!r}; valid choices: scan, unrolled, carry")


def _run_time(model: nnx.Module, step: Callable, state, cur, loop: Loop):
    """Runs ``step(state, cur_t) -> (state, out_t)`` over the leading axis of ``cur``.

    The three loops of ``FeedForwardSNN.__call__`` (see the module docstring):
    ``scan`` closes over the model, ``unrolled`` is a Python loop (qwix's first
    call), ``carry`` scans with the model in the carry (static-range
    calibration). ``step`` must be a method of ``model``; it is looked up by
    name on the carried model in ``carry``.

    Returns:
        The outputs of every step, stacked on a leading time axis.
    """
    _check_loop(loop)
    if loop == "scan":
        _, outs = jax.lax.scan(step, state, cur)
        return outs
    if loop == "unrolled":
        t = jax.tree.leaves(cur)[0].shape[0]
        per_step = []
        for k in range(t):
            state, out = step(state, jax.tree.map(lambda a, k=k: a[k], cur))
            per_step.append(out)
        return jax.tree.map(lambda *a: jnp.stack(a), *per_step)
    name = step.__name__

    @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=(nnx.Carry, 0))
    def body(carry, cur_t):
        m, st = carry
        st, out = getattr(m, name)(st, cur_t)
        return (m, st), out

    _, outs = body((model, state), cur)
    return outs


def _li_readout(readout: nnx.Linear, li: LI, spikes: jax.Array) -> jax.Array:
    """Readout projection over all ``T*B`` rows at once, then the LI scan.

    Args:
        readout: the output projection ``[D, n_out]``.
        li: the leaky-integrator neuron.
        spikes: last-layer spikes ``[T, B, D]``.

    Returns:
        The LI membrane ``[B, T, n_out]``.
    """
    t, b, d = spikes.shape
    drive = readout(spikes.reshape(t * b, d)).reshape(t, b, -1)

    def integrate(v, x):
        out, v = li(x, v)
        return v, out

    _, out = jax.lax.scan(integrate, li.initial_state(b), drive)
    return jnp.swapaxes(out, 0, 1)


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
    (a bare ``@`` as in spyx stays silently fp32; see QWIX_FACTS.md). Any spyx
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
    ("lhs and rhs cannot be both weights"); ``snnexp.train.check_shapes``
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
        rngs: nnx.Rngs,
    ):
        """Builds the network.

        Args:
            n_in: input features per time step.
            hidden: sizes of the recurrent spiking layers, e.g. ``[128]``.
            n_out: number of classes.
            neuron: a spyx neuron class (or partial) called as
                ``neuron(hidden_shape=(h,), rngs=rngs)``.
            readout_beta: decay of the LI readout; ``None`` learns one per class.
            rec_gain: the recurrent kernels start as an orthogonal matrix times
                ``rec_gain / sqrt(H)``; 0 starts without feedback.
            rngs: random streams for the parameters.
        """
        if not hidden:
            raise ValueError("model.hidden must name at least one hidden layer, got []")
        if rec_gain < 0:
            raise ValueError(f"model.rec_gain must be >= 0, got {rec_gain}")
        sizes = [n_in, *hidden]
        self.fc = nnx.List(
            [nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:], strict=True)]
        )
        self.rec = nnx.List(
            [
                nnx.Linear(h, h, use_bias=False, rngs=rngs,
                           kernel_init=nnx.initializers.orthogonal(scale=rec_gain / h**0.5))
                for h in hidden
            ]
        )
        self.neurons = nnx.List([neuron(hidden_shape=(h,), rngs=rngs) for h in hidden])
        self.readout = nnx.Linear(hidden[-1], n_out, rngs=rngs)
        self.li = LI((n_out,), beta=readout_beta, rngs=rngs)

    def synapses(self) -> list[tuple[int, int]]:
        """``(neurons, fan-out)`` of the input and of each spiking layer.

        A recurrent layer's fan-out counts its recurrent synapses too:
        ``[(F, H_0), (H_0, H_0 + H_1), ..., (H_{L-1}, H_{L-1} + n_out)]``.
        """
        sizes = self.layer_sizes()
        out = [(sizes[0], sizes[1])]
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


POOLINGS = ("max", "avg")
CONV_IMPLS = ("patches", "lax")


def conv_as_dot_general(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: jax.lax.ConvDimensionNumbers | None = None,
    feature_group_count: int = 1,
    precision: jax.lax.PrecisionLike = None,
    preferred_element_type: jnp.dtype | None = None,
    out_sharding: object = None,
) -> jax.Array:
    """A 2-D NHWC convolution computed as ONE ``lax.dot_general`` over patches.

    A drop-in ``conv_general_dilated`` for ``nnx.Conv`` (as its
    ``conv_general_dilated=`` argument). The ``k x k`` patches are cut by
    slicing (not by ``lax.conv_general_dilated_patches``, itself a convolution)
    into ``[N, H', W', kh, kw, C_in]`` and contracted with the untouched
    ``[kh, kw, C_in, C_out]`` kernel. Why: qwix 0.1.8 quantizes a convolution
    only when its activation and weight qtypes are equal (``w8a8``; int4 or
    ternary weights under int8 activations and weights-only recipes fail),
    while its ``dot_general`` takes every recipe. The kernel reaches
    ``dot_general`` as the module's own parameter, so qwix recognises it as
    the weight (one scale per output channel); activations get one dynamic
    scale per output position (per patch) instead of one per image.

    Args:
        lhs: images ``[N, H, W, C_in]``.
        rhs: kernel ``[kh, kw, C_in, C_out]`` (or qwix's quantized stand-in).
        window_strides: ``(s_h, s_w)``.
        padding: ``"SAME"``, ``"VALID"`` or ``[(lo, hi), (lo, hi)]``.
        lhs_dilation: must be 1 (not supported otherwise).
        rhs_dilation: must be 1 (not supported otherwise).
        dimension_numbers: must be NHWC/HWIO/NHWC, what ``nnx.Conv`` passes.
        feature_group_count: must be 1.
        precision: passed to ``dot_general``.
        preferred_element_type: passed to ``dot_general``.
        out_sharding: unused (single device).

    Returns:
        ``[N, H', W', C_out]``.
    """
    del out_sharding
    if lhs.ndim != 4 or len(rhs.shape) != 4:
        raise NotImplementedError(f"conv_as_dot_general: 2-D NHWC only, got input {lhs.shape}, kernel {rhs.shape}")
    if any(d != 1 for d in (*(lhs_dilation or (1, 1)), *(rhs_dilation or (1, 1)))) or feature_group_count != 1:
        raise NotImplementedError("conv_as_dot_general: dilation and feature groups are not supported")
    if dimension_numbers is not None:
        nhwc = jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, ("NHWC", "HWIO", "NHWC"))
        if tuple(dimension_numbers) != tuple(nhwc):
            raise NotImplementedError(f"conv_as_dot_general: NHWC/HWIO only, got {dimension_numbers}")
    kh, kw = rhs.shape[0], rhs.shape[1]
    sh, sw = window_strides
    _, h, w, _ = lhs.shape
    pads = jax.lax.padtype_to_pads((h, w), (kh, kw), (sh, sw), padding) if isinstance(padding, str) else padding
    (t, b), (left, r) = pads
    xp = jnp.pad(lhs, ((0, 0), (t, b), (left, r), (0, 0)))
    oh, ow = (h + t + b - kh) // sh + 1, (w + left + r - kw) // sw + 1
    rows = [
        jnp.stack([xp[:, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw, :] for j in range(kw)], axis=3)
        for i in range(kh)
    ]
    patches = jnp.stack(rows, axis=3)  # [N, oh, ow, kh, kw, C_in]
    return jax.lax.dot_general(patches, rhs, (((3, 4, 5), (0, 1, 2)), ((), ())), precision=precision,
                               preferred_element_type=preferred_element_type)


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
      patches (``conv_as_dot_general``). qwix quantizes it under every recipe
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
            readout_beta: decay of the LI readout; ``None`` learns one per class.
            impl: ``"patches"`` or ``"lax"`` (see the class docstring).
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

    def __call__(self, x: jax.Array, *, loop: Loop = "scan") -> tuple[jax.Array, jax.Array]:
        """Runs the network over a whole sequence of frames.

        Args:
            x: inputs ``[B, T, C*H*W]``, each frame flattened in ``(C, H, W)`` order.
            loop: ``"scan"`` (training, evaluation), ``"unrolled"`` (qwix's
                first call), ``"carry"`` (static-range calibration).

        Returns:
            ``(readout [B, T, n_out], rates [B, T, L])``: the LI membrane per
            step, and the per-layer fraction of neurons that spiked per step.
        """
        _check_loop(loop)
        b, t, f = x.shape
        c, h, w = self.image
        if f != c * h * w:
            raise ValueError(f"input has {f} features per step, the model expects {c}x{h}x{w}={c * h * w}")
        frames = x.reshape(b * t, c, h, w).transpose(0, 2, 3, 1)  # NHWC
        cur = self._conv(0, frames)
        cur = jnp.swapaxes(cur.reshape(b, t, *cur.shape[1:]), 0, 1)  # [T, B, H0, W0, C0]
        state = [n.initial_state(b) for n in self.neurons]
        spikes, rates = _run_time(self, self._step, state, cur, loop)
        return _li_readout(self.readout, self.li, spikes), jnp.swapaxes(rates, 0, 1)
