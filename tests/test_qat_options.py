"""QAT's cheap options: the fine-tuning's own schedule, distillation from the fp32 network, progressive stages.

Checked against independent computations: the distillation loss against its
closed form in NumPy (and optax's KL), the schedules' learning rates read back
through SGD against their formulas, a ternary stage's forward pass against the
float network with its kernels projected by NumPy onto {-g, 0, +g}.
"""

from __future__ import annotations

import collections
import functools
import json
import logging
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from omegaconf import open_dict

from snnexp import build, checkpoint, quant, schema, tracking
from snnexp.errors import ConfigError
from snnexp.rundir import RunDir
from snnexp.train import Arrays, Trainer, run
from snnexp.train.pipelines import Finetune, Setup, check_recipe, copy_float_weights, parse_stages, stage_phase
from snnexp.train.signals import StopFlag
from snnexp.train.steps import (
    distill_loss_and_logits,
    distill_steps,
    distillation_loss,
    loss_and_logits,
)
from tests.conftest import make_cfg

# ------------------------------------------------------------------ distillation


def np_log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def np_distillation(s: np.ndarray, t: np.ndarray, y: np.ndarray, w: float, temp: float) -> float:
    """Hinton et al.'s loss in float64: (1 - w) CE + w T^2 KL(softmax(t / T) || softmax(s / T)), batch mean."""
    s, t = s.astype(np.float64), t.astype(np.float64)
    ce = -np_log_softmax(s)[np.arange(len(y)), y]
    log_p, log_q = np_log_softmax(t / temp), np_log_softmax(s / temp)
    kl = (np.exp(log_p) * (log_p - log_q)).sum(axis=-1)
    return float(((1 - w) * ce + w * temp**2 * kl).mean())


def test_distillation_loss_equals_its_closed_form():
    rng = np.random.default_rng(0)
    s = rng.normal(0, 2, (7, 5)).astype(np.float32)
    t = rng.normal(0, 2, (7, 5)).astype(np.float32)
    y = rng.integers(0, 5, 7).astype(np.int32)
    for w, temp in [(0.3, 2.5), (1.0, 1.0), (0.7, 4.0)]:
        got = float(distillation_loss(jnp.asarray(s), jnp.asarray(t), jnp.asarray(y), w, temp))
        np.testing.assert_allclose(got, np_distillation(s, t, y, w, temp), rtol=2e-6)
    # the soft term alone is optax's KL of the softened distributions, times T^2
    kl = optax.losses.kl_divergence_with_log_targets(jax.nn.log_softmax(s / 3.0), jax.nn.log_softmax(t / 3.0))
    np.testing.assert_allclose(float(distillation_loss(s, t, y, 1.0, 3.0)), 9.0 * float(kl.mean()), rtol=1e-6)
    # no gradient reaches the teacher's logits; the student's is the closed form's
    g_s, g_t = jax.grad(distillation_loss, argnums=(0, 1))(jnp.asarray(s), jnp.asarray(t), y, 0.3, 2.5)
    assert not np.any(np.asarray(g_t))
    eps, i, j = 1e-3, 2, 3
    up, down = s.astype(np.float64).copy(), s.astype(np.float64).copy()
    up[i, j] += eps
    down[i, j] -= eps
    numeric = (np_distillation(up, t, y, 0.3, 2.5) - np_distillation(down, t, y, 0.3, 2.5)) / (2 * eps)
    np.testing.assert_allclose(float(g_s[i, j]), numeric, rtol=1e-3)


@functools.cache
def tiny_cfg(seed: int):
    return make_cfg("model.hidden=[16]", f"seed={seed}")


def tiny(seed: int = 0):
    """A two-layer network of the default config on 12 inputs, 5 classes."""
    return build.model(tiny_cfg(seed), n_in=12, n_out=5)


def tiny_data(n: int, seed: int = 1) -> tuple[jax.Array, jax.Array]:
    rng = np.random.default_rng(seed)
    x = (rng.random((n, 9, 12)) < 0.3).astype(np.float32) * 2.0
    return jnp.asarray(x), jnp.asarray(rng.integers(0, 5, n).astype(np.int32))


def test_weight_zero_is_exactly_todays_loss():
    model, teacher = tiny(0), tiny(1)
    x, y = tiny_data(6)
    targets = jax.lax.stop_gradient(teacher(x)[0].mean(axis=1))
    today, (logits, rates) = loss_and_logits(model, x, y)
    loss, (logits0, rates0) = distill_loss_and_logits(model, x, y, targets, 0.0, 2.0)
    assert float(loss) == float(today)  # bit for bit
    np.testing.assert_array_equal(logits0, logits)
    np.testing.assert_array_equal(rates0, rates)


