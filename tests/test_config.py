"""Every option of every config group composes and builds into real objects."""

from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from snnexp import build, quant, tracking
from snnexp.data import Dataset
from snnexp.train import MODES
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
def test_optimizers_build_and_follow_schedule(optim):
    cfg = make_cfg(f"optim={optim}")
    tx = build.optimizer(cfg, total_steps=100)
    params = {"w": jnp.ones(3)}
    state = tx.init(params)
    updates, _ = tx.update({"w": jnp.ones(3)}, state, params)
    assert np.isfinite(np.asarray(updates["w"])).all()
    assert isinstance(tx, optax.GradientTransformation)


@pytest.mark.parametrize("recipe", options("quant"))
def test_recipes_parse_and_match_the_model(recipe):
    cfg = make_cfg(f"quant={recipe}", "data=synthetic")
    rules = quant.parse_recipe(cfg.quant.rules)
    model = build.model(cfg, n_in=16, n_out=4)
    quant.quantize(model, rules, "ptq", jnp.zeros((1, 2, 16)))  # raises if a rule matches nothing
    expected = f"w{cfg.quant.weight_bits}a8" if recipe == "bits" else recipe
    assert cfg.quant.name == expected


@pytest.mark.parametrize("mode", options("mode"))
def test_modes_are_known(mode):
    assert make_cfg(f"mode={mode}").mode.name in MODES


@pytest.mark.parametrize("logger", options("logger"))
def test_loggers_build(logger, tmp_path):
    cfg = make_cfg(f"logger={logger}")
    t = tracking.Tracker(tmp_path, {"a": 1}, backend=cfg.logger.backend, mode="offline")
    t.log({"x": 1.0}, step=1)
    t.finish()
    assert (tmp_path / "history.jsonl").read_text().count("\n") == 1


def test_every_group_has_tests():
    groups = {p.name for p in Path(CONF_DIR).iterdir() if p.is_dir()}
    assert groups >= {"data", "model", "neuron", "surrogate", "quant", "mode", "optim", "logger", "debug"}
