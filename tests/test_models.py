"""Recurrent and convolutional SNNs: NumPy references, real quantization, smoke runs, presets.

The recurrent matrices and the convolutions are checked to be REALLY
quantized (docs/qwix_on_snns.md: a recurrent weight held outside an ``nnx.Linear``
silently stays fp32): QAT outputs equal independent NumPy fake-quant
references, PTQ/SRQ store integer codes equal to a NumPy quantizer, and a
rule naming only ``rec/.*`` changes the output exactly as the reference says.
"""

from __future__ import annotations

import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import spyx
from flax import nnx
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

from snnexp import build, quant
from snnexp.models import ConvSNN, RecurrentSNN
from snnexp.quant import conv_as_dot_general
from snnexp.train import ConfigError, run
from tests.conftest import CONF_DIR, make_cfg
from tests.helpers import np_codes, np_fake_quant, write_nmnist_bin, write_shd

ACT = spyx.axn.superspike()
LIF = functools.partial(spyx.nn.LIF, beta=0.8, threshold=1.0, activation=ACT)
INT8 = [dict(weight_qtype="int8", act_qtype="int8")]
SPIKE_FACTOR = float(quant.spike_exact_calibration("int8", static=False).split(",")[1])


def ident(a: np.ndarray) -> np.ndarray:
    return a


def kernel(m) -> np.ndarray:
    return np.asarray(m.kernel[...])


def positive_absmax(model: nnx.Module) -> nnx.Module:
    """Flips the sign of output channels so that each one's largest |weight| is positive.

    At the channel's absmax, ``w / scale`` is exactly the tie ``+-(qmax + 0.5)``;
    float rounding decides between -128 and -127 for a negative one (qmax
    either way for a positive one), so with this the NumPy codes are exact.
    """
    for _, m in nnx.iter_modules(model):
        if isinstance(m, (nnx.Linear, nnx.Conv)):
            w = np.asarray(m.kernel[...])
            flat = w.reshape(-1, w.shape[-1])
            sign = np.sign(flat[np.argmax(np.abs(flat), axis=0), np.arange(flat.shape[1])])
            m.kernel[...] = jnp.asarray(w * sign)
    return model


def bitnet(w: np.ndarray) -> np.ndarray:
    gamma = np.abs(w).mean() + 1e-6
    return np.clip(np.round(w / gamma), -1, 1) * gamma


# ------------------------------------------------------------ recurrent: reference


def small_rnn(seed: int = 0, hidden=(10, 7), neuron=LIF, gain: float = 3.0) -> RecurrentSNN:
    model = RecurrentSNN(6, list(hidden), 3, neuron, readout_beta=0.9, rec_gain=gain, rngs=nnx.Rngs(seed))
    return positive_absmax(model)


def rnn_params(m: RecurrentSNN) -> dict:
    return {
        "fc": [(kernel(f), np.asarray(f.bias[...])) for f in m.fc],
        "rec": [kernel(r) for r in m.rec],
        "beta": [np.asarray(n.beta[...]) for n in m.neurons],
        "out": (kernel(m.readout), np.asarray(m.readout.bias[...])),
        "li_beta": float(m.li.beta[...]),
    }


def np_rnn(p: dict, x: np.ndarray, wq=ident, aq=ident, rq=ident) -> tuple[np.ndarray, np.ndarray]:
    """Recurrent LIF network in NumPy (spyx RLIF equations, threshold 1).

    ``wq`` transforms feed-forward and readout kernels, ``rq`` the recurrent
    kernels, ``aq`` every matmul input. Returns ``(readout [B,T,C], rates [B,T,L])``.
    """
    b, t, _ = x.shape
    (k0, b0) = p["fc"][0]
    cur0 = (aq(x.reshape(b * t, -1)) @ wq(k0) + b0).reshape(b, t, -1)
    v = [np.zeros((b, r.shape[0]), np.float32) for r in p["rec"]]
    li = np.zeros((b, p["out"][0].shape[1]), np.float32)
    outs, rates = [], []
    for k in range(t):
        h, r_t = cur0[:, k], []
        for i in range(len(v)):
            if i > 0:
                h = aq(h) @ wq(p["fc"][i][0]) + p["fc"][i][1]
            s = (v[i] - 1.0 > 0).astype(np.float32)  # fired from last step's membrane
            v[i] = p["beta"][i] * v[i] + (h + aq(s) @ rq(p["rec"][i])) - s
            h = s
            r_t.append(s.mean(-1))
        li = p["li_beta"] * li + aq(h) @ wq(p["out"][0]) + p["out"][1]
        outs.append(li.copy())
        rates.append(np.stack(r_t, -1))
    return np.stack(outs, 1), np.stack(rates, 1)