def test_distill_steps_take_the_closed_form_gradient_and_leave_the_teacher_alone():
    """One SGD step moves the student by -lr * the gradient against the teacher's readout, computed apart."""
    lr, w, temp = 0.5, 0.6, 3.0
    student, ref, teacher = tiny(0), tiny(0), tiny(1)
    before = jax.tree.map(np.asarray, nnx.state(teacher))
    xs, ys = tiny_data(24)
    idx = np.array([[3, 0, 17, 9, 21, 5]], np.int32)
    opt = nnx.Optimizer(student, optax.sgd(lr), wrt=nnx.Param)
    losses = distill_steps(student, opt, teacher, xs, ys, jnp.asarray(idx), np.int32(0), np.int32(1),
                           np.float32(w), np.float32(temp))
    x, y = xs[idx[0]], ys[idx[0]]
    targets = teacher(x)[0].mean(axis=1)  # the teacher's logits, outside the step
    loss, grads = nnx.value_and_grad(lambda m: distill_loss_and_logits(m, x, y, targets, w, temp)[0])(ref)
    np.testing.assert_allclose(np.asarray(losses), [float(loss)], rtol=2e-5)
    want = jax.tree.map(lambda p, g: p - lr * g, nnx.state(ref, nnx.Param), grads)
    for a, b in zip(jax.tree.leaves(nnx.state(student, nnx.Param)), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(nnx.state(teacher)), jax.tree.leaves(before), strict=True):
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------ the fine-tuning's schedule


def sgd_learning_rates(total_steps: int, *overrides: str, **knobs) -> np.ndarray:
    """The learning rate of each step of ``build.optimizer(..., **knobs)``, read back through SGD."""
    cfg = make_cfg("optim.lr=0.01", *overrides)
    with open_dict(cfg):
        cfg.optim.optimizer = {"_target_": "optax.sgd", "_partial_": True}
    tx = build.optimizer(cfg, total_steps, lr_scale=0.5, **knobs)
    params = {"w": jnp.zeros(())}
    state, lrs = tx.init(params), []
    for _ in range(total_steps):
        updates, state = tx.update({"w": jnp.ones(())}, state, params)
        lrs.append(-float(updates["w"]))
    return np.asarray(lrs)


