"""NIR export: the float twin of a deployed network, its NIR graph, and spyx rebuilding it from the file.

Real objects throughout: networks built from composed configs, qwix's own
quantization (and a real finished run for the slow tests), ``nir.write`` /
``nir.read`` on a file, and ``spyx.nir.from_nir`` as the other framework.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import nir
import numpy as np
import pytest
from flax import nnx
from qwix._src.core import qarray

from snnexp import build, quant
from snnexp.export import nir_graph
from snnexp.models.decays import decays
from snnexp.models.time_loop import run_time
from snnexp.rundir import load_deployed
from snnexp.train import run
from tests.conftest import make_cfg

NEURONS = ["lif", "cuba_lif", "if"]
MODELS = ["feedforward", "recurrent"]
BATCH = 8  # not a width of the networks (a square rec/i fed its own width of rows crashes qwix)


def cfg_of(model: str, neuron: str, learned: bool, *extra: str):
    """A tiny config: two hidden layers [24, 12]; ``learned``: every decay is learned (one per neuron)."""
    decays = []
    if learned:
        decays = ["model.readout_beta=null"] + {"lif": ["neuron.beta=null"], "if": [],
                                                "cuba_lif": ["neuron.beta=null", "neuron.alpha=null"]}[neuron]
    return make_cfg("debug=fast", f"model={model}", f"neuron={neuron}", "model.hidden=[24,12]", *decays, *extra)


def batch(cfg) -> jax.Array:
    """``BATCH`` test samples of the synthetic data set, spike trains ``[B, T, F]``."""
    return jnp.asarray(build.data(cfg).x_test[:BATCH])


def snnexp_spikes(model, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """snnexp's own forward: ``(readout [B, T, n_out], rates [B, T, L], last-layer spikes [B, T, H_last])``."""
    readout, rates = model(x)
    b, t, f = x.shape
    cur = jnp.swapaxes(model.fc[0](x.reshape(b * t, f)).reshape(b, t, -1), 0, 1)
    last, _ = run_time(model, model._step, [n.initial_state(b) for n in model.neurons], cur, "scan")
    return readout, rates, jnp.swapaxes(last, 0, 1)


def round_trip(model, x: jax.Array, path, dt: float = 1e-3) -> tuple[jax.Array, list[jax.Array]]:
    """``to_nir`` -> file -> ``nir.read`` -> ``spyx.nir.from_nir``, run on ``x``."""
    nir_graph.write_nir(nir_graph.to_nir(model, dt=dt), path)
    return nir_graph.run_spyx(nir.read(path), x)


def assert_same_network(model, x: jax.Array, path) -> None:
    """spyx's network rebuilt from the NIR file computes snnexp's readout and spikes."""
    readout, rates, last = snnexp_spikes(model, x)
    got, spikes = round_trip(model, x, path)
    assert float(jnp.mean(rates)) > 0.01, "no spikes: the comparison would be vacuous"
    np.testing.assert_allclose(np.asarray(got), np.asarray(readout), rtol=0, atol=1e-5)
    assert len(spikes) == len(model.neurons)
    for i, s in enumerate(spikes):
        np.testing.assert_array_equal(np.asarray(jnp.mean(s, -1)), np.asarray(rates[..., i]), err_msg=f"layer {i}")
    np.testing.assert_array_equal(np.asarray(spikes[-1]), np.asarray(last))


# ------------------------------------------------------------------ the graph, read back by spyx


# IF has no decay of its own: its one case learns the readout's.
CASES = [(m, n, learned) for m in MODELS for n in NEURONS for learned in (False, True) if n != "if" or learned]


@pytest.mark.parametrize(("model", "neuron", "learned"), CASES,
                         ids=[f"{m}-{n}-{'learned' if lr else 'fixed'}" for m, n, lr in CASES])
def test_spyx_rebuilds_the_same_network_from_the_file(model, neuron, learned, tmp_path):
    cfg = cfg_of(model, neuron, learned)
    net = build.model(cfg, 16, 4)
    assert_same_network(net, batch(cfg), tmp_path / "network.nir")


