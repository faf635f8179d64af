"""``snnexp.report`` on real runs: tiny Hydra multiruns read back into a DataFrame, CSV and an offline page.

The runs are real (``python -m snnexp -m debug=fast ...`` in subprocesses, run
side by side). The layout under one parent, built once per test session (and
shared by pytest-xdist workers through a lock, see :func:`report_runs`):

    sweep/0..3       quant=fp32,w8a8 x mode=ptq,qat         (multirun, seed 0)
    seed1/0          quant=w8a8 mode=ptq seed=1              (multirun: a second seed)
    search/0..2      hparams_search=lr, 3 optuna trials       (multirun, optuna sweeper)
    missing_data/    quant=ternary data=shd data.root=<none>  (single run that really fails)
    handmade_failed/ .hydra/overrides.yaml + status.json      (written by hand below)

The hand-made directory stands for a job that failed before writing a config;
it is the only run not produced by ``python -m snnexp``.
"""

from __future__ import annotations

import csv
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from snnexp import report
from snnexp.report import analysis, page
from snnexp.report.collect import swept_keys
from snnexp.tracking import flatten

REPO = Path(__file__).resolve().parents[1]
HANDMADE_ERROR = "ConfigError: mode.name='bogus'; valid choices: ['qat', 'qt', 'ptq', 'srq'] <&>"
SWEEPS = {
    "sweep": ["-m", "debug=fast", "quant=fp32,w8a8", "mode=ptq,qat"],
    "seed1": ["-m", "debug=fast", "quant=w8a8", "mode=ptq", "seed=1"],
    "search": ["-m", "hparams_search=lr", "debug=fast", "hydra.sweeper.n_trials=3"],
}