def analog(seed: int, shape=(4, 9, 6)) -> np.ndarray:
    return np.asarray(jax.random.uniform(jax.random.key(seed), shape) * 2.0)


def binary(seed: int, shape=(4, 9, 6)) -> np.ndarray:
    return np.asarray(jax.random.uniform(jax.random.key(seed), shape) < 0.5, np.float32)


@pytest.mark.parametrize("loop", ["scan", "unrolled", "carry"])
def test_recurrent_fp32_matches_numpy_reference(loop):
    model = small_rnn()
    x = analog(0)
    ref, ref_rates = np_rnn(rnn_params(model), x)
    out, rates = model(jnp.asarray(x), loop=loop)
    np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(rates), ref_rates, atol=1e-6)
    assert 0.02 < ref_rates.mean() < 0.6  # the test exercises real spiking
    no_rec = dict(rnn_params(model), rec=[np.zeros_like(kernel(r)) for r in model.rec])
    assert np.abs(np_rnn(no_rec, x)[0] - ref).max() > 1e-3  # and real feedback


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [(spyx.nn.LIF, spyx.nn.RLIF), (spyx.nn.CuBaLIF, spyx.nn.RCuBaLIF)],
)
def test_recurrent_layer_is_spyx_rlif_and_rcubalif(ours, theirs):
    """With recurrent_w = rec/0.kernel, spyx's own recurrent neuron gives the same spikes."""
    kw = dict(beta=0.85, threshold=1.0, activation=ACT) | ({"alpha": 0.7} if ours is spyx.nn.CuBaLIF else {})
    model = RecurrentSNN(5, [12], 3, functools.partial(ours, **kw), rec_gain=3.0, rngs=nnx.Rngs(1))
    ref = theirs((12,), **kw, rngs=nnx.Rngs(2))
    ref.recurrent_w[...] = model.rec[0].kernel[...]
    x = jnp.asarray(analog(3, (4, 15, 5)))
    cur = model.fc[0](x.reshape(-1, 5)).reshape(4, 15, 12)
    state, spikes = ref.initial_state(4), []
    for t in range(15):
        s, state = ref(cur[:, t], state)
        spikes.append(s)
    want = np.asarray(jnp.stack(spikes, 1).mean(-1))
    _, rates = model(x)
    np.testing.assert_allclose(np.asarray(rates[..., 0]), want, atol=1e-6)
    assert want.mean() > 0.02


@pytest.mark.parametrize("neuron", ["lif", "cuba_lif", "alif", "if"])
def test_recurrent_builds_with_every_neuron(neuron):
    cfg = make_cfg("model=recurrent", f"neuron={neuron}", "model.hidden=[12,8]")
    model = build.model(cfg, n_in=5, n_out=3)
    out, rates = model(jnp.ones((2, 4, 5)))
    assert out.shape == (2, 4, 3) and rates.shape == (2, 4, 2)
    assert type(model.neurons[0]).__name__ == cfg.neuron._target_.split(".")[-1]
    assert model.layer_sizes() == [5, 12, 8, 3]
    assert model.synapses() == [(5, 12), (12, 12 + 8), (8, 8 + 3)]  # recurrent synapses counted
    grads = nnx.grad(lambda m: m(jnp.ones((2, 4, 5)))[0].sum())(model)
    assert np.isfinite(np.asarray(grads["rec"][0]["kernel"][...])).all()


