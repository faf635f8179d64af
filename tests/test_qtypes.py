"""Every qtype of the allow-list runs end to end, spikes stay exact under jit, analog inputs are calibrated.

Checked against real runs (``snnexp.train.run``), real orbax checkpoints and
independent NumPy computations; nothing of qwix or orbax is mocked.
"""

from __future__ import annotations

import functools
import itertools
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import qwix
import spyx
from flax import nnx
from omegaconf import OmegaConf
from qwix._src.core import qarray

from snnexp import build, checkpoint, quant
from snnexp.data import Dataset, synthetic
from snnexp.models import FeedForwardSNN
from snnexp.report.collect import collect
from snnexp.rundir import load_deployed
from snnexp.train import run
from snnexp.train.loop import Arrays, evaluate
from tests.conftest import CONF_DIR, make_cfg
from tests.test_quant import np_forward, params_of

MODES = ["qat", "qt", "ptq", "srq"]
# Each weight qtype under int8 activations, and int8 weights under each activation qtype.
COMBOS = [(w, "int8") for w in quant.WEIGHT_QTYPES] + [("int8", a) for a in quant.ACT_QTYPES if a != "int8"]
# A fast subset: the save that crashed (nf4), default tiles of 32 and 16, nf4 and mx activations.
FAST = [("nf4", "int8", "ptq"), ("mxfp4", "int8", "qat"), ("nvfp4", "int8", "srq"), ("int8", "nf4", "qt"),
        ("int8", "mxfp8", "srq")]
# The grid in mixed-precision runs: four combos a run, one per layer (the last run's layers repeat the first).
LAYERS = ("fc/0", "fc/1", "fc/2", "readout")
MIXED = [tuple((COMBOS * 2)[i:i + len(LAYERS)]) for i in range(0, len(COMBOS), len(LAYERS))]
# The dtype qwix stores each weight qtype's codes in.
CONTAINER = {"int2": "int4", "int3": "int4", "int4": "int4", "int5": "int8", "int6": "int8", "int7": "int8",
             "nf4": "uint4", "ternary": "int4", "mxfp8": "float8_e4m3fn", "mxfp4": "float4_e2m1fn",
             "nvfp4": "float4_e2m1fn"}
# Widths that every tile divides (32 and 16): 32 inputs, 64 hidden units.
WIDE = ("debug=fast", "data.features=32", "model.hidden=[64]")


def lif_model(n_in: int = 6, hidden: tuple[int, ...] = (10, 7), seed: int = 0) -> FeedForwardSNN:
    neuron = functools.partial(spyx.nn.LIF, beta=0.8, threshold=1.0, activation=spyx.axn.superspike())
    return FeedForwardSNN(n_in, list(hidden), 3, neuron, readout_beta=0.9, rngs=nnx.Rngs(seed))


def qtype_cfg(weight: str, act: str, mode: str, *extra: str):
    return make_cfg(*WIDE, "quant=w8a8", f"quant.name=w_{weight}_a_{act}", f"quant.rules.0.weight_qtype={weight}",
                    f"quant.rules.0.act_qtype={act}", f"mode={mode}", *extra)


def leaves(model: nnx.Module) -> dict[str, np.ndarray]:
    flat = jax.tree_util.tree_flatten_with_path(nnx.state(model))[0]
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in flat}


def run_and_reload(cfg, tmp_path: Path) -> None:
    """Train, deploy, save; ``load_deployed`` gives back the same network and accuracy; the report reads it."""
    metrics = run(cfg, tmp_path)
    assert metrics["status"] == "ok"
    assert json.loads((tmp_path / "metrics.json").read_text())["quant_accuracy"] == metrics["quant_accuracy"]
    assert not [p.name for p in (tmp_path / "checkpoints").iterdir() if "tmp" in p.name]  # no half-written save
    _, model = load_deployed(tmp_path)
    kinds = {v.dtype.name for k, v in leaves(model).items() if "qvalue" in k}
    if any(r.weight_qtype == "nf4" for r in cfg.quant.rules):
        assert "uint4" in kinds  # narrowed back from the widened uint8
    arrays = Arrays.put(build.data(cfg))
    again = evaluate(model, arrays, cfg.trainer.eval_batch_size)
    assert again["accuracy"] == metrics["quant_accuracy"]
    table = collect([tmp_path]).table
    assert float(table["quant_accuracy"].iloc[0]) == metrics["quant_accuracy"]


