"""The deployed network as a NIR graph: float weights that are exactly its codes x scales.

NIR (the Neuromorphic Intermediate Representation) holds float weights and
continuous-time neurons; it has no integer codes (the sidecar carries them).
This module builds the float twin of a deployed network
(``dequantized_model``: every kernel ``codes * scales`` in float32, biases and
decays copied) and writes it as a NIR graph (``to_nir``) that spyx's
``spyx.nir.from_nir`` rebuilds into the same computation (``run_spyx`` is that
consumer's recipe, and the tests' reference).

snnexp's neurons are spyx's discrete-time ones. Per step ``t`` (states start
at 0, ``H(u) = 1`` where ``u > 0``; ``x_t`` the input current)::

    LIF      s_t = H(V_{t-1} - θ);  V_t = β V_{t-1} + x_t - θ s_t
    CuBaLIF  s_t = H(V_{t-1} - θ);  I_t = α I_{t-1} + x_t;  V_t = β (V_{t-1} - θ s_t) + I_t
    IF       s_t = H(V_{t-1} - θ);  V_t = V_{t-1} + x_t - θ s_t
    LI       V_t = β V_{t-1} + x_t  (the readout; its membrane is the output)

and a recurrent layer adds ``W_rec^T s_t`` (no bias) to ``x_t``. The graph
states them with NIR's nodes and conventions, for forward-Euler integration at
the stated ``dt`` (``graph.metadata["dt"]``, seconds by NIR's habit; only
``dt / τ`` matters)::

    LIF      τ = dt / (1 - β),  r = τ / dt,  v_leak = 0,  v_threshold = θ,  v_reset = 0
    CubaLIF  τ_mem = dt / (1 - β),  τ_syn = dt / (1 - α),  r = τ_mem / dt,  w_in = τ_syn / dt, ...
    IF       r = 1 / dt,  v_threshold = θ,  v_reset = 0
    LI       τ = dt / (1 - β),  r = τ / dt,  v_leak = 0

so that Euler's ``v += dt/τ (v_leak - v + r I)`` is ``v = β v + I`` (unit
gain), as in snnTorch's exporter. Where NIR's continuous-time node means
something else than spyx computes, docs/nir.md says what a consumer must do:
the reset subtracts θ (NIR: ``v = v_reset``), the spike is decided on the
membrane of the previous step (one step of delay per spiking layer), LIF's
reset is not decayed (CuBaLIF's is), and the decay is Euler's ``1 - dt/τ``,
not ``exp(-dt/τ)``.

A recurrent layer is a NIR subgraph (snnTorch's ``RLeaky`` form, which spyx
reads as ``RLIF``/``RCuBaLIF``/``RIF``): nodes ``input``, ``lif``, ``w_rec``
(a ``Linear``, weight ``[H, H]`` as ``(out, in)``), ``output``; edges
``input -> lif``, ``lif -> w_rec``, ``w_rec -> lif``, ``lif -> output``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import nir
import numpy as np
from flax import nnx
from omegaconf import DictConfig
from spyx import axn
from spyx import nn as snn

from snnexp.models import ConvSNN, FeedForwardSNN, RecurrentSNN

SUPPORTED_MODELS = ("FeedForwardSNN", "RecurrentSNN")
SUPPORTED_NEURONS = ("LIF", "CuBaLIF", "IF")
# What the graph records about itself, beyond its nodes (graph.metadata).
_SEMANTICS = {
    "producer": "snnexp",
    "integration": "forward Euler at dt: decay = 1 - dt/tau, unit input gain (r = tau/dt, w_in = tau_syn/dt)",
    "reset": "subtract v_threshold on a spike (v_reset is not used)",
    "spike": "decided on the membrane of the previous step, before this step's input is integrated",
    "recurrence": "w_rec carries this step's spikes (decided on the previous membrane) into this step's input",
    "output": "the membrane of the LI readout at every step",
    "delay": "a Delay of k * dt holds its input k steps back, zero before the sequence starts (input delay line)",
    "docs": "docs/nir.md",
}


# ------------------------------------------------------------------ the float twin of a deployed network


def dequantize_kernel(kernel: Any) -> np.ndarray:
    """The float32 values of a (possibly quantized) ``nnx.Linear`` kernel: ``codes * scale``.

    Args:
        kernel: the ``kernel`` of a deployed ``nnx.Linear``: a plain ``nnx.Param``
            ``[in, out]``, or qwix's ``WithAux`` around a ``QArray`` with integer
            (ternary: int2) or floating ``qvalue`` codes ``[in, out]`` and a
            ``scale`` ``[in / tile or 1, out]``.

    Returns:
        The kernel ``[in, out]`` in float32: each code times the scale of its
        tile, one float32 multiplication (so exactly what the codes mean).

    Raises:
        ValueError: the array has a zero point (asymmetric) or nf4 codes
            (indices into a table, not values).
    """
    array = getattr(kernel, "array", None)
    if array is None or not hasattr(array, "qvalue"):
        return np.asarray(kernel[...], np.float32)
    qtype = str(array.qtype)
    if qtype == "nf4":
        raise ValueError("a kernel of qtype nf4 holds table indices, not values; NIR export takes integer "
                         "(int2..int8, ternary) and floating (float8, mxfp, nvfp4) codes")
    if array.zero_point is not None:
        raise ValueError(f"a kernel of qtype {qtype} has a zero point; NIR export takes symmetric codes only")
    codes = np.asarray(jnp.asarray(array.qvalue[...]).astype(jnp.float32))
    scale = np.asarray(jnp.asarray(array.scale[...]), np.float32)
    if scale.ndim != codes.ndim:
        raise ValueError(f"scale of shape {scale.shape} does not match codes of shape {codes.shape}")
    for axis, (c, s) in enumerate(zip(codes.shape, scale.shape, strict=True)):
        if s not in (1, c):
            if c % s:
                raise ValueError(f"scale of shape {scale.shape} does not tile codes of shape {codes.shape}")
            scale = np.repeat(scale, c // s, axis=axis)
    return (codes * scale).astype(np.float32)


def _at(model: nnx.Module, path: tuple) -> Any:
    """The submodule of ``model`` at an ``nnx.iter_modules`` path."""
    for key in path:
        model = model[key] if isinstance(key, int) else getattr(model, key)
    return model


def dequantized_model(cfg: DictConfig, deployed: nnx.Module) -> nnx.Module:
    """A float network of the deployed one's class whose kernels are its codes x scales.

    Built with ``snnexp.build.model(cfg, n_in, n_out)`` (widths read off the
    deployed network); every ``nnx.Linear`` kernel is ``dequantize_kernel`` of
    the deployed one, and biases and neuron parameters (the stored value of a
    ``FixedDecay``, the logit of a ``DecayLogit``) are copied. Running it is
    snnexp's float-state forward on the deployed weights.

    Args:
        cfg: the run config (``load_deployed``'s first value).
        deployed: the deployed network (``load_deployed``'s second value), or
            any network of ``cfg``'s shapes.

    Returns:
        The float network; ``deployed`` is left as it was.
    """
    from snnexp import build  # build imports the training loop; keep this module light to import

    n_in, n_out = deployed.layer_sizes()[0], deployed.layer_sizes()[-1]
    model = build.model(cfg, n_in, n_out)
    for path, module in nnx.iter_modules(model):
        source = _at(deployed, path)
        if isinstance(module, (nnx.Linear, nnx.Conv)):
            module.kernel.set_value(jnp.asarray(dequantize_kernel(source.kernel)))
            if module.bias is not None:
                module.bias.set_value(jnp.asarray(source.bias[...], jnp.float32))
            continue
        if path and isinstance(source, nnx.Module):
            for name, var in vars(module).items():
                if isinstance(var, nnx.Variable):
                    raw = getattr(source, name).get_raw_value()
                    if np.shape(raw) != np.shape(var.get_raw_value()):
                        raise ValueError(f"{'/'.join(map(str, (*path, name)))}: deployed shape {np.shape(raw)} "
                                         f"!= built shape {np.shape(var.get_raw_value())}")
                    var.set_raw_value(jnp.asarray(raw))
    return model


# ------------------------------------------------------------------ to NIR


def _decay(value: Any, where: str, shape: tuple[int, ...]) -> np.ndarray:
    """A decay as spyx uses it (clipped to ``[0, 1]``), per neuron, float64; 1 is refused."""
    d = np.clip(np.broadcast_to(np.asarray(value, np.float64), shape), 0.0, 1.0)
    if np.any(d >= 1.0):
        raise ValueError(f"{where} has a decay of 1 (no leak): NIR's time constant dt/(1-decay) would be "
                         "infinite; use neuron=if for a neuron without leak")
    return d


def _neuron_node(neuron: nnx.Module, where: str, h: int, dt: float) -> nir.NIRNode:
    """The NIR node of one spyx neuron of ``h`` units (module ``where``)."""
    shape = (h,)
    theta = np.broadcast_to(np.asarray(neuron.threshold, np.float64), shape).copy()
    zeros = np.zeros(shape)
    if type(neuron) is snn.IF:
        return nir.IF(r=np.full(shape, 1.0 / dt), v_threshold=theta, v_reset=zeros)
    if type(neuron) is snn.LIF:
        tau = dt / (1.0 - _decay(neuron.beta[...], f"{where}/beta", shape))
        return nir.LIF(tau=tau, r=tau / dt, v_leak=zeros, v_threshold=theta, v_reset=zeros)
    if type(neuron) is snn.CuBaLIF:
        tau_mem = dt / (1.0 - _decay(neuron.beta[...], f"{where}/beta", shape))
        tau_syn = dt / (1.0 - _decay(neuron.alpha[...], f"{where}/alpha", shape))
        return nir.CubaLIF(tau_syn=tau_syn, tau_mem=tau_mem, r=tau_mem / dt, v_leak=zeros, v_threshold=theta,
                           v_reset=zeros, w_in=tau_syn / dt)
    if type(neuron) is snn.ALIF:
        raise ValueError(f"{where} is an ALIF neuron: NIR has no adaptive-threshold primitive, so it cannot "
                         f"be exported; supported neurons: {', '.join(SUPPORTED_NEURONS)}")
    raise ValueError(f"{where} is a {type(neuron).__name__} neuron; supported neurons: "
                     f"{', '.join(SUPPORTED_NEURONS)}")


def _affine(linear: nnx.Linear, where: str) -> nir.NIRNode:
    """``Affine`` (or ``Linear`` without bias) of a float ``nnx.Linear``; NIR's weight is ``(out, in)``."""
    kernel = getattr(linear.kernel, "array", None)
    if kernel is not None or not isinstance(linear.kernel[...], (jax.Array, np.ndarray)):
        raise ValueError(f"{where} holds a quantized kernel; NIR takes float weights: export "
                         "dequantized_model(cfg, deployed)")
    weight = np.asarray(linear.kernel[...], np.float32).T.copy()
    if linear.bias is None:
        return nir.Linear(weight=weight)
    return nir.Affine(weight=weight, bias=np.asarray(linear.bias[...], np.float32).copy())


def _input_edges(model: FeedForwardSNN, nodes: dict[str, nir.NIRNode], dt: float) -> list[tuple[str, str]]:
    """Adds the nodes from ``input`` to ``neurons.0`` (``fc.0``, or its delay taps) and returns their edges."""
    first = _affine(model.fc[0], "fc/0")
    if model.input_delays == 1:
        nodes["fc.0"] = first
        return [("input", "fc.0"), ("fc.0", "neurons.0")]
    f = model.layer_sizes()[0]
    edges = []
    for j in range(model.input_delays):
        weight = first.weight[:, j * f:(j + 1) * f].copy()
        tap = f"fc.0.tap.{j}"
        if j == 0:
            bias = getattr(first, "bias", None)
            nodes[tap] = nir.Linear(weight=weight) if bias is None else nir.Affine(weight=weight, bias=bias)
            edges.append(("input", tap))
        else:
            nodes[tap] = nir.Linear(weight=weight)
            nodes[f"fc.0.delay.{j}"] = nir.Delay(delay=np.full(f, j * model.delay_stride * dt))
            edges += [("input", f"fc.0.delay.{j}"), (f"fc.0.delay.{j}", tap)]
        edges.append((tap, "neurons.0"))
    return edges


def _recurrent_subgraph(neuron_node: nir.NIRNode, rec: nnx.Linear, where: str, h: int) -> nir.NIRGraph:
    """A recurrent layer: ``input -> lif``, ``lif <-> w_rec``, ``lif -> output`` (snnTorch's RLeaky form)."""
    w_rec = _affine(rec, where)
    if not isinstance(w_rec, nir.Linear):
        raise ValueError(f"{where} has a bias; a recurrent matrix must have none")
    nodes = {"input": nir.Input(input_type={"input": np.array([h])}), "lif": neuron_node, "w_rec": w_rec,
             "output": nir.Output(output_type={"output": np.array([h])})}
    edges = [("input", "lif"), ("lif", "w_rec"), ("w_rec", "lif"), ("lif", "output")]
    return nir.NIRGraph(nodes=nodes, edges=edges)


def to_nir(model: nnx.Module, dt: float = 1e-3) -> nir.NIRGraph:
    """The NIR graph of a float ``FeedForwardSNN`` or ``RecurrentSNN`` (the module docstring has the mapping).

    Nodes (names are snnexp's module paths, ``/`` read as ``.``): ``input``
    (``[F]``), then per hidden layer ``fc.i`` (``Affine``, weight
    ``[H_i, H_{i-1}]``) and ``neurons.i`` (``LIF``/``CubaLIF``/``IF``, or for
    ``RecurrentSNN`` the recurrent subgraph of that neuron and ``rec/i``),
    then ``readout`` (``Affine`` ``[n_out, H_last]``), ``li`` (``LI``) and
    ``output`` (``[n_out]``), chained in that order. A model with an input
    delay line (``model.input_delays`` ``D > 1``) has, instead of ``fc.0``, one
    ``fc.0.tap.j`` per delay (``Linear`` ``[H_0, F]``, the rows of ``fc/0`` that
    read delay ``j``; ``tap.0`` an ``Affine`` with the bias), each but ``tap.0``
    fed by a ``fc.0.delay.j`` (``Delay`` of ``j * delay_stride * dt``); the
    taps' outputs sum in ``neurons.0``. ``graph.metadata`` holds ``dt`` and how
    the graph is meant (reset, spike timing, output).

    Args:
        model: a float network (``dequantized_model`` of a deployed one).
        dt: the step, in NIR's time unit (seconds); time constants are
            ``dt / (1 - decay)``. A consumer must integrate at this ``dt``.

    Returns:
        The graph.

    Raises:
        ValueError: the model is not one of ``SUPPORTED_MODELS`` (``ConvSNN``
            included), a neuron is not one of ``SUPPORTED_NEURONS`` (NIR has no
            ALIF), a kernel is still quantized, a decay is 1, or ``dt <= 0``.
    """
    if isinstance(model, ConvSNN) or not isinstance(model, FeedForwardSNN):
        raise ValueError(f"to_nir takes a {' or '.join(SUPPORTED_MODELS)}, got {type(model).__name__}")
    if not dt > 0:
        raise ValueError(f"dt={dt!r} must be a positive number of seconds")
    sizes = model.layer_sizes()
    nodes: dict[str, nir.NIRNode] = {"input": nir.Input(input_type={"input": np.array([sizes[0]])})}
    edges = _input_edges(model, nodes, dt)
    for i, neuron in enumerate(model.neurons):
        h = sizes[i + 1]
        if i > 0:
            nodes[f"fc.{i}"] = _affine(model.fc[i], f"fc/{i}")
            edges += [(f"neurons.{i - 1}", f"fc.{i}"), (f"fc.{i}", f"neurons.{i}")]
        node = _neuron_node(neuron, f"neurons/{i}", h, dt)
        if isinstance(model, RecurrentSNN):
            node = _recurrent_subgraph(node, model.rec[i], f"rec/{i}", h)
        nodes[f"neurons.{i}"] = node
    n_out = sizes[-1]
    nodes["readout"] = _affine(model.readout, "readout")
    tau = dt / (1.0 - _decay(model.li.beta[...], "li/beta", (n_out,)))
    nodes["li"] = nir.LI(tau=tau, r=tau / dt, v_leak=np.zeros((n_out,)))
    nodes["output"] = nir.Output(output_type={"output": np.array([n_out])})
    edges += [(f"neurons.{len(model.neurons) - 1}", "readout"), ("readout", "li"), ("li", "output")]
    readout = {"mean": "mean over steps", "max": "maximum over steps", "last": "last step"}[
        getattr(model, "readout_mode", "mean")]
    return nir.NIRGraph(nodes=nodes, edges=edges,
                        metadata={"dt": float(dt), **_SEMANTICS, "class_scores": f"the output's {readout}"})


def write_nir(graph: nir.NIRGraph, path: str | Path) -> Path:
    """Writes ``graph`` to ``path`` (HDF5, ``nir.write``) atomically; returns the path."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    nir.write(tmp, graph)
    tmp.replace(path)
    return path


# ------------------------------------------------------------------ a consumer: spyx


def _probe(graph: nir.NIRGraph) -> nir.NIRGraph:
    """``graph`` with a never-firing ``Threshold`` after its LI readout, so spyx can build it.

    spyx rebuilds an ``LI`` only as half of ``LI -> Threshold`` (its
    ``PSU_LIF``, whose state is that LI's membrane); a threshold of ``+inf``
    never fires, and the membrane is read from the states.
    """
    g = copy.deepcopy(graph)
    (last,) = [a for a, b in g.edges if b == "output"]
    if not isinstance(g.nodes[last], nir.LI):
        raise ValueError(f"the node before the output is a {type(g.nodes[last]).__name__}, not the LI readout")
    g.nodes["li.probe"] = nir.Threshold(threshold=np.full(g.nodes[last].tau.shape, np.inf))
    g.edges = [e for e in g.edges if e != (last, "output")] + [(last, "li.probe"), ("li.probe", "output")]
    return g


def run_spyx(graph: nir.NIRGraph, x: jax.Array | np.ndarray, dt: float | None = None
             ) -> tuple[jax.Array, list[jax.Array]]:
    """Rebuilds ``graph`` with ``spyx.nir.from_nir`` and runs it: what a spyx user does with ``network.nir``.

    Args:
        graph: a graph of ``to_nir`` (or ``nir.read`` of one).
        x: inputs ``[B, T, F]`` (spyx's rebuilt network scans time-major
            ``[T, B, F]``; this function transposes).
        dt: the step to rebuild the decays with; ``None`` reads
            ``graph.metadata["dt"]``.

    Returns:
        ``(readout [B, T, n_out], spikes)``: the LI membrane per step, and the
        spikes of each hidden layer ``[B, T, H_i]``, recomputed from the
        membrane traces as each neuron decides them (``H(V_{t-1} - θ)``).
    """
    from spyx.nir import from_nir

    delays = [k for k, node in graph.nodes.items() if isinstance(node, nir.Delay)]
    if delays:
        raise ValueError(f"spyx.nir.from_nir reads no Delay node ({', '.join(delays)}: an input delay line); "
                         "run the graph with a consumer that does (docs/nir.md)")
    if dt is None:
        dt = float(graph.metadata["dt"])
    xt = jnp.swapaxes(jnp.asarray(x, jnp.float32), 0, 1)
    model, (_, states) = from_nir(_probe(graph), xt, dt=dt, return_all_states=True)
    spikes, readout = [], None
    for layer, state in zip(model.layers, states, strict=True):
        if isinstance(layer, snn.PSU_LIF):
            readout = jnp.swapaxes(state, 0, 1)
            continue
        if isinstance(layer, (snn.CuBaLIF, snn.RCuBaLIF)):
            state = jnp.split(state, 2, axis=-1)[0]
        elif not isinstance(layer, (snn.LIF, snn.IF, snn.RLIF, snn.RIF)):
            continue
        before = jnp.concatenate([jnp.zeros_like(state[:1]), state[:-1]], axis=0)  # V_{t-1}
        spikes.append(jnp.swapaxes(axn.heaviside(before - jnp.asarray(layer.threshold)), 0, 1))
    if readout is None:
        raise ValueError("the rebuilt network has no LI readout")
    return readout, spikes
