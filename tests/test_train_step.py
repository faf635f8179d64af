"""The fast training step computes what a plain per-time-step loop computes.

``FeedForwardSNN.__call__`` hoists the first and the readout projections out
of the time scan (one matmul over all ``B*T`` rows each) and
``snnexp.train.train_steps`` runs K optimizer steps as one scan over batches.
Neither may change the numbers: here both are compared with a reference that
walks time in a Python loop, calling every ``nnx.Linear`` and spyx neuron one
step at a time, with nothing hoisted.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import spyx
from flax import nnx

from snnexp import train
from snnexp.compile_stats import CompileStats
from snnexp.models import FeedForwardSNN, RecurrentSNN
from snnexp.models.time_loop import dropout_masks

B, T, F, C = 6, 9, 12, 5
HIDDEN = [16, 10]  # two hidden layers: fc/1 runs inside the time scan
RTOL, ATOL = 2e-5, 1e-6


# One activation object for every model: it is a static attribute, so models built from it
# share their compiled programs (a new superspike() per model would recompile each test).
NEURON = functools.partial(spyx.nn.LIF, beta=0.9, threshold=1.0, activation=spyx.axn.superspike(k=25))


def make_model(seed: int = 0) -> FeedForwardSNN:
    model = FeedForwardSNN(F, HIDDEN, C, NEURON, readout_beta=0.9, rngs=nnx.Rngs(seed))
    # as snnexp.build.model: strongly typed scalars (one compilation per shape)
    nnx.update(model, jax.tree.map(lambda a: jnp.asarray(a, dtype=a.dtype), nnx.state(model)))
    return model


def make_data(n: int, seed: int = 1) -> tuple[jax.Array, jax.Array]:
    rng = np.random.default_rng(seed)
    x = (rng.random((n, T, F)) < 0.3).astype(np.float32) * 2.0  # strong enough to spike
    y = rng.integers(0, C, n).astype(np.int32)
    return jnp.asarray(x), jnp.asarray(y)


def reference_forward(model: FeedForwardSNN, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Readout traces ``[B, T, C]`` and spike rates ``[B, T, L]``, one time step at a time."""
    b = x.shape[0]
    states = [n.initial_state(b) for n in model.neurons]
    v = model.li.initial_state(b)
    traces, rates = [], []
    for t in range(x.shape[1]):
        h = x[:, t]
        step_rates = []
        for i, neuron in enumerate(model.neurons):
            h = model.fc[i](h)
            h, states[i] = neuron(h, states[i])
            step_rates.append(h.mean(axis=-1))
        out, v = model.li(model.readout(h), v)
        traces.append(out)
        rates.append(jnp.stack(step_rates, axis=-1))
    return jnp.stack(traces, axis=1), jnp.stack(rates, axis=1)


def reference_loss(model: FeedForwardSNN, x: jax.Array, y: jax.Array) -> jax.Array:
    traces, _ = reference_forward(model, x)
    return optax.softmax_cross_entropy_with_integer_labels(traces.mean(axis=1), y).mean()


@nnx.jit
def both(model: FeedForwardSNN, x: jax.Array, y: jax.Array):
    """Forward outputs, loss and gradients of the model's fast path and of the reference loop.

    One compiled program for all of it (compiling is most of this file's time).
    """
    (loss, _), grads = nnx.value_and_grad(train.loss_and_logits, has_aux=True)(model, x, y)
    ref_loss, ref_grads = nnx.value_and_grad(reference_loss)(model, x, y)
    return {"forward": model(x), "loss": loss, "grads": grads,
            "ref_forward": reference_forward(model, x), "ref_loss": ref_loss, "ref_grads": ref_grads}


def assert_trees_close(got, want, what: str) -> None:
    got_leaves = jax.tree_util.tree_leaves_with_path(got)
    want_leaves = jax.tree_util.tree_leaves_with_path(want)
    assert [p for p, _ in got_leaves] == [p for p, _ in want_leaves], what
    assert got_leaves, what
    for (path, g), (_, w) in zip(got_leaves, want_leaves, strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=RTOL, atol=ATOL,
                                   err_msg=f"{what}: {jax.tree_util.keystr(path)}")


