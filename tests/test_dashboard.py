"""``python -m snnexp.dashboard wandb``: the dry-run specification names only keys the runs really log.

The runs are the real sweeps of tests/test_report.py (shared through its
``report_runs``). Logged keys are read from what a run writes: the summary is
the flattened ``metrics.json`` (``tracking.flatten``, as ``Tracker.summary``
sends it), the history the ``history.jsonl`` columns (``Tracker.log``), the
config the resolved ``config.yaml`` (as ``wandb.init(config=...)`` gets it).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from snnexp import dashboard
from snnexp.tracking import flatten
from tests.test_report import REPO, env, report_runs


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory) -> Path:
    return report_runs(tmp_path_factory)


def logged_keys(root: Path) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {"summary": set(), "config": set(), "history": set()}
    for metrics in root.rglob("metrics.json"):
        run = metrics.parent
        summary = json.loads(metrics.read_text())
        if summary.get("status") != "ok":
            continue
        out["summary"] |= set(flatten(summary))
        for line in (run / "history.jsonl").read_text().splitlines():
            out["history"] |= set(json.loads(line)) - {"step"}
        config = yaml.safe_load((run / "config.yaml").read_text())
        out["config"] |= {k.replace("/", ".") for k in flatten(config)}
    return out


def _dashboard(*args: str, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "snnexp.dashboard", "wandb", *args], cwd=REPO,
                          env={**env(), **(extra_env or {})}, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
@pytest.mark.parametrize("sweep", ["sweep", "search", None])
def test_dry_run_spec_matches_logged_keys(runs_root, tmp_path, sweep):
    out = tmp_path / "workspace.json"
    source = ["--from", str(runs_root / sweep)] if sweep else []
    done = _dashboard("--project", "snnexp", "--group", "g1", *source, "--dry-run", str(out))
    assert done.returncode == 0, done.stderr
    assert "dry run: nothing sent" in done.stdout
    spec = json.loads(out.read_text())
    keys = spec["keys"]
    assert keys == dashboard.spec_keys(spec["workspace"])  # what the stored workspace really reads
    logged = logged_keys(runs_root / (sweep or "sweep"))
    for section in ("summary", "config", "history"):
        assert keys[section] and set(keys[section]) <= logged[section], (section, keys[section])
    views = [p["viewType"] for s in spec["workspace"]["spec"]["section"]["panelBankConfig"]["sections"]
             for p in s["panels"]]
    assert sorted(set(views)) == ["Bar Chart", "Parallel Coordinates Plot", "Parameter Importance",
                                  "Run History Line Plot", "Scatter Plot"]
    filters = spec["workspace"]["spec"]["section"]["runSets"][0]["filters"]["filters"]
    assert {"key": {"section": "run", "name": "group"}, "op": "=", "value": "g1"}.items() <= filters[0].items()
    if sweep == "search":
        assert "optim.lr" in keys["config"] and "quant.name" in keys["config"]
    if sweep == "sweep":
        assert {"quant.name", "mode.name"} <= set(keys["config"])


@pytest.mark.slow
def test_save_without_a_server_says_so_and_returns(tmp_path):
    start = time.monotonic()
    done = _dashboard("--project", "snnexp", "--group", "g1",
                      extra_env={"WANDB_BASE_URL": "http://127.0.0.1:9", "WANDB_MODE": "online"})
    assert time.monotonic() - start < 60
    assert done.returncode == 1
    assert "http://127.0.0.1:9 is not reachable" in done.stderr and "--dry-run" in done.stderr


def test_workspace_names_the_group_and_defaults():
    ws = dashboard.build_workspace("p", "my-group", swept=dashboard.DEFAULT_SWEPT)
    spec = dashboard.specification(ws)
    assert spec["workspace"]["project"] == "p" and spec["workspace"]["displayName"] == "snnexp sweep my-group"
    assert set(dashboard.DEFAULT_SWEPT) <= set(spec["keys"]["config"])
