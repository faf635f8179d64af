"""Memory at the true bit width, code entropy and sparsity, and NeuroBench-style ACs / MACs.

Every number is checked against a hand count or an independent NumPy
computation on small networks quantized by qwix for real.
"""

from __future__ import annotations

import functools
import json

import jax.numpy as jnp
import numpy as np
import pytest
import spyx
from flax import nnx

from snnexp import metrics, quant
from snnexp.console import results_table
from snnexp.models import FeedForwardSNN
from snnexp.train import run
from tests.conftest import make_cfg

LIF = functools.partial(spyx.nn.LIF, beta=0.9, threshold=1.0)


def net(n_in: int = 3, hidden: int = 4, n_out: int = 2, seed: int = 0) -> FeedForwardSNN:
    return FeedForwardSNN(n_in, [hidden], n_out, LIF, readout_beta=0.9, rngs=nnx.Rngs(seed))


def deployed(model: nnx.Module, rules: list[dict]) -> tuple[nnx.Module, list[quant.Rule]]:
    parsed = quant.parse_recipe(rules)
    sample = jnp.ones((1, 2, model.fc[0].in_features))
    return quant.quantize(model, parsed, "ptq", sample), parsed


def test_qtype_of_is_the_first_fullmatching_rule():
    rules = quant.parse_recipe([{"module_path": "fc/0", "weight_qtype": "int3"},
                                {"module_path": "fc/.*", "weight_qtype": "int5"},
                                {"module_path": ".*", "weight_qtype": "int8"}])
    assert metrics.qtype_of("fc/0", rules) == "int3"
    assert metrics.qtype_of("fc/1", rules) == "int5"
    assert metrics.qtype_of("readout", rules) == "int8"
    assert metrics.qtype_of("fc/0", rules[:1]) == "int3" and metrics.qtype_of("fc/01", rules[:1]) is None
    assert [metrics.packed_bits(q, d) for q, d in [("int2", jnp.int4), ("int3", jnp.int4), ("int6", jnp.int8),
                                                   ("ternary", jnp.int4), ("nf4", jnp.uint4),
                                                   ("float8_e4m3fn", jnp.float8_e4m3fn), (None, jnp.float32)]] \
        == [2, 3, 6, 2, 4, 8, 32]


def test_packed_bytes_by_hand_for_a_mixed_recipe():
    model, rules = deployed(net(), [{"module_path": "fc/0", "weight_qtype": "int3", "act_qtype": "int8"},
                                    {"module_path": ".*", "weight_qtype": "int8", "act_qtype": "int8"}])
    # fc/0: 3x4 codes at 3 bits + 4 float32 scales + 4 biases; readout: 4x2 codes at 8 bits + 2 scales
    # + 2 biases; the fixed decays neurons/0/beta and li/beta, 32 bits each
    bits = 12 * 3 + 4 * 32 + 4 * 32 + 8 * 8 + 2 * 32 + 2 * 32 + 2 * 32
    assert metrics.weight_bytes_packed(model, rules) == bits / 8
    # the containers: int3 codes sit in int4 (4 bits)
    assert metrics.weight_bytes(model) == (bits + 12 * 1) / 8


def test_bits_sweep_gives_one_memory_per_width():
    """sweep=bits: the container bytes are equal for 2-4 and 5-8 bits, the packed ones grow by one bit a weight."""
    packed, container = {}, {}
    for b in range(2, 9):
        model, rules = deployed(net(16, 8, 4), [{"module_path": ".*", "weight_qtype": f"int{b}",
                                                "act_qtype": "int8"}])
        packed[b], container[b] = metrics.weight_bytes_packed(model, rules), metrics.weight_bytes(model)
    weights = 16 * 8 + 8 * 4
    others = (8 + 4) * 32 * 2 + 2 * 32  # scales and biases of both layers, two decays
    for b in range(2, 9):
        assert packed[b] == (weights * b + others) / 8
    assert len({container[b] for b in (2, 3, 4)}) == 1 and len({container[b] for b in (5, 6, 7, 8)}) == 1


