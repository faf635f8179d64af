"""Every option of every config group composes and builds into real objects."""

from __future__ import annotations

import inspect
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from hydra.utils import get_method
from omegaconf import open_dict

from snnexp import build, quant, schema, tracking
from snnexp.data import Dataset
from tests.conftest import CONF_DIR, make_cfg


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))


@pytest.mark.parametrize("data", [d for d in options("data") if d in ("digits", "synthetic")])
def test_data_options_load(data):
    cfg = make_cfg(f"data={data}")
    ds = build.data(cfg)
    assert isinstance(ds, Dataset)
    assert ds.x_train.dtype == np.float32 and ds.x_train.ndim == 3
    assert ds.name == cfg.data.name


@pytest.mark.parametrize("encoding", ["rate", "latency"])
def test_digits_encodings_are_spikes(encoding):
    ds = build.data(make_cfg(f"data.encoding={encoding}", "data.steps=10"))
    assert ds.x_train.shape[1:] == (10, 64)
    assert set(np.unique(ds.x_train)) <= {0.0, 1.0}
    if encoding == "latency":  # at most one spike per channel
        assert ds.x_train.sum(axis=1).max() == 1.0


@pytest.mark.parametrize("neuron", options("neuron"))
@pytest.mark.parametrize("surrogate", options("surrogate"))
def test_model_with_every_neuron_and_surrogate(neuron, surrogate):
    cfg = make_cfg(f"neuron={neuron}", f"surrogate={surrogate}", "model.hidden=[12,8]")
    model = build.model(cfg, n_in=5, n_out=3)
    out, rates = model(jnp.ones((2, 4, 5)))
    assert out.shape == (2, 4, 3) and rates.shape == (2, 4, 2)
    assert type(model.neurons[0]).__name__ == cfg.neuron._target_.split(".")[-1]
    grads = nnx.grad(lambda m: m(jnp.ones((2, 4, 5)))[0].sum())(model)
    assert np.isfinite(np.asarray(grads["fc"][0]["kernel"][...])).all()


@pytest.mark.parametrize("optim", options("optim"))
def test_optimizers_build(optim):
    cfg = make_cfg(f"optim={optim}")
    tx = build.optimizer(cfg, total_steps=100)
    params = {"w": jnp.ones(3)}
    updates, _ = tx.update({"w": jnp.ones(3)}, tx.init(params), params)
    assert isinstance(tx, optax.GradientTransformation)
    assert np.isfinite(np.asarray(updates["w"])).all()


def _sgd_learning_rates(cfg, total_steps: int, lr_scale: float = 1.0) -> np.ndarray:
    """The learning rate of every step, read back through SGD (the update of a unit gradient is -lr)."""
    with open_dict(cfg):
        cfg.optim.optimizer = {"_target_": "optax.sgd", "_partial_": True}
    tx = build.optimizer(cfg, total_steps=total_steps, lr_scale=lr_scale)
    params = {"w": jnp.zeros(())}
    state = tx.init(params)
    lrs = []
    for _ in range(total_steps):
        updates, state = tx.update({"w": jnp.ones(())}, state, params)
        lrs.append(-float(updates["w"]))
    return np.asarray(lrs)


@pytest.mark.parametrize("schedule", options("optim/schedule"))
def test_schedules_give_the_learning_rate_of_each_step(schedule):
    cfg = make_cfg(f"optim/schedule={schedule}", "optim.lr=0.01")
    steps, k = np.arange(40), 0.01 * 0.5
    lrs = _sgd_learning_rates(cfg, 40, lr_scale=0.5)
    s = cfg.optim.schedule
    if schedule == "constant":
        expected = np.full(40, k)
    elif schedule == "cosine":
        expected = k * ((1 - s.alpha) * 0.5 * (1 + np.cos(np.pi * steps / 40)) + s.alpha)
    else:  # warmup_cosine: linear 0 -> k over warmup_steps, then cosine down to end_value * k
        w = s.warmup_steps
        cos = k * ((1 - s.end_value) * 0.5 * (1 + np.cos(np.pi * (steps - w) / (40 - w))) + s.end_value)
        expected = np.where(steps < w, k * steps / w, cos)
    np.testing.assert_allclose(lrs, expected, rtol=1e-5, atol=1e-9)