def test_forward_matches_per_step_loop():
    model = make_model()
    x, y = make_data(B)
    out = both(model, x, y)
    (readout, rates), (ref_readout, ref_rates) = out["forward"], out["ref_forward"]
    assert readout.shape == (B, T, C) and rates.shape == (B, T, len(HIDDEN))
    np.testing.assert_allclose(readout, ref_readout, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(rates, ref_rates, rtol=RTOL, atol=ATOL)
    assert 0.02 < float(rates.mean()) < 0.98, "the test needs neurons that spike and neurons that do not"


def test_loss_and_every_gradient_match_per_step_loop():
    model = make_model()
    x, y = make_data(B)
    out = both(model, x, y)
    loss, grads, ref_loss, ref_grads = out["loss"], out["grads"], out["ref_loss"], out["ref_grads"]
    np.testing.assert_allclose(loss, ref_loss, rtol=RTOL, atol=ATOL)
    assert_trees_close(grads, ref_grads, "gradient")
    # every parameter gets a gradient, and the spiking path really carries one
    kernel_grad = np.asarray(grads["fc"][0]["kernel"][...])
    assert np.abs(kernel_grad).max() > 1e-6


def test_train_steps_applies_reference_gradients():
    """One ``train_steps`` step with SGD moves every parameter by ``-lr * reference gradient``."""
    lr = 0.5
    model, ref = make_model(), make_model()
    xs, ys = make_data(4 * B)
    idx = np.array([[3, 0, 17, 9, 21, 5]], np.int32)
    opt = nnx.Optimizer(model, optax.sgd(lr), wrt=nnx.Param)
    losses = train.train_steps(model, opt, xs, ys, jnp.asarray(idx), 0, 1)
    out = both(ref, xs[idx[0]], ys[idx[0]])
    ref_loss, ref_grads = out["ref_loss"], out["ref_grads"]
    np.testing.assert_allclose(losses, [ref_loss], rtol=RTOL, atol=ATOL)
    want = jax.tree.map(lambda p, g: p - lr * g, nnx.state(ref, nnx.Param), ref_grads)
    assert_trees_close(nnx.state(model, nnx.Param), want, "parameters after one step")


@pytest.mark.parametrize("augment", [train.Augment(), train.Augment(shift=2, noise=0.1), train.Augment(dropout=0.3)],
                         ids=["plain", "augment", "dropout"])
@pytest.mark.parametrize("k", [4])
def test_chunked_calls_equal_one_call_and_share_one_program(k: int, augment: train.Augment):
    """``fit``'s chunks (one first step, then the rest; resumes; ``steps_per_call``) change nothing.

    Every chunking of an epoch gives the same losses, parameters and
    optimizer state as one call over the whole epoch, and all of them run the
    one compiled program (``start``/``stop`` are traced, not shapes). With
    ``trainer.augment`` on, a step's draw depends on the epoch's key and the
    step alone, so a resumed epoch trains on the batches an uninterrupted one would.
    """
    key = jax.random.key_data(jax.random.key(7))
    steps = functools.partial(train.train_steps, key=key, augment=augment)
    xs, ys = make_data(k * B + 5)
    perm = jnp.asarray(np.random.default_rng(2).permutation(k * B + 5)[: k * B].reshape(k, B).astype(np.int32))
    tx = optax.adam(0.01)
    whole = make_model()
    opt_whole = nnx.Optimizer(whole, tx, wrt=nnx.Param)
    losses = np.asarray(steps(whole, opt_whole, xs, ys, perm, np.int32(0), np.int32(k)))
    assert losses.shape == (k,) and np.all(losses > 0)

    CompileStats.register()
    compiled_before = CompileStats.snapshot()[0]
    for cuts in (train.step_chunks(0, k, k, first=True), train.step_chunks(0, k, 1),
                 train.step_chunks(1, k, 3, first=True)):
        model = make_model()
        opt = nnx.Optimizer(model, tx, wrt=nnx.Param)
        got = np.zeros(k, np.float32)
        if cuts[0][0] == 1:  # a resumed epoch: step 0 was run before the "restart"
            got[:1] = np.asarray(steps(model, opt, xs, ys, perm, np.int32(0), np.int32(1)))[:1]
        for start, stop in cuts:
            out = np.asarray(steps(model, opt, xs, ys, perm, np.int32(start), np.int32(stop)))
            assert np.all(out[:start] == 0) and np.all(out[stop:] == 0), "only the steps asked for run"
            got[start:stop] = out[start:stop]
        np.testing.assert_allclose(got, losses, rtol=RTOL, atol=ATOL)
        assert_trees_close(nnx.state(model, nnx.Param), nnx.state(whole, nnx.Param), f"parameters, {cuts}")
        assert_trees_close(nnx.state(opt), nnx.state(opt_whole), f"optimizer state, {cuts}")
    assert CompileStats.snapshot()[0] == compiled_before, "a chunking compiled a new program"
    # and training moved the parameters at all
    start = nnx.state(make_model(), nnx.Param)
    moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), nnx.state(whole, nnx.Param), start)
    assert max(jax.tree.leaves(moved)) > 1e-3


