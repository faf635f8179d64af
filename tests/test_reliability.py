"""Nothing finished is lost: kill and resume, preemption, NaN, bad input."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from snnexp.checkpoint import CheckpointError
from snnexp.data.dataset import DataError, Dataset
from snnexp.train import ConfigError, NumericalError, run
from tests.conftest import make_cfg

ROOT = Path(__file__).resolve().parents[1]
# Long enough to be killed in the middle: 512 samples, one step per call.
SLOW = ["debug=fast", "data.n_train=512", "trainer.epochs=4", "mode.quant_epochs=3",
        "trainer.steps_per_call=1", "model.hidden=[48]"]
# wall-clock and compilation counts differ between processes; everything else must not
TIMING = {"train_time_s", "steps_per_s", "run_time_s", "compile_time_s", "compilations", "compile_cache_hits"}


def cli(out: Path, *overrides: str) -> subprocess.Popen:
    env = {**os.environ, "WANDB_MODE": "offline"}
    return subprocess.Popen(
        [sys.executable, "-m", "snnexp", *overrides, f"hydra.run.dir={out}"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def wait_for_rows(out: Path, rows: int, proc: subprocess.Popen, timeout: float = 240) -> None:
    """Waits until ``history.jsonl`` holds ``rows`` epochs (the run is mid-way)."""
    deadline = time.time() + timeout
    history = out / "history.jsonl"
    while time.time() < deadline:
        if history.exists() and len(history.read_text().splitlines()) >= rows:
            return
        if proc.poll() is not None:
            pytest.fail(f"run ended before epoch {rows}:\n{proc.stdout.read()[-3000:]}")
        time.sleep(0.05)
    pytest.fail("run too slow to reach the kill point")


def without_timing(m: dict) -> dict:
    return {k: v for k, v in m.items() if k not in TIMING}


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides,kill_after,resumed_from",
    [
        # fp32 training, then ptq: epoch 1 or 2 was saved
        (["quant=fp32", "mode=ptq"], 2, r"\[fp32\] resumed at epoch [23] step 0"),
        # killed in the quantized fine-tuning: the fp32 network is restored, then quant epoch 1 or 2 resumes
        (["quant=w8a8", "mode=qat"], 5, r"fp32 network restored from \S+checkpoints/fp32"),
        # quantized training from the start
        (["quant=w4a8", "mode=qt"], 2, r"\[quant\] resumed at epoch [23] step 0"),
        # killed late in fp32 training; then calibration
        (["quant=ternary", "mode=srq"], 3, r"\[fp32\] resumed at epoch [34] step 0"),
    ],
)
def test_sigkill_then_resume_equals_an_uninterrupted_run(overrides, kill_after, resumed_from, tmp_path):
    reference = run(make_cfg(*SLOW, *overrides), tmp_path / "reference")
    out = tmp_path / "killed"
    proc = cli(out, *SLOW, *overrides)
    wait_for_rows(out, kill_after, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert json.loads((out / "status.json").read_text())["status"] == "running"  # really mid-way
    assert not (out / "metrics.json").exists()

    resumed = cli(out, *SLOW, *overrides)
    log, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, log[-3000:]
    assert re.search(resumed_from, log), log[-3000:]
    first_phase = "[quant]" if "mode=qt" in overrides else "[fp32]"
    assert f"{first_phase} epoch 1/" not in log  # the saved epochs are not trained again
    if "mode=qat" in overrides:
        assert "[fp32] epoch" not in log
    final = json.loads((out / "metrics.json").read_text())
    assert without_timing(final) == without_timing(reference)  # bit-identical on CPU
    history = [json.loads(r) for r in (out / "history.jsonl").read_text().splitlines()]
    assert [r["step"] for r in history] == list(range(1, final["epochs"] + 1))


@pytest.mark.slow
def test_sigterm_saves_mid_epoch_and_the_rerun_finishes_identically(tmp_path):
    overrides = [*SLOW, "quant=w8a8", "mode=qat"]
    reference = run(make_cfg(*overrides), tmp_path / "reference")
    out = tmp_path / "term"
    proc = cli(out, *overrides, "logger=wandb")
    wait_for_rows(out, 1, proc)
    time.sleep(0.3)  # inside epoch 2
    proc.send_signal(signal.SIGTERM)
    log, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM
    assert "SIGTERM" in log
    assert re.search(rf"To resume: python -m snnexp .*hydra\.run\.dir={re.escape(str(out))}$", log, flags=re.M)
    status = json.loads((out / "status.json").read_text())
    assert status["status"] == "preempted" and "SIGTERM" in status["error"]
    assert (out / "checkpoints" / "train").is_dir()

    run_id = (out / "wandb_id.txt").read_text()
    resumed = cli(out, *overrides, "logger=wandb")
    log, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, log[-3000:]
    assert "resumed at epoch" in log
    final = json.loads((out / "metrics.json").read_text())
    assert without_timing(final) == without_timing(reference)
    # the W&B run continues: both offline segments carry the same run id
    segments = sorted((out / "wandb").glob("offline-run-*"))
    assert len(segments) == 2 and all(p.name.endswith(run_id) for p in segments)  # bit-identical on CPU


@pytest.mark.slow
def test_same_config_and_seed_give_the_same_metrics(tmp_path):
    a = run(make_cfg("debug=fast", "quant=w4a8", "mode=srq"), tmp_path / "a")
    b = run(make_cfg("debug=fast", "quant=w4a8", "mode=srq"), tmp_path / "b")
    assert without_timing(a) == without_timing(b)


@pytest.mark.slow
def test_finished_run_is_not_run_again(tmp_path):
    first = run(make_cfg("debug=fast"), tmp_path)
    stamp = (tmp_path / "metrics.json").stat().st_mtime_ns
    assert run(make_cfg("debug=fast"), tmp_path) == first
    assert (tmp_path / "metrics.json").stat().st_mtime_ns == stamp


def test_a_run_written_before_a_key_existed_resumes_under_its_neutral_value_only():
    """A run directory from before ``trainer.augment.dropout`` existed resumes with dropout 0, not with 0.2."""
    from snnexp.rundir import config_diff

    old = {"seed": 0, "trainer": {"epochs": 3, "augment": {"shift": 4, "noise": 0.0}}}
    now = {"seed": 0, "trainer": {"epochs": 3, "augment": {"shift": 4, "noise": 0.0, "dropout": 0.0}}}
    assert config_diff(old, now) == []
    now["trainer"]["augment"]["dropout"] = 0.2
    assert config_diff(old, now) == ["trainer.augment.dropout: 0.0 -> 0.2"]
    del now["trainer"]["augment"]["noise"]
    assert "trainer.augment.noise: 0.0 -> None" in config_diff(old, now)  # any other missing key still differs
    # data.repeat (MNIST-1D): a run from before it held each point for one step
    old_data, now_data = {"data": {"name": "mnist1d"}}, {"data": {"name": "mnist1d", "repeat": 1}}
    assert config_diff(old_data, now_data) == []
    now_data["data"]["repeat"] = 2
    assert config_diff(old_data, now_data) == ["data.repeat: 1 -> 2"]
    assert config_diff({"data": {"name": "yinyang"}}, {"data": {"name": "yinyang"}}) == []  # no key, no diff


@pytest.mark.slow
def test_another_config_in_the_same_directory_is_refused(tmp_path):
    run(make_cfg("debug=fast"), tmp_path)
    with pytest.raises(ConfigError, match="another configuration.*trainer.epochs: 1 -> 2"):
        run(make_cfg("debug=fast", "trainer.epochs=2"), tmp_path)
    again = run(make_cfg("debug=fast", "trainer.epochs=2", "resume=false"), tmp_path)
    assert again["epochs"] == 3


@pytest.mark.slow
def test_nan_stops_with_epoch_and_step_and_keeps_the_checkpoint(tmp_path):
    cfg = make_cfg("debug=fast", "trainer.epochs=2", "mode=qat", "mode.lr_scale=inf")
    with pytest.raises(NumericalError, match=r"\[quant\] the (training|test) loss is (nan|inf).*epoch 1"):
        run(cfg, tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["status"] == "failed" and "NumericalError" in metrics["error"]
    assert json.loads((tmp_path / "status.json").read_text())["status"] == "failed"
    assert (tmp_path / "checkpoints" / "fp32").is_dir()
    assert any((tmp_path / "checkpoints" / "train").iterdir())  # the last good state


@pytest.mark.slow
def test_gradient_clipping_keeps_training_finite(tmp_path):
    m = run(make_cfg("debug=fast", "optim.grad_clip_norm=0.5", "optim.lr=0.05"), tmp_path)
    assert np.isfinite(m["quant_loss"])


@pytest.mark.slow
def test_checkpoint_of_another_shape_names_the_parameter(tmp_path):
    run(make_cfg("debug=fast", "mode=ptq"), tmp_path / "a")
    ckpt = tmp_path / "a" / "checkpoints" / "fp32"
    cfg = make_cfg("debug=fast", "mode=ptq", "model.hidden=[32]", f"mode.fp32_checkpoint={ckpt}")
    with pytest.raises(CheckpointError, match=r"parameter fc/0/bias has shape \(24,\) in the checkpoint "
                                              r"but \(32,\) in the model"):
        run(cfg, tmp_path / "b")


@pytest.mark.parametrize(
    "override,error,match",
    [
        ("data.steps=0", ValueError, "data.steps must be positive, got 0"),
        ("data.n_train=0", ValueError, "data.n_train must be positive, got 0"),
        ("trainer.batch_size=-4", ConfigError, "trainer.batch_size=-4 must be an integer >= 1"),
        ("trainer.eval_batch_size=0", ConfigError, "trainer.eval_batch_size=0"),
        ("mode.fp32_checkpoint=/nowhere/fp32", ConfigError, "'/nowhere/fp32' does not exist"),
    ],
)
def test_bad_input_is_named(override, error, match, tmp_path):
    with pytest.raises(error, match=match):
        run(make_cfg("debug=fast", "mode=ptq", override), tmp_path)
    assert not (tmp_path / "history.jsonl").exists()


def test_dataset_rejects_labels_out_of_range_and_empty_splits():
    x = np.zeros((4, 3, 2), np.float32)
    with pytest.raises(DataError, match="label 7 in the train split is out of range \\[0, 4\\)"):
        Dataset(x, np.array([0, 1, 7, 2], np.int32), x, np.zeros(4, np.int32), 4, "toy")
    with pytest.raises(DataError, match="the test split is empty"):
        Dataset(x, np.zeros(4, np.int32), x[:0], np.zeros(0, np.int32), 4, "toy")


@pytest.mark.slow
def test_no_secret_is_written_to_the_run_directory(tmp_path):
    secret = "0123456789abcdef0123456789abcdef01234567"
    env = {**os.environ, "WANDB_API_KEY": secret, "WANDB_MODE": "offline"}
    proc = subprocess.run(
        [sys.executable, "-m", "snnexp", "debug=fast", "logger=wandb", f"hydra.run.dir={tmp_path}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert secret not in proc.stdout + proc.stderr
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


@pytest.mark.slow
def test_wandb_failure_at_init_does_not_stop_the_run(tmp_path, monkeypatch):
    # online mode without any API key and without a network: W&B refuses to start
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-dir"))
    m = run(make_cfg("debug=fast", "logger=wandb", "logger.mode=online"), tmp_path / "run")
    assert m["status"] == "ok"
    assert (tmp_path / "run" / "history.jsonl").exists()


@pytest.mark.slow
def test_multirun_resumed_after_a_kill_skips_finished_jobs(tmp_path):
    sweep = tmp_path / "sweep"
    args = [sys.executable, "-m", "snnexp", "-m", *SLOW, "quant=fp32,w8a8,w4a8", "mode=ptq",
            f"hydra.sweep.dir={sweep}"]
    env = {**os.environ, "WANDB_MODE": "offline"}
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while not (sweep / "1" / "history.jsonl").exists():
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert json.loads((sweep / "0" / "status.json").read_text())["status"] == "ok"
    stamp = (sweep / "0" / "metrics.json").stat().st_mtime_ns

    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (sweep / "0" / "metrics.json").stat().st_mtime_ns == stamp  # job 0 skipped
    assert "already finished" in (sweep / "0" / "__main__.log").read_text()
    for job in ("1", "2"):
        assert json.loads((sweep / job / "status.json").read_text())["status"] == "ok"
