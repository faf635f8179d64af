"""Synaptic delays on the input (``model.input_delays``, ``model.delay_stride``).

A network with ``D`` delays per input channel must be exactly the network
without delays fed the delayed copies of its input, built here with NumPy
indexing; qwix must quantize the widened ``fc/0`` as any other; the integer
network must delay its input codes as the NumPy reference does, read from the
exported files alone (the NIR graph's ``Delay`` nodes: tests/test_nir_export.py).
"""

from __future__ import annotations

import functools
import json

import jax.numpy as jnp
import numpy as np
import pytest
import spyx
from flax import nnx

from snnexp import build, quant, reference, rundir
from snnexp.export import export
from snnexp.hardware import integer
from snnexp.models import FeedForwardSNN, RecurrentSNN
from snnexp.train import ConfigError, run
from tests.conftest import make_cfg

LIF = functools.partial(spyx.nn.LIF, beta=0.8, threshold=1.0, activation=spyx.axn.superspike())
B, T, F, D, S = 3, 11, 2, 4, 2


def np_delayed(x: np.ndarray, taps: int, stride: int) -> np.ndarray:
    """``[B, T, F] -> [B, T, taps * F]``: channel ``j * F + f`` at step ``t`` is ``x[:, t - j * stride, f]``.

    Zero before the sequence starts (``t < j * stride``).
    """
    b, t, f = x.shape
    out = np.zeros((b, t, taps * f), x.dtype)
    for j in range(taps):
        for step in range(j * stride, t):
            out[:, step, j * f:(j + 1) * f] = x[:, step - j * stride]
    return out


def pair(cls: type, **kw) -> tuple[nnx.Module, nnx.Module]:
    """A delayed network and one without delays of ``F * D`` inputs, with the same parameters."""
    delayed = cls(F, [6, 5], 3, LIF, input_delays=D, delay_stride=S, rngs=nnx.Rngs(0), **kw)
    plain = cls(F * D, [6, 5], 3, LIF, rngs=nnx.Rngs(1), **kw)
    nnx.update(plain, nnx.state(delayed))
    return delayed, plain


@pytest.mark.parametrize("cls", [FeedForwardSNN, RecurrentSNN])
@pytest.mark.parametrize("loop", ["scan", "unrolled"])
def test_a_delayed_network_is_the_plain_one_fed_the_delayed_input(cls, loop):
    delayed, plain = pair(cls)
    x = (np.random.default_rng(0).random((B, T, F)) * 3).astype(np.float32)
    out, rates = delayed(jnp.asarray(x), loop=loop)
    want, want_rates = plain(jnp.asarray(np_delayed(x, D, S)), loop=loop)
    assert float(jnp.abs(rates).sum()) > 0  # the layers spike: the comparison is not of zeros
    np.testing.assert_allclose(np.asarray(out), np.asarray(want), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(rates), np.asarray(want_rates))
    # the delays matter: the last tap alone changes the output
    x2 = x.copy()
    x2[:, 0] += 1.0
    assert not np.allclose(np.asarray(delayed(jnp.asarray(x2), loop=loop)[0][:, (D - 1) * S]),
                           np.asarray(plain(jnp.asarray(np_delayed(x, D, S)), loop=loop)[0][:, (D - 1) * S]))


def test_qwix_quantizes_the_widened_input_layer_as_the_plain_one():
    delayed, plain = pair(FeedForwardSNN)
    x = (np.random.default_rng(1).random((B, T, F)) * 3).astype(np.float32)
    rules = [quant.Rule(module_path=".*", weight_qtype="int8", act_qtype="int8")]
    q_delayed = quant.quantize(delayed, rules, "qat", jnp.asarray(x[:1]))
    q_plain = quant.quantize(plain, rules, "qat", jnp.asarray(np_delayed(x[:1], D, S)))
    out = np.asarray(q_delayed(jnp.asarray(x))[0])
    np.testing.assert_allclose(out, np.asarray(q_plain(jnp.asarray(np_delayed(x, D, S)))[0]), rtol=1e-5, atol=1e-6)
    assert not np.allclose(out, np.asarray(delayed(jnp.asarray(x))[0]), atol=1e-6)  # really fake-quantized