# ------------------------------------------------------------------ item 1: every qtype, every mode


@pytest.mark.slow
@pytest.mark.parametrize(("weight", "act", "mode"), FAST)
def test_qtype_runs_end_to_end(weight, act, mode, tmp_path):
    run_and_reload(qtype_cfg(weight, act, mode), tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("group", range(len(MIXED)), ids=lambda g: "+".join(f"w_{w}_a_{a}" for w, a in MIXED[g]))
def test_every_qtype_runs_end_to_end_in_every_mode(group, mode, tmp_path):
    """Four combos a run, one per layer of a 32-64-64-64-4 network (a mixed-precision recipe), so every
    combo meets every mode in 28 runs instead of 104."""
    rules = [dict(module_path=layer, weight_qtype=w, act_qtype=a, weight_calibration_method="absmax",
                  act_calibration_method="spikes", tile_size=None) for layer, (w, a) in zip(LAYERS, MIXED[group])]
    cfg = make_cfg(*WIDE, "model.hidden=[64,64,64]", "quant=w8a8", f"quant.name=mixed{group}", f"mode={mode}")
    cfg.quant.rules = rules
    run_and_reload(cfg, tmp_path)
    _, model = load_deployed(tmp_path)
    stored = {k: v.dtype.name for k, v in leaves(model).items() if k.endswith("['kernel']['array']['qvalue'].value")}
    prefixes = ("['fc'][0]", "['fc'][1]", "['fc'][2]", "['readout']")
    assert {p: stored[f"{p}['kernel']['array']['qvalue'].value"] for p in prefixes} == {
        p: CONTAINER.get(w, w) for p, (w, _) in zip(prefixes, MIXED[group])}  # each layer got its own rule


def test_nf4_checkpoint_round_trip_is_exact_and_records_the_dtype(tmp_path):
    model = lif_model(32, (64,))
    rules = quant.parse_recipe([dict(weight_qtype="nf4", act_qtype="int8")])
    x = jnp.ones((2, 3, 32))
    q = quant.quantize(model, rules, "ptq", x)
    assert q.fc[0].kernel.array.qvalue.dtype == jnp.uint4
    checkpoint.save(tmp_path / "q", q)
    assert list(tmp_path.iterdir()) == [tmp_path / "q"]  # atomic: no temporary directory left
    template = quant.quantize(lif_model(32, (64,), seed=1), rules, "ptq", x)  # other values, same structure
    checkpoint.restore(tmp_path / "q", template)
    want, got = leaves(q), leaves(template)
    assert want.keys() == got.keys()
    for k in want:
        assert want[k].dtype == got[k].dtype, k
        np.testing.assert_array_equal(want[k].astype(np.float32), got[k].astype(np.float32), err_msg=k)


def test_default_tiles_are_the_block_sizes():
    for qtype, block in (("mxfp8", 32), ("mxfp4", 32), ("nvfp4", 16)):
        w, a = quant.parse_recipe([dict(weight_qtype=qtype, act_qtype="int8"),
                                   dict(weight_qtype="int8", act_qtype=qtype)])
        assert quant.tile_size(w) == quant.tile_size(a) == block
        assert [r.tile_size for r in quant.to_qwix_rules([w, a], "ptq")] == [block, block]
    (plain,) = quant.parse_recipe([dict(weight_qtype="int4", act_qtype="int8")])
    assert quant.tile_size(plain) is None


@pytest.mark.parametrize(
    ("rule", "match"),
    [(dict(weight_qtype="mxfp4", tile_size=16), r"tile_size=16: mxfp4 .* blocks of 32; valid choices: 32 or null"),
     (dict(weight_qtype="nvfp4", act_qtype="mxfp8"), "nvfp4 needs tiles of 16, mxfp8 needs tiles of 32"),
     (dict(weight_qtype="ternary", act_qtype="mxfp4"), "act_qtype='mxfp4' needs tiles of 32, but ternary")],
)
def test_tiles_a_format_cannot_use_are_refused(rule, match):
    with pytest.raises(quant.RecipeError, match=match):
        quant.parse_recipe([rule])


def test_a_width_the_tile_does_not_divide_is_refused_before_any_compute(tmp_path):
    # debug=fast: 16 inputs, 24 hidden units; nvfp4 needs blocks of 16, 24 is not a multiple
    cfg = make_cfg("debug=fast", "quant=w8a8", "quant.rules.0.weight_qtype=nvfp4", "mode=qat")
    with pytest.raises(quant.RecipeError) as e:
        run(cfg, tmp_path)
    msg = str(e.value)
    assert "layer readout contracts over 24 inputs" in msg and "nvfp4 quantizes in blocks of 16" in msg
    assert json.loads((tmp_path / "metrics.json").read_text())["status"] == "failed"
    assert not (tmp_path / "checkpoints" / "fp32").exists()  # nothing was trained


@pytest.mark.parametrize("bwd", sorted(quant.BLOCK_SIZES))
def test_a_microscaling_gradient_qtype_is_refused_before_any_data_loads(bwd, tmp_path):
    cfg = make_cfg("debug=fast", "mode=qt", f"mode.bwd_qtype={bwd}")
    with pytest.raises(ValueError, match=f"mode.bwd_qtype='{bwd}'.*valid choices: .*'float8_e5m2'"):
        run(cfg, tmp_path)
    assert not (tmp_path / "network.json").exists()  # refused before the data were loaded


@pytest.mark.slow
@pytest.mark.parametrize("bwd", ["int4", "nf4", "float8_e5m2"])
def test_other_gradient_qtypes_train(bwd):
    model = lif_model(32, (64,))
    x = (jax.random.uniform(jax.random.key(0), (5, 4, 32)) < 0.4).astype(jnp.float32)
    q = quant.quantize(model, quant.parse_recipe([dict(weight_qtype="int8", act_qtype="int8")]), "qt", x,
                       bwd_qtype=bwd)
    grads = nnx.grad(lambda m: m(x, loop="scan")[0].sum())(q)
    assert np.abs(np.asarray(grads["fc"][0]["kernel"][...])).sum() > 0


# ------------------------------------------------------------------ item 3: spikes exact under jit


@pytest.mark.parametrize("qtype", quant.ACT_QTYPES)
def test_a_spike_is_exact_under_jit_in_every_act_qtype(qtype):
    spikes = jnp.asarray((np.arange(64 * 3).reshape(3, 64) % 3 == 0).astype(np.float32))
    tile = quant.BLOCK_SIZES.get(qtype)
    method = quant.spike_exact_calibration(qtype)

    def roundtrip(s):
        how = dict(tiled_axes={1: tile}) if tile else {}
        return qwix.dequantize(qwix.quantize(s, qtype, channelwise_axes=(0,), calibration_method=method, **how))

    for f in (roundtrip, jax.jit(roundtrip)):
        np.testing.assert_array_equal(np.asarray(f(spikes)), np.asarray(spikes))
    # the stored spike scale: 1.0 is the code 1/s, and that code times s is 1.0 (float32, NumPy)
    s = quant.spike_scale(qtype)
    assert np.float32(np.float32(1.0) / s) * s == np.float32(1.0)


def test_the_old_dynamic_spike_scale_was_one_ulp_off_under_jit():
    """What the issue measured: absmax times the factor, computed at run time, gives 1 + 1 ulp compiled."""
    factor = quant.spike_range("int8")
    spikes = jnp.asarray([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    f = jax.jit(lambda s: qwix.dequantize(qwix.quantize(s, "int8", channelwise_axes=(0,),
                                                        calibration_method=f"absmax,{factor!r}")))
    assert float(f(spikes).max()) == float(np.nextafter(np.float32(1), np.float32(2)))


def hidden_spikes(model: FeedForwardSNN, x: np.ndarray) -> np.ndarray:
    """The spikes fed to ``fc/1`` (the first hidden layer's output) for input ``x``, from the fp32 model."""
    b, t, _ = x.shape
    p = params_of(model)
    cur = x.reshape(b * t, -1) @ p["kernels"][0] + p["biases"][0]
    v, out = np.zeros((b, cur.shape[1]), np.float32), []
    for k in range(t):
        s = (v - 1.0 > 0).astype(np.float32)
        v = p["betas"][0] * v + cur.reshape(b, t, -1)[:, k] - s
        out.append(s)
    return np.concatenate(out)


@pytest.mark.parametrize("mode", ["ptq", "srq"])
def test_hidden_spikes_dequantize_to_exactly_one_under_jit_in_the_deployed_model(mode):
    model = lif_model()
    rules = quant.parse_recipe([dict(weight_qtype="int8", act_qtype="int8")])
    x = (jax.random.uniform(jax.random.key(3), (8, 8, 6)) * 3.0).astype(jnp.float32)  # analog input
    source = model
    if mode == "srq":
        source = quant.quantize(model, rules, "calibrate", x)
        step = nnx.jit(lambda m, xb: m(xb, loop="carry"))
        for i in range(8):  # the default 8 calibration batches: the running mean is 1 ulp low
            step(source, x[i:i + 1])
        stat = nnx.state(source.fc[1], nnx.Variable)["dot_general0_lhs"].get_value()
        mean = stat["sum_of_absmax"] / stat["count"]
        assert int(stat["count"]) == 64 and float(mean.reshape(())) != quant.spike_range("int8")
    deployed = quant.quantize(source, rules, mode, x)
    assert deployed.analog_inputs == ("fc/0",)
    spikes = jnp.asarray(hidden_spikes(model, np.asarray(x)))
    assert 0 < float(spikes.mean()) < 1
    qmax = 127
    for layer in ("fc/1", "readout"):
        if mode == "srq":  # the deployed static scale of the layer
            module = deployed.fc[1] if layer == "fc/1" else deployed.readout
            scale = module.dot_general0_lhs_scale.array.get_value()
            assert float(scale.reshape(())) == quant.spike_scale("int8")

            def roundtrip(s, scale=scale):
                return qarray.dequantize(qarray.quantize_with_scale_zero_point(s, "int8", scale, None))
        else:  # the method the deployed network quantizes the layer's input with
            (rule,) = [r for r in quant.to_qwix_rules(rules, "ptq", analog=deployed.analog_inputs,
                                                      paths=quant.weight_paths(model))
                       if r.module_path == ".*"]

            def roundtrip(s, method=rule.act_calibration_method):
                return qwix.dequantize(qwix.quantize(s, "int8", channelwise_axes=(0,), calibration_method=method))

        got = np.asarray(jax.jit(roundtrip)(spikes))
        np.testing.assert_array_equal(got, np.asarray(spikes))
        assert got.max() == 1.0 and np.float32(qmax) * quant.spike_scale("int8") == 1.0


# ------------------------------------------------------------------ item 2: analog inputs calibrated


def test_srq_scale_of_an_analog_input_follows_the_calibration_data_and_clips_nothing_in_range():
    model = lif_model(seed=4)
    rules = quant.parse_recipe([dict(weight_qtype="int8", act_qtype="int8")])
    rng = np.random.default_rng(0)
    batches = [(rng.normal(size=(4, 5, 6)) * (1.0 + 0.2 * i)).astype(np.float32) for i in range(6)]
    factor = np.float32(quant.spike_range("int8"))

    def calibrated_scale(scale_data: float) -> tuple[np.ndarray, nnx.Module]:
        cal = quant.quantize(model, rules, "calibrate", jnp.asarray(batches[0] * scale_data))
        step = nnx.jit(lambda m, xb: m(xb, loop="carry"))
        for xb in batches:
            step(cal, jnp.asarray(xb * scale_data))
        srq = quant.quantize(cal, rules, "srq", jnp.asarray(batches[0] * scale_data))
        return np.asarray(srq.fc[0].dot_general0_lhs_scale.array.get_value()).reshape(()), srq

    scale, srq = calibrated_scale(1.0)
    # NumPy: the absmax over every calibration value (times the factor that makes it the top code)
    absmax = np.float32(max(np.abs(xb).max() for xb in batches)) * factor
    np.testing.assert_allclose(scale, absmax / np.float32(127.5), rtol=1e-6)
    assert np.float32(127) * scale >= np.abs(np.stack(batches)).max() * (1 - 1e-6)  # no calibration value clipped
    assert scale * 127 > 1.5  # not the fixed spike range +-1.004 of before
    assert srq.fc[1].dot_general0_lhs_scale.array.get_value().reshape(()) == quant.spike_scale("int8")
    # the scale follows the data: twice the data, twice the scale
    np.testing.assert_allclose(calibrated_scale(2.0)[0], 2 * scale, rtol=1e-6)

    # nothing in range is clipped: the deployed network equals a NumPy forward pass whose input layer
    # rounds to the static grid (no clip needed), whose hidden spikes are untouched
    x = np.clip(rng.normal(size=(3, 5, 6)).astype(np.float32), -127 * scale, 127 * scale)
    assert np.abs(x).max() > 1.004  # values the fixed spike range used to clip

    def aq(a: np.ndarray) -> np.ndarray:
        if quant.is_spike_train(a):
            return a
        codes = np.round((a / scale).astype(np.float32))
        assert np.abs(codes).max() <= 127
        return (codes * scale).astype(np.float32)

    def wq(w: np.ndarray) -> np.ndarray:
        s = (np.abs(w).max(axis=0, keepdims=True) / np.float32(127.5)).astype(np.float32)
        return (np.clip(np.round(w / s), -128, 127) * s).astype(np.float32)

    ref = np_forward(params_of(model), x, wq=wq, aq=aq)
    np.testing.assert_allclose(np.asarray(nnx.jit(lambda m, v: m(v)[0])(srq, jnp.asarray(x))), ref,
                               rtol=1e-4, atol=1e-4)


def test_the_input_layer_counts_as_spikes_only_for_binary_data():
    model = lif_model()
    rules = quant.parse_recipe([dict(weight_qtype="int8", act_qtype="int8")])
    binary = (np.arange(2 * 4 * 6).reshape(2, 4, 6) % 2).astype(np.float32)
    analog = binary * 0.5
    assert quant.input_layer(model, jnp.asarray(binary)) == "fc/0"
    assert quant.quantize(model, rules, "ptq", jnp.asarray(binary)).analog_inputs == ()
    assert quant.quantize(model, rules, "ptq", jnp.asarray(analog)).analog_inputs == ("fc/0",)
    # one analog sample in a binary data set makes the data analog
    data = np.concatenate([binary, analog[:1]])
    np.testing.assert_array_equal(quant.representative_sample(data), analog[:1])
    np.testing.assert_array_equal(quant.representative_sample(binary), binary[:1])
    # the split rule keeps first-wins: fc/0 analog, every other layer spike-exact, nothing left unused
    qrules = quant.to_qwix_rules(rules, "srq", analog=("fc/0",), paths=quant.weight_paths(model))
    assert [(r.module_path, r.act_calibration_method) for r in qrules] == [
        ("fc/0", quant.analog_calibration("int8")), (".*", quant.spike_exact_calibration("int8"))]
    # a rule for the input layer alone (w8in_w6a8) becomes the analog rule, and its original is dropped
    two = quant.parse_recipe([dict(module_path="fc/0", weight_qtype="int8", act_qtype="int8"),
                              dict(weight_qtype="int6", act_qtype="int8")])
    assert [r.module_path for r in quant.to_qwix_rules(two, "ptq", analog=("fc/0",), paths=["fc/0", "fc/1"])] == [
        "fc/0", ".*"]
    quant.quantize(model, two, "srq", jnp.asarray(analog))  # no rule reported unused


def analog_synthetic(**kwargs) -> Dataset:
    """The synthetic task as analog currents: spike counts smoothed, scaled and shifted (a hand-made Dataset)."""
    d = synthetic.load(**kwargs)

    def analog(x: np.ndarray) -> np.ndarray:
        return (2.1 * (x + np.roll(x, 1, axis=1)) / 2 - 0.3).astype(np.float32)

    return Dataset(analog(d.x_train), d.y_train, analog(d.x_test), d.y_test, d.n_classes, "analog_synthetic")


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["ptq", "srq"])
def test_an_analog_run_deploys_and_reloads_with_its_input_layer_calibrated(mode, tmp_path):
    cfg = make_cfg("debug=fast", "quant=w8a8", f"mode={mode}", "data._target_=tests.test_qtypes.analog_synthetic")
    data = build.data(cfg)
    assert not quant.is_spike_train(data.x_train) and np.abs(data.x_train).max() > 1.5
    metrics = run(cfg, tmp_path)
    assert checkpoint.info(tmp_path / "checkpoints" / "quant") == {"analog_inputs": ["fc/0"]}
    _, model = load_deployed(tmp_path)
    assert model.analog_inputs == ("fc/0",)
    assert evaluate(model, Arrays.put(data), cfg.trainer.eval_batch_size)["accuracy"] == metrics["quant_accuracy"]
    if mode == "srq":  # the input layer's static scale comes from the data, the hidden layers' is the spike scale
        s0 = float(model.fc[0].dot_general0_lhs_scale.array.get_value().reshape(()))
        assert 127 * s0 > 1.2
        assert model.readout.dot_general0_lhs_scale.array.get_value().reshape(()) == quant.spike_scale("int8")


@pytest.mark.slow
def test_a_w8in_ternary_run_deploys_an_int8_input_layer_and_ternary_codes_elsewhere(tmp_path):
    cfg = make_cfg("debug=fast", "quant=w8in_ternary", "mode=qat", "data._target_=tests.test_qtypes.analog_synthetic")
    metrics = run(cfg, tmp_path)
    _, model = load_deployed(tmp_path)
    assert model.analog_inputs == ("fc/0",)
    first, *rest = [np.asarray(m.kernel.array.qvalue.astype(jnp.int32)) for m in [*model.fc, model.readout]]
    assert set(np.abs(first).max(axis=0)) <= {127, 128}  # fc/0: int8, one absmax scale per output channel
    assert rest and all(set(np.unique(c)) == {-1, 0, 1} for c in rest)  # fc/1.., readout: ternary
    data = build.data(cfg)
    assert evaluate(model, Arrays.put(data), cfg.trainer.eval_batch_size)["accuracy"] == metrics["quant_accuracy"]


@pytest.mark.slow
def test_a_binary_run_keeps_the_spike_range_on_its_input_layer(tmp_path):
    cfg = make_cfg("debug=fast", "quant=w8a8", "mode=srq")
    assert quant.is_spike_train(build.data(cfg).x_train)
    run(cfg, tmp_path)
    assert checkpoint.info(tmp_path / "checkpoints" / "quant") == {"analog_inputs": []}
    _, model = load_deployed(tmp_path)
    assert model.fc[0].dot_general0_lhs_scale.array.get_value().reshape(()) == quant.spike_scale("int8")


# ------------------------------------------------------------------ item 7: recipe names


def test_recipe_names_are_unique_per_content():
    options = sorted(p.stem for p in (Path(CONF_DIR) / "quant").glob("*.yaml"))
    recipes = {}
    for option in options:
        extra = [[f"quant.weight_bits={b}"] for b in range(2, 9)] if option == "bits" else [[]]
        for over in extra:
            q = make_cfg(f"quant={option}", *over).quant
            # content: the parsed rules, defaults filled in (w4a8 spells out what bits=4 leaves default)
            rules = tuple(quant.parse_recipe(OmegaConf.to_container(q.rules, resolve=True)))
            recipes.setdefault(q.name, set()).add(rules)
    shared = {name: len(r) for name, r in recipes.items() if len(r) > 1}
    assert not shared, f"recipe names shared by different rule lists: {shared}"
    by_rules = {}
    for name, rules in recipes.items():
        by_rules.setdefault(next(iter(rules)), []).append(name)
    assert all(len(names) == 1 for names in by_rules.values()), by_rules
    named = {"w8in_w6a8", "w8in_ternary", "fp32", "ternary", "ternary_channel", "weights_only"}
    assert {f"w{b}a8" for b in range(2, 9)} | named == set(recipes)
    assert recipes["w6a8"] != recipes["w8in_w6a8"]


def test_combos_cover_the_allow_lists():
    assert {w for w, _ in COMBOS} == set(quant.WEIGHT_QTYPES)
    assert {a for _, a in COMBOS} == set(quant.ACT_QTYPES)
    assert len(set(itertools.product(COMBOS, MODES))) == len(COMBOS) * len(MODES)