def test_recurrent_init_keeps_activity_alive_and_bounded():
    """Orthogonal * gain/sqrt(H): spiking neither dies nor saturates on a long random input."""
    cfg = make_cfg("model=recurrent", "model.hidden=[64]")
    model = build.model(cfg, n_in=16, n_out=4)
    r = kernel(model.rec[0])
    np.testing.assert_allclose(r @ r.T, np.eye(64) / 64 * cfg.model.rec_gain**2, atol=1e-5)
    x = binary(4, (8, 200, 16)) * 0.5
    _, rates = model(jnp.asarray(x))
    late = float(np.asarray(rates)[:, 100:].mean())
    assert 0.01 < late < 0.5


# --------------------------------------------------------- recurrent: quantization


def test_qat_recurrent_equals_fake_quant_reference():
    model = small_rnn()
    x = analog(1)
    fp32 = np.asarray(model(jnp.asarray(x))[0])  # an fp32 call first: no cached trace may leak into QAT
    qmodel = quant.quantize(model, quant.parse_recipe(INT8), "qat", jnp.asarray(x))
    wq = functools.partial(np_fake_quant, bits=8, axis=0)  # one scale per output channel
    ref, _ = np_rnn(rnn_params(model), x, wq=wq, rq=wq,
                    aq=functools.partial(np_fake_quant, bits=8, axis=1, factor=SPIKE_FACTOR))
    for got in (qmodel(jnp.asarray(x))[0], nnx.jit(lambda m, v: m(v)[0])(qmodel, jnp.asarray(x))):
        np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-5, atol=1e-5)
    assert np.abs(fp32 - ref).max() > 1e-4


@pytest.mark.parametrize("mode", ["qat", "ptq"])
def test_rule_on_rec_alone_quantizes_exactly_the_recurrent_matrices(mode):
    model = small_rnn()
    x = binary(2)
    fp32 = np.asarray(model(jnp.asarray(x))[0])
    rules = quant.parse_recipe([dict(module_path="rec/.*", weight_qtype="int4")])
    qmodel = quant.quantize(model, rules, mode, jnp.asarray(x))
    got = np.asarray(qmodel(jnp.asarray(x))[0])
    ref, _ = np_rnn(rnn_params(model), x, rq=functools.partial(np_fake_quant, bits=4, axis=0))
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    assert np.abs(got - fp32).max() > 1e-3  # int4 recurrent weights changed the output
    if mode == "ptq":
        assert qmodel.rec[0].kernel.array.qvalue.dtype == jnp.int4
        assert qmodel.rec[1].kernel.array.qvalue.dtype == jnp.int4
        assert isinstance(qmodel.fc[0].kernel, nnx.Param)  # untouched: fp32
        assert isinstance(qmodel.readout.kernel, nnx.Param)


@pytest.mark.parametrize("mode", ["ptq", "srq"])
def test_ptq_and_srq_store_recurrent_kernels_as_int8_codes(mode):
    model = small_rnn()
    x = jnp.asarray(binary(5))
    rules = quant.parse_recipe(INT8)
    source = model
    if mode == "srq":
        source = quant.quantize(model, rules, "calibrate", x)
        source(x, loop="carry")
        stats = {tuple(map(str, p)): v for p, v in nnx.to_flat_state(nnx.state(source, nnx.Variable))}
        # the recurrent matmul was seen at every step of the scan
        assert int(stats[("rec", "0", "dot_general0_lhs")].get_value()["count"]) == x.shape[1]
    qmodel = quant.quantize(source, rules, mode, x)
    for i, layer in enumerate(model.rec):
        arr = qmodel.rec[i].kernel.array
        assert arr.qvalue.dtype == jnp.int8
        w = kernel(layer)
        scale = (np.max(np.abs(w), axis=0, keepdims=True) / np.float32(127.5)).astype(np.float32)
        codes = np_codes(w, scale, 127)
        np.testing.assert_array_equal(np.asarray(arr.qvalue.astype(jnp.int32)), codes)
        np.testing.assert_allclose(np.asarray(arr.scale), scale, rtol=1e-6)
    if mode == "srq":
        assert "dot_general0_lhs_scale" in vars(qmodel.rec[0])  # a static activation scale
    # binary inputs and spikes are exact under the "spikes" calibration: only the weights change
    ref, _ = np_rnn(rnn_params(model), np.asarray(x), wq=functools.partial(np_fake_quant, bits=8, axis=0),
                    rq=functools.partial(np_fake_quant, bits=8, axis=0))
    np.testing.assert_allclose(np.asarray(qmodel(x)[0]), ref, rtol=1e-5, atol=1e-5)


