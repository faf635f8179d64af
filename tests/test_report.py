"""``snnexp.report`` on real runs: a tiny Hydra multirun, read back into CSV and HTML.

The runs are real (``python -m snnexp -m debug=fast ...`` in subprocesses, run
side by side to keep the module near a minute). The layout under one parent:

    sweep/0..3      quant=fp32,w8a8 x mode=ptq,qat            (multirun, seed 0)
    seed1/0         quant=w8a8 mode=ptq seed=1                 (multirun: a second seed)
    bad_batch/      trainer.batch_size=0                       (single run that really fails)
    handmade_failed/  .hydra/overrides.yaml + status.json      (written by hand below)

The hand-made directory stands for a failed job once jobs write ``status.json``;
it is the only run not produced by ``python -m snnexp``.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from snnexp import report
from snnexp.tracking import flatten

REPO = Path(__file__).resolve().parents[1]
HANDMADE_ERROR = "ConfigError: mode.name='bogus'; valid choices: ['qat', 'qt', 'ptq', 'srq'] <&>"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("WANDB_MODE", "offline")
    env.setdefault("WANDB_SILENT", "true")
    return env


def _snnexp(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "snnexp", *args], cwd=REPO, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    procs = {
        "sweep": _snnexp("-m", "debug=fast", "quant=fp32,w8a8", "mode=ptq,qat",
                         f"hydra.sweep.dir={root / 'sweep'}"),
        "seed1": _snnexp("-m", "debug=fast", "quant=w8a8", "mode=ptq", "seed=1",
                         f"hydra.sweep.dir={root / 'seed1'}"),
        "bad_batch": _snnexp("debug=fast", "quant=w8a8", "mode=ptq", "trainer.batch_size=0",
                             f"hydra.run.dir={root / 'bad_batch'}"),
    }
    outputs = {name: p.communicate(timeout=400)[0] for name, p in procs.items()}
    for name in ("sweep", "seed1"):
        assert procs[name].returncode == 0, outputs[name][-3000:]
    assert procs["bad_batch"].returncode != 0, outputs["bad_batch"][-3000:]

    bad = root / "handmade_failed"
    (bad / ".hydra").mkdir(parents=True)
    (bad / ".hydra" / "overrides.yaml").write_text("- debug=fast\n- mode=bogus\n")
    (bad / "status.json").write_text(json.dumps({"status": "failed", "error": HANDMADE_ERROR}))
    return root


def _csv_rows(path: Path) -> dict[str, dict[str, str]]:
    with path.open(newline="") as f:
        return {row["run_dir"]: row for row in csv.DictReader(f)}


def _as_csv(value) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return json.dumps(value)
    return str(value)


def test_csv_holds_every_run_with_its_metrics(runs_root, tmp_path):
    rows = report.build_report([runs_root], tmp_path)
    table = _csv_rows(tmp_path / "results.csv")
    job_dirs = sorted(p for p in runs_root.rglob("*") if (p / ".hydra").is_dir())
    assert len(job_dirs) == 7  # 4 + 1 + 1 real, 1 hand-made
    assert len(rows) == len(table) == len(job_dirs)
    assert set(table) == {str(p.resolve()) for p in job_dirs}

    finished = [p for p in job_dirs if (p / "metrics.json").exists()]
    assert len(finished) == 5
    for run_dir in finished:
        row = table[str(run_dir.resolve())]
        assert row["status"] == "ok" and row["error"] == ""
        metrics = flatten(json.loads((run_dir / "metrics.json").read_text()))
        assert "spike_rate/mean" in metrics and "spike_rate/layer_0" in metrics
        for key, value in metrics.items():
            assert key in row, key
            if isinstance(value, float):
                assert float(row[key]) == value, (run_dir, key)  # full precision kept
            else:
                assert row[key] == _as_csv(value), (run_dir, key)
        overrides = yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text())
        assert row["overrides"] == " ".join(overrides)
        for o in overrides:
            k, v = o.split("=", 1)
            assert row[f"override/{k}"] == v
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert row["seed"] == str(cfg["seed"])
        assert row["recipe"] == cfg["quant"]["name"] == metrics["recipe"]
        assert row["mode"] == cfg["mode"]["name"] == metrics["mode"]
        assert row["neuron"] == cfg["neuron"]["name"]
        assert row["data"] == cfg["data"]["name"]

    grid = {(r["recipe"], r["mode"]) for r in rows if r["status"] == "ok"}
    assert grid == {("fp32", "ptq"), ("fp32", "qat"), ("w8a8", "ptq"), ("w8a8", "qat")}


def test_failed_and_incomplete_runs_are_listed(runs_root, tmp_path):
    # A job killed before it wrote metrics: a real run with its metrics.json gone.
    killed = tmp_path / "runs" / "killed"
    shutil.copytree(runs_root / "sweep" / "0", killed, ignore=shutil.ignore_patterns("checkpoints"))
    (killed / "metrics.json").unlink()

    rows = report.build_report([runs_root, killed], tmp_path / "out")
    by_dir = {Path(r["run_dir"]).name: r for r in rows}
    assert by_dir["handmade_failed"]["status"] == "failed"
    assert by_dir["handmade_failed"]["error"] == HANDMADE_ERROR
    assert by_dir["killed"]["status"] == "incomplete"
    assert by_dir["killed"]["recipe"] is not None  # the config is still read
    real_failure = by_dir["bad_batch"]
    assert real_failure["status"] in ("failed", "incomplete")  # failed once jobs write status.json
    if real_failure["status"] == "failed":
        assert "batch_size" in real_failure["error"]

    page = (tmp_path / "out" / "report.html").read_text()
    section = page.split("<h2>Failed and incomplete runs</h2>", 1)[1].split("<h2>", 1)[0]
    assert "handmade_failed" in section and "killed" in section and "bad_batch" in section
    assert "ConfigError: mode.name=&#x27;bogus&#x27;" in section and "&lt;&amp;&gt;" in section


def test_html_is_offline_and_has_the_plots(runs_root, tmp_path):
    report.build_report([runs_root / "sweep", runs_root / "seed1"], tmp_path)
    page = (tmp_path / "report.html").read_text()
    assert page.count("<svg") == 4  # pareto, drop heatmap, curves, seed spread
    for title in ("Accuracy vs. memory", "Accuracy drop per recipe and mode", "Training curves",
                  "Mean and spread over seeds", "All runs"):
        assert f"<h2>{title}</h2>" in page
    assert "Pareto front" in page
    assert not re.search(r"<script[^>]*\bsrc\s*=", page, re.I)
    assert not re.search(r"<link\b", page, re.I)
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.I)
    assert not re.search(r"""url\(\s*["']?\s*(https?:)?//|@import""", page, re.I)
    assert "http://" not in page and "https://" not in page


def test_seed_spread_groups_repeated_configs(runs_root):
    runs = report.collect([runs_root])
    stats = report.seed_stats(runs)
    assert [(s["recipe"], s["mode"], s["n"]) for s in stats] == [("w8a8", "ptq", 2)]
    accs = sorted(r.get("quant_accuracy") for r in runs
                  if r.ok and (r.get("recipe"), r.get("mode")) == ("w8a8", "ptq"))
    assert sorted(stats[0]["values"]) == accs
    assert stats[0]["mean"] == pytest.approx(sum(accs) / 2)
    assert stats[0]["seeds"] == [0, 1]


def test_single_run_dir(runs_root, tmp_path):
    rows = report.build_report([runs_root / "sweep" / "2"], tmp_path)
    assert len(rows) == 1 and rows[0]["status"] == "ok"
    assert (tmp_path / "results.csv").exists() and (tmp_path / "report.html").exists()


def test_pareto_front():
    pts = [(100.0, 0.5), (100.0, 0.7), (50.0, 0.6), (200.0, 0.7), (400.0, 0.9), (25.0, 0.2)]
    assert report.pareto_front(pts) == [5, 2, 1, 4]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "snnexp.report", *args], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=120)


def test_cli(runs_root, tmp_path):
    out = tmp_path / "cli"
    done = _cli(str(runs_root / "sweep"), str(runs_root / "seed1"), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert f"wrote {out.resolve() / 'results.csv'}" in done.stdout
    assert f"wrote {out.resolve() / 'report.html'}" in done.stdout
    assert re.search(r"sweep/3\s+ok\s+w8a8\s+qat", done.stdout), done.stdout

    missing = tmp_path / "nowhere"
    done = _cli(str(missing))
    assert done.returncode == 2 and str(missing) in done.stderr and "no such directory" in done.stderr

    empty = tmp_path / "empty"
    empty.mkdir()
    done = _cli(str(empty))
    assert done.returncode == 2 and str(empty) in done.stderr and "holds no runs" in done.stderr