def test_the_graph_states_nir_conventions(tmp_path):
    cfg = cfg_of("recurrent", "cuba_lif", True)
    net = build.model(cfg, 16, 4)
    dt = 1e-3
    nir_graph.write_nir(nir_graph.to_nir(net, dt=dt), tmp_path / "n.nir")
    g = nir.read(tmp_path / "n.nir")
    assert g.edges == [("input", "fc.0"), ("fc.0", "neurons.0"), ("neurons.0", "fc.1"), ("fc.1", "neurons.1"),
                       ("neurons.1", "readout"), ("readout", "li"), ("li", "output")]
    assert float(g.metadata["dt"]) == dt and g.metadata["producer"] == "snnexp"
    assert isinstance(g.nodes["fc.0"], nir.Affine) and isinstance(g.nodes["readout"], nir.Affine)
    np.testing.assert_array_equal(g.nodes["fc.0"].weight, np.asarray(net.fc[0].kernel[...]).T)
    sub = g.nodes["neurons.0"]
    assert isinstance(sub, nir.NIRGraph)
    assert sorted(sub.edges) == sorted([("input", "lif"), ("lif", "w_rec"), ("w_rec", "lif"), ("lif", "output")])
    assert isinstance(sub.nodes["w_rec"], nir.Linear)
    np.testing.assert_array_equal(sub.nodes["w_rec"].weight, np.asarray(net.rec[0].kernel[...]).T)
    lif = sub.nodes["lif"]
    alpha, beta = np.asarray(net.neurons[0].alpha[...]), np.asarray(net.neurons[0].beta[...])
    assert alpha.shape == beta.shape == (24,)  # learned: one per neuron
    # Euler at dt: 1 - dt/tau gives the decay back exactly (in float32), with unit input gain.
    np.testing.assert_array_equal((1 - dt / lif.tau_mem).astype(np.float32), beta)
    np.testing.assert_array_equal((1 - dt / lif.tau_syn).astype(np.float32), alpha)
    np.testing.assert_allclose(lif.r * dt / lif.tau_mem, 1.0, rtol=1e-12)
    np.testing.assert_allclose(lif.w_in * dt / lif.tau_syn, 1.0, rtol=1e-12)
    np.testing.assert_array_equal(lif.v_threshold, np.full(24, 1.0))
    li = g.nodes["li"]
    np.testing.assert_array_equal((1 - dt / li.tau).astype(np.float32), np.asarray(net.li.beta[...]))


def test_if_and_lif_nodes(tmp_path):
    dt = 1e-3
    for neuron, kind in (("if", nir.IF), ("lif", nir.LIF)):
        g = nir_graph.to_nir(build.model(cfg_of("feedforward", neuron, False), 16, 4), dt=dt)
        node = g.nodes["neurons.0"]
        assert isinstance(node, kind)
        if kind is nir.IF:
            np.testing.assert_allclose(node.r * dt, 1.0)  # dv/dt = r I: one unit of input per step
        else:
            np.testing.assert_allclose((1 - dt / node.tau).astype(np.float32), 0.9)
            np.testing.assert_allclose(node.r, node.tau / dt)


def test_another_dt_rebuilds_the_same_network(tmp_path):
    cfg = cfg_of("feedforward", "lif", True)
    net = build.model(cfg, 16, 4)
    x = batch(cfg)
    want, _ = net(x)
    got, _ = round_trip(net, x, tmp_path / "n.nir", dt=0.25)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=0, atol=1e-5)


def np_run(graph: nir.NIRGraph, x: np.ndarray) -> np.ndarray:
    """docs/nir.md's consumer recipe in NumPy, from the graph alone: Euler at ``metadata["dt"]``, spikes on the
    previous membrane, subtractive reset (LIF's after the leak), ``w_rec`` carrying this step's spikes, a node's
    incoming edges summed, a ``Delay`` of ``k * dt`` holding its input ``k`` steps back.

    Returns the LI membrane ``[B, T, n_out]``.
    """
    dt = float(graph.metadata["dt"])
    f32 = np.float32
    into: dict[str, list[str]] = {}
    for a, b in graph.edges:
        into.setdefault(b, []).append(a)
    values = {"input": np.asarray(x, f32)}  # [B, T, F] per node

    def value(key: str) -> np.ndarray:
        if key not in values:
            h = sum(value(k) for k in into[key])
            values[key] = h if key == "output" else np_node(graph.nodes[key], h, dt)
        return values[key]

    return value("output")


