"""What a bit-width costs: weight memory from the stored dtypes, spike activity.

Weight bytes are counted from the arrays a model really holds (an int8
``qvalue`` counts 1 byte per entry, an int4 one half, its float32 scales 4),
not from the recipe's nominal bit-width.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import nnx


def dtype_bits(dtype) -> int:
    """Storage bits of one element: 4 for int4, 8 for int8, 32 for float32."""
    dtype = jnp.dtype(dtype)
    if jnp.issubdtype(dtype, jnp.integer):
        return jnp.iinfo(dtype).bits
    if jnp.issubdtype(dtype, jnp.floating):
        return jnp.finfo(dtype).bits
    return dtype.itemsize * 8


def _param_leaves(model: nnx.Module) -> list[tuple[tuple, object]]:
    return [(tuple(map(str, p)), v) for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))]


def weight_bytes(model: nnx.Module) -> float:
    """Bytes of every parameter as stored (codes, scales, biases, decays)."""
    return sum(v.size * dtype_bits(v.dtype) for _, v in _param_leaves(model)) / 8


def bits_per_weight(model: nnx.Module) -> float:
    """Storage bits of the weight matrices (codes + their scales) per weight.

    An int8 matrix ``[in, out]`` with one float32 scale per output channel
    stores ``8 + 32 / in`` bits per weight; an fp32 matrix 32.
    """
    bits, count = 0, 0
    for path, v in _param_leaves(model):
        if "kernel" not in path:
            continue
        bits += v.size * dtype_bits(v.dtype)
        if path[-1] in ("kernel", "qvalue"):
            count += v.size
    return bits / max(count, 1)


def synaptic_ops(
    input_rate: float, layer_rates: np.ndarray, synapses: list[tuple[int, int]], steps: int
) -> float:
    """Synaptic operations per sample: every spike times its fan-out, over T steps.

    Args:
        input_rate: mean input activity per channel and step (for analog
            inputs, the mean input value: then the first term counts MACs).
        layer_rates: mean spike rate per spiking layer ``[L]``.
        synapses: ``(neurons, fan-out)`` of the input and of each spiking
            layer (``L + 1`` pairs), from the model's ``synapses()``.
        steps: time steps T.
    """
    rates = [input_rate, *map(float, layer_rates)]
    if len(rates) != len(synapses):
        raise ValueError(f"{len(rates)} rates for {len(synapses)} synapse groups")
    return float(sum(r * n * fan for r, (n, fan) in zip(rates, synapses, strict=True)) * steps)
