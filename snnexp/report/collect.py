"""Run directories -> one pandas DataFrame (the run table) and a long history frame.

This module finds the runs under the directories given and reads each with
:mod:`.jobdir` into flat columns that every view and ``results.csv`` share:
``override/<key>`` per override, ``param/<key>`` (the value every run used for
each key some run overrode: its override, else its config's value or group
choice), the config fields of :data:`~.jobdir.CONFIG_COLUMNS`, every metric
flattened (``spike_rate/mean``), the status and its error, and ``last_epoch``
for runs still going. Nothing here draws or formats HTML.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from snnexp.report.jobdir import CONFIG_COLUMNS, ID_COLUMNS, find_runs, natural_key, override_key, read_run

#: Metrics every view reads: empty columns when no run has them yet (all still running, say).
EXPECTED_METRICS = ("quant_accuracy", "fp32_accuracy", "accuracy_drop", "weight_bytes_quant")
#: Overrides that select a preset rather than a value: never "swept keys".
PRESET_KEYS = frozenset({"debug", "hparams_search", "sweep", "experiment", "hydra/launcher", "hydra/sweeper"})


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


def _display_names(run_dirs: Sequence[Path]) -> list[str]:
    """Short unique names: each run's path from just above the runs' common folder."""
    resolved = [p.resolve() for p in run_dirs]
    if len(resolved) == 1:
        return [f"{resolved[0].parent.name}/{resolved[0].name}"]
    base = Path(os.path.commonpath([str(p) for p in resolved])).parent
    return [str(p.relative_to(base)) for p in resolved]


def _sweeper_info(sweeper: Mapping | None, folder: Path | None = None) -> dict[str, Any]:
    """What ran a sweep; an optuna storage written as ``sqlite:///${hydra.sweep.dir}/x.db`` is resolved.

    Hydra keeps ``hydra.yaml`` unresolved: ``${hydra.sweep.dir}`` is the job's
    multirun folder, and a storage still holding an interpolation falls back to
    the one SQLite file in that folder, if there is exactly one.
    """
    target = str((sweeper or {}).get("_target_", ""))
    kind = "optuna" if "optuna" in target.lower() else "basic"
    info = {"kind": kind, "params": dict((sweeper or {}).get("params") or {})}
    if kind == "optuna":
        storage = sweeper.get("storage")
        if storage and folder is not None and "${" in str(storage):
            storage = str(storage).replace("${hydra.sweep.dir}", str(folder.resolve()))
            dbs = list(folder.glob("*.db"))
            if "${" in storage:
                storage = f"sqlite:///{dbs[0].resolve()}" if len(dbs) == 1 else None
        info.update(direction=str(sweeper.get("direction", "maximize")), study_name=sweeper.get("study_name"),
                    storage=storage)
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
            sweepers.setdefault(sweep, _sweeper_info(sweeper, path.parent))
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