def np_node(node: nir.NIRNode, h: np.ndarray, dt: float) -> np.ndarray:
    """One node of ``np_run`` on its summed input ``h [B, T, n]``."""
    f32 = np.float32
    if isinstance(node, nir.Delay):
        (lag,) = set(np.rint(node.delay / dt).astype(int).tolist())  # one delay for every channel
        out = np.zeros_like(h)
        out[:, lag:] = h[:, :h.shape[1] - lag]
        return out
    if isinstance(node, nir.Affine):
        return (h @ node.weight.T.astype(f32) + node.bias.astype(f32)).astype(f32)
    if isinstance(node, nir.Linear):
        return (h @ node.weight.T.astype(f32)).astype(f32)
    w_rec = None
    if isinstance(node, nir.NIRGraph):
        node, w_rec = node.nodes["lif"], node.nodes["w_rec"].weight.astype(f32)
    b, t, n = h.shape
    v, cur, out = np.zeros((b, n), f32), np.zeros((b, n), f32), np.zeros((b, t, n), f32)
    theta = getattr(node, "v_threshold", np.zeros(n)).astype(f32)
    for k in range(t):
        s = (v - theta > 0).astype(f32)
        drive = h[:, k] + (s @ w_rec.T if w_rec is not None else 0)
        if isinstance(node, nir.IF):
            v = v + f32(dt) * node.r.astype(f32) * drive - theta * s
        elif isinstance(node, nir.LIF):
            beta, gain = (1 - dt / node.tau).astype(f32), (dt * node.r / node.tau).astype(f32)
            v = beta * v + gain * drive - theta * s
        elif isinstance(node, nir.CubaLIF):
            beta, gain = (1 - dt / node.tau_mem).astype(f32), (dt * node.r / node.tau_mem).astype(f32)
            alpha, g_in = (1 - dt / node.tau_syn).astype(f32), (dt * node.w_in / node.tau_syn).astype(f32)
            cur = alpha * cur + g_in * drive
            v = beta * (v - theta * s) + gain * cur
        elif isinstance(node, nir.LI):
            beta, gain = (1 - dt / node.tau).astype(f32), (dt * node.r / node.tau).astype(f32)
            v = beta * v + gain * drive
        out[:, k] = v if isinstance(node, nir.LI) else s
    return out


DELAYS = ("model.input_delays=3", "model.delay_stride=2", "neuron.threshold=0.5")  # threshold: both layers fire


@pytest.mark.parametrize(("model", "neuron", "extra"), [
    ("feedforward", "lif", ()), ("recurrent", "cuba_lif", ()), ("recurrent", "if", ()), ("recurrent", "lif", ()),
    ("feedforward", "lif", DELAYS), ("recurrent", "cuba_lif", DELAYS),  # an input delay line: Delay nodes
])
def test_the_documented_recipe_reproduces_snnexp_from_the_file_alone(model, neuron, extra, tmp_path):
    cfg = cfg_of(model, neuron, True, *extra)
    net = build.model(cfg, 16, 4)
    x = batch(cfg)
    nir_graph.write_nir(nir_graph.to_nir(net, dt=0.01), tmp_path / "n.nir")
    want, rates = net(x)
    assert float(jnp.mean(rates)) > 0.01 and bool(jnp.all(jnp.sum(rates, axis=(0, 1)) > 0))  # every layer fires
    np.testing.assert_allclose(np_run(nir.read(tmp_path / "n.nir"), np.asarray(x)), np.asarray(want), atol=1e-5)


def test_a_delay_line_is_one_tap_per_delay_and_spyx_refuses_it_by_name(tmp_path):
    net = build.model(cfg_of("feedforward", "lif", False, *DELAYS), 16, 4)
    g = nir_graph.to_nir(net, dt=0.01)
    kernel = np.asarray(net.fc[0].kernel[...])  # [3 * 16, 24]
    for j in range(3):
        tap = g.nodes[f"fc.0.tap.{j}"]
        np.testing.assert_array_equal(tap.weight, kernel[j * 16:(j + 1) * 16].T)
        assert isinstance(tap, nir.Affine) == (j == 0)  # the bias once
        assert ((f"fc.0.delay.{j}" if j else "input"), f"fc.0.tap.{j}") in g.edges
        assert (f"fc.0.tap.{j}", "neurons.0") in g.edges
    np.testing.assert_allclose(g.nodes["fc.0.delay.2"].delay, np.full(16, 4 * 0.01))
    assert "fc.0" not in g.nodes
    with pytest.raises(ValueError, match="from_nir reads no Delay node"):
        nir_graph.run_spyx(g, batch(cfg_of("feedforward", "lif", False)))


# ------------------------------------------------------------------ refusals


def test_conv_and_alif_are_refused_naming_what_is_supported():
    conv = build.model(make_cfg("debug=fast", "model=conv", "model.hidden=[4]", "model.image=[2,4,4]"), 32, 4)
    with pytest.raises(ValueError, match="FeedForwardSNN or RecurrentSNN, got ConvSNN"):
        nir_graph.to_nir(conv)
    alif = build.model(make_cfg("debug=fast", "neuron=alif"), 16, 4)
    with pytest.raises(ValueError, match="ALIF.*no adaptive-threshold primitive.*LIF, CuBaLIF, IF"):
        nir_graph.to_nir(alif)