def env() -> dict[str, str]:
    out = dict(os.environ)
    out["PYTHONPATH"] = os.pathsep.join([str(REPO), out.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    out.setdefault("WANDB_MODE", "offline")
    out.setdefault("WANDB_SILENT", "true")
    return out


def snnexp(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "snnexp", *args], cwd=REPO, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _launch(root: Path) -> None:
    procs = {name: snnexp(*args, f"hydra.sweep.dir={root / name}") for name, args in SWEEPS.items()}
    procs["missing_data"] = snnexp("debug=fast", "quant=ternary", "mode=ptq", "data=shd",
                                   f"data.root={root / 'no_such_dir'}", f"hydra.run.dir={root / 'missing_data'}")
    outputs = {name: p.communicate(timeout=400)[0] for name, p in procs.items()}
    for name in SWEEPS:
        assert procs[name].returncode == 0, outputs[name][-3000:]
    assert procs["missing_data"].returncode != 0, outputs["missing_data"][-3000:]
    bad = root / "handmade_failed"
    (bad / ".hydra").mkdir(parents=True)
    (bad / ".hydra" / "overrides.yaml").write_text("- debug=fast\n- mode=bogus\n")
    (bad / "status.json").write_text(json.dumps({"status": "failed", "error": HANDMADE_ERROR}))


def report_runs(tmp_path_factory) -> Path:
    """The runs above, launched once per session; xdist workers of one session share them."""
    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "report_runs"
    with open(str(root) + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (root / "done").exists():
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir(parents=True)
            _launch(root)
            (root / "done").write_text("ok")
    return root


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory) -> Path:
    return report_runs(tmp_path_factory)


def _csv_rows(path: Path) -> dict[str, dict[str, str]]:
    with path.open(newline="") as f:
        return {row["run_dir"]: row for row in csv.DictReader(f)}


def _as_csv(value) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return json.dumps(value)
    return str(value)


@pytest.mark.slow
def test_csv_holds_every_run_with_its_metrics(runs_root, tmp_path):
    runs = report.build_report([runs_root], tmp_path)
    table = _csv_rows(tmp_path / "results.csv")
    job_dirs = sorted(p for p in runs_root.rglob("*") if (p / ".hydra").is_dir())
    assert len(job_dirs) == 4 + 1 + 3 + 1 + 1
    assert len(runs.table) == len(table) == len(job_dirs)
    assert set(table) == {str(p.resolve()) for p in job_dirs}

    finished = [p for p in job_dirs if (p / "metrics.json").exists() and p.name != "missing_data"]
    assert len(finished) == 8
    for run_dir in finished:
        row = table[str(run_dir.resolve())]
        assert row["status"] == "ok" and row["error"] == ""
        metrics = flatten(json.loads((run_dir / "metrics.json").read_text()))
        assert "spike_rate/mean" in metrics and "spike_rate/layer_0" in metrics
        for key, value in metrics.items():
            key = "metric/status" if key == "status" else key
            value = "ok" if key == "metric/status" else value
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
        epochs = [json.loads(line)["epoch"] for line in (run_dir / "history.jsonl").read_text().splitlines()]
        assert row["last_epoch"] == str(max(epochs))
        assert float(row["memory_bytes"]) == metrics.get("weight_bytes_packed", metrics["weight_bytes_quant"])

    ok = runs.table[runs.table["status"] == "ok"]
    in_sweep = ok[[Path(d).parent.name == "sweep" for d in ok["run_dir"]]]
    grid = set(zip(in_sweep["recipe"], in_sweep["mode"]))
    assert grid == {("fp32", "ptq"), ("fp32", "qat"), ("w8a8", "ptq"), ("w8a8", "qat")}
    assert isinstance(runs.table, pd.DataFrame) and str(runs.table["seed"].dtype) == "Int64"


@pytest.mark.slow
def test_failed_incomplete_and_running_runs(runs_root, tmp_path):
    killed = tmp_path / "runs" / "killed"  # a job killed before it wrote metrics
    shutil.copytree(runs_root / "sweep" / "0", killed, ignore=shutil.ignore_patterns("checkpoints"))
    (killed / "metrics.json").unlink()
    running = tmp_path / "runs" / "running"  # a job still going: its process is alive (this one)
    shutil.copytree(runs_root / "sweep" / "1", running, ignore=shutil.ignore_patterns("checkpoints"))
    (running / "metrics.json").unlink()
    (running / "status.json").write_text(json.dumps({"status": "running", "pid": os.getpid()}))
    gone = tmp_path / "runs" / "gone"  # marked running, process gone long ago
    shutil.copytree(running, gone)
    (gone / "status.json").write_text(json.dumps({"status": "running", "pid": 2**22 + 17}))
    old = time.time() - 3600
    for f in gone.iterdir():
        os.utime(f, (old, old))
    requeued = tmp_path / "runs" / "requeued"  # stopped and saved on Slurm, waiting to run again
    shutil.copytree(running, requeued)
    (requeued / "status.json").write_text(json.dumps(
        {"status": "requeued", "reason": "stopped by SIGTERM after fp32 epoch 2; preempted: requeued job 7"}))

    runs = report.build_report([runs_root, tmp_path / "runs"], tmp_path / "out")
    by_dir = {Path(r["run_dir"]).name: r for r in runs.table.to_dict("records")}
    assert by_dir["handmade_failed"]["status"] == "failed"
    assert by_dir["handmade_failed"]["error"] == HANDMADE_ERROR
    assert by_dir["killed"]["status"] == "incomplete"
    assert "metrics.json is missing" in by_dir["killed"]["error"]
    assert by_dir["killed"]["recipe"] == "fp32"  # the config is still read
    assert by_dir["running"]["status"] == "running" and by_dir["running"]["last_epoch"] == 2
    assert by_dir["gone"]["status"] == "incomplete" and "process is gone" in by_dir["gone"]["error"]
    assert by_dir["requeued"]["status"] == "requeued" and "requeued job 7" in by_dir["requeued"]["error"]
    assert by_dir["missing_data"]["status"] == "failed"
    assert by_dir["missing_data"]["error"].startswith("FileNotFoundError: SHD file not found")

    html = (tmp_path / "out" / "report.html").read_text()
    section = html.split("<h2>Failed, incomplete and running runs</h2>", 1)[1].split("</section>", 1)[0]
    for name in ("handmade_failed", "killed", "missing_data", "running", "gone", "requeued"):
        assert name in section
    assert '<span class="st requeued">requeued</span>' in section
    assert "ConfigError: mode.name=&#39;bogus&#39;" in section and "&lt;&amp;&gt;" in section
    assert HANDMADE_ERROR not in html  # never unescaped


def _without_plotly(html: str) -> str:
    start = html.index("/**\n* plotly.js v")
    return html[:start] + html[html.index("</script>", start):]


@pytest.mark.slow
def test_page_is_offline_and_has_every_view(runs_root, tmp_path):
    report.build_report([runs_root / "sweep", runs_root / "seed1", runs_root / "search"], tmp_path)
    html = (tmp_path / "report.html").read_text()
    assert html.count("/**\n* plotly.js v") == 1  # embedded once
    for name in ("pareto", "energy", "parallel", "importance", "drop", "curves", "seeds",
                 "optuna-1-history", "optuna-1-params"):
        assert f'data-fig="fig-{name}"' in html, name
    for title in ("Accuracy vs. memory", "Accuracy vs. energy", "Parallel coordinates", "Parameter importance",
                  "Optuna search: search (study lr)", "Accuracy drop per recipe and mode", "Training curves",
                  "Mean ± sd over seeds", "All runs"):
        assert f"<h2>{title}</h2>" in html, title
    rest = _without_plotly(html)
    assert not re.search(r"<script[^>]*\bsrc\s*=", rest, re.I)
    assert not re.search(r"<link\b", rest, re.I)
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", rest, re.I)
    assert not re.search(r"""url\(\s*["']?\s*(https?:)?//|@import""", rest, re.I)
    assert "http://" not in rest and "https://" not in rest
    assert "data-refresh" not in html  # only while watching


@pytest.mark.slow
def test_figures_name_runs_and_only_recipes_that_finished(runs_root):
    runs = report.collect([runs_root])
    views = page.build_figures(runs)
    figs = views["figures"]
    names = {t.name for t in figs["pareto"].data if t.meta and t.meta.get("role") == "points"}
    assert names == {"fp32", "w8a8"}  # ternary only failed: in no legend
    assert "ternary" in views["style"].recipes  # but the filter bar still offers it
    for fig in (figs["pareto"], figs["energy"]):
        for trace in fig.data:
            if trace.meta and trace.meta.get("role") == "points":
                for (run_id, *_), text in zip(trace.customdata, trace.text):
                    row = runs.table.loc[run_id]
                    assert row["status"] == "ok" and row["run"] in text and row["overrides"] in text
    dims = [d.label for d in figs["parallel"].data[0].dimensions]
    assert dims[0] == "run" and dims[-1].startswith("quant_accuracy")
    assert set(views["swept"]) <= set(dims)
    heat = figs["drop"].data[0]
    assert heat.colorbar.title.side == "right"  # never on top of the figure's title
    fp32_row = [r["recipe"] for r in heat.meta["rows"]].index("fp32")
    assert all(v is None or v != v for v in heat.z[fp32_row])  # fp32 vs fp32 is no drop (blank)
    assert all(t.startswith("n/a: fp32 vs fp32") for t in heat.text[fp32_row])


@pytest.mark.slow
def test_single_run_dir(runs_root, tmp_path):
    runs = report.build_report([runs_root / "sweep" / "2"], tmp_path)
    assert len(runs.table) == 1 and runs.table.loc[0, "status"] == "ok"
    assert (tmp_path / "results.csv").exists() and (tmp_path / "report.html").exists()
    html = (tmp_path / "report.html").read_text()
    assert 'data-fig="fig-pareto"' in html and "Nothing was swept" in html


def test_recipe_order_is_numeric():
    names = ["w8a8", "ternary", "w2a8", "fp32", "w10a8", "w4a8", "custom", "weights_only", "w3a8"]
    assert sorted(names, key=analysis.recipe_order) == [
        "fp32", "weights_only", "w10a8", "w8a8", "w4a8", "w3a8", "w2a8", "ternary", "custom"]


def test_pareto_front():
    pts = [(100.0, 0.5), (100.0, 0.7), (50.0, 0.6), (200.0, 0.7), (400.0, 0.9), (25.0, 0.2)]
    assert report.pareto_front(pts) == [5, 2, 1, 4]


@pytest.mark.slow
def test_seed_spread_groups_repeated_configs(runs_root):
    table = report.collect([runs_root / "sweep", runs_root / "seed1"]).table
    stats = report.seed_stats(table)
    assert [(s.recipe, s.mode, s.n) for s in stats.itertuples()] == [("w8a8", "ptq", 2)]
    ok = table[(table["status"] == "ok") & (table["recipe"] == "w8a8") & (table["mode"] == "ptq")]
    accs = sorted(ok["quant_accuracy"])
    assert stats.loc[0, "mean"] == pytest.approx(sum(accs) / 2)
    assert stats.loc[0, "std"] == pytest.approx(abs(accs[0] - accs[1]) / 2 ** 0.5)
    assert stats.loc[0, "seeds"] == [0, 1]


@pytest.mark.slow
def test_drop_grid_and_importance(runs_root):
    runs = report.collect([runs_root / "sweep"])
    grid = analysis.drop_grid(runs.table).set_index(["recipe", "mode"])
    assert grid.loc[("fp32", "qat"), "note"] == "n/a: fp32 vs fp32" and pd.isna(grid.loc[("fp32", "qat"), "drop"])
    w8 = runs.table[(runs.table["recipe"] == "w8a8") & (runs.table["mode"] == "qat")]
    assert grid.loc[("w8a8", "qat"), "drop"] == pytest.approx(100 * w8["accuracy_drop"].mean())
    imp = analysis.importance(runs.table, swept_keys(runs.table), runs.sweepers["sweep"])
    assert set(imp["values"]) <= {"quant", "mode"} and imp["values"], imp
    assert sum(imp["values"].values()) == pytest.approx(1.0)
    assert imp["evaluator"].endswith("ImportanceEvaluator") and "run table" in imp["basis"]


@pytest.mark.slow
def test_optuna_search_views(runs_root, tmp_path):
    runs = report.build_report([runs_root / "search"], tmp_path)
    assert runs.sweepers["search"]["kind"] == "optuna" and runs.sweepers["search"]["study_name"] == "lr"
    assert swept_keys(runs.table) == ["optim.lr"]
    assert sorted(runs.table["trial"]) == [0, 1, 2]
    views = page.build_figures(runs)
    (search,) = views["optuna"]
    best = [t for t in search["history"].data if t.meta and t.meta.get("role") == "best"][0]
    acc = 100 * runs.table.sort_values("trial")["quant_accuracy"]
    assert list(best.y) == pytest.approx(acc.cummax().tolist())
    assert search["params"].layout.xaxis.type == "log"  # tag(log, interval(...)) in the search space
    imp = views["importance"][""]
    assert list(imp["values"]) == ["optim.lr"]
    storage = f"sqlite:///{(runs_root / 'search' / 'optuna.db').resolve()}"
    assert runs.sweepers["search"]["storage"] == storage  # ${hydra.sweep.dir} resolved
    assert imp["basis"].startswith("persistent optuna study 'lr'") and "3 trials" in imp["basis"], imp
    text = report.console_table(runs.table)
    assert "optim.lr" in text.splitlines()[0]
    for lr in runs.table["override/optim.lr"]:
        assert lr in text


@pytest.mark.slow
def test_packed_bytes_preferred(runs_root, tmp_path):
    run = tmp_path / "packed"
    shutil.copytree(runs_root / "sweep" / "3", run, ignore=shutil.ignore_patterns("checkpoints"))
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["weight_bytes_packed"] = 123.0
    (run / "metrics.json").write_text(json.dumps(metrics))
    runs = report.collect([run, runs_root / "sweep"])
    assert runs.table.loc[0, "memory_bytes"] == 123.0
    other = runs.table.loc[1]
    assert other["memory_bytes"] == (other["weight_bytes_packed"] if "weight_bytes_packed" in runs.table
                                     and pd.notna(other["weight_bytes_packed"]) else other["weight_bytes_quant"])
    fig = page.build_figures(runs)["figures"]["pareto"]
    assert "weight_bytes_packed" in fig.layout.xaxis.title.text


@pytest.mark.slow
def test_compare_two_sweeps(runs_root, tmp_path):
    runs = report.build_report([runs_root / "sweep", runs_root / "seed1"], tmp_path, labels=["before", "after"])
    assert runs.sources == ["before", "after"]
    assert runs.table.groupby("source", sort=False).size().to_dict() == {"before": 4, "after": 1}
    views = page.build_figures(runs)
    fronts = [t for t in views["figures"]["pareto"].data if t.meta and t.meta.get("role") == "pareto"]
    assert [f.meta["source"] for f in fronts] == ["before", "after"]
    symbols = {s for t in views["figures"]["pareto"].data if t.meta and t.meta.get("role") == "points"
               for s in t.marker.symbol}
    assert any(s.endswith("-open") for s in symbols) and any(not s.endswith("-open") for s in symbols)
    html = (tmp_path / "report.html").read_text()
    assert 'data-filter="source"' in html
    with pytest.raises(report.ReportError, match="--label"):
        report.collect([runs_root / "sweep"], labels=["a", "b"])


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "snnexp.report", *args], cwd=REPO, env=env(),
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_cli(runs_root, tmp_path):
    out = tmp_path / "cli"
    done = _cli(str(runs_root / "sweep"), str(runs_root / "seed1"), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert f"wrote {out.resolve() / 'results.csv'}" in done.stdout
    assert f"wrote {out.resolve() / 'report.html'}" in done.stdout
    assert re.search(r"sweep/3\s+ok\s+w8a8\s+qat", done.stdout), done.stdout

    done = _cli(str(runs_root / "sweep"), "--label", "a,b")
    assert done.returncode == 2 and "--label" in done.stderr
    missing = tmp_path / "nowhere"
    done = _cli(str(missing))
    assert done.returncode == 2 and str(missing) in done.stderr and "no such directory" in done.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    done = _cli(str(empty))
    assert done.returncode == 2 and str(empty) in done.stderr and "holds no runs" in done.stderr


@pytest.mark.slow
def test_watch_follows_a_running_sweep(tmp_path):
    sweep = tmp_path / "live"
    out = tmp_path / "out"
    watcher = subprocess.Popen(
        [sys.executable, "-m", "snnexp.report", str(sweep), "--out", str(out), "--watch", "--interval", "0.5",
         "--idle", "5", "--timeout", "240"], cwd=REPO, env=env(), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    job = snnexp("-m", "debug=fast", "quant=w8a8", "mode=ptq,qat", f"hydra.sweep.dir={sweep}")
    pages = []
    while watcher.poll() is None and job.poll() is None:
        page_file = out / "report.html"
        if page_file.exists():
            text = page_file.read_text()
            if "data-refresh" in text and 'class="st running"' in text and not pages:
                pages.append(text)
        time.sleep(0.3)
    assert job.wait(timeout=300) == 0, job.stdout.read()[-3000:]
    log = watcher.communicate(timeout=120)[0]
    assert watcher.returncode == 0, log
    assert re.search(r"report rewritten: \d+ runs: .*running", log), log
    assert "report rewritten: 2 runs: 2 ok" in log, log
    assert "nothing changed for 5 s: stopping" in log
    assert pages, "no page showed a running job while watching"
    final = (out / "report.html").read_text()
    assert "data-refresh" not in final and 'class="st running"' not in final
    assert len(_csv_rows(out / "results.csv")) == 2


@pytest.mark.slow
def test_hydra_callback_writes_the_report(tmp_path):
    sweep = tmp_path / "cb"
    job = snnexp("-m", "debug=fast", "quant=w8a8", "mode=ptq", f"hydra.sweep.dir={sweep}",
                 "report=true",
                 "hydra.callbacks.report.interval=1")
    out = job.communicate(timeout=300)[0]
    assert job.returncode == 0, out[-3000:]
    assert f"live report: {sweep.resolve() / 'report.html'}" in out
    page_text = (sweep / "report.html").read_text()
    assert "data-refresh" not in page_text and 'data-fig="fig-pareto"' in page_text
    rows = _csv_rows(sweep / "results.csv")
    assert [r["status"] for r in rows.values()] == ["ok"]


def test_parallel_axes_tick_a_few_integers_at_their_own_values():
    """A seed (or width) axis reads 0, 1, 2, not 0, 0.5, 1, ...; real numbers and wide ranges keep their axes."""
    from snnexp.report.figures import _axis_values

    seeds = _axis_values(pd.Series([0, 2, 1, 2]))
    assert seeds == {"values": [0, 2, 1, 2], "tickvals": [0, 1, 2], "ticktext": ["0", "1", "2"]}
    assert _axis_values(pd.Series([0.001, 0.003, 0.002])) == {"values": [0.001, 0.003, 0.002]}
    wide = _axis_values(pd.Series([1e-4, 1e-2]))
    assert wide["ticktext"] == ["0.0001", "0.01"] and wide["values"] == [-4.0, -2.0]
    assert _axis_values(pd.Series(list(range(20))))["values"] == list(range(20))
    assert "tickvals" not in _axis_values(pd.Series(list(range(20))))
