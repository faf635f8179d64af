"""Numbers derived from the run table: Pareto front, seed spread, drop grid, parameter importance.

Kept apart from the figures so that each can be tested on its own and the
figures only draw. Parameter importance uses optuna's own evaluators (fANOVA,
falling back to mean decrease in impurity): on the persistent study when a
search recorded one, otherwise on an in-memory study built from the run table
with :func:`optuna.trial.create_trial`, so a grid sweep gets the same view.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

#: Display order of recipes: fp32, weights_only, then wNaM by bits (high first), ternary, the rest.
_RECIPE_RE = re.compile(r"^w(\d+)a(\d+)$")


def recipe_order(name: Any) -> tuple:
    """Sort key of a recipe name: ``fp32`` < ``weights_only`` < ``w8a8`` < ``w4a8`` < ``w2a8`` < ``ternary``."""
    name = str(name)
    m = _RECIPE_RE.match(name)
    if m:
        return (2, -int(m[1]), -int(m[2]), "")
    fixed = {"fp32": 0, "weights_only": 1, "ternary": 3}
    return (fixed.get(name, 4), 0, 0, name)


MODE_ORDER = ("qat", "ptq", "srq", "qt")


def mode_order(name: Any) -> tuple:
    """Sort key of a mode: qat, ptq, srq, qt, then others alphabetically."""
    return (MODE_ORDER.index(name), "") if name in MODE_ORDER else (len(MODE_ORDER), str(name))


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both axes (fewer bytes, more accuracy), by bytes."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def ok_runs(table: pd.DataFrame, column: str = "quant_accuracy") -> pd.DataFrame:
    """The finished runs that report ``column``."""
    if column not in table:
        return table.iloc[0:0]
    return table[(table["status"] == "ok") & table[column].notna()]


def seed_stats(table: pd.DataFrame, column: str = "quant_accuracy") -> pd.DataFrame:
    """Mean and sample standard deviation of ``column`` per configuration run more than once.

    Runs share a configuration when their overrides other than ``seed`` are equal
    (and they come from the same source).

    Returns:
        One row per repeated configuration: ``source``, ``config``, ``recipe``,
        ``mode``, ``n``, ``seeds``, ``mean``, ``std``, ``min``, ``max`` and
        ``drop_mean``; best mean first.
    """
    runs = ok_runs(table, column)
    cols = ["source", "config", "recipe", "mode", "n", "seeds", "mean", "std", "min", "max", "drop_mean"]
    if runs.empty:
        return pd.DataFrame(columns=cols)
    runs = runs.assign(_value=pd.to_numeric(runs[column]), _drop=pd.to_numeric(runs.get("accuracy_drop")))
    stats = runs.groupby(["source", "config_key"], sort=False).agg(
        config=("config", "first"), recipe=("recipe", "first"), mode=("mode", "first"), n=("_value", "size"),
        seeds=("seed", lambda s: sorted(s.dropna().tolist())), mean=("_value", "mean"), std=("_value", "std"),
        min=("_value", "min"), max=("_value", "max"), drop_mean=("_drop", "mean"))
    stats = stats[stats["n"] > 1].reset_index().sort_values("mean", ascending=False, kind="stable")
    return stats[cols].reset_index(drop=True)


def drop_grid(table: pd.DataFrame) -> pd.DataFrame:
    """Mean accuracy drop (fp32 phase minus quantized network, percentage points) per source, recipe and mode.

    Returns:
        One row per (source, recipe, mode) that has a finished run: ``drop``
        (NaN when not a drop), ``n`` and ``note``. The fp32 recipe compared
        with its own fp32 phase is no drop (under qat it only trains more
        epochs); qt has no fp32 phase.
    """
    runs = ok_runs(table, "quant_accuracy")
    if runs.empty or "recipe" not in runs:
        return pd.DataFrame(columns=["source", "recipe", "mode", "drop", "n", "note"])
    drop = pd.to_numeric(runs["accuracy_drop"], errors="coerce") if "accuracy_drop" in runs else np.nan
    runs = runs.assign(_drop=100.0 * drop)
    grid = runs.groupby(["source", "recipe", "mode"], sort=False).agg(drop=("_drop", "mean"), n=("_drop", "size"))
    grid = grid.reset_index()
    fp32 = grid["recipe"] == "fp32"
    grid.loc[fp32, "drop"] = np.nan
    grid["note"] = np.where(fp32, "n/a: fp32 vs fp32", np.where(grid["drop"].isna(), "n/a: no fp32 phase", ""))
    return grid


def _number(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _distribution(values: Sequence[str], spec: str | None) -> tuple[Any, Any] | None:
    """An optuna distribution for the values one key took, and a converter; None when it never varied."""
    from optuna import distributions as d

    nums = [_number(v) for v in values]
    if len(set(values)) < 2:
        return None
    if all(n is not None for n in nums):
        lo, hi = min(nums), max(nums)
        log = "log" in str(spec or "") or (lo > 0 and hi / lo >= 100)
        if all(float(n).is_integer() for n in nums) and "." not in "".join(values):
            kind = (d.IntLogUniformDistribution if log else d.IntUniformDistribution) \
                if hasattr(d, "IntUniformDistribution") else None
            dist = kind(int(lo), int(hi)) if kind else d.IntDistribution(int(lo), int(hi), log=log)
            return dist, lambda v: int(float(v))
        if hasattr(d, "UniformDistribution"):
            dist = d.LogUniformDistribution(lo, hi) if log else d.UniformDistribution(lo, hi)
        else:
            dist = d.FloatDistribution(lo, hi, log=log)
        return dist, float
    return d.CategoricalDistribution(tuple(sorted(set(values)))), str


def _evaluate(study: Any) -> tuple[dict[str, float], str]:
    import optuna

    errors = []
    for make in (lambda: optuna.importance.FanovaImportanceEvaluator(seed=0),
                 lambda: optuna.importance.MeanDecreaseImpurityImportanceEvaluator(seed=0)):
        evaluator = make()
        try:
            values = optuna.importance.get_param_importances(study, evaluator=evaluator)
            return {k: float(v) for k, v in values.items()}, type(evaluator).__name__
        except Exception as e:  # noqa: BLE001 - any evaluator failure: try the next, then report it
            errors.append(f"{type(evaluator).__name__}: {type(e).__name__}: {e}")
    raise RuntimeError("; ".join(errors))


def study_from_table(runs: pd.DataFrame, keys: Sequence[str], objective: str, direction: str,
                     specs: Mapping[str, Any] | None = None) -> Any:
    """An in-memory optuna study holding one complete trial per finished run.

    Args:
        runs: finished runs (rows of the run table) with ``param/<key>`` and ``objective`` columns.
        keys: the swept override keys to use as parameters.
        objective: the metric column to use as the trial value.
        direction: ``maximize`` or ``minimize``.
        specs: the search space as Hydra wrote it (``tag(log, ...)`` marks a log scale).

    Returns:
        The study, or None when no key took two values.
    """
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    values = {k: runs[f"param/{k}"].fillna("<unset>").astype(str).tolist() for k in keys}
    dists = {k: _distribution(v, (specs or {}).get(k)) for k, v in values.items()}
    dists = {k: v for k, v in dists.items() if v is not None}
    if not dists:
        return None
    study = optuna.create_study(direction=direction)
    for i, value in enumerate(pd.to_numeric(runs[objective])):
        params = {k: conv(values[k][i]) for k, (_, conv) in dists.items()}
        study.add_trial(optuna.trial.create_trial(params=params, distributions={k: d for k, (d, _) in dists.items()},
                                                  value=float(value)))
    return study


def importance(table: pd.DataFrame, keys: Sequence[str], sweeper: Mapping[str, Any]) -> dict[str, Any]:
    """Parameter importance of the swept keys for the objective.

    Args:
        table: the run table of one source.
        keys: its swept keys.
        sweeper: its sweeper info (:func:`snnexp.report.collect.collect`).

    Returns:
        ``values`` (key -> importance, summing to 1, largest first; empty when
        not computable), ``evaluator``, ``basis`` (what it was computed on) and
        ``note`` (why it is empty or what fell back).
    """
    objective = str(table["objective"].dropna().mode().iat[0]) if table["objective"].notna().any() \
        else "quant_accuracy"
    out: dict[str, Any] = {"values": {}, "evaluator": "", "basis": "", "note": "", "objective": objective}
    notes = []
    storage, name = sweeper.get("storage"), sweeper.get("study_name")
    if sweeper.get("kind") == "optuna" and storage:
        try:
            import optuna

            study = optuna.load_study(study_name=name, storage=storage)
            out["values"], out["evaluator"] = _evaluate(study)
            out["basis"] = f"persistent optuna study {name!r} ({storage}), {len(study.trials)} trials"
            return out
        except Exception as e:  # noqa: BLE001 - a study that cannot be opened: use the table
            notes.append(f"persistent study {name!r} at {storage} could not be read ({type(e).__name__}: {e})")
    runs = ok_runs(table, objective).reset_index(drop=True)
    if len(runs) < 2 or not keys:
        out["note"] = "; ".join([*notes, f"needs a swept key and two finished runs ({len(runs)} finished)"])
        return out
    direction = sweeper.get("direction", "maximize")
    try:
        study = study_from_table(runs, keys, objective, direction, sweeper.get("params"))
        if study is None:
            out["note"] = "; ".join([*notes, "no swept key took two values among the finished runs"])
            return out
        out["values"], out["evaluator"] = _evaluate(study)
    except Exception as e:  # noqa: BLE001 - say why on the page, never fail the report
        out["note"] = "; ".join([*notes, f"importance failed: {type(e).__name__}: {e}"])
        return out
    out["basis"] = f"run table: an in-memory optuna study of {len(runs)} finished runs"
    if len(out["values"]) == 1:
        notes.append("one swept key: its importance is 1 by definition")
    out["note"] = "; ".join(notes)
    return out