def np_ternary(w: np.ndarray) -> np.ndarray:
    """BitNet b1.58 absmean codes, independently of snnexp: clip(round(W / (mean|W| + 1e-6)), -1, 1)."""
    gamma = np.mean(np.abs(w)) + 1e-6
    return np.clip(np.round(w / gamma), -1, 1)


def np_entropy(codes: np.ndarray) -> float:
    _, counts = np.unique(codes, return_counts=True)
    p = counts / counts.sum()
    return float(-np.sum(p * np.log2(p)))


def test_ternary_is_two_bits_with_one_scale_and_its_entropy_and_sparsity_match_numpy():
    fp = net(64, 128, 10, seed=1)
    kernels = {"fc/0": np.asarray(fp.fc[0].kernel[...]), "readout": np.asarray(fp.readout.kernel[...])}
    model, rules = deployed(fp, [{"module_path": ".*", "weight_qtype": "ternary", "act_qtype": "int8"}])
    codes = {k: np_ternary(w) for k, w in kernels.items()}
    got = {m.path: m.codes.astype(np.float32) for m in metrics.matrices(model)}
    for k in codes:
        np.testing.assert_array_equal(got[k], codes[k])
    n = 64 * 128 + 128 * 10
    # 2 bits a code, ONE float32 scale per matrix (qwix stores 128 and 10 identical copies), biases, 2 decays
    assert metrics.weight_bytes_packed(model, rules) == (2 * n + 2 * 32 + (128 + 10) * 32 + 2 * 32) / 8
    assert metrics.weight_bytes(model) == (4 * n + (128 + 10) * 32 * 2 + 2 * 32) / 8
    want_h = (codes["fc/0"].size * np_entropy(codes["fc/0"]) + codes["readout"].size * np_entropy(codes["readout"])) / n
    assert metrics.weight_entropy_bits(model) == pytest.approx(want_h, rel=1e-9)
    assert 1.5 < want_h < np.log2(3)  # ~1.58 bits: codes spread over three values
    sparsity = metrics.weight_sparsity(model)
    assert set(sparsity) == {"fc/0", "readout", "total"}
    for k, c in codes.items():
        assert sparsity[k] == pytest.approx(np.mean(c == 0))
    assert sparsity["total"] == pytest.approx(sum(np.sum(c == 0) for c in codes.values()) / n)
    assert 0.2 < sparsity["total"] < 0.4


def test_ternary_channel_counts_one_scale_per_channel():
    fp = net(64, 128, 10, seed=1)
    model, rules = deployed(fp, [{"module_path": ".*", "weight_qtype": "ternary", "ternary_scale": "channel",
                                  "act_qtype": "int8"}])
    n = 64 * 128 + 128 * 10
    # 2 bits a code, a float32 scale per output channel (128 + 10), biases, 2 decays
    assert metrics.weight_bytes_packed(model, rules) == (2 * n + (128 + 10) * 32 + (128 + 10) * 32 + 2 * 32) / 8


def test_int8_entropy_and_float_formats_at_their_width():
    fp = net(16, 8, 4, seed=2)
    model, rules = deployed(fp, [{"module_path": ".*", "weight_qtype": "int8", "act_qtype": "int8"}])
    q = {m.path: m.codes.astype(np.float32) for m in metrics.matrices(model)}
    n = sum(c.size for c in q.values())
    assert metrics.weight_entropy_bits(model) == pytest.approx(sum(c.size * np_entropy(c) for c in q.values()) / n)
    assert metrics.weight_entropy_bits(fp) is None  # nothing quantized
    assert metrics.weight_sparsity(fp)["total"] == 0.0  # float weights are never exactly 0 here
    for qtype, bits in (("float8_e4m3fn", 8), ("nf4", 4)):
        model, rules = deployed(fp, [{"module_path": ".*", "weight_qtype": qtype}])
        assert metrics.weight_bytes_packed(model, rules) == ((16 * 8 + 8 * 4) * bits + (8 + 4) * 32 * 2 + 64) / 8


# ------------------------------------------------------------------ synaptic operations