def test_ternary_recurrent_codes_are_bitnet():
    model = small_rnn()
    q = quant.quantize(model, quant.parse_recipe([dict(weight_qtype="ternary", act_qtype="int8")]), "ptq",
                       jnp.ones((2, 3, 6)))
    w = kernel(model.rec[0])
    codes = np.asarray(q.rec[0].kernel.array.qvalue.astype(jnp.int32))
    np.testing.assert_array_equal(codes, np.clip(np.round(w / (np.abs(w).mean() + 1e-6)), -1, 1))
    assert {-1, 0, 1} == set(np.unique(codes))


def test_w8in_ternary_keeps_the_input_layer_at_int8_and_ternarizes_the_rest():
    """conf/quant/w8in_ternary.yaml: per-channel int8 codes on fc/0 (analog input), BitNet codes on every other."""
    recipe = OmegaConf.to_container(OmegaConf.load(Path(CONF_DIR) / "quant" / "w8in_ternary.yaml").rules)
    model = small_rnn()
    x = jnp.linspace(-1.0, 1.5, 2 * 3 * 6).reshape(2, 3, 6)  # analog currents
    q = quant.quantize(model, quant.parse_recipe(recipe), "ptq", x)
    assert q.analog_inputs == ("fc/0",)
    w = kernel(model.fc[0])
    scale = (np.max(np.abs(w), axis=0, keepdims=True) / np.float32(127.5)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(q.fc[0].kernel.array.qvalue.astype(jnp.int32)), np_codes(w, scale, 127))
    for layer, qlayer in [(model.fc[1], q.fc[1]), (model.rec[0], q.rec[0]), (model.rec[1], q.rec[1]),
                          (model.readout, q.readout)]:
        w = kernel(layer)
        np.testing.assert_array_equal(np.asarray(qlayer.kernel.array.qvalue.astype(jnp.int32)),
                                      np.clip(np.round(w / (np.abs(w).mean() + 1e-6)), -1, 1))


def test_qwix_confuses_a_square_recurrent_weight_with_a_batch_of_as_many_rows():
    """Why quant.check_shapes exists: pins qwix 0.1.8's crash (B == H, QAT)."""
    model = small_rnn(hidden=[4])
    with pytest.raises(AssertionError, match="lhs and rhs cannot be both weights"):
        quant.quantize(model, quant.parse_recipe(INT8), "qat", jnp.ones((4, 3, 6)))


def test_run_refuses_a_batch_as_wide_as_the_recurrent_layer(tmp_path):
    cfg = make_cfg("debug=fast", "model=recurrent", "model.hidden=[20]", "trainer.batch_size=20")
    with pytest.raises(ConfigError, match="rec/0 is 20x20 and a batch has 20 rows"):
        run(cfg, tmp_path)


# ---------------------------------------------------------------- conv: reference


def small_cnn(impl: str = "patches", seed: int = 0) -> ConvSNN:
    model = ConvSNN(72, [4, 6], 3, LIF, kernel_size=[3, 3], pool=[2, 1], image=[2, 6, 6], impl=impl,
                    rngs=nnx.Rngs(seed))
    return positive_absmax(model)