def test_a_quantized_kernel_a_decay_of_one_and_a_bad_dt_are_refused():
    cfg = cfg_of("feedforward", "lif", False)
    net = build.model(cfg, 16, 4)
    q = quant.quantize(net, build.rules(make_cfg("quant=w8a8")), "ptq", batch(cfg)[:1])
    with pytest.raises(ValueError, match="fc/0 holds a quantized kernel.*dequantized_model"):
        nir_graph.to_nir(q)
    with pytest.raises(ValueError, match="dt=0"):
        nir_graph.to_nir(net, dt=0)
    flat = build.model(cfg_of("feedforward", "lif", False, "neuron.beta=1.0"), 16, 4)
    with pytest.raises(ValueError, match="neurons/0/beta has a decay of 1.*neuron=if"):
        nir_graph.to_nir(flat)


# ------------------------------------------------------------------ the float twin of a deployed network


def deployed_pair(recipe: str, model: str, neuron: str, learned: bool):
    """A config and a network quantized by qwix (PTQ of the initial weights, as a deployment does)."""
    cfg = cfg_of(model, neuron, learned, f"quant={recipe}")
    net = build.model(cfg, 16, 4)
    x = batch(cfg)
    return cfg, quant.quantize(net, build.rules(cfg), "ptq", x[:1]), x


def kernels(model) -> dict[str, object]:
    return {"/".join(map(str, p)): m.kernel for p, m in nnx.iter_modules(model) if isinstance(m, nnx.Linear)}


@pytest.mark.parametrize(("recipe", "model", "neuron", "learned"), [
    ("w8a8", "feedforward", "lif", True), ("ternary", "recurrent", "cuba_lif", False),
    ("w4a8", "recurrent", "if", True), ("weights_only", "recurrent", "lif", True),
])
def test_dequantized_model_holds_codes_times_scales_and_computes_the_deployed_forward(recipe, model, neuron,
                                                                                      learned, tmp_path):
    cfg, deployed, x = deployed_pair(recipe, model, neuron, learned)
    twin = nir_graph.dequantized_model(cfg, deployed)
    assert isinstance(deployed, type(twin)) and type(twin).__name__ == type(deployed).__name__  # qwix subclasses it
    quantized = kernels(deployed)
    for name, kernel in kernels(twin).items():
        q = quantized[name].array
        want = np.asarray(q.qvalue[...]).astype(np.float32) * np.asarray(q.scale[...])
        np.testing.assert_array_equal(np.asarray(kernel[...]), want, err_msg=name)
        np.testing.assert_array_equal(np.asarray(kernel[...]), np.asarray(qarray.dequantize(q)), err_msg=name)
        if recipe == "ternary":
            assert set(np.unique(np.asarray(q.qvalue[...]).astype(int))) <= {-1, 0, 1}
    twin_decays = decays(twin)
    assert twin_decays.keys() == decays(deployed).keys()
    for path, (kind, value) in decays(deployed).items():
        assert twin_decays[path][0] == kind
        np.testing.assert_array_equal(twin_decays[path][1], value, err_msg=path)
    np.testing.assert_array_equal(np.asarray(twin.fc[0].bias[...]), np.asarray(deployed.fc[0].bias[...]))
    want, want_rates = deployed(x)  # qwix fake-quantizes the binary spikes exactly
    got, got_rates = twin(x)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(got_rates), np.asarray(want_rates))
    assert_same_network(twin, x, tmp_path / "network.nir")


def test_tiled_scales_are_repeated_over_their_tile():
    cfg = make_cfg("debug=fast", "data.features=32", "model.hidden=[64]", "quant=w8a8",
                   "quant.rules.0.weight_qtype=int8", "quant.rules.0.tile_size=16")
    net = build.model(cfg, 32, 4)
    deployed = quant.quantize(net, build.rules(cfg), "ptq", jnp.zeros((1, 8, 32)))
    q = deployed.fc[0].kernel.array
    assert np.asarray(q.scale[...]).shape[0] > 1  # one scale per tile of 16 inputs
    np.testing.assert_array_equal(nir_graph.dequantize_kernel(deployed.fc[0].kernel), np.asarray(qarray.dequantize(q)))


# ------------------------------------------------------------------ a real finished run


@pytest.mark.slow
@pytest.mark.parametrize(("model", "neuron", "recipe", "mode"), [
    ("recurrent", "cuba_lif", "ternary", "qat"), ("feedforward", "lif", "w4a8", "srq"),
])
def test_a_finished_run_exports_a_graph_spyx_runs_as_the_deployed_network(model, neuron, recipe, mode, tmp_path):
    cfg = cfg_of(model, neuron, True, f"quant={recipe}", f"mode={mode}")
    assert run(cfg, tmp_path / "run")["status"] == "ok"
    cfg, deployed = load_deployed(tmp_path / "run")
    twin = nir_graph.dequantized_model(cfg, deployed)
    x = batch(cfg)
    want, _ = deployed(x)
    got, _ = twin(x)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
    assert_same_network(twin, x, tmp_path / "network.nir")
