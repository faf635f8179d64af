"""What a bit-width costs: weight memory, code statistics, synaptic operations.

Weight memory comes in two counts:

* ``weight_bytes``: the arrays as a model really holds them (an int8
  ``qvalue`` counts 1 byte per entry; qwix keeps int2/int3 codes, and so
  ternary, in an int4 container, which counts half a byte; float32 scales 4).
* ``weight_bytes_packed``: what the same weights take packed at the recipe's
  true width (``packed_bits``): intN codes N bits, ternary codes 2 bits, float
  formats their own width; scales, biases and decays as stored, and ternary's
  one absmean scale once per matrix (qwix repeats it per output channel;
  ``ternary_scale: channel`` has one per channel, counted as stored).

The width of a layer comes from the recipe (``qtype_of``: the first rule whose
``module_path`` fullmatches the layer's path), not from the container dtype.

Synaptic operations follow NeuroBench's effective ACs and MACs
(``synaptic_counts``): every nonzero input to a layer triggers one operation
per synapse it reaches; the operation is an accumulate (AC) when the input is
a binary spike and a multiply-accumulate (MAC) when it is an analog value.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from snnexp.models.decays import FixedDecay
from snnexp.quant import Rule


def dtype_bits(dtype) -> int:
    """Storage bits of one element: 4 for int4, 8 for int8, 32 for float32."""
    dtype = jnp.dtype(dtype)
    if jnp.issubdtype(dtype, jnp.integer):
        return jnp.iinfo(dtype).bits
    if jnp.issubdtype(dtype, jnp.floating):
        return jnp.finfo(dtype).bits
    return dtype.itemsize * 8


def _param_leaves(model: nnx.Module) -> list[tuple[tuple[str, ...], object]]:
    """Every stored parameter, as ``(path, variable)``: the ``nnx.Param``s and the fixed decays."""
    state = nnx.state(model, (nnx.Param, FixedDecay))
    return [(tuple(map(str, p)), v) for p, v in nnx.to_flat_state(state)]


def weight_bytes(model: nnx.Module) -> float:
    """Bytes of every parameter as stored (codes in their containers, scales, biases, decays)."""
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


# ------------------------------------------------------------- true widths


def rule_of(module_path: str, rules: Sequence[Rule]) -> Rule | None:
    """The rule of the recipe for the layer at ``module_path`` (``fc/0``), or None (float).

    The first rule whose ``module_path`` regex fullmatches the path wins, as in qwix.
    """
    for rule in rules:
        if re.fullmatch(rule.module_path, module_path):
            return rule
    return None


def qtype_of(module_path: str, rules: Sequence[Rule]) -> str | None:
    """The weight qtype the recipe gives the layer at ``module_path`` (``fc/0``), or None (float)."""
    rule = rule_of(module_path, rules)
    return None if rule is None else rule.weight_qtype


def packed_bits(qtype: str | None, stored_dtype) -> int:
    """Bits of one weight code packed at its true width.

    Args:
        qtype: the layer's weight qtype (``int3``, ``ternary``, ``nf4``,
            ``float8_e4m3fn``, ...), or None for an unquantized layer.
        stored_dtype: the dtype the code is held in.

    Returns:
        ``N`` for ``intN``; 2 for ternary (three codes packed in 2 bits);
        otherwise the stored width (float formats, nf4's 4-bit index, fp32).
    """
    if qtype == "ternary":
        return 2
    if qtype is not None and (m := re.fullmatch(r"int(\d+)", qtype)):
        return int(m.group(1))
    return dtype_bits(stored_dtype)


@dataclasses.dataclass(frozen=True)
class Matrix:
    """One weight matrix of a model, as stored.

    Attributes:
        path: the module path, ``fc/0``, ``rec/0``, ``conv/1``, ``readout``.
        codes: the integer (or float-format) codes, or the float weights of an
            unquantized layer, e.g. ``[in, out]`` or ``[k, k, C_in, C_out]``.
        scales: the stored scale arrays (none for an unquantized layer).
        quantized: whether the layer holds qwix codes.
    """

    path: str
    codes: np.ndarray
    scales: tuple[np.ndarray, ...]
    quantized: bool


def matrices(model: nnx.Module) -> list[Matrix]:
    """The weight matrices (``kernel``s) of ``model``, quantized (``qvalue`` + ``scale``) or float."""
    out: dict[str, dict] = {}
    for path, v in _param_leaves(model):
        if "kernel" not in path:
            continue
        module = "/".join(path[: path.index("kernel")])
        entry = out.setdefault(module, {"codes": None, "scales": [], "quantized": False})
        if path[-1] == "kernel":
            entry["codes"] = np.asarray(v.get_value())
        elif path[-1] == "qvalue":
            entry["codes"], entry["quantized"] = np.asarray(v.get_value()), True
        else:
            entry["scales"].append(np.asarray(v.get_value()))
    return [Matrix(p, e["codes"], tuple(e["scales"]), e["quantized"]) for p, e in out.items()
            if e["codes"] is not None]


def weight_bytes_packed(model: nnx.Module, rules: Sequence[Rule]) -> float:
    """Bytes of every parameter with the weight codes packed at the recipe's true width.

    Codes count ``packed_bits`` each, their scales as stored, except ternary
    with ``ternary_scale: tensor``: its one absmean scale counts once per matrix. Everything else (biases,
    decays, unquantized matrices, static activation scales) counts as stored.

    Args:
        model: a deployed (or float) network.
        rules: the recipe it was quantized with (empty for fp32).
    """
    bits = 0.0
    for path, v in _param_leaves(model):
        module = "/".join(path[: path.index("kernel")]) if "kernel" in path else None
        qtype = qtype_of(module, rules) if module is not None else None
        if module is not None and path[-1] == "qvalue":
            bits += v.size * packed_bits(qtype, v.dtype)
        elif module is not None and path[-1] == "scale" and qtype == "ternary" \
                and rule_of(module, rules).ternary_scale == "tensor":
            bits += dtype_bits(v.dtype)  # one scale for the whole matrix
        else:
            bits += v.size * dtype_bits(v.dtype)
    return bits / 8


def _codes(m: Matrix) -> np.ndarray:
    return m.codes.astype(np.float32).ravel()


def entropy_bits(codes: np.ndarray) -> float:
    """Empirical entropy ``-sum p log2 p`` of the distinct values in ``codes``, in bits per code."""
    _, counts = np.unique(np.asarray(codes).ravel(), return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


def weight_entropy_bits(model: nnx.Module) -> float | None:
    """Empirical entropy of the quantized weight codes, in bits per weight.

    Each matrix's entropy (of its own code histogram) weighted by its size:
    what an entropy coder would need per weight. Ternary codes with 30 %
    zeros measure about 1.58. None when no matrix is quantized.
    """
    q = [m for m in matrices(model) if m.quantized]
    if not q:
        return None
    sizes = np.asarray([m.codes.size for m in q], dtype=np.float64)
    return float(np.dot(sizes, [entropy_bits(_codes(m)) for m in q]) / sizes.sum())


def weight_sparsity(model: nnx.Module) -> dict[str, float]:
    """Share of zero codes per weight matrix (zero weights for an unquantized one), and ``total``.

    Returns:
        ``{"fc/0": 0.31, ..., "readout": 0.28, "total": 0.30}``; ``total`` is
        over every weight of every matrix.
    """
    out, zeros, count = {}, 0, 0
    for m in matrices(model):
        z = int(np.count_nonzero(_codes(m) == 0))
        out[m.path] = z / m.codes.size
        zeros, count = zeros + z, count + m.codes.size
    out["total"] = zeros / max(count, 1)
    return out


# ------------------------------------------------------- synaptic operations


def input_activity(x: jax.Array | np.ndarray) -> tuple[float, bool]:
    """How a data set drives the input layer.

    Args:
        x: inputs ``[N, T, F]``.

    Returns:
        ``(nonzero, binary)``: the share of nonzero entries, and whether every
        entry is 0 or 1 (spikes, counted as ACs) rather than analog (MACs).
    """
    x = jnp.asarray(x)
    nonzero = float(jnp.mean(x != 0))
    binary = bool(jnp.all((x == 0) | (x == 1)))
    return nonzero, binary


@dataclasses.dataclass(frozen=True)
class SynapticCounts:
    """Effective synaptic operations per sample, NeuroBench style.

    Attributes:
        acs: accumulates, triggered by binary spikes (input and spiking layers).
        macs: multiply-accumulates, triggered by nonzero analog inputs.
        activation_sparsity: share of spiking-neuron outputs (neurons x steps)
            that are zero.
    """

    acs: float
    macs: float
    activation_sparsity: float

    @property
    def ops(self) -> float:
        """All synaptic operations, ``acs + macs``."""
        return self.acs + self.macs


def synaptic_counts(input_nonzero: float, input_binary: bool, layer_rates: Sequence[float] | np.ndarray,
                    synapses: Sequence[tuple[int, int]], steps: int) -> SynapticCounts:
    """Effective ACs and MACs per sample: every nonzero input times its fan-out, over T steps.

    An input value of 0 costs nothing. A spike (the hidden layers' outputs,
    and the input when it is binary) costs one AC per synapse it reaches; an
    analog input value one MAC per synapse.

    Args:
        input_nonzero: share of nonzero input entries (``input_activity``).
        input_binary: whether the input is spikes (ACs) or analog (MACs).
        layer_rates: mean spike rate per spiking layer ``[L]`` (spikes per
            neuron and step).
        synapses: ``(neurons, fan-out)`` of the input and of each spiking
            layer (``L + 1`` pairs), from the model's ``synapses()``.
        steps: time steps T.
    """
    rates = [float(r) for r in layer_rates]
    if len(rates) + 1 != len(synapses):
        raise ValueError(f"{len(rates) + 1} rates (input and {len(rates)} layers) for "
                         f"{len(synapses)} synapse groups")
    (n_in, fan_in), layers = synapses[0], synapses[1:]
    first = float(input_nonzero) * n_in * fan_in * steps
    spikes = float(sum(r * n * fan for r, (n, fan) in zip(rates, layers, strict=True)) * steps)
    neurons = sum(n for n, _ in layers)
    fired = sum(r * n for r, (n, _) in zip(rates, layers, strict=True))
    return SynapticCounts(
        acs=spikes + (first if input_binary else 0.0),
        macs=0.0 if input_binary else first,
        activation_sparsity=1.0 - fired / neurons if neurons else 0.0,
    )


def deployed_metrics(deployed: nnx.Module, rules: Sequence[Rule], x_test: jax.Array | np.ndarray,
                     layer_rates: Sequence[float] | np.ndarray, synapses: Sequence[tuple[int, int]],
                     ) -> dict[str, object]:
    """The memory and operation counts of a deployed network, as ``metrics.json`` keys.

    Args:
        deployed: the integer network.
        rules: its recipe.
        x_test: the test inputs ``[N, T, F]`` it was evaluated on.
        layer_rates: its mean spike rate per spiking layer ``[L]`` on them.
        synapses: ``(neurons, fan-out)`` of the input and of each spiking layer.

    Returns:
        ``weight_bytes_packed``, ``weight_entropy_bits``, ``weight_sparsity``
        (per matrix and ``total``), ``synaptic_acs_per_sample``,
        ``synaptic_macs_per_sample``, ``synaptic_ops_per_sample`` (their sum)
        and ``activation_sparsity``.
    """
    nonzero, binary = input_activity(x_test)
    ops = synaptic_counts(nonzero, binary, layer_rates, synapses, int(np.shape(x_test)[1]))
    return {
        "weight_bytes_packed": weight_bytes_packed(deployed, rules),
        "weight_entropy_bits": weight_entropy_bits(deployed),
        "weight_sparsity": weight_sparsity(deployed),
        "synaptic_acs_per_sample": ops.acs,
        "synaptic_macs_per_sample": ops.macs,
        "synaptic_ops_per_sample": ops.ops,
        "activation_sparsity": ops.activation_sparsity,
    }