def np_conv_same(x: np.ndarray, k: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Stride-1 SAME convolution of NHWC ``x`` with HWIO ``k`` by shift-and-add."""
    kh, kw = k.shape[:2]
    n, h, w, _ = x.shape
    xp = np.pad(x, ((0, 0), ((kh - 1) // 2, kh // 2), ((kw - 1) // 2, kw // 2), (0, 0)))
    out = np.zeros((n, h, w, k.shape[3]), np.float32)
    for i in range(kh):
        for j in range(kw):
            out += np.tensordot(xp[:, i:i + h, j:j + w, :], k[i, j], axes=([3], [0]))
    return out + b


def np_max_pool(s: np.ndarray, p: int) -> np.ndarray:
    n, h, w, c = s.shape
    s = s[:, : h // p * p, : w // p * p]
    return s.reshape(n, h // p, p, w // p, p, c).max(axis=(2, 4))


def np_cnn(m: ConvSNN, x: np.ndarray, wq=ident) -> tuple[np.ndarray, np.ndarray]:
    """The conv SNN in NumPy; ``x`` ``[B, T, C*H*W]`` flattened channel-major as N-MNIST's loader does."""
    b, t, _ = x.shape
    c, h, w = m.image
    frames = x.reshape(b, t, c, h, w).transpose(0, 1, 3, 4, 2)  # (C, y, x) -> NHWC
    convs = [(wq(kernel(cv)), np.asarray(cv.bias[...])) for cv in m.conv]
    v = [np.zeros((b, *mp), np.float32) for mp in m.maps]
    w_out, b_out = wq(kernel(m.readout)), np.asarray(m.readout.bias[...])
    li = np.zeros((b, w_out.shape[1]), np.float32)
    outs, rates = [], []
    for k in range(t):
        z, r_t = frames[:, k], []
        for i in range(len(v)):
            z = np_conv_same(z, *convs[i])
            s = (v[i] - 1.0 > 0).astype(np.float32)
            v[i] = float(m.neurons[i].beta[...]) * v[i] + z - s
            r_t.append(s.mean(axis=(1, 2, 3)))
            z = np_max_pool(s, m.pool[i])
        li = 0.9 * li + z.reshape(b, -1) @ w_out + b_out
        outs.append(li.copy())
        rates.append(np.stack(r_t, -1))
    return np.stack(outs, 1), np.stack(rates, 1)


@pytest.mark.parametrize("impl", ["patches", "lax"])
@pytest.mark.parametrize("loop", ["scan", "unrolled", "carry"])
def test_conv_fp32_matches_numpy_reference(impl, loop):
    model = small_cnn(impl)
    x = binary(6, (3, 7, 72))
    ref, ref_rates = np_cnn(model, x)
    out, rates = model(jnp.asarray(x), loop=loop)
    np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(rates), ref_rates, atol=1e-6)
    assert (ref_rates.mean(axis=(0, 1)) > 0.005).all()  # both layers spike


def test_conv_as_dot_general_equals_lax_conv_for_strides_and_paddings():
    x = jax.random.normal(jax.random.key(0), (2, 7, 6, 3))
    k = jax.random.normal(jax.random.key(1), (3, 2, 3, 5))
    dn = jax.lax.conv_dimension_numbers(x.shape, k.shape, ("NHWC", "HWIO", "NHWC"))
    for strides in [(1, 1), (2, 1), (2, 3)]:
        for padding in ["SAME", "VALID", [(1, 0), (2, 1)]]:
            want = jax.lax.conv_general_dilated(x, k, strides, padding, dimension_numbers=dn)
            got = conv_as_dot_general(x, k, strides, padding, dimension_numbers=dn)
            np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


