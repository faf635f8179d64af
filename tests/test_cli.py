"""What a user sees from ``python -m snnexp``: one-line errors, progress, sweep summaries, W&B and optuna records.

The subprocess tests run the real launcher (Hydra, the optuna sweeper, W&B
offline) on the tiny ``debug=fast`` task.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from snnexp import tracking
from snnexp.train import run
from tests.conftest import make_cfg

ROOT = Path(__file__).resolve().parents[1]


def snnexp(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "WANDB_MODE": "offline"}
    full_env.pop("HYDRA_FULL_ERROR", None)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "snnexp", *args], cwd=ROOT, env=full_env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.slow
def test_a_config_error_is_one_line_and_exits_2(tmp_path):
    proc = snnexp("debug=fast", "trainer.batch_size=0", f"hydra.run.dir={tmp_path / 'a'}")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == "snnexp: ConfigError: trainer.batch_size=0 must be an integer >= 1"
    assert "Traceback" not in proc.stderr + proc.stdout
    assert json.loads((tmp_path / "a" / "metrics.json").read_text())["status"] == "failed"
    assert json.loads((tmp_path / "a" / "status.json").read_text())["status"] == "failed"
    bad_type = snnexp("debug=fast", "optim.lr=abc", f"hydra.run.dir={tmp_path / 'c'}")  # refused by the schema
    assert bad_type.returncode == 2
    assert bad_type.stderr.strip().splitlines()[-1].startswith("snnexp: ConfigError: optim.lr='abc'")
    assert "abc" in json.loads((tmp_path / "c" / "status.json").read_text())["error"]
    full = snnexp("debug=fast", "trainer.batch_size=0", f"hydra.run.dir={tmp_path / 'b'}",
                  env={"HYDRA_FULL_ERROR": "1"})
    assert full.returncode == 1 and "Traceback" in full.stderr and "ConfigError" in full.stderr


@pytest.mark.slow
def test_a_sweep_ends_with_a_table_of_every_job_and_log_lines_name_their_job(tmp_path):
    proc = snnexp("-m", "debug=fast", "logger=none", "quant=w8a8", "mode=ptq", "trainer.batch_size=16,0",
                  f"hydra.sweep.dir={tmp_path}")
    assert proc.returncode == 1, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    summary = out[out.index("snnexp sweep"):]
    assert "1 of 2 jobs ok" in summary
    rows = {line.split()[0]: line for line in summary.splitlines() if re.match(r"\s*[01] ", line)}
    assert "trainer.batch_size=16" in rows["0"] and " ok " in rows["0"] and "debug=fast" not in rows["0"]
    assert "failed" in rows["1"] and "ConfigError: trainer.batch_size=0 must be an integer >= 1" in rows["1"]
    job_lines = [line for line in out.splitlines() if "][snnexp" in line]
    assert job_lines and all(re.search(r"\[job [01]\] ", line) for line in job_lines), job_lines[:5]
    assert "Traceback" not in out


def _netrc(path: Path, host: str) -> Path:
    path.write_text(f"machine {host}\n  login user\n  password {'a' * 40}\n")
    path.chmod(0o600)
    return path


@pytest.mark.parametrize(
    ("host", "base_url", "online"),
    [("api.wandb.ai", None, True), ("wandb.example.org", None, False), ("wandb.example.org",
                                                                         "https://wandb.example.org", True)],
)
def test_a_key_from_wandb_login_counts(host, base_url, online, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NETRC", str(_netrc(tmp_path / "netrc", host)))
    if base_url:
        monkeypatch.setenv("WANDB_BASE_URL", base_url)
    else:
        monkeypatch.delenv("WANDB_BASE_URL", raising=False)
    assert tracking.has_api_key() is online
    assert tracking.wandb_mode(None) == ("online" if online else "offline")
    monkeypatch.setenv("NETRC", str(tmp_path / "missing"))
    assert tracking.wandb_mode(None) == "offline"


@pytest.mark.slow
def test_an_offline_run_says_how_to_upload_it(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="snnexp.tracking"):
        run(make_cfg("debug=fast", "logger=wandb", "logger.mode=offline", "mode=ptq"), tmp_path)
    hints = [r.getMessage() for r in caplog.records if "wandb sync" in r.getMessage()]
    assert len(hints) == 1
    sync_dir = Path(hints[0].split("wandb sync ")[1])
    assert sync_dir.parent == tmp_path / "wandb" and list(sync_dir.glob("*.wandb"))


@pytest.mark.slow
def test_progress_shows_compilation_epoch_times_and_a_bar(tmp_path):
    proc = snnexp("debug=fast", "logger=wandb", "quant=w8a8", "mode=qat", "trainer.steps_per_call=1",
                  f"hydra.run.dir={tmp_path}", env={"SNNEXP_PROGRESS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    for phase in ("fp32", "quant"):
        assert f"[{phase}] compiling the training step" in out and f"[{phase}] first step done in" in out
        assert re.search(rf"\[{phase}\] epoch 1/1 .* \d+\.\d+ s \(train \d+\.\d+ s, eval \d+\.\d+ s\)", out)
    assert "steps/s" in proc.stderr  # the bar (forced on: stderr is a pipe here)
    config = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert config["logger"]["name"] == "w8a8-qat-synthetic-seed0"
    plain = snnexp("debug=fast", "logger=none", "mode=ptq", f"hydra.run.dir={tmp_path / 'plain'}")
    assert plain.returncode == 0 and "steps/s" not in plain.stderr  # no bar off a terminal


@pytest.mark.slow
def test_an_optuna_search_is_persistent_and_resumes(tmp_path):
    args = ("-m", "hparams_search=lr", "debug=fast", "logger=none", "hydra.sweeper.n_trials=1",
            f"hydra.sweep.dir={tmp_path}")
    first = snnexp(*args)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "setup plugin" not in first.stdout + first.stderr  # no alembic chatter
    second = snnexp(*args)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "Using an existing study with name 'lr'" in second.stdout + second.stderr

    import optuna

    study = optuna.load_study(study_name="lr", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 2
    jobs = [json.loads(p.read_text()) for p in tmp_path.glob("*/metrics.json")]
    assert len(jobs) == 2 and all(j["status"] == "ok" for j in jobs)
    assert sorted(j["quant_accuracy"] for j in jobs) == sorted(t.value for t in study.trials)


@pytest.mark.slow
def test_the_mnist1d_search_runs_on_the_validation_split_and_resumes(tmp_path):
    """hparams_search=mnist1d: each trial trains on 3500 sequences and scores the 500 held out; a rerun adds."""
    args = ("-m", "experiment=mnist1d_recurrent", "hparams_search=mnist1d", "model.hidden=[8]", "trainer.epochs=1",
            "trainer.batch_size=500", f"data.cache_dir={tmp_path / 'data'}", "logger=none", "fp32_cache=false",
            "hydra.sweeper.n_trials=1", f"hydra.sweep.dir={tmp_path / 'search'}")
    for _ in range(2):
        proc = snnexp(*args)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "3500 train / 500 test" in proc.stdout + proc.stderr
    import optuna

    study = optuna.load_study(study_name="mnist1d", storage=f"sqlite:///{tmp_path / 'search' / 'optuna.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 2
    jobs = [json.loads(p.read_text()) for p in (tmp_path / "search").glob("*/metrics.json")]
    assert len(jobs) == 2 and all(j["status"] == "ok" and j["recipe"] == "fp32" for j in jobs)
    assert sorted(j["fp32_accuracy"] for j in jobs) == sorted(t.value for t in study.trials)


@pytest.mark.parametrize("module", ["snnexp.__main__", "snnexp.rundir", "snnexp.build", "snnexp.report"])
def test_each_entry_module_imports_first_in_a_fresh_process(module):
    # the package's modules import one another; any of them may be the first a user imports
    proc = subprocess.run([sys.executable, "-c", f"import {module}"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
