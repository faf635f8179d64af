"""Integer neuron state (hardware profiles): the arithmetic against hand computations, the
deployed JAX integer network against the NumPy reference spike for spike, the export and its refusals.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_cfg
from flax import nnx
from omegaconf import OmegaConf

from snnexp import build, reference, rundir
from snnexp.export import ExportError, export, sidecar
from snnexp.hardware import HardwareError, Profile, from_config, integer
from snnexp.hardware.arith import IntOps, SteOps
from snnexp.train.experiment import run

CONF = Path(__file__).resolve().parents[1] / "conf" / "hardware"
PROFILES = ("int", "loihi", "xylo")
# Narrow widths that overflow on digits: the wrap and saturate paths must agree too.
NARROW = {
    "narrow_wrap": {"name": "narrow_wrap", "state_bits": 9, "decay": "shift", "decay_bits": 3, "threshold_bits": 8,
                    "accumulator_bits": 9, "overflow": "wrap", "reset": "zero"},
    "narrow_sat": {"name": "narrow_sat", "state_bits": 10, "decay": "multiply", "decay_bits": 6, "threshold_bits": 6,
                   "accumulator_bits": 8, "overflow": "saturate", "current_overflow": "wrap", "shift": 3},
}


def profile(name: str) -> Profile:
    if name in NARROW:
        return from_config(NARROW[name])
    return from_config(OmegaConf.to_container(OmegaConf.load(CONF / f"{name}.yaml")))


# ------------------------------------------------------------------ profiles


def test_every_profile_composes_and_checks():
    for name in ("float", *PROFILES):
        cfg = make_cfg(f"hardware={name}")
        p = build.hardware(cfg)
        assert p.name == name and p.integer == (name != "float")
    lava = profile("loihi")
    got = (lava.state_bits, lava.decay_bits, lava.shift, lava.reset, lava.current_overflow)
    assert got == (24, 12, 6, "zero", "wrap")
    xylo = profile("xylo")
    assert (xylo.state_bits, xylo.decay, xylo.decay_bits) == (16, "shift", 4)


@pytest.mark.parametrize(("override", "says"), [
    ("hardware.overflow=clamp", "hardware.overflow='clamp'; valid choices: ['saturate', 'wrap']"),
    ("hardware.state_bits=40", "state_bits=40; must be an integer in [2, 30]"),
    ("+hardware.bogus=1", "bogus"),
])
def test_a_bad_profile_is_refused_naming_the_value(override, says, tmp_path):
    cfg = make_cfg("hardware=int", "logger=none", override)
    with pytest.raises(ValueError, match=re.escape(says)):
        run(cfg, tmp_path)
    assert json.loads((tmp_path / "status.json").read_text())["status"] == "failed"


@pytest.mark.parametrize(("override", "says"), [
    ("neuron=alif", "ALIF"),
    ("quant=fp32", "integer weights"),
    ("quant=w8a8 quant.rules.0.tile_size=8 model.hidden=[32]", "tiled"),
    ("quant=w8in_ternary model=recurrent model.hidden=[24]", "fc/0 is int8 and rec/0 is ternary"),
])
def test_a_network_without_integer_form_is_refused_before_compute(override, says, tmp_path):
    cfg = make_cfg("hardware=int", "logger=none", "debug=fast", *override.split())
    with pytest.raises(HardwareError, match=says):
        run(cfg, tmp_path)
    assert not (tmp_path / "checkpoints" / "fp32").exists()


def mixed_network() -> tuple[integer.IntegerNetwork, nnx.Module]:
    """quant=w8in_ternary on one recurrent layer of 32 (MNIST-1D), mapped onto ``int``, and its dequantized network."""
    from snnexp import quant
    from snnexp.export import nir_graph

    cfg = make_cfg("data=mnist1d", "model=recurrent", "model.hidden=[32]", "quant=w8in_ternary", "logger=none")
    data = build.data(cfg)
    x_train = np.asarray(data.x_train)
    deployed = quant.quantize(build.model(cfg, data.features, data.n_classes), build.rules(cfg), "ptq",
                              jnp.asarray(x_train[:1]))
    net = integer.IntegerNetwork.from_deployed(deployed, build.rules(cfg), profile("int"), x_train)
    return net, nir_graph.dequantized_model(cfg, deployed)


def test_a_mixed_recipe_maps_each_matrix_onto_its_own_dequantized_weights():
    """quant=w8in_ternary on a recurrent layer (int8 ``fc/0`` of analog inputs, ternary ``rec/0``): the ternary
    matrix must enter exactly (re-rounding +-1 codes would make it up to 2x too strong: 87 % -> 37 % on MNIST-1D),
    the int8 one within half of its step, against the dequantized network (codes x scales) as NIR exports it."""
    net, dq = mixed_network()
    layer = net.layers[0]
    unit = layer.unit.astype(np.float64)
    rec = (layer.recurrent.astype(np.int64) << layer.recurrent_shift) * unit
    assert set(np.unique(layer.recurrent)) <= {-1, 0, 1} and layer.recurrent_shift.max() >= 4
    np.testing.assert_allclose(rec, np.asarray(dq.rec[0].kernel[...]), rtol=1e-6)
    step = unit * 2.0**layer.weight_shift / net.input_scale  # one re-rounded fc/0 code, in weight units
    err = np.abs((layer.weight << layer.weight_shift) * unit / net.input_scale - np.asarray(dq.fc[0].kernel[...]))
    assert np.all(err <= 0.5 * step * (1 + 1e-5))
    assert net.threshold_clipped == 0


def test_a_mixed_layer_is_counted_and_packed_at_each_matrixs_own_width(tmp_path):
    """w8in_ternary: hidden/0's int8 fc/0 takes 8 bits a synapse and its ternary rec/0 2, in the memory figure
    and in the sidecar, and the reference reads both back."""
    net, _ = mixed_network()
    layer = net.layers[0]
    assert (layer.weight_qtype, layer.recurrent_qtype) == ("int8", "ternary")
    x = np.zeros((1, 40, 1), np.float32)
    memory = integer.hardware_metrics(net, integer.evaluate(net, x, np.array([0])))["integer_memory_bits"]
    assert memory["hidden/0"]["weights"] == 1 * 32 * 8 + 32 * 32 * 2
    sidecar.write(net, tmp_path, dt=1e-3)
    meta = json.loads((tmp_path / "integer.json").read_text())["layers"][0]
    assert (meta["weight_bits"], meta["recurrent_qtype"], meta["recurrent_bits"]) == (8, "ternary", 2)
    assert np.load(tmp_path / "integer.npz")["layer0.recurrent_packed"].size == 32 * 32 * 2 // 8
    ref = reference.load(tmp_path)
    np.testing.assert_array_equal(ref.array(ref.meta["layers"][0], "recurrent"), layer.recurrent)
    np.testing.assert_array_equal(ref.array(ref.meta["layers"][0], "weight"), layer.weight)


def test_the_grid_refuses_a_layer_whose_matrices_differ_in_ternary_scale():
    from snnexp import quant
    from snnexp.hardware.qat import grid_channels, grid_qtypes

    model = build.model(make_cfg("model=recurrent", "model.hidden=[8]"), 4, 3)
    mixed = quant.parse_recipe([{"module_path": "rec/.*", "weight_qtype": "ternary", "ternary_scale": "channel"},
                                {"module_path": ".*", "weight_qtype": "ternary"}])
    with pytest.raises(HardwareError, match=r"fc/0 is ternary and rec/0 is ternary \(ternary_scale: channel\)"):
        grid_qtypes(model, mixed)
    same = quant.parse_recipe([{"module_path": "readout", "weight_qtype": "int8"},
                               {"module_path": ".*", "weight_qtype": "ternary", "ternary_scale": "channel"}])
    assert grid_qtypes(model, same) == ("ternary", "int8") and grid_channels(model, same) == (True, False)


def test_two_ternary_matrices_of_one_neuron_enter_by_the_nearest_power_of_two():
    """quant=ternary: ``fc/i`` and ``rec/i`` have independent scales and no shift maps both exactly. The
    coarser enters by the power of two nearest its worth (within sqrt(2)), its +-1 codes unchanged; with
    ``ceil`` a ratio of 1.3 entered as 2 (1.54x too strong)."""
    rng = np.random.default_rng(0)
    fc, rec = (rng.integers(-1, 2, (5, 3)).astype(np.int32) for _ in range(2))
    w_fc = np.array([1.0, 1.0, 1.0], np.float32)
    w_rec = np.array([1.3, 1.5, 3.2], np.float32)
    (out_fc, out_rec), unit, (k_fc, k_rec) = integer.share_unit([fc, rec], [w_fc, w_rec], ["ternary", "ternary"],
                                                                per_neuron=True)
    np.testing.assert_array_equal(unit, w_fc)
    np.testing.assert_array_equal(out_fc, fc)
    np.testing.assert_array_equal(out_rec, rec)
    np.testing.assert_array_equal(k_fc, [0, 0, 0])
    np.testing.assert_array_equal(k_rec, [0, 1, 2])  # log2 of 1.3, 1.5, 3.2 rounded
    strength = unit * 2.0**k_rec / w_rec
    assert np.all((strength >= 2**-0.5) & (strength < 2**0.5))
    # an int8 matrix still shrinks by ceil: its codes are re-rounded by a factor in (0.5, 1]
    (_, out8), _, (_, k8) = integer.share_unit([fc, rec * 100], [w_fc, w_rec], ["int8", "int8"], per_neuron=True)
    np.testing.assert_array_equal(k8, [1, 1, 2])
    np.testing.assert_array_equal(out8, np.rint(rec * 100 * (w_rec / 2.0**k8)).astype(np.int32))


def test_the_qat_grid_and_the_export_give_a_neuron_without_input_weights_the_same_unit():
    """MNIST-1D's 1 x H input layer under absmean ternary leaves some neurons without any input weight: an
    all-zero column, whose scale qwix stores as 1.0 and the grid as ``mean|w|``. Both must leave such a column out
    of the neuron's unit, or the network trained on the grid and the one exported part (a 1-layer MNIST-1D
    ternary run: spike agreement 0.956 -> 1.0, integer accuracy 73.9 -> 75.0 %)."""
    from snnexp import metrics as snn_metrics
    from snnexp import quant
    from snnexp.hardware.qat import IntegerGrid, grid_qtypes

    cfg = make_cfg("data=mnist1d", "model=recurrent", "model.hidden=[32]", "quant=ternary", "logger=none")
    data = build.data(cfg)
    x_train = np.asarray(data.x_train)
    model = build.model(cfg, data.features, data.n_classes)
    rules = build.rules(cfg)
    deployed = quant.quantize(model, rules, "ptq", jnp.asarray(x_train[:1]))
    fc0 = np.asarray(next(x for x in snn_metrics.matrices(deployed) if x.path == "fc/0").codes)
    silent = ~np.any(fc0 != 0, axis=0)
    assert 0 < silent.sum() < 32, "the case needs neurons without input"
    p = profile("int")
    net = integer.IntegerNetwork.from_deployed(deployed, rules, p, x_train)
    grid = IntegerGrid(p, grid_qtypes(model, rules), *integer.input_coding(x_train, p))
    for layer, unit in zip(net.layers, grid.units(model), strict=True):
        np.testing.assert_allclose(layer.unit, np.asarray(unit), rtol=1e-6)
    rec_worth = np.asarray(next(x for x in snn_metrics.matrices(deployed) if x.path == "rec/0").scales[0]).reshape(-1)
    np.testing.assert_allclose(net.layers[0].unit[silent], np.maximum(rec_worth[silent], integer.unit_floor(1.0, p)),
                               rtol=1e-6)


def test_a_unit_below_the_threshold_range_is_raised_not_the_threshold_clipped():
    """A neuron whose input codes are worth far less than ``theta / (2**threshold_bits - 1)`` takes that unit;
    its codes are re-rounded down onto it, so ``round(theta / unit)`` fits and nothing is clipped."""
    p = profile("int")
    floor = integer.unit_floor(1.0, p)
    codes = np.array([[127, -127, 64]], np.int32)
    worth = np.array([1e-7, 1.0 / 1000, 1e-6], np.float32)
    (out,), unit, (shift,) = integer.share_unit([codes], [worth], ["int8"], per_neuron=True, floor=floor)
    np.testing.assert_array_equal(unit, np.maximum(worth, floor))
    assert np.all(np.rint(1.0 / unit) <= 2**p.threshold_bits - 1) and not shift.any()
    expected = np.rint(codes[0].astype(np.float64) * worth / np.maximum(worth, floor))  # 127 * 1e-7 / floor
    np.testing.assert_array_equal(out[0], expected.astype(np.int32))
    assert out[0][0] == round(127 * 1e-7 * (2**15 - 1)) and out[0][1] == -127


# ------------------------------------------------------------------ arithmetic


def test_the_decay_multiply_is_lavas_and_never_leaves_int32():
    """sign(v) * ((|v| * m) >> 12), as Lava's bit-accurate LIF, at the extremes of 24-bit state."""
    ops = IntOps(profile("loihi"))
    v = np.array([0, 1, -1, 4095, -4097, 2**23 - 1, -(2**23), 123456, -987654], np.int64)
    for m in (0, 1, 2048, 4095, 4096):
        want = np.sign(v) * ((np.abs(v) * m) >> 12)
        got = np.asarray(ops.decay(jnp.asarray(v, jnp.int32), jnp.int32(m)))
        np.testing.assert_array_equal(got, want)