def test_conv_shapes_synapses_and_inferred_image():
    cfg = make_cfg("model=conv", "data=synthetic", "data.features=72")
    model = build.model(cfg, n_in=72, n_out=4)  # 2x6x6 inferred, [16, 32] channels, pool 2
    assert model.image == (2, 6, 6) and model.maps == ((6, 6, 16), (3, 3, 32))
    assert model.layer_sizes() == [72, 576, 288, 4]
    assert model.synapses() == [(72, 9 * 16), (576, 9 * 32), (288, 4)]
    out, rates = model(jnp.ones((2, 3, 72)))
    assert out.shape == (2, 3, 4) and rates.shape == (2, 3, 2)
    assert build.model(cfg, n_in=36, n_out=4).image == (1, 6, 6)  # H*H: one channel
    with pytest.raises(ValueError, match="set model.image"):
        build.model(cfg, n_in=70, n_out=4)
    with pytest.raises(ValueError, match=r"model.image=\[2, 5, 5\] holds 50 features but the data has 72"):
        build.model(make_cfg("model=conv", "model.image=[2,5,5]"), n_in=72, n_out=4)
    with pytest.raises(ValueError, match="model.impl='cudnn'; valid choices"):
        build.model(make_cfg("model=conv", "model.impl=cudnn"), n_in=72, n_out=4)
    with pytest.raises(ValueError, match="model.kernel_size"):
        build.model(make_cfg("model=conv", "model.kernel_size=[3]"), n_in=72, n_out=4)


# ------------------------------------------------------------ conv: quantization


@pytest.mark.parametrize(
    ("impl", "recipe"),
    [("patches", "w8a8"), ("patches", "w4a8"), ("patches", "weights_only"), ("patches", "ternary"),
     ("lax", "w8a8")],
)
def test_ptq_stores_every_conv_and_linear_kernel_as_integers(impl, recipe):
    cfg = make_cfg("model=conv", f"quant={recipe}", f"model.impl={impl}", "model.hidden=[4,6]")
    model = positive_absmax(build.model(cfg, n_in=72, n_out=3))
    x = jnp.asarray(binary(7, (2, 3, 72)))
    q = quant.quantize(model, quant.parse_recipe(cfg.quant.rules), "ptq", x)
    kernels = {"/".join(map(str, p[:-1])): v for p, v in nnx.to_flat_state(nnx.state(q, nnx.Param))
               if p[-1] in ("kernel", "qvalue")}
    assert set(kernels) == {"conv/0/kernel/array", "conv/1/kernel/array", "readout/kernel/array"}
    bits = {"w8a8": 8, "weights_only": 8, "w4a8": 4, "ternary": 4}[recipe]
    assert all(jnp.issubdtype(v.dtype, jnp.integer) and jnp.iinfo(v.dtype).bits == bits for v in kernels.values())
    for i, conv in enumerate(model.conv):
        w = kernel(conv)  # [kh, kw, C_in, C_out]: one scale per output channel
        got = np.asarray(q.conv[i].kernel.array.qvalue.astype(jnp.int32))
        if recipe == "ternary":
            np.testing.assert_array_equal(got, np.clip(np.round(w / (np.abs(w).mean() + 1e-6)), -1, 1))
        else:
            qmax = 2 ** (bits - 1) - 1
            scale = (np.max(np.abs(w), axis=(0, 1, 2), keepdims=True) / np.float32(qmax + 0.5)).astype(np.float32)
            np.testing.assert_array_equal(got, np_codes(w, scale, qmax))


@pytest.mark.parametrize(("impl", "recipe"), [("patches", "w4a8"), ("patches", "ternary"), ("lax", "w8a8")])
@pytest.mark.parametrize("mode", ["qat", "ptq"])
def test_quantized_conv_equals_fake_quant_reference(impl, recipe, mode):
    """Binary frames and max-pooled spikes are exact under int8 "spikes" scales: only weights change."""
    model = small_cnn(impl)
    x = binary(8, (3, 7, 72))
    fp32 = np.asarray(model(jnp.asarray(x))[0])
    cfg = make_cfg(f"quant={recipe}")
    q = quant.quantize(model, quant.parse_recipe(cfg.quant.rules), mode, jnp.asarray(x))
    if recipe == "ternary":
        wq = bitnet
    else:
        bits = int(recipe[1])

        def wq(w):  # reduce over every axis but the output channel
            return np_fake_quant(w.reshape(-1, w.shape[-1]), bits, axis=0).reshape(w.shape)

    ref, _ = np_cnn(model, x, wq=wq)
    np.testing.assert_allclose(np.asarray(q(jnp.asarray(x))[0]), ref, rtol=1e-4, atol=1e-4)
    assert np.abs(fp32 - ref).max() > 1e-3