def if_net() -> FeedForwardSNN:
    """3 inputs -> 2 IF neurons (threshold 1) -> 2 outputs, kernel [[2, 0], [0, 0.6], [0, 0]], no bias."""
    m = FeedForwardSNN(3, [2], 2, functools.partial(spyx.nn.IF, threshold=1.0), rngs=nnx.Rngs(0))
    m.fc[0].kernel[...] = jnp.asarray([[2.0, 0.0], [0.0, 0.6], [0.0, 0.0]])
    m.fc[0].bias[...] = jnp.zeros(2)
    return m


def counts(x: np.ndarray) -> metrics.SynapticCounts:
    m = if_net()
    _, rates = m(jnp.asarray(x))  # [B, T, L]
    nonzero, binary = metrics.input_activity(x)
    return metrics.synaptic_counts(nonzero, binary, np.asarray(rates).mean(axis=(0, 1)), m.synapses(), x.shape[1])


def test_binary_input_counts_accumulates_by_hand():
    # 5 input spikes, each reaching 2 hidden neurons: 10 ACs. Hidden currents [2, .6], [2, 0], [0, .6]:
    # IF neuron 0 fires at steps 1 and 2 (V = 2, then 3), neuron 1 never: 2 spikes x 2 outputs = 4 ACs.
    x = np.asarray([[[1, 1, 0], [1, 0, 1], [0, 1, 0]]], np.float32)
    c = counts(x)
    assert (c.acs, c.macs, c.ops) == pytest.approx((14.0, 0.0, 14.0))  # float32 rates
    assert c.activation_sparsity == pytest.approx(1 - 2 / 6)


def test_analog_input_counts_multiply_accumulates_by_hand():
    # 4 nonzero analog inputs (the negative one too) x 2 hidden: 8 MACs. Currents [1.2, -.6], [0, .15],
    # [4, 0]: neuron 0 fires once (step 1, V = 1.2): 1 spike x 2 outputs = 2 ACs.
    x = np.asarray([[[0.6, -1.0, 0.0], [0.0, 0.25, 0.0], [2.0, 0.0, 0.0]]], np.float32)
    c = counts(x)
    assert (c.acs, c.macs, c.ops) == pytest.approx((2.0, 8.0, 10.0))
    assert c.activation_sparsity == pytest.approx(1 - 1 / 6)
    assert metrics.input_activity(x) == (pytest.approx(4 / 9), False)
    # the old count, mean(x) * F * H * T, was (1.85 / 9) * 3 * 2 * 3 = 3.7 for the input layer
    # and goes negative for centred inputs; an input value of 0 costs nothing, any other one a MAC
    assert metrics.synaptic_counts(1.0, False, [0.0], [(3, 2), (2, 2)], 3).macs == 18.0


@pytest.mark.slow
def test_a_run_reports_packed_bytes_entropy_sparsity_and_acs(tmp_path):
    m = run(make_cfg("debug=fast", "quant=ternary", "mode=ptq"), tmp_path)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("weight_bytes_packed", "weight_entropy_bits", "weight_sparsity", "synaptic_acs_per_sample",
                "synaptic_macs_per_sample", "activation_sparsity", "weight_bytes_quant"):
        assert key in saved, key
    assert m["weight_bytes_packed"] < m["weight_bytes_quant"]
    assert 1.0 < m["weight_entropy_bits"] <= np.log2(3) + 1e-9
    assert set(m["weight_sparsity"]) == {"fc/0", "readout", "total"} and 0 < m["weight_sparsity"]["total"] < 1
    # the synthetic task feeds spikes: ACs only
    assert m["synaptic_macs_per_sample"] == 0.0 and m["synaptic_acs_per_sample"] > 0
    assert m["synaptic_ops_per_sample"] == m["synaptic_acs_per_sample"] + m["synaptic_macs_per_sample"]
    assert 0 < m["activation_sparsity"] < 1
    table = results_table(m)
    assert "weight bytes packed" in table and "synaptic ACs / sample" in table and "synaptic MACs / sample" in table