def test_the_shift_decay_is_xylos_with_its_minimum_step_of_one():
    ops = IntOps(profile("xylo"))
    for dash in (1, 4, 15):
        for v in (0, 1, -1, 7, -7, 100, -100, 32767, -32768):
            step = v >> dash  # Python's >> floors like an arithmetic shift
            if step == 0 and v != 0:
                step = 1 if v > 0 else -1
            assert int(ops.decay(jnp.int32(v), jnp.int32(dash))) == v - step


@pytest.mark.parametrize("rule", ["saturate", "wrap"])
def test_overflow_rules_and_their_counts(rule):
    ops = IntOps(profile("int"))
    x = jnp.asarray([-300, -129, -128, 0, 127, 128, 300], jnp.int32)
    got = ops.fit(x, 8, rule)
    if rule == "saturate":
        want = [-128, -128, -128, 0, 127, 127, 127]
    else:
        want = [((int(a) + 128) % 256) - 128 for a in x]
    assert np.asarray(got.value).tolist() == want and int(np.sum(got.count)) == 4


def test_fake_quant_forward_is_the_integer_arithmetic_and_its_gradient_the_float_one():
    p = profile("xylo")
    ste = SteOps(p, lambda u: (u > 0).astype(u.dtype))
    v = jnp.arange(-40, 41, dtype=jnp.float32) * 37
    dash = jnp.float32(3)
    exact = IntOps(p).decay(v.astype(jnp.int32), jnp.int32(3))
    np.testing.assert_array_equal(np.asarray(ste.decay(v, dash)), np.asarray(exact))
    grad = jax.grad(lambda a: ste.decay(a, dash).sum())(v)
    np.testing.assert_allclose(np.asarray(grad), 1 - 2.0**-3)