def test_step_chunks_cut_at_the_same_steps_after_a_resume():
    assert train.step_chunks(0, 10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert train.step_chunks(0, 10, 4, first=True) == [(0, 1), (1, 4), (4, 8), (8, 10)]
    assert train.step_chunks(5, 10, 4) == [(5, 8), (8, 10)]
    assert train.step_chunks(5, 10, 4, first=True) == [(5, 6), (6, 8), (8, 10)]
    assert train.step_chunks(10, 10, 4, first=True) == []


def test_augment_shifts_each_sample_within_range_zero_fills_and_leaves_off_untouched():
    """``trainer.augment``: every sample is its own input moved by ``|s| <= shift`` steps, 0 where it left."""
    x = jnp.asarray(np.random.default_rng(3).random((32, T, 2)).astype(np.float32) + 1.0)  # no zeros inside
    key = jax.random.key_data(jax.random.key(0))
    assert train.augment_batch(x, None, 0, train.Augment()) is x
    out = np.asarray(train.augment_batch(x, key, 5, train.Augment(shift=3)))
    seen = set()
    for xi, oi in zip(np.asarray(x), out, strict=True):
        matches = []
        for s in range(-3, 4):
            want = np.zeros_like(xi)
            if s >= 0:
                want[s:] = xi[:T - s]
            else:
                want[:s] = xi[-s:]
            if np.array_equal(oi, want):
                matches.append(s)
        assert len(matches) == 1, "each sample is the input shifted by one s in -3..3, zero-filled"
        seen.add(matches[0])
    assert len(seen) >= 4, f"the shifts vary between samples: {seen}"
    again = np.asarray(train.augment_batch(x, key, 5, train.Augment(shift=3)))
    other = np.asarray(train.augment_batch(x, key, 6, train.Augment(shift=3)))
    assert np.array_equal(out, again) and not np.array_equal(out, other), "(key, step) decides the draw"
    noisy = np.asarray(train.augment_batch(x, key, 5, train.Augment(noise=0.2))) - np.asarray(x)
    assert abs(noisy.std() - 0.2) < 0.03 and abs(noisy.mean()) < 0.03


def test_dropout_masks_drop_at_the_rate_scale_the_kept_and_hold_over_time():
    key = jax.random.key_data(jax.random.key(4))
    keep = dropout_masks(key, 0.25, 64, [200, 30], jnp.float32, T)
    assert [k.shape for k in keep] == [(T, 64, 200), (T, 64, 30)]
    for k in keep:
        k = np.asarray(k)
        assert set(np.unique(k)) <= {0.0, np.float32(1 / 0.75)}
        assert np.all(k == k[:1]), "one mask per sequence and neuron, the same at every step"
    assert abs(float(np.mean(np.asarray(keep[0]) == 0)) - 0.25) < 0.02
    assert not np.array_equal(keep[0][0, :, :30], keep[1][0]), "each layer draws its own mask"
    with pytest.raises(ValueError, match="dropout=1.0 must be in"):
        dropout_masks(key, 1.0, 2, [3], jnp.float32, T)


def test_dropout_equals_the_network_with_the_dropped_neurons_outgoing_weights_zeroed():
    """One sequence: dropping layer i's spikes (the kept ones times 1/(1-p)) is the network whose next
    matrix has those rows zeroed and the others scaled, computed one step at a time by ``reference_forward``."""
    model = make_model()
    x, _ = make_data(1)
    key = jax.random.key_data(jax.random.key(9))
    readout, rates = model(x, dropout=0.4, key=key)
    keep = [np.asarray(k[0, 0]) for k in dropout_masks(key, 0.4, 1, HIDDEN, jnp.float32, T)]
    assert 0 < np.count_nonzero(keep[0]) < HIDDEN[0]
    ref = make_model()
    ref.fc[1].kernel[...] = ref.fc[1].kernel[...] * keep[0][:, None]
    ref.readout.kernel[...] = ref.readout.kernel[...] * keep[1][:, None]
    want, want_rates = reference_forward(ref, x)
    np.testing.assert_allclose(np.asarray(readout), np.asarray(want), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(np.asarray(rates), np.asarray(want_rates), rtol=RTOL, atol=ATOL)
    plain, plain_rates = model(x)
    assert not np.allclose(np.asarray(plain), np.asarray(readout))
    np.testing.assert_array_equal(np.asarray(rates)[..., 0], np.asarray(plain_rates)[..., 0])


def test_dropout_leaves_a_recurrent_layers_own_feedback_alone():
    """Dropout acts on what the next layer sees: layer 0 of a recurrent network fires exactly as without it."""
    model = RecurrentSNN(F, HIDDEN, C, NEURON, readout_beta=0.9, rec_gain=2.0, rngs=nnx.Rngs(0))
    x, _ = make_data(4)
    _, plain = model(x)
    _, dropped = model(x, dropout=0.5, key=jax.random.key_data(jax.random.key(1)))
    np.testing.assert_array_equal(np.asarray(dropped)[..., 0], np.asarray(plain)[..., 0])
    assert not np.array_equal(np.asarray(dropped)[..., 1], np.asarray(plain)[..., 1])


def test_training_with_dropout_differs_from_plain_and_is_fixed_by_the_key():
    xs, ys = make_data(2 * B)
    perm = jnp.arange(2 * B, dtype=jnp.int32).reshape(2, B)
    key = jax.random.key_data(jax.random.key(7))

    def losses(augment: train.Augment, key=key) -> np.ndarray:
        model = make_model()
        opt = nnx.Optimizer(model, optax.adam(0.01), wrt=nnx.Param)
        return np.asarray(train.train_steps(model, opt, xs, ys, perm, np.int32(0), np.int32(2), key, augment))

    drop = train.Augment(dropout=0.5)
    first, again = losses(drop), losses(drop)
    other = losses(drop, jax.random.key_data(jax.random.key(8)))
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, losses(train.Augment())) and not np.allclose(first, other)