@pytest.mark.parametrize("recipe", ["w4a8", "weights_only", "ternary"])
def test_lax_conv_with_mixed_qtypes_is_a_clear_error(recipe):
    """qwix 0.1.8 quantizes a lax convolution only with act qtype == weight qtype."""
    model = small_cnn("lax")
    rules = quant.parse_recipe(make_cfg(f"quant={recipe}").quant.rules)
    with pytest.raises(ValueError, match="conv/0: .*model.impl=patches"):
        quant.quantize(model, rules, "ptq", jnp.ones((2, 3, 72)))


# ------------------------------------------------------------------- smoke runs

RECIPES = ["fp32", "w8a8", "w4a8", "weights_only", "ternary"]
MODES = ["qat", "qt", "ptq", "srq"]
MODELS = {
    # 16 features, 24 recurrent neurons, 4 classes (debug=fast)
    "recurrent": ["model=recurrent"],
    # 2x6x6 frames: conv 3x3 2->4, max-pool 2, conv 3x3 4->6, readout 54->4
    "conv": ["model=conv", "data.features=72", "model.hidden=[4,6]", "model.pool=[2,1]"],
}
# (weights, output channels) of every kernel, for the expected bits per weight
KERNELS = {"recurrent": (16 * 24 + 24 * 24 + 24 * 4, 24 + 24 + 4), "conv": (72 + 216 + 216, 4 + 6 + 4)}
# The recurrent model in every mode with w8a8 and with ternary (the recipes whose code paths differ most),
# and every other recipe once; for conv every recipe and every mode at least once (a conv run costs ~2x a
# recurrent one, mostly compilation). tests/test_run.py runs the whole recipe x mode grid (feed-forward).
REC_CASES = [(r, m) for r in ("w8a8", "ternary") for m in MODES] + [("fp32", "qt"), ("w4a8", "srq"),
                                                                    ("weights_only", "qat")]
CONV_CASES = [("fp32", "qt"), ("w8a8", "srq"), ("w4a8", "qat"), ("weights_only", "ptq"), ("ternary", "qat"),
              ("ternary", "srq")]
CASES = [("recurrent", r, m) for r, m in REC_CASES] + [("conv", r, m) for r, m in CONV_CASES]


@pytest.mark.slow
@pytest.mark.parametrize(("model", "recipe", "mode"), CASES)
def test_every_model_recipe_and_mode_runs(model, recipe, mode, tmp_path):
    m = run(make_cfg("debug=fast", *MODELS[model], f"quant={recipe}", f"mode={mode}"), tmp_path)
    assert 0.0 <= m["quant_accuracy"] <= 1.0
    assert (m["fp32_accuracy"] is None) == (mode == "qt")
    assert set(m["spike_rate"]) == {"layer_0", "mean"} | ({"layer_1"} if model == "conv" else set())
    assert (tmp_path / "checkpoints" / "quant").is_dir()
    n, channels = KERNELS[model]
    if recipe == "fp32":
        assert m["bits_per_weight"] == 32
    else:
        bits = {"w8a8": 8, "weights_only": 8, "w4a8": 4, "ternary": 4}[recipe]
        assert m["bits_per_weight"] == pytest.approx((n * bits + channels * 32) / n)
    assert m["synaptic_ops_per_sample"] > 0


# ---------------------------------------------------------------------- presets

PRESETS = sorted(p.stem for p in (Path(CONF_DIR) / "experiment").glob("*.yaml"))
BASES = ["mnist1d_ff", "mnist1d_recurrent", "mnist1d_recurrent_256", "shd_ff", "shd_recurrent", "nmnist_conv",
         "yinyang"]


