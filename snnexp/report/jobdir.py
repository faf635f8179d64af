"""One run directory -> one row of the run table (and its history).

A Hydra job writes ``.hydra/overrides.yaml`` and ``.hydra/hydra.yaml``; snnexp adds
the resolved ``config.yaml``, ``metrics.json``, ``history.jsonl`` and
``status.json``. Status: ``status.json`` says ``running``, ``ok``, ``failed``,
``preempted`` (stopped and saved) or ``requeued`` (stopped, saved, and
waiting for Slurm to run it again; its reason shows as the error). A run
marked ``running`` whose process is gone (and whose files have not changed
for :data:`STALE_S`) is ``incomplete``; so is a run with
neither file. A file that cannot be read makes its run's error say so; it never
stops the report.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from snnexp.tracking import flatten

#: Files or folders whose presence makes a directory a run directory.
RUN_MARKERS = ("metrics.json", "status.json", "config.yaml", ".hydra")
#: Folders that never hold runs.
SKIP_DIRS = frozenset({".hydra", "checkpoints", "wandb", "__pycache__", ".git"})
#: Leading columns of the run table, before overrides, config fields and metrics.
ID_COLUMNS = ("run", "run_dir", "source", "sweep", "status", "error", "config", "overrides")
#: Columns read from the resolved config (``recipe`` and ``mode`` are also metrics).
CONFIG_COLUMNS = {"seed": "seed", "recipe": "quant.name", "mode": "mode.name", "neuron": "neuron.name",
                  "hardware": "hardware.name", "data": "data.name", "objective": "objective"}
#: A run marked running whose process is not here and whose files are older than this is incomplete.
STALE_S = 900.0
YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def natural_key(text: Any) -> list[Any]:
    """Sort key so that ``2`` comes before ``10`` (and ``w2a8`` before ``w10a8``)."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(text))]


def is_run_dir(path: Path) -> bool:
    """Whether ``path`` is one job's directory (not a multirun or a parent)."""
    return path.is_dir() and any((path / m).exists() for m in RUN_MARKERS)


def find_runs(root: Path) -> list[Path]:
    """Run directories under ``root`` (itself when it is one), in natural order."""
    root = Path(root)
    if is_run_dir(root):
        return [root]
    found: list[Path] = []
    for dirpath, dirnames, _ in os.walk(root, followlinks=False):
        here = Path(dirpath)
        if here != root and is_run_dir(here):
            found.append(here)
            dirnames[:] = []
            continue
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS]
    return sorted(found, key=natural_key)


def _load(path: Path, problems: list[str]) -> Any:
    """The parsed JSON or YAML file, None when missing; a parse error goes to ``problems``."""
    if not path.exists():
        return None
    try:
        text = path.read_text()
        return json.loads(text) if path.suffix == ".json" else yaml.load(text, Loader=YAML_LOADER)
    except (OSError, ValueError, yaml.YAMLError) as e:
        problems.append(f"unreadable {path.name} ({type(e).__name__}: {e})")
        return None


def dig(tree: Any, dotted: str) -> Any:
    """``tree["a"]["b"]`` for ``"a.b"``; None when a level is missing."""
    for part in dotted.split("."):
        if not isinstance(tree, Mapping) or part not in tree:
            return None
        tree = tree[part]
    return tree


def override_key(override: str) -> str:
    """``"+quant.bits=4"`` -> ``"quant.bits"``."""
    return override.split("=", 1)[0].lstrip("+~")


def _alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
    except (OSError, TypeError, ValueError):
        return False
    return True


def read_history(path: Path) -> list[dict[str, Any]]:
    """The rows of ``history.jsonl`` (a line cut short by a killed job is skipped)."""
    rows: list[dict[str, Any]] = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict):
                rows.append(entry)
    return rows


def _status(run_dir: Path, status: Mapping, metrics: Any, history: list, problems: list[str]) -> tuple[str, str]:
    """The run's status and its error text."""
    said = str(status.get("status") or (metrics or {}).get("status") or "")
    has_metrics = isinstance(metrics, Mapping) and metrics.get("status", "ok") == "ok"
    if said == "ok" or (not said and has_metrics):
        if has_metrics:
            return "ok", ""
        problems.append("status.json says ok but metrics.json is missing")
        return "incomplete", ""
    if said == "running":
        newest = max((p.stat().st_mtime for p in (run_dir / "status.json", run_dir / "history.jsonl")
                      if p.exists()), default=0.0)
        if _alive(status.get("pid")) or time.time() - newest < STALE_S:
            return "running", ""
        problems.append("status.json says running but its process is gone: killed (rerun to resume)")
        return "incomplete", ""
    if said:
        return said, str(status.get("error") or status.get("reason") or (metrics or {}).get("error") or "")
    problems.append("no metrics.json or status.json: running, killed, or failed before writing them")
    return "incomplete", ""


def read_run(run_dir: Path, name: str, source: str, sweep: str) -> tuple[dict, list[dict], dict | None, Any]:
    """Read one run directory.

    Args:
        run_dir: the job's directory.
        name: the short name shown in the report.
        source: the ``--label`` of the directory it was found under ("" when not comparing).
        sweep: the name of its multirun folder.

    Returns:
        The table row, the history rows, the ``hydra.sweeper`` config (None without ``.hydra/hydra.yaml``)
        and a function giving the value any config key had in the run (a group key: its choice).
    """
    problems: list[str] = []
    row: dict[str, Any] = {"run": name, "run_dir": str(run_dir.resolve()), "source": source, "sweep": sweep}
    overrides = [str(o) for o in (_load(run_dir / ".hydra" / "overrides.yaml", problems) or [])]
    row["overrides"] = " ".join(overrides)
    for o in overrides:
        row[f"override/{override_key(o)}"] = o.split("=", 1)[1] if "=" in o else ""
    cfg = _load(run_dir / "config.yaml", problems) or _load(run_dir / ".hydra" / "config.yaml", problems)
    for column, dotted in CONFIG_COLUMNS.items():
        row[column] = dig(cfg, dotted)
    metrics = _load(run_dir / "metrics.json", problems)
    status = _load(run_dir / "status.json", problems)
    history = read_history(run_dir / "history.jsonl")
    hydra = _load(run_dir / ".hydra" / "hydra.yaml", problems) if (run_dir / ".hydra").is_dir() else None
    row["trial"] = dig(hydra, "hydra.job.num")
    row["status"], error = _status(run_dir, status if isinstance(status, Mapping) else {}, metrics, history,
                                   problems)
    row["error"] = "; ".join([e for e in (error, *problems) if e])
    if isinstance(metrics, Mapping):
        for key, value in flatten(metrics).items():
            column = f"metric/{key}" if key in ID_COLUMNS else key
            row[column] = json.dumps(value) if isinstance(value, list | tuple) else value
    row["last_epoch"] = max((h.get("epoch", h.get("step", 0)) for h in history), default=None)
    row["config_key"] = " ".join(sorted(o for o in overrides if override_key(o) != "seed")) or " ".join(
        f"{c}={row[c]}" for c in ("recipe", "mode", "neuron", "data") if row[c] is not None)
    choices = dig(hydra, "hydra.runtime.choices") or {}

    def used(key: str) -> str | None:  # the value a key had in this run: a group's choice, or the config value
        value = choices.get(key) if key in choices else dig(cfg, key)
        return None if value is None or isinstance(value, Mapping | list) else str(value)

    return row, history, dig(hydra, "hydra.sweeper"), used