def test_a_warmup_longer_than_the_phase_is_cut_to_fit():
    lrs = _sgd_learning_rates(make_cfg("optim/schedule=warmup_cosine", "optim.schedule.warmup_steps=50"), 5)
    assert lrs[0] == 0.0 and np.isclose(lrs.max(), 0.003) and np.argmax(lrs) == 4


@pytest.mark.parametrize("recipe", options("quant"))
def test_recipes_parse_and_match_the_model(recipe):
    cfg = make_cfg(f"quant={recipe}", "data=synthetic")
    rules = quant.parse_recipe(cfg.quant.rules)
    model = build.model(cfg, n_in=16, n_out=4)
    quant.quantize(model, rules, "ptq", jnp.zeros((1, 2, 16)))  # raises if a rule matches nothing
    expected = f"w{cfg.quant.weight_bits}a8" if recipe == "bits" else recipe
    assert cfg.quant.name == expected


@pytest.mark.parametrize("mode", options("mode"))
def test_each_mode_names_a_pipeline_and_holds_exactly_its_knobs(mode):
    cfg = make_cfg(f"mode={mode}")
    func = get_method(cfg.mode._target_)
    assert cfg.mode._partial_ is True and func.__module__ == "snnexp.train.pipelines"
    knobs = set(cfg.mode) - {"_target_", "_partial_", "name"}
    assert knobs == set(inspect.signature(func).parameters) - {"setup"}
    assert build.pipeline(cfg).func is func


@pytest.mark.parametrize("logger", options("logger"))
def test_loggers_build(logger, tmp_path):
    cfg = make_cfg(f"logger={logger}")
    t = tracking.Tracker(tmp_path, {"a": 1}, backend=cfg.logger.backend, mode="offline")
    t.log({"x": 1.0}, step=1)
    t.finish()
    assert (tmp_path / "history.jsonl").read_text().count("\n") == 1


def test_wandb_gets_the_rows_logged_while_it_was_starting(tmp_path):
    """W&B starts in a background thread; rows logged meanwhile reach it, in order, and none is lost."""
    from tests.wandb_log import read_run

    t = tracking.Tracker(tmp_path, {"a": 1}, backend="wandb", mode="offline")
    for step in range(1, 6):  # at once: W&B's start takes seconds
        t.log({"x": float(step)}, step=step)
    still_starting = t._starting is not None and t._starting.is_alive()
    t.summary({"final": 7.0})
    t.finish()
    assert still_starting, "the rows were logged after W&B had started: this test checks nothing"
    run = read_run(tmp_path)
    assert [h["x"] for h in run["history"]] == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert run["summary"]["final"] == 7.0
    assert (tmp_path / "history.jsonl").read_text().count("\n") == 5


