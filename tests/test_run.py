"""Every recipe x mode runs end to end; bad configurations fail before training."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import open_dict

from snnexp import quant
from snnexp.train import ConfigError, run
from tests.conftest import make_cfg

RECIPES = ["fp32", "w8a8", "w4a8", "weights_only", "ternary", "ternary_channel"]
MODES = ["qat", "qt", "ptq", "srq"]
METRIC_KEYS = {
    "fp32_accuracy", "quant_accuracy", "accuracy_drop", "weight_bytes_fp32", "weight_bytes_quant",
    "bits_per_weight", "spike_rate", "train_time_s", "steps_per_s",
}
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_and_mode_runs(recipe, mode, tmp_path):
    cfg = make_cfg("debug=fast", f"quant={recipe}", f"mode={mode}")
    m = run(cfg, tmp_path)
    assert METRIC_KEYS <= set(m)
    assert 0.0 <= m["quant_accuracy"] <= 1.0
    assert (m["fp32_accuracy"] is None) == (mode == "qt")
    assert set(m["spike_rate"]) == {"layer_0", "mean"}
    assert (tmp_path / "checkpoints" / "quant").is_dir()
    assert (tmp_path / "checkpoints" / "fp32").is_dir() == (mode != "qt")
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk["quant_accuracy"] == m["quant_accuracy"]
    n_weights = 16 * 24 + 24 * 4
    if recipe == "fp32":
        assert m["weight_bytes_quant"] == m["weight_bytes_fp32"] and m["bits_per_weight"] == 32
    else:
        expected_bits = {"w8a8": 8, "weights_only": 8, "w4a8": 4, "ternary": 4, "ternary_channel": 4}[recipe]
        scales = (24 + 4) * 32  # one float32 scale per output channel
        assert m["bits_per_weight"] == pytest.approx((n_weights * expected_bits + scales) / n_weights)
        assert m["weight_bytes_quant"] < m["weight_bytes_fp32"] / 2.5


@pytest.mark.slow
def test_history_has_every_epoch(tmp_path):
    cfg = make_cfg("debug=fast", "trainer.epochs=2", "mode.quant_epochs=2")
    run(cfg, tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert "fp32/test_accuracy" in rows[0] and "quant/test_accuracy" in rows[3]


@pytest.mark.slow
def test_augmented_training_is_reproducible_and_differs_from_plain_training(tmp_path):
    """``trainer.augment`` reaches the training batches of every phase, with draws fixed by the seed."""
    def train_losses(name: str, *overrides: str) -> list[float]:
        run(make_cfg("debug=fast", "quant=w8a8", "mode=qat", "fp32_cache=false", *overrides), tmp_path / name)
        rows = [json.loads(line) for line in (tmp_path / name / "history.jsonl").read_text().splitlines()]
        return [r[k] for r in rows for k in r if k.endswith("/train_loss")]

    aug = ["trainer.augment.shift=2", "trainer.augment.noise=0.2", "trainer.augment.dropout=0.2"]
    plain, first, again = train_losses("plain"), train_losses("aug", *aug), train_losses("again", *aug)
    assert len(plain) == len(first) >= 2
    assert first == again, "the same seed draws the same augmentation"
    assert all(a != b for a, b in zip(plain, first, strict=True)), "every phase trains on augmented batches"


@pytest.mark.slow
def test_learns_the_synthetic_task(tmp_path):
    cfg = make_cfg("debug=fast", "quant=w8a8", "mode=qat", "trainer.epochs=15", "data.n_train=256",
                   "data.n_test=128")
    m = run(cfg, tmp_path)
    assert m["fp32_accuracy"] > 0.6 and m["quant_accuracy"] > 0.6


@pytest.mark.slow
def test_fp32_checkpoint_skips_training_and_gives_the_same_fp32_accuracy(tmp_path):
    first = run(make_cfg("debug=fast", "mode=ptq"), tmp_path / "a")
    ckpt = tmp_path / "a" / "checkpoints" / "fp32"
    second = run(make_cfg("debug=fast", "mode=srq", f"mode.fp32_checkpoint={ckpt}"), tmp_path / "b")
    assert second["fp32_accuracy"] == first["fp32_accuracy"]
    assert second["train_steps"] == 0


@pytest.mark.parametrize(
    "override,match",
    [
        ("quant.rules.0.weight_qtype=fp8", "'fp8' is not supported; valid choices"),
        ("quant.rules.0.weight_qtype=int1", "'int1' is not supported"),
        ("quant.rules.0.act_qtype=uint8", "'uint8' is not supported"),
        ("quant.rules.0.weight_qtype=null", "weight_qtype is null"),
        ("quant.rules.0.module_path=.*Linear.*", "matched no layer; layers with weights: \\['fc/0'"),
        ("trainer.batch_size=0", "trainer.batch_size=0 must be an integer >= 1"),
        ("mode.fp32_checkpoint=/no/such/ckpt", "'/no/such/ckpt' does not exist"),
        ("trainer.augment.dropout=1.0", "trainer.augment.dropout=1.0.*\\[0, 1\\)"),
        ("model=conv model.hidden=[4] model.image=[2,4,4] data.features=32 trainer.augment.dropout=0.2",
         "ConvSNN has no dropout; valid choices: model=feedforward or model=recurrent"),
        ("hardware=int trainer.augment.dropout=0.2", "integer grid, which has no dropout"),
    ],
)
def test_bad_config_fails_before_training(override, match, tmp_path):
    cfg = make_cfg("debug=fast", "quant=w8a8", "mode=qat", *override.split())
    with pytest.raises((quant.RecipeError, ConfigError), match=match):
        run(cfg, tmp_path)
    assert not (tmp_path / "history.jsonl").exists()  # no epoch ran


def test_a_mode_whose_target_is_not_a_function_is_refused_before_training(tmp_path):
    cfg = make_cfg("debug=fast")
    with open_dict(cfg):
        cfg.mode._target_ = "snnexp.train.pipelines.qatt"
    with pytest.raises(ConfigError, match="mode._target_='snnexp.train.pipelines.qatt'"):
        run(cfg, tmp_path)
    assert json.loads((tmp_path / "status.json").read_text())["status"] == "failed"
    assert "qatt" in json.loads((tmp_path / "metrics.json").read_text())["error"]


def test_unknown_group_option_names_the_choices():
    with pytest.raises(ConfigCompositionException) as e:
        make_cfg("quant=w3a3")
    text = str(e.value) + str(e.value.__cause__)
    assert "w3a3" in text and "ternary" in text and "w8a8" in text


def test_square_layer_with_batch_rows_is_refused(tmp_path):
    cfg = make_cfg("debug=fast", "model.hidden=[16,16]", "trainer.batch_size=16")
    with pytest.raises(ConfigError, match="fc/. is 16x16"):
        run(cfg, tmp_path)


@pytest.mark.slow
def test_command_line_run_writes_metrics(tmp_path):
    env = {**os.environ, "WANDB_MODE": "offline"}
    proc = subprocess.run(
        [sys.executable, "-m", "snnexp", "quant=ternary", "mode=qat", "debug=fast",
         f"hydra.run.dir={tmp_path}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert METRIC_KEYS <= set(metrics)
    assert metrics["recipe"] == "ternary" and metrics["mode"] == "qat"
    assert (tmp_path / ".hydra" / "config.yaml").exists() and (tmp_path / "config.yaml").exists()
    assert "quant accuracy" in proc.stdout + proc.stderr  # the results table


@pytest.mark.slow
def test_deployed_integer_network_loads_back_with_its_accuracy(tmp_path):
    import jax.numpy as jnp
    import numpy as np

    from snnexp import build
    from snnexp.train import Arrays, evaluate, load_deployed

    m = run(make_cfg("debug=fast", "quant=w4a8", "mode=srq"), tmp_path)
    cfg, net = load_deployed(tmp_path)
    assert net.fc[0].kernel.array.qvalue.dtype == jnp.int4
    codes = np.asarray(net.fc[0].kernel.array.qvalue.astype(jnp.int8))
    assert codes.min() >= -8 and codes.max() <= 7
    ev = evaluate(net, Arrays.put(build.data(cfg)), 32)
    assert ev["accuracy"] == m["quant_accuracy"]