def test_pack_and_unpack_invert_each_other_at_every_width():
    rng = np.random.default_rng(0)
    for bits in (2, 3, 4, 8, 12):
        lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        codes = rng.integers(lo, hi + 1, size=(7, 5))
        packed = sidecar.pack(codes, bits)
        assert packed.size == -(-codes.size * bits // 8)
        np.testing.assert_array_equal(sidecar.unpack(packed, bits, codes.shape), codes)
    # ternary -1, 0, 1 as 2-bit two's complement, least significant bit first: 0b11, 0b00, 0b01
    assert sidecar.pack(np.array([-1, 0, 1, 0]), 2).tolist() == [0b00010011]


def test_hardware_metrics_match_hand_counts_on_a_tiny_network():
    """2 inputs -> 3 LIF -> 2 LI, int4 weights, in the generic profile (16-bit state, 12-bit decays)."""
    p = profile("int")
    w0 = np.array([[3, -2, 7], [1, 4, -8]], np.int32)
    w1 = np.array([[1, -1], [2, 0], [-3, 5]], np.int32)
    layers = [
        integer.IntLayer("hidden/0", "lif", w0, None, "int4", np.array([1, 0, -1], np.int32),
                         np.full(3, 0.1, np.float32), np.array([5, 5, 5], np.int32), np.full(3, 3686, np.int32)),
        integer.IntLayer("readout", "li", w1, None, "int4", np.zeros(2, np.int32), np.full(2, 0.1, np.float32),
                         np.zeros(2, np.int32), np.full(2, 3686, np.int32)),
    ]
    net = integer.IntegerNetwork(p, layers, True, 1.0, 3)
    x = np.array([[[1, 1], [1, 0], [0, 1]]], np.float32)  # one sample, 3 steps
    ev = integer.evaluate(net, x, np.array([0]))
    m = integer.hardware_metrics(net, ev)
    hidden = m["integer_memory_bits"]["hidden/0"]
    # weights 6 x 4 bits; state 3 x 16; thresholds 3 x 15; one decay 3 x 12; biases 3 x 24
    assert hidden == {"weights": 24, "state": 48, "thresholds": 45, "decays": 36, "biases": 72, "shifts": 0,
                      "total": 225}
    assert m["integer_memory_bits"]["readout"] == {"weights": 24, "state": 32, "thresholds": 0, "decays": 24,
                                                   "biases": 48, "shifts": 0, "total": 128}
    assert m["integer_memory_bits"]["total"] == 353
    # the largest |sum + bias| of the hidden layer: step 0 inputs (1, 1): 3+1+1=5, -2+4=2, 7-8-1=-2 -> 5;
    # step 1 (1, 0): 4, -2, 6; step 2 (0, 1): 2, 4, -9 -> peak 9, which needs 5 bits
    assert ev["accumulator_peak"][0] == 9 and m["accumulator_bits_needed"]["hidden/0"] == 5
    assert m["overflow_events"] == 0 and m["accumulator_bits"] == 24
    # the same network, by hand: V_t = floor-toward-zero(V * 3686 / 4096) + a_t - 5 s_t, s_t = V_{t-1} > 5
    v, spikes = np.zeros(3, np.int64), []
    for a in ([5, 2, -2], [4, -2, 6], [2, 4, -9]):
        s = (v > 5).astype(np.int64)
        v = np.sign(v) * ((np.abs(v) * 3686) >> 12) + np.array(a) - 5 * s
        spikes.append(s)
    got = net.run(net.encode(x), record=True)["spikes"][0][:, 0, :]
    np.testing.assert_array_equal(got, np.array(spikes))
    # with a delay line of 3 taps 2 steps apart on the 2 analog inputs: 6 x 3 weights, and a buffer of the
    # last 4 steps of 2 codes at input_bits 8
    w_delayed = np.concatenate([w0, w0, w0])
    delayed = integer.IntegerNetwork(p, [dataclasses.replace(layers[0], weight=w_delayed), layers[1]], False, 0.5, 3,
                                     input_delays=3, delay_stride=2)
    first = integer.hardware_metrics(delayed, integer.evaluate(delayed, x, np.array([0])))["integer_memory_bits"]
    assert first["hidden/0"]["weights"] == 18 * 4 and first["hidden/0"]["delay_line"] == 4 * 2 * 8
    assert first["hidden/0"]["total"] == 225 + 12 * 4 + 64 and "delay_line" not in first["readout"]


# ------------------------------------------------------------------ end to end: bit-exact, exported

RUNS = {  # one real run per model kind, each trained for a profile
    "ff_lif": ("hardware=int", "mode=qat"),
    "ff_cuba": ("hardware=loihi", "neuron=cuba_lif", "mode=qat", "quant=w4a8"),
    "ff_if": ("hardware=xylo", "neuron=if", "mode=qat", "quant=ternary"),
    "rec_lif": ("hardware=xylo", "model=recurrent", "mode=qat"),
    "rec_cuba": ("hardware=int", "model=recurrent", "neuron=cuba_lif", "mode=ptq"),
    "rec_mixed": ("hardware=int", "model=recurrent", "quant=w8in_ternary", "mode=ptq"),  # int8 fc/0, ternary rec/0
    "rec_ternary_channel": ("hardware=int", "model=recurrent", "quant=ternary_channel", "mode=qat"),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    out = {}
    for key, overrides in RUNS.items():
        path = tmp_path_factory.mktemp(key)
        cfg = make_cfg("data=digits", "logger=none", "trainer.epochs=2", "++mode.quant_epochs=1",
                       "model.hidden=[48]", *overrides)
        out[key] = (path, run(cfg, path))
    return out


def _assert_reference_agrees(export_dir: Path, net: integer.IntegerNetwork, x: np.ndarray, y: np.ndarray) -> float:
    """The reference on the exported files against snnexp's integer forward: every spike, the readout, accuracy."""
    ref = reference.load(export_dir)
    codes = reference.encode(ref, x)
    np.testing.assert_array_equal(codes, net.encode(x))
    theirs = reference.run(ref, codes)
    ours = net.run(codes, record=True)
    assert len(ours["spikes"]) == len(theirs["spikes"]) >= 1
    for a, b in zip(ours["spikes"], theirs["spikes"], strict=True):
        np.testing.assert_array_equal(np.asarray(a), b)  # spike error 0, every layer, step, neuron, sample
    np.testing.assert_array_equal(np.asarray(ours["out"]), theirs["out"])
    counts = np.asarray(ours["counts"])
    for i, layer in enumerate(theirs["overflow"]):
        assert counts[i].tolist() == [layer["accumulator"], layer["current"], layer["membrane"]]
    assert np.asarray(ours["acc_max"]).tolist() == theirs["accumulator_peak"]
    return float(np.mean(reference.predict(ref, theirs["out"]) == y))


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(RUNS))
def test_the_reference_reproduces_every_spike_of_the_exported_network(kind, runs, tmp_path):
    """The whole test set through snnexp's deployed integer forward and the NumPy reference, per model kind,
    for the profile the run was trained for and, mapped after training, every other profile."""
    path, metrics = runs[kind]
    cfg, deployed = rundir.load_deployed(path)
    data = build.data(cfg)
    x, y = np.asarray(data.x_test), np.asarray(data.y_test)
    written = export(path, tmp_path / "own")
    assert {p.name for p in written} == {"network.nir", "integer.npz", "integer.json"}
    own = build.hardware(cfg)
    net = integer.IntegerNetwork.from_deployed(deployed, build.rules(cfg), own, np.asarray(data.x_train))
    acc = _assert_reference_agrees(tmp_path / "own", net, x, y)
    assert acc == pytest.approx(metrics["quant_accuracy"])  # quant_accuracy is the integer network's
    assert metrics["hardware"] == cfg.hardware.name and (path / "integer" / "integer.json").exists()
    assert metrics["integer_memory_bits"]["total"] > 0 and metrics["float_state_accuracy"] is not None
    if metrics["mode"] == "qat":
        assert metrics["qat_spike_agreement"] >= 0.99
    for name in (*PROFILES, *NARROW):
        p = profile(name)
        mapped = integer.IntegerNetwork.from_deployed(deployed, build.rules(cfg), p, np.asarray(data.x_train))
        sidecar.write(mapped, tmp_path / name, dt=1e-3)
        _assert_reference_agrees(tmp_path / name, mapped, x, y)


@pytest.mark.slow
def test_narrow_profiles_really_overflow(runs, tmp_path):
    """The exactness test above covers wrap and saturation only if they happen: they do, on digits."""
    path, _ = runs["ff_lif"]
    cfg, deployed = rundir.load_deployed(path)
    data = build.data(cfg)
    for name in NARROW:
        net = integer.IntegerNetwork.from_deployed(deployed, build.rules(cfg), profile(name), np.asarray(data.x_train))
        ev = integer.evaluate(net, np.asarray(data.x_test), np.asarray(data.y_test))
        assert integer.hardware_metrics(net, ev)["overflow_events"] > 0


@pytest.mark.slow
def test_the_export_refuses_a_run_without_a_deployed_network(runs, tmp_path):
    with pytest.raises(ExportError, match="no status.json"):
        export(tmp_path / "nothing")
    failed = tmp_path / "failed"
    with pytest.raises(ValueError):
        run(make_cfg("logger=none", "hardware=int", "hardware.reset=never"), failed)
    with pytest.raises(ExportError, match="status: failed"):
        export(failed)
    path, _ = runs["ff_lif"]
    half = tmp_path / "half"
    shutil.copytree(path, half)
    shutil.rmtree(half / "checkpoints" / "quant")
    with pytest.raises(ExportError, match="checkpoints/quant"):
        export(half)
    assert not (half / "export").exists()


@pytest.mark.slow
def test_a_float_state_run_exports_nir_alone_or_maps_onto_a_profile(tmp_path):
    path = tmp_path / "run"
    run(make_cfg("data=digits", "logger=none", "trainer.epochs=1", "mode=ptq", "model.hidden=[32]"), path)
    assert {p.name for p in export(path)} == {"network.nir"}
    written = export(path, tmp_path / "x", hardware="xylo")
    assert {p.name for p in written} == {"network.nir", "integer.npz", "integer.json"}
    meta = json.loads((tmp_path / "x" / "integer.json").read_text())
    assert meta["profile"]["name"] == "xylo" and meta["source"]["mapped_after_training"]


# (profile, mode) pairs the runs of the exactness test above do not train (they run int qat and ptq, loihi
# and xylo qat): together every profile runs end to end in every mode.
TRAINED = {tuple(dict(o.split("=", 1) for o in r)[k] for k in ("hardware", "mode")) for r in RUNS.values()}
UNCOVERED = [(hw, m) for hw in PROFILES for m in ("qat", "qt", "ptq", "srq") if (hw, m) not in TRAINED]


@pytest.mark.slow
@pytest.mark.parametrize(("hw", "mode"), UNCOVERED)
def test_every_profile_runs_end_to_end_on_digits_in_every_mode(hw, mode, tmp_path):
    cfg = make_cfg("data=digits", "logger=none", f"hardware={hw}", f"mode={mode}", "trainer.epochs=1",
                   "++mode.quant_epochs=1", "++mode.calib_batches=2", "model.hidden=[16]")
    m = run(cfg, tmp_path)
    assert m["hardware"] == hw and 0.0 <= m["quant_accuracy"] <= 1.0
    assert (tmp_path / "integer" / "integer.json").exists()
    assert m["integer_memory_bits"]["total"] > 0 and m["float_state_accuracy"] is not None


def test_device_encoding_of_analog_inputs_is_the_documented_numpy_one():
    """``evaluate`` encodes on the device; the codes (and so every output) must be ``encode``'s."""
    p = profile("xylo")
    w0 = np.array([[3, -2, 7], [1, 4, -8]], np.int32)
    w1 = np.array([[1, -1], [2, 0], [-3, 5]], np.int32)
    layers = [
        integer.IntLayer("hidden/0", "lif", w0, None, "int4", np.zeros(3, np.int32), np.full(3, 0.1, np.float32),
                         np.array([40, 40, 40], np.int32), np.full(3, 3, np.int32)),
        integer.IntLayer("readout", "li", w1, None, "int4", np.zeros(2, np.int32), np.full(2, 0.1, np.float32),
                         np.zeros(2, np.int32), np.full(2, 3, np.int32)),
    ]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 9, 2)).astype(np.float32)
    scale = float(np.max(np.abs(x)) / 127)
    net = integer.IntegerNetwork(p, layers, False, scale, 9)
    codes = net.encode(x)
    assert codes.min() < -60 and codes.max() > 60  # analog values over the whole code range
    host = net.run(codes)
    device = jax.device_get(net.run_inputs(jnp.asarray(x)))
    for key in ("out", "counts", "acc_max"):
        np.testing.assert_array_equal(np.asarray(device[key]), np.asarray(host[key]))