def features(cfg) -> int:
    d = cfg.data
    if d.name == "mnist1d":
        return {"current": 1, "delta": 2, "level": d.levels}[d.encoding]
    if d.name == "shd":
        return d.channels
    if d.name == "yinyang":
        return 4
    return 2 * (34 // d.pool) ** 2


def test_every_base_preset_has_a_quant_variant():
    assert set(PRESETS) == set(BASES) | {f"{b}_quant" for b in BASES}


@pytest.mark.slow
@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_composes_and_builds(preset):
    cfg = make_cfg(f"experiment={preset}")
    assert cfg.data.name in preset and cfg.trainer.epochs >= 1
    header = (Path(CONF_DIR) / "experiment" / f"{preset}.yaml").read_text().splitlines()
    assert header[0] == "# @package _global_"
    assert any(f"experiment={preset}" in line for line in header if line.startswith("#"))  # the command
    assert any("Expected" in line for line in header if line.startswith("#"))
    f = features(cfg)
    model = build.model(cfg, n_in=f, n_out=10)
    out, rates = model(jnp.zeros((2, 3, f)))
    assert out.shape == (2, 3, 10) and np.isfinite(np.asarray(out)).all()


@pytest.mark.parametrize("base", BASES)
def test_quant_presets_sweep_every_recipe_and_mode_over_their_base(base):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"experiment={base}_quant"], return_hydra_config=True)
    params = cfg.hydra.sweeper.params
    swept = params.quant.split(",")
    assert swept[:len(RECIPES)] == RECIPES and params.mode.split(",") == MODES  # extra recipes may follow
    with open_dict(cfg):
        del cfg["hydra"]
    assert cfg == make_cfg(f"experiment={base}")


SMALL_RUN = ["logger=none", "trainer.epochs=1", "mode=ptq", "quant=w8a8"]  # fp32 epoch, then int8


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["shd_ff", "shd_recurrent"])
def test_shd_presets_run_on_files_in_the_real_format(preset, tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("test", 6)):
        times = [np.sort(rng.uniform(0, 1.2, 200)) for _ in range(n)]
        units = [rng.integers(0, 700, 200) for _ in range(n)]
        write_shd(tmp_path / f"shd_{split}.h5", times, units, rng.integers(0, 20, n))
    m = run(make_cfg(f"experiment={preset}", f"data.root={tmp_path}", *SMALL_RUN), tmp_path / "run")
    assert m["status"] == "ok" and 0.0 <= m["quant_accuracy"] <= 1.0


@pytest.mark.slow
def test_nmnist_conv_preset_runs_on_files_in_the_real_format(tmp_path):
    pytest.importorskip("tonic")
    rng = np.random.default_rng(1)
    for folder, digits in (("Train", range(10)), ("Test", (3, 7))):
        for d in digits:
            t = np.sort(rng.integers(0, 300_000, 300))
            xs, ys, ps = rng.integers(0, 34, 300), rng.integers(0, 34, 300), rng.integers(0, 2, 300)
            events = [(int(a), int(b), int(c), int(p)) for a, b, c, p in zip(xs, ys, t, ps)]
            write_nmnist_bin(tmp_path / "NMNIST" / folder / str(d) / "00001.bin", events)
    m = run(make_cfg("experiment=nmnist_conv", f"data.root={tmp_path}", *SMALL_RUN), tmp_path / "run")
    assert m["status"] == "ok" and set(m["spike_rate"]) == {"layer_0", "layer_1", "mean"}


@pytest.mark.parametrize("readout", ["mean", "max", "last"])
def test_readout_logits_are_the_mean_max_or_last_step_of_the_membrane(readout):
    from snnexp.models.time_loop import readout_logits

    trace = np.random.default_rng(0).normal(size=(4, 7, 3)).astype(np.float32)
    want = {"mean": trace.mean(axis=1), "max": trace.max(axis=1), "last": trace[:, -1]}[readout]
    np.testing.assert_allclose(np.asarray(readout_logits(jnp.asarray(trace), readout)), want, rtol=1e-6)


def test_an_unknown_readout_is_refused_naming_the_choices(cfg_factory):
    with pytest.raises(ValueError, match="model.readout='median'; valid choices: mean, max, last"):
        build.model(cfg_factory("model.readout=median"), 64, 10)