def test_the_finetuning_schedule_gives_the_expected_learning_rate_of_each_step():
    n, k, s = 40, 0.01 * 0.5, np.arange(40)
    alpha = make_cfg().optim.schedule.alpha  # adam's default: cosine to alpha * lr
    cosine = k * ((1 - alpha) * 0.5 * (1 + np.cos(np.pi * s / n)) + alpha)
    np.testing.assert_allclose(sgd_learning_rates(n), cosine, rtol=1e-5)  # null, null: the optimizer's
    np.testing.assert_allclose(sgd_learning_rates(n, schedule=None, warmup_steps=None), cosine, rtol=1e-5)
    np.testing.assert_allclose(sgd_learning_rates(n, schedule="constant"), np.full(n, k), rtol=1e-6)
    # a warm-up before a schedule without one: 0 -> k over 10 steps, then the cosine over the other 30
    w = 10
    after = k * ((1 - alpha) * 0.5 * (1 + np.cos(np.pi * (s - w) / (n - w))) + alpha)
    np.testing.assert_allclose(sgd_learning_rates(n, schedule="cosine", warmup_steps=w),
                               np.where(s < w, k * s / w, after), rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(sgd_learning_rates(n, schedule="constant", warmup_steps=4),
                               np.where(s < 4, k * s / 4, k), rtol=1e-5, atol=1e-9)
    # warmup_cosine's own warm-up, set by the knob (0: none, the cosine from the first step)
    wc = make_cfg("optim/schedule=warmup_cosine").optim.schedule
    cos_wc = k * ((1 - wc.end_value) * 0.5 * (1 + np.cos(np.pi * (s - w) / (n - w))) + wc.end_value)
    np.testing.assert_allclose(sgd_learning_rates(n, schedule="warmup_cosine", warmup_steps=w),
                               np.where(s < w, k * s / w, cos_wc), rtol=1e-5, atol=1e-9)
    cos0 = k * ((1 - wc.end_value) * 0.5 * (1 + np.cos(np.pi * s / n)) + wc.end_value)
    np.testing.assert_allclose(sgd_learning_rates(n, "optim/schedule=warmup_cosine", warmup_steps=0), cos0,
                               rtol=1e-5)
    # a node written out, and a warm-up longer than the phase cut to fit
    node = {"_target_": "optax.constant_schedule", "_partial_": True, "value": 0.5}
    np.testing.assert_allclose(sgd_learning_rates(5, schedule=node), np.full(5, k / 2), rtol=1e-6)
    lrs = sgd_learning_rates(5, schedule="constant", warmup_steps=50)
    assert lrs[0] == 0.0 and np.argmax(lrs) == 4 and np.isclose(lrs[4], k)


# ------------------------------------------------------------------ progressive stages


def test_stage_options_are_checked_with_the_valid_choices():
    assert parse_stages(None) == [] and parse_stages([]) == []
    assert [(s.recipe, s.epochs) for s in parse_stages([{"quant": "w8a8", "epochs": 1},
                                                        {"quant": "ternary", "epochs": 0}])] == [
        ("w8a8", 1), ("ternary", 0)]
    for bad, match in [
        ([{"quant": "w9a8", "epochs": 1}], r"mode.stages\[0\].quant='w9a8' is not a recipe of conf/quant; "
                                           r"valid choices: \['bits', 'fp32', 'ternary', 'ternary_channel', "
                                           r"'w4a8', 'w8a8'"),
        ([{"quant": "w8a8", "epochs": 1}, {"quant": "w4a8"}], r"mode.stages\[1\] has no epochs"),
        ([{"quant": "w8a8", "epochs": -1}], r"mode.stages\[0\].epochs=-1 must be an integer >= 0"),
        ([{"quant": "w8a8", "epochs": 1, "lr": 2}], r"mode.stages\[0\].lr is not a key of a stage"),
        ("w8a8", r"mode.stages='w8a8' must be a list of stages"),
    ]:
        with pytest.raises(ConfigError, match=match):
            parse_stages(bad)
    with pytest.raises(ConfigError, match=r"mode.schedule='cosin'; valid choices: \['constant', 'cosine'"):
        schema.validate(make_cfg("mode.schedule=cosin"))
    with pytest.raises(ConfigError, match=r"mode.schedule._target_='optax.nosuch' is not a function"):
        schema.validate(make_cfg("mode.schedule={_target_:optax.nosuch}"))
    schema.validate(make_cfg("mode.schedule={_target_:optax.constant_schedule,_partial_:true,value:1.0}"))


def test_a_bad_stage_recipe_fails_before_any_data_loads(tmp_path):
    cfg = make_cfg("debug=fast", "mode.stages=[{quant:w8a8,epochs:1},{quant:int3,epochs:1}]")
    with pytest.raises(ConfigError, match=r"mode.stages\[1\].quant='int3' is not a recipe of conf/quant; "
                                          r"valid choices: \[.*'ternary'.*\]"):
        run(cfg, tmp_path)
    assert json.loads((tmp_path / "status.json").read_text())["status"] == "failed"
    assert not (tmp_path / "network.json").exists() and not (tmp_path / "history.jsonl").exists()


def small_setup(cfg, tmp_path) -> Setup:
    """The ``Setup`` of ``run`` for ``cfg``, without running its pipeline."""
    data = build.data(cfg)
    rules, settings = build.rules(cfg), build.loop_settings(cfg).fit(len(data.x_train), len(data.x_test))
    model, sample = build.network(cfg, data, rules, settings)
    rd = RunDir(tmp_path)
    trainer = Trainer(Arrays.put(data), settings, tracking.Tracker(tmp_path, {}), checkpoint.TrainState(
        rd.checkpoints / "train"), StopFlag())
    return Setup(model=model, rules=rules, sample=sample, trainer=trainer, run_dir=rd, recipe=cfg.quant.name,
                 mode="qat", optimizer=lambda steps, lr_scale, **kw: build.optimizer(cfg, steps, lr_scale, **kw))


def np_ternary(w: np.ndarray) -> np.ndarray:
    """BitNet b1.58 in NumPy: round(W / g) clipped to {-1, 0, 1}, times g = mean|W|."""
    g = np.abs(w).mean() + 1e-6
    return np.clip(np.round(w / g), -1, 1) * g


def test_a_ternary_stage_trains_the_float_weights_under_ternary_weights_and_hands_them_on(tmp_path):
    cfg = make_cfg("debug=fast", "quant=w4a8")
    setup = small_setup(cfg, tmp_path)
    current = nnx.clone(setup.model)
    start = jax.tree.map(np.asarray, nnx.state(current, nnx.Param))
    (stage,) = parse_stages([{"quant": "ternary", "epochs": 1}])
    trained = stage_phase(setup, current, 1, stage.epochs, "ternary", quant.parse_recipe(
        [{"module_path": ".*", "weight_qtype": "ternary", "act_qtype": "int8"}]), Finetune(0.5))
    # the trained float weights are the float network's now, and training moved them
    for a, b in zip(jax.tree.leaves(nnx.state(trained, nnx.Param)), jax.tree.leaves(nnx.state(current, nnx.Param)),
                    strict=True):
        np.testing.assert_array_equal(a, b)
    assert max(float(np.abs(b - s).max()) for b, s in zip(jax.tree.leaves(nnx.state(current, nnx.Param)),
                                                           jax.tree.leaves(start), strict=True)) > 1e-4
    # the stage computed with ternary weights: the float network with each kernel projected onto
    # {-g, 0, +g} (three values per output channel) gives its outputs, the unprojected one does not
    projected = nnx.clone(current)
    for layer in [*projected.fc, projected.readout]:
        w = np_ternary(np.asarray(layer.kernel[...]))
        assert all(len(np.unique(w[:, j])) <= 3 for j in range(w.shape[1]))
        layer.kernel.value = jnp.asarray(w)
    x = setup.trainer.arrays.x_test[:32]
    assert set(np.unique(np.asarray(x))) <= {0.0, 1.0}  # spike inputs: int8 activations are exact
    out, want, plain = trained(x)[0], projected(x)[0], current(x)[0]
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
    assert float(jnp.abs(out - plain).max()) > 1e-2
    assert (tmp_path / "checkpoints" / "stage1").is_dir()
    assert setup.run_dir.phases()["stage1"]["steps"] == setup.steps_per_epoch
    # a rerun restores the stage (no training) into a fresh float network
    again = nnx.clone(setup.model)
    assert stage_phase(setup, again, 1, 1, "ternary", [], Finetune()) is None
    for a, b in zip(jax.tree.leaves(nnx.state(again)), jax.tree.leaves(nnx.state(current)), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="are not the float network's"):
        copy_float_weights(trained, tiny())
    # a stage's recipe is checked against the network before any training, as the run's own is
    with pytest.raises(quant.RecipeError, match=r"\['fc/9'\] matched no layer"):
        check_recipe(setup, quant.parse_recipe([{"module_path": "fc/9", "weight_qtype": "int4"}]))


COMPILED: collections.Counter = collections.Counter()  # XLA compilations in this process, by function


def _count_compilation(event: str, seconds: float, **kw) -> None:
    if event == "/jax/core/compile/backend_compile_duration":
        COMPILED[kw.get("fun_name")] += 1


jax.monitoring.register_event_duration_secs_listener(_count_compilation)


@pytest.mark.slow
def test_digits_with_all_three_options_runs_resumes_without_retraining_stages_and_compiles_once_per_phase(
        tmp_path, caplog):
    overrides = ["data=digits", "data.steps=8", "model.hidden=[32]", "logger=none",
                 "quant=ternary", "trainer.epochs=1", "mode.quant_epochs=1", "mode.schedule=warmup_cosine",
                 "mode.warmup_steps=5", "mode.distill_weight=0.5", "mode.distill_temperature=2.0",
                 "mode.stages=[{quant:w8a8,epochs:1},{quant:w4a8,epochs:1}]"]
    COMPILED.clear()
    m = run(make_cfg(*overrides), tmp_path)
    # one training program per phase: cross-entropy for fp32, distillation for the two stages and the final one
    assert (COMPILED["jit(train_steps)"], COMPILED["jit(distill_steps)"]) == (1, 3)
    assert m["stages"] == {"stage1": {"recipe": "w8a8", "epochs": 1}, "stage2": {"recipe": "w4a8", "epochs": 1}}
    assert m["epochs"] == 4 and m["recipe"] == "ternary" and 0.3 < m["quant_accuracy"] <= 1.0  # chance: 0.1
    rows = [json.loads(r) for r in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert [(r["step"], next(k for k in r if "/" in k).split("/")[0]) for r in rows] == [
        (1, "fp32"), (2, "stage1"), (3, "stage2"), (4, "quant")]
    assert list(json.loads((tmp_path / "checkpoints" / "phases.json").read_text())) == [
        "fp32", "stage1", "stage2", "quant"]
    # killed after stage 2: its training state is the latest, the final fine-tuning's is gone
    rd = tmp_path / "checkpoints"
    latest = max(int(p.name) for p in (rd / "train").iterdir() if p.name.isdigit())
    shutil.rmtree(rd / "train" / str(latest))
    shutil.rmtree(rd / "quant")
    for name in ("metrics.json", "status.json"):
        (tmp_path / name).unlink()
    caplog.set_level(logging.INFO, logger="snnexp")
    COMPILED.clear()
    again = run(make_cfg(*overrides), tmp_path)
    text = caplog.text
    assert "[stage1] restored" in text and "[stage2] restored" in text
    assert "[stage1] epoch" not in text and "[stage2] epoch" not in text and "[fp32] epoch" not in text
    assert "[quant] epoch 1/1" in text
    assert (COMPILED["jit(train_steps)"], COMPILED["jit(distill_steps)"]) == (0, 1)  # restored weights: once too
    for key in ("quant_accuracy", "quant_loss", "fp32_accuracy", "train_steps", "epochs", "stages"):
        assert again[key] == m[key], key
    assert [json.loads(r) for r in (tmp_path / "history.jsonl").read_text().splitlines()] == rows