@pytest.mark.slow
@pytest.mark.parametrize("readout", ["max", "last"])
def test_every_readout_trains_and_the_integer_decision_follows_it(readout, tmp_path):
    """``model.readout`` decides the float logits, the integer network's decision and the reference's."""
    path = tmp_path / "run"
    m = run(make_cfg("data=digits", "logger=none", "hardware=xylo", f"model.readout={readout}", "trainer.epochs=2",
                     "mode.quant_epochs=1", "model.hidden=[32]"), path)
    assert m["quant_accuracy"] > 0.5  # the readout trains
    cfg, deployed = rundir.load_deployed(path)
    assert deployed.readout_mode == readout
    data = build.data(cfg)
    x, y = np.asarray(data.x_test), np.asarray(data.y_test)
    export(path, tmp_path / "export")
    ref = reference.load(tmp_path / "export")
    assert ref.meta["readout"]["reduce"] == readout
    out = reference.run(ref, reference.encode(ref, x))["out"]
    want = out.max(axis=1) if readout == "max" else out[:, -1]
    np.testing.assert_array_equal(reference.predict(ref, out), np.argmax(want, axis=-1))
    assert float(np.mean(reference.predict(ref, out) == y)) == pytest.approx(m["quant_accuracy"])


@pytest.mark.parametrize(("name", "says"), [("bogus", "--hardware 'bogus'; valid choices: int, loihi, xylo"),
                                            ("/no/such.yaml", "no such file")])
def test_export_names_the_valid_profiles_for_a_bad_hardware(name, says, tmp_path):
    """Checked before anything is read or written: the run directory need not even exist."""
    with pytest.raises(ExportError, match=re.escape(says)):
        export(tmp_path / "run", tmp_path / "x", hardware=name)
    assert not (tmp_path / "x").exists()