def test_widths_and_synapses_count_each_delay():
    delayed, _ = pair(FeedForwardSNN)
    assert delayed.layer_sizes() == [F, 6, 5, 3]
    assert delayed.fc[0].in_features == F * D
    assert delayed.synapses() == [(F, D * 6), (6, 5), (5, 3)]
    rec, _ = pair(RecurrentSNN)
    assert rec.synapses() == [(F, D * 6), (6, 6 + 5), (5, 5 + 3)]


@pytest.mark.parametrize("bad", [0, -2, 1.5, True])
def test_a_bad_delay_count_is_refused_naming_it(bad):
    with pytest.raises(ValueError, match=f"model.input_delays={bad!r}: must be an integer >= 1"):
        FeedForwardSNN(F, [4], 3, LIF, input_delays=bad, rngs=nnx.Rngs(0))


def test_the_config_refuses_a_bad_delay_before_compute(tmp_path):
    with pytest.raises(ConfigError, match="model.delay_stride"):
        run(make_cfg("debug=fast", "model.delay_stride=0"), tmp_path)
    assert json.loads((tmp_path / "status.json").read_text())["status"] == "failed"
    with pytest.raises(ConfigError, match="input_delays"):  # a conv network has no delay line
        run(make_cfg("debug=fast", "model=conv", "+model.input_delays=2"), tmp_path / "conv")


def test_a_delayed_run_trains_and_records_its_synapses(tmp_path):
    m = run(make_cfg("debug=fast", "model.input_delays=3", "model.delay_stride=2"), tmp_path)
    assert m["status"] == "ok"
    plain = run(make_cfg("debug=fast"), tmp_path / "plain")
    # the input's MACs scale with the delays (same data, same input activity)
    assert m["synaptic_macs_per_sample"] == pytest.approx(3 * plain["synaptic_macs_per_sample"])


@pytest.mark.slow
def test_an_integer_network_with_a_delay_line_is_the_references_spike_for_spike(tmp_path):
    """Analog Yin-Yang currents through a delay line, trained on the integer grid and exported:
    the NumPy reference delays the input codes as docs/export.md says and reproduces every spike."""
    from tests.test_hardware import _assert_reference_agrees

    path = tmp_path / "run"
    m = run(make_cfg("data=yinyang", "data.steps=12", "model.hidden=[24]", "hardware=int", "mode=qat",
                     "trainer.epochs=2", "mode.quant_epochs=1", "logger=none", "model.input_delays=3",
                     "model.delay_stride=2"), path)
    assert m["qat_spike_agreement"] >= 0.99
    written = export(path)
    assert {p.name for p in written} == {"network.nir", "integer.npz", "integer.json"}
    cfg, deployed = rundir.load_deployed(path)
    data = build.data(cfg)
    x, y = np.asarray(data.x_test), np.asarray(data.y_test)
    net = integer.IntegerNetwork.from_deployed(deployed, build.rules(cfg), build.hardware(cfg),
                                               np.asarray(data.x_train))
    assert not net.input_binary and net.layers[0].weight.shape[0] == 3 * 4  # analog inputs, 3 taps of 4 channels
    ref = reference.load(path / "export")
    assert (ref.meta["input"]["delays"], ref.meta["input"]["delay_stride"]) == (3, 2)
    assert _assert_reference_agrees(path / "export", net, x, y) == pytest.approx(m["quant_accuracy"])
    # the stride matters: the same files read at another stride fire other spikes
    codes = reference.encode(ref, x[:64])
    spikes = reference.run(ref, codes)["spikes"][0]
    ref.meta["input"]["delay_stride"] = 1
    assert not np.array_equal(reference.run(ref, codes)["spikes"][0], spikes)
