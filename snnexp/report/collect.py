"""Run directories -> one pandas DataFrame (the run table) and a long history frame.

A Hydra multirun leaves one directory per job with its ``.hydra/overrides.yaml``,
resolved ``config.yaml``, ``metrics.json``, ``history.jsonl`` and
``status.json``. This module reads them into flat columns that every view and
``results.csv`` share: ``override/<key>`` per override, ``param/<key>`` (the value
every run used for each key some run overrode: its override, else its
config's value or group choice), the config fields of
:data:`CONFIG_COLUMNS`, every metric flattened (``spike_rate/mean``), the
status and its error, and ``last_epoch`` for runs still going. Nothing here
draws or formats HTML.

Status: ``status.json`` says ``running``, ``ok``, ``failed`` or ``preempted``. A
run marked ``running`` whose process is gone (and whose files have not changed
for :data:`STALE_S`) is ``incomplete``; so is a run with neither file.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
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
                  "data": "data.name", "objective": "objective"}
#: Metrics every view reads: empty columns when no run has them yet (all still running, say).
EXPECTED_METRICS = ("quant_accuracy", "fp32_accuracy", "accuracy_drop", "weight_bytes_quant")
#: Overrides that select a preset rather than a value: never "swept keys".
PRESET_KEYS = frozenset({"debug", "hparams_search", "sweep", "experiment", "hydra/launcher", "hydra/sweeper"})
#: A run marked running whose process is not here and whose files are older than this is incomplete.
STALE_S = 900.0
YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class ReportError(ValueError):
    """A report that cannot be built as asked (a missing directory, no runs)."""


@dataclass
class Runs:
    """Everything the views need.

    Attributes:
        table: one row per run (the columns of ``results.csv``); index 0..n-1.
        history: one row per run, epoch and phase: ``id``, ``epoch``, ``step``,
            ``phase`` (``fp32`` or ``quant``) and that phase's metrics
            (``test_accuracy``, ``train_loss``, ...).
        sweepers: per ``sweep`` (the multirun folder of a run, named from the directory given: ``runs/search``),
            what ran it: ``kind`` (``optuna`` or ``basic``),
            ``direction``, ``study_name``, ``storage`` and ``params`` (the
            search space as Hydra wrote it).
        sources: the ``--label`` labels in the order given (``[""]`` when not comparing).
    """

    table: pd.DataFrame
    history: pd.DataFrame
    sweepers: dict[str, dict[str, Any]] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)


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
        return said, str(status.get("error") or (metrics or {}).get("error") or "")
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


def _display_names(run_dirs: Sequence[Path]) -> list[str]:
    """Short unique names: each run's path from just above the runs' common folder."""
    resolved = [p.resolve() for p in run_dirs]
    if len(resolved) == 1:
        return [f"{resolved[0].parent.name}/{resolved[0].name}"]
    base = Path(os.path.commonpath([str(p) for p in resolved])).parent
    return [str(p.relative_to(base)) for p in resolved]


def _sweeper_info(sweeper: Mapping | None) -> dict[str, Any]:
    target = str((sweeper or {}).get("_target_", ""))
    kind = "optuna" if "optuna" in target.lower() else "basic"
    info = {"kind": kind, "params": dict((sweeper or {}).get("params") or {})}
    if kind == "optuna":
        info.update(direction=str(sweeper.get("direction", "maximize")), study_name=sweeper.get("study_name"),
                    storage=sweeper.get("storage"))
    return info


def _tidy(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """The table of ``rows``: integer columns stay integers with gaps (``Int64``); ``config`` names what varies."""
    table = pd.DataFrame(rows)
    for col in EXPECTED_METRICS:
        if col not in table:
            table[col] = float("nan")
    for col in table.columns:
        values = [r[col] for r in rows if r.get(col) is not None]
        if values and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            table[col] = table[col].astype("Int64")
    keys = [set(str(k).split()) for k in table["config_key"]]
    common = set.intersection(*keys) if keys else set()
    table["config"] = [
        " ".join([f"{r} / {m}", *(o for o in str(k).split() if o not in common
                                  and override_key(o) not in ("quant", "mode"))])
        for r, m, k in zip(table["recipe"].fillna("?"), table["mode"].fillna("?"), table["config_key"])]
    mem = table.get("weight_bytes_packed")
    quant = table.get("weight_bytes_quant", pd.Series(float("nan"), index=table.index))
    table["memory_bytes"] = quant if mem is None else pd.to_numeric(mem, errors="coerce").fillna(quant)
    return table


def collect(dirs: Iterable[str | Path], labels: Sequence[str] | None = None) -> Runs:
    """Find and read every run under ``dirs``.

    Args:
        dirs: run directories, multirun directories or their parents.
        labels: one label per directory (the ``source`` column) to compare sweeps; default: no
            comparison, every run's source is "".

    Returns:
        The run table, the history and the sweepers, each directory read once.

    Raises:
        ReportError: no directory given, one does not exist or holds no runs, or labels do not match.
    """
    dirs = [Path(d) for d in dirs]
    if not dirs:
        raise ReportError("no directories given")
    if labels is not None and len(labels) != len(dirs):
        raise ReportError(f"--label names {len(labels)} sources for {len(dirs)} directories: give one per DIR")
    names = [d.resolve().name or str(d) for d in dirs]
    if len(set(names)) < len(names):
        names = [str(d) for d in dirs]
    sources = [str(s) for s in labels] if labels is not None else [""] * len(dirs)
    found: list[tuple[Path, str, str]] = []
    seen: set[Path] = set()
    for d, sweep, label in zip(dirs, names, sources):
        if not d.exists():
            raise ReportError(f"{d}: no such directory")
        if not d.is_dir():
            raise ReportError(f"{d}: not a directory")
        runs = find_runs(d)
        if not runs:
            raise ReportError(f"{d}: holds no runs (no folder with metrics.json, status.json, config.yaml "
                              "or .hydra/)")
        for p in runs:  # a run's sweep: the multirun folder holding it, named from the directory given
            inner = p.parent.relative_to(d) if p != d else Path(".")
            found += [] if p.resolve() in seen else [(p, label, sweep if str(inner) == "." else f"{sweep}/{inner}")]
        seen.update(p.resolve() for p in runs)
    rows, hist, sweepers, used = [], [], {}, []
    for i, ((path, label, sweep), name) in enumerate(zip(found, _display_names([p for p, _, _ in found]))):
        row, history, sweeper, lookup = read_run(path, name, label, sweep)
        rows.append(row)
        used.append(lookup)
        if sweeper is not None:
            sweepers.setdefault(sweep, _sweeper_info(sweeper))
        for h in history:
            phases = {k.split("/", 1)[0] for k in h if "/" in k}
            for phase in sorted(phases):
                hist.append({"id": i, "epoch": h.get("epoch", h.get("step")), "step": h.get("step"), "phase": phase,
                             **{k.split("/", 1)[1]: v for k, v in h.items() if k.startswith(phase + "/")}})
    for _, _, sweep in found:
        sweepers.setdefault(sweep, _sweeper_info(None))
    keys = sorted({c.removeprefix("override/") for r in rows for c in r if c.startswith("override/")} - PRESET_KEYS,
                  key=natural_key)
    for row, lookup in zip(rows, used):  # param/<key>: what each run used for every key some run overrode
        for key in keys:
            row[f"param/{key}"] = row.get(f"override/{key}") or lookup(key)
    table = _tidy(rows)
    overrides = sorted((c for c in table.columns if c.startswith("override/")), key=natural_key)
    head = [*ID_COLUMNS, *overrides, *(f"param/{k}" for k in keys), *CONFIG_COLUMNS, "last_epoch"]
    table = table[head + [c for c in table.columns if c not in head]]
    history = pd.DataFrame(hist, columns=None if hist else ["id", "epoch", "step", "phase", "test_accuracy"])
    return Runs(table=table, history=history, sweepers=sweepers, sources=list(dict.fromkeys(sources)))


def swept_keys(table: pd.DataFrame) -> list[str]:
    """The overridden keys whose value (``param/<key>``) differs between runs (presets such as ``debug`` left out)."""
    keys = []
    for col in table.columns:
        if col.startswith("param/") and table[col].fillna("<unset>").nunique() > 1:
            keys.append(col.removeprefix("param/"))
    return keys


def write_csv(table: pd.DataFrame, path: Path) -> None:
    """Write the run table as CSV (floats at full precision, missing values as empty cells)."""
    table.drop(columns=["config_key"], errors="ignore").to_csv(path, index=False)
