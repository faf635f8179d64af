"""Quantization does what the recipe says, checked against NumPy references."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import qwix
import spyx
from flax import nnx

from snnexp import quant
from snnexp.models import FeedForwardSNN
from tests.helpers import np_codes, np_fake_quant

INT8 = [dict(weight_qtype="int8", act_qtype="int8")]


def small_model(seed: int = 0) -> FeedForwardSNN:
    neuron = functools.partial(spyx.nn.LIF, beta=0.8, threshold=1.0, activation=spyx.axn.superspike())
    return FeedForwardSNN(6, [10, 7], 3, neuron, readout_beta=0.9, rngs=nnx.Rngs(seed))


def np_forward(params: dict, x: np.ndarray, wq, aq) -> np.ndarray:
    """An independent NumPy forward pass of the LIF network (spyx's equations)
    with weights and matmul inputs passed through ``wq`` / ``aq``."""
    b, t, _ = x.shape
    kernels, biases, betas = params["kernels"], params["biases"], params["betas"]
    v = [np.zeros((b, k.shape[1]), np.float32) for k in kernels[:-1]]
    cur0 = aq(x.reshape(b * t, -1)) @ wq(kernels[0]) + biases[0]
    cur0 = cur0.reshape(b, t, -1)
    li = np.zeros((b, kernels[-1].shape[1]), np.float32)
    out = []
    for k in range(t):
        h = cur0[:, k]
        for i in range(len(v)):
            if i > 0:
                h = aq(h) @ wq(kernels[i]) + biases[i]
            spikes = (v[i] - 1.0 > 0).astype(np.float32)
            v[i] = betas[i] * v[i] + h - spikes
            h = spikes
        li = params["li_beta"] * li + aq(h) @ wq(kernels[-1]) + biases[-1]
        out.append(li.copy())
    return np.stack(out, axis=1)


def params_of(model: FeedForwardSNN) -> dict:
    layers = [*model.fc, model.readout]
    return {
        "kernels": [np.asarray(m.kernel[...]) for m in layers],
        "biases": [np.asarray(m.bias[...]) for m in layers],
        "betas": [float(n.beta[...]) for n in model.neurons],
        "li_beta": float(model.li.beta[...]),
    }


def test_fp32_forward_matches_numpy_reference():
    model = small_model()
    x = np.asarray(jax.random.uniform(jax.random.key(0), (4, 9, 6)) * 2.0)
    ref = np_forward(params_of(model), x, wq=lambda w: w, aq=lambda a: a)
    np.testing.assert_allclose(np.asarray(model(jnp.asarray(x))[0]), ref, rtol=1e-5, atol=1e-5)


def test_qat_forward_equals_fake_quant_reference():
    model = small_model()
    # analog input so the input layer's dynamic activation scale matters
    x = np.asarray(jax.random.uniform(jax.random.key(1), (4, 9, 6)) * 2.0)
    qmodel = quant.quantize(model, quant.parse_recipe(INT8), "qat", jnp.asarray(x))
    got = np.asarray(qmodel(jnp.asarray(x))[0])
    factor = float(quant.spike_exact_calibration("int8", static=False).split(",")[1])
    ref = np_forward(
        params_of(model), x,
        wq=lambda w: np_fake_quant(w, 8, axis=0),  # one scale per output channel
        aq=lambda a: np_fake_quant(a, 8, axis=1, factor=factor),  # one scale per row
    )
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    # and quantization really happened: the fp32 network differs
    assert np.abs(np.asarray(model(jnp.asarray(x))[0]) - got).max() > 1e-4


@pytest.mark.parametrize("qtype,bits,dtype", [("int8", 8, jnp.int8), ("int4", 4, jnp.int4)])
@pytest.mark.parametrize("mode", ["ptq", "srq"])
def test_ptq_stores_integers_equal_to_numpy_quantizer(qtype, bits, dtype, mode):
    model = small_model()
    rules = quant.parse_recipe([dict(weight_qtype=qtype, act_qtype="int8")])
    x = jnp.ones((2, 3, 6))
    if mode == "srq":
        cal = quant.quantize(model, rules, "calibrate", x)
        cal(x, loop="carry")
        model_in = cal
    else:
        model_in = model
    qmodel = quant.quantize(model_in, rules, mode, x)
    qmax = 2 ** (bits - 1) - 1
    for name, layer in [("fc/0", model.fc[0]), ("fc/1", model.fc[1]), ("readout", model.readout)]:
        qlayer = {"fc/0": qmodel.fc[0], "fc/1": qmodel.fc[1], "readout": qmodel.readout}[name]
        arr = qlayer.kernel.array
        assert arr.qvalue.dtype == dtype, name
        w = np.asarray(layer.kernel[...])
        scale = (np.max(np.abs(w), axis=0, keepdims=True) / np.float32(qmax + 0.5)).astype(np.float32)
        codes = np_codes(w, scale, qmax)
        got = np.asarray(arr.qvalue.astype(jnp.int32))
        # at an exact tie (|w| = absmax gives +-(qmax + 0.5)) float rounding decides
        tie = np.abs(np.abs(w / scale) - np.floor(np.abs(w / scale)) - 0.5) < 1e-4
        assert np.all((got == codes) | (tie & (np.abs(got - codes) == 1))), name
        assert (got == codes).mean() > 0.9, name
        np.testing.assert_allclose(np.asarray(arr.scale), scale, rtol=1e-6)


def test_ternary_codes_are_bitnet_absmean():
    model = small_model()
    rules = quant.parse_recipe([dict(weight_qtype="ternary", act_qtype="int8")])
    qmodel = quant.quantize(model, rules, "ptq", jnp.ones((2, 3, 6)))
    for layer, qlayer in [(model.fc[0], qmodel.fc[0]), (model.fc[1], qmodel.fc[1]),
                          (model.readout, qmodel.readout)]:
        arr = qlayer.kernel.array
        codes = np.asarray(arr.qvalue.astype(jnp.int32))
        assert set(np.unique(codes)) <= {-1, 0, 1}
        assert {-1, 1} <= set(np.unique(codes))
        w = np.asarray(layer.kernel[...])
        gamma = np.abs(w).mean() + 1e-6  # BitNet b1.58: one absmean scale
        np.testing.assert_array_equal(codes, np.clip(np.round(w / gamma), -1, 1))
        dequant = codes * np.asarray(arr.scale)
        np.testing.assert_allclose(dequant, np.clip(np.round(w / gamma), -1, 1) * gamma, rtol=1e-6)


def test_ternary_channel_scales_are_each_columns_absmean():
    """``ternary_scale: channel``: codes ``clip(round(w / mean|w[:, j]|), -1, 1)`` and scale ``mean|w[:, j]|`` per
    output channel ``j`` (numpy), in PTQ and in QAT's forward."""
    model = small_model()
    rules = quant.parse_recipe([dict(weight_qtype="ternary", ternary_scale="channel", act_qtype="int8")])
    qmodel = quant.quantize(model, rules, "ptq", jnp.ones((2, 3, 6)))
    for layer, qlayer in [(model.fc[0], qmodel.fc[0]), (model.fc[1], qmodel.fc[1]),
                          (model.readout, qmodel.readout)]:
        arr = qlayer.kernel.array
        w = np.asarray(layer.kernel[...])
        gamma = np.abs(w).mean(axis=0) + 1e-6
        want = np.clip(np.round(w / gamma), -1, 1)
        np.testing.assert_array_equal(np.asarray(arr.qvalue.astype(jnp.int32)), want)
        np.testing.assert_allclose(np.asarray(arr.scale).reshape(-1), gamma, rtol=1e-6)
        assert len(np.unique(gamma)) == gamma.size  # really one scale per column
    projected = quant.ternary_ste(model.fc[1].kernel[...], per_channel=True)
    w = np.asarray(model.fc[1].kernel[...])
    np.testing.assert_allclose(np.asarray(projected), np.clip(np.round(w / (np.abs(w).mean(0) + 1e-6)), -1, 1)
                               * (np.abs(w).mean(0) + 1e-6), rtol=1e-6)


@pytest.mark.parametrize(("rule", "says"), [
    (dict(weight_qtype="int8", ternary_scale="channel"), "ternary_scale='channel' is for weight_qtype: ternary"),
    (dict(weight_qtype="ternary", ternary_scale="row"), "ternary_scale='row' is not supported; valid choices: "
                                                        "\\['tensor', 'channel'\\]"),
])
def test_a_bad_ternary_scale_is_refused_naming_the_choices(rule, says):
    with pytest.raises(quant.RecipeError, match=says):
        quant.parse_recipe([rule])


def test_ternary_qat_forward_uses_ternary_weights_and_passes_gradients():
    model = small_model()
    x = jnp.ones((2, 5, 6))
    rules = quant.parse_recipe([dict(weight_qtype="ternary")])
    qat = quant.quantize(model, rules, "qat", x)
    ref = np_forward(params_of(model), np.asarray(x),
                     wq=lambda w: np.clip(np.round(w / (np.abs(w).mean() + 1e-6)), -1, 1)
                     * (np.abs(w).mean() + 1e-6),
                     aq=lambda a: a)
    np.testing.assert_allclose(np.asarray(qat(x)[0]), ref, rtol=1e-5, atol=1e-5)
    grads = nnx.grad(lambda m: m(x)[0].sum())(qat)
    assert np.abs(np.asarray(grads["fc"][0]["kernel"][...])).sum() > 0  # straight-through


@pytest.mark.parametrize("qtype", ["int8", "int6", "int4", "int3", "int2"])
@pytest.mark.parametrize("static", [False, True])
def test_a_spike_of_one_survives_activation_quantization(qtype, static):
    spikes = jnp.array([[0.0, 1.0, 1.0, 0.0, 1.0]])
    method = quant.spike_exact_calibration(qtype, static=static)

    def roundtrip(s):
        return qwix.dequantize(qwix.quantize(s, qtype, channelwise_axes=(0,), calibration_method=method))

    for f in (roundtrip, jax.jit(roundtrip)):  # compiled too: XLA multiplies by the reciprocal
        np.testing.assert_array_equal(np.asarray(f(spikes)), np.asarray(spikes))
    # qwix's default would not keep it
    plain = qwix.dequantize(qwix.quantize(spikes, qtype, channelwise_axes=(0,)))
    assert float(plain.max()) < 1.0


def test_spikes_pass_hidden_layers_unchanged_in_a_w8a8_model():
    """With int8 activations the hidden-layer inputs (spikes) must not change:
    the quantized model equals the reference with weights-only fake quant."""
    model = small_model(3)
    x = (jax.random.uniform(jax.random.key(2), (3, 8, 6)) < 0.5).astype(jnp.float32)
    qmodel = quant.quantize(model, quant.parse_recipe(INT8), "ptq", x)
    ref = np_forward(params_of(model), np.asarray(x), wq=lambda w: np_fake_quant(w, 8, axis=0),
                     aq=lambda a: a)
    np.testing.assert_allclose(np.asarray(qmodel(x)[0]), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bad", ["fp8", "int1", "uint8", "int16", "float16"])
@pytest.mark.parametrize("field", ["weight_qtype", "act_qtype"])
def test_bad_qtypes_are_rejected_with_choices(bad, field):
    rule = dict(weight_qtype="int8", act_qtype="int8")
    rule[field] = bad
    with pytest.raises(quant.RecipeError) as e:
        quant.parse_recipe([rule])
    assert repr(bad) in str(e.value) and "int8" in str(e.value) and field in str(e.value)


def test_activation_only_rule_is_an_error():
    with pytest.raises(quant.RecipeError, match="weight_qtype is null"):
        quant.parse_recipe([dict(act_qtype="int8")])


def test_unknown_rule_key_and_method_are_errors():
    with pytest.raises(quant.RecipeError, match="unknown key"):
        quant.parse_recipe([dict(weight_qtype="int8", wieght_qtype="int4")])
    with pytest.raises(quant.RecipeError, match="'absmean'.*valid choices"):
        quant.parse_recipe([dict(weight_qtype="int8", weight_calibration_method="absmean")])


def test_rule_matching_no_layer_is_an_error_naming_the_layers():
    rules = quant.parse_recipe([dict(module_path=".*Linear.*", weight_qtype="int8")])
    with pytest.raises(quant.RecipeError) as e:
        quant.quantize(small_model(), rules, "qat", jnp.ones((1, 2, 6)))
    assert ".*Linear.*" in str(e.value) and "fc/0" in str(e.value) and "readout" in str(e.value)


def test_first_matching_rule_wins():
    rules = quant.parse_recipe([dict(module_path="fc/0", weight_qtype="int8"),
                                dict(module_path=".*", weight_qtype="int4")])
    q = quant.quantize(small_model(), rules, "ptq", jnp.ones((1, 2, 6)))
    assert q.fc[0].kernel.array.qvalue.dtype == jnp.int8
    assert q.fc[1].kernel.array.qvalue.dtype == jnp.int4
    assert q.readout.kernel.array.qvalue.dtype == jnp.int4