def test_the_compile_cache_lives_in_the_user_cache_dir_not_the_checkout(tmp_path, monkeypatch):
    monkeypatch.delenv("SNNEXP_COMPILE_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.chdir(tmp_path)
    assert make_cfg().compile_cache == str(tmp_path / "xdg" / "snnexp" / "jax")
    monkeypatch.setenv("SNNEXP_COMPILE_CACHE", str(tmp_path / "elsewhere"))
    assert make_cfg().compile_cache == str(tmp_path / "elsewhere")
    assert make_cfg("compile_cache=null").compile_cache is None


def test_every_group_has_tests():
    groups = {p.name for p in Path(CONF_DIR).iterdir() if p.is_dir()}
    assert groups >= {"data", "model", "neuron", "surrogate", "quant", "mode", "optim", "logger", "debug"}


@pytest.mark.parametrize("finetune", options("finetune"))
def test_finetune_bundles_compose_validate_and_reach_the_qat_pipeline(finetune):
    cfg = make_cfg("experiment=mnist1d_recurrent", "quant=ternary", f"finetune={finetune}")
    schema.validate(cfg)
    knobs = build.pipeline(cfg).keywords
    assert knobs["distill_weight"] == (0.5 if finetune in ("distill", "all") else 0.0)
    assert knobs["schedule"] == ("warmup_cosine" if finetune in ("schedule", "all") else None)
    staged = finetune in ("stages", "all")
    assert [s["quant"] for s in knobs["stages"]] == (["w8a8", "w4a8"] if staged else [])
    assert knobs["quant_epochs"] == (3 if staged else 5)  # the same 5 quantized epochs in every bundle


def test_the_qat_ablation_sweep_composes_to_its_grid():
    from hydra import compose, initialize_config_dir

    from tests.conftest import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        c = compose("train", overrides=["experiment=mnist1d_recurrent", "sweep=qat_ablation"], return_hydra_config=True)
    params = c.hydra.sweeper.params
    assert params.finetune.split(",") == ["plain", "schedule", "distill", "stages", "all"]
    assert params.quant.split(",") == ["ternary", "w4a8"] and params.seed.split(",") == ["0", "1", "2"]


def _tuning_files() -> list[tuple[str, str]]:
    """``(preset, recipe)`` of every ``conf/qat_tuning/<preset>/<recipe>.yaml``."""
    return sorted((p.parent.name, p.stem) for p in Path(CONF_DIR, "qat_tuning").glob("*/*.yaml"))


def test_every_qat_tuning_file_names_a_preset_and_a_recipe():
    # train.yaml picks qat_tuning=<experiment>/<quant> as an optional default: a misspelt file is skipped in silence
    assert _tuning_files(), "conf/qat_tuning holds no preset"
    for preset, recipe in _tuning_files():
        assert preset in options("experiment"), f"conf/qat_tuning/{preset}: no experiment={preset}"
        assert recipe in options("quant"), f"conf/qat_tuning/{preset}/{recipe}.yaml: no quant={recipe}"


@pytest.mark.parametrize(("preset", "own_preset", "recipes"), [
    ("mnist1d_recurrent_256", "mnist1d_recurrent_256", {"fp32", "w8a8", "w4a8", "ternary", "ternary_channel"}),
    ("mnist1d_recurrent_256_quant", "mnist1d_recurrent_256", {"fp32", "w8a8", "w4a8", "ternary", "ternary_channel"}),
    ("mnist1d_ff", "mnist1d_ff", {"w4a8", "ternary", "ternary_channel", "w8in_ternary"}),
    ("mnist1d_ff_quant", "mnist1d_ff", {"w4a8", "ternary", "ternary_channel", "w8in_ternary"}),
])
def test_a_preset_fine_tunes_each_recipe_as_its_qat_tuning_file_says(preset, own_preset, recipes):
    from omegaconf import OmegaConf

    # a recipe with no file fine-tunes as the preset itself says
    base = make_cfg(f"experiment={own_preset}", "quant=w8in_w6a8").mode
    assert (base.quant_epochs, base.lr_scale, base.distill_weight) == (5, 0.5, 0.0)
    tuned = {r for p, r in _tuning_files() if p == own_preset}
    assert recipes <= tuned
    for recipe in sorted(tuned):
        mode = make_cfg(f"experiment={preset}", f"quant={recipe}").mode
        own = OmegaConf.load(Path(CONF_DIR, "qat_tuning", own_preset, f"{recipe}.yaml")).mode
        want = {"quant_epochs": base.quant_epochs, "lr_scale": base.lr_scale, "distill_weight": 0.0, **own}
        got = (mode.quant_epochs, mode.lr_scale, mode.distill_weight)
        assert got == (want["quant_epochs"], want["lr_scale"], want["distill_weight"]), (preset, recipe)
        schema.validate(make_cfg(f"experiment={preset}", f"quant={recipe}"))
    # the command line still wins, and ~qat_tuning (Hydra's delete) switches the file off
    assert make_cfg(f"experiment={preset}", "quant=w8a8", "mode.lr_scale=0.7").mode.lr_scale == 0.7
    assert make_cfg(f"experiment={preset}", "quant=w8a8", "~qat_tuning").mode.lr_scale == 0.5
    assert make_cfg("quant=w8a8").mode.lr_scale == 0.5  # no experiment: no tuning
