"""The report page: every figure and table of :mod:`.figures`, rendered by a jinja2 template.

The page is one offline HTML file: plotly.js (the copy bundled with the
``plotly`` package), the stylesheet and the script (``static/``) are embedded
once, the figures as JSON. Nothing is fetched when it is viewed. The markup
lives in ``templates/report.html.j2``; this module only prepares the values.
"""

from __future__ import annotations

import json
import math
from datetime import datetime
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import pandas as pd
import plotly.io
import plotly.offline

from snnexp.report import analysis, figures, figures_agg
from snnexp.report.collect import Runs, swept_keys
from snnexp.report.style import Style

#: Columns shown first and last in the page's table (every column is in results.csv).
FIRST_COLUMNS = ("run", "source", "status", "recipe", "mode", "seed", "last_epoch", "quant_accuracy",
                 "fp32_accuracy", "accuracy_drop", "memory_bytes", "weight_bytes_packed", "weight_bytes_quant",
                 "weight_bytes_fp32", "bits_per_weight", "spike_rate/mean", "synaptic_ops_per_sample")
LAST_COLUMNS = ("config", "overrides", "error", "run_dir")
HIDDEN_COLUMNS = ("config_key",)


@cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("snnexp.report", "templates"),
                             autoescape=jinja2.select_autoescape(["html", "j2"]), trim_blocks=True,
                             lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    env.filters["cell"] = cell_text
    env.filters["sortkey"] = sort_value
    return env


def _static(name: str) -> str:
    return (resources.files("snnexp.report") / "static" / name).read_text(encoding="utf-8")


def _missing(value: Any) -> bool:
    return value is None or (not isinstance(value, str | list) and bool(pd.isna(value)))


def cell_text(value: Any, column: str) -> str:
    """A value as the table shows it: accuracies in %, bytes with separators, floats to 4 digits."""
    if _missing(value) or value == "":
        return "–"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        if "accuracy" in column:
            return f"{100 * value:.2f} %"
        if column.startswith("weight_bytes") or column == "memory_bytes":
            return f"{value:,.0f}"
        return f"{value:.4g}"
    return str(value)


def sort_value(value: Any) -> str:
    """What the table sorts a cell by: the number itself, or the text; empty when missing."""
    if _missing(value):
        return ""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return repr(float(value)) if math.isfinite(float(value)) else ""
    return str(value)


def table_columns(table: pd.DataFrame) -> list[str]:
    """The table's columns for reading: names and key metrics first, paths last."""
    cols = [c for c in table.columns if c not in HIDDEN_COLUMNS and table[c].notna().any() or c in FIRST_COLUMNS]
    head = [c for c in FIRST_COLUMNS if c in cols and (c != "source" or table["source"].ne("").any())]
    tail = [c for c in LAST_COLUMNS if c in cols]
    return head + [c for c in cols if c not in head and c not in tail and c not in ("source",)] + tail


def facet(value: Any) -> str:
    """A value as the filter bar names it ("–" when missing, e.g. the recipe of a run that wrote no config)."""
    return "–" if _missing(value) else str(value)


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as dicts of Python values (pandas' missing values as None)."""
    return [{k: (None if _missing(v) else v) for k, v in row.items()} for row in frame.to_dict("records")]


def _figure_json(fig: Any) -> str | None:
    """A figure as JSON that is safe inside a ``<script>`` element."""
    if fig is None:
        return None
    return plotly.io.to_json(fig, validate=False).replace("</", "<\\/")


def build_figures(runs: Runs) -> dict[str, Any]:
    """Every view of the report, by name: plotly figures (None where the runs give nothing) and tables.

    Returns:
        ``figures`` (name -> Figure or None), ``optuna`` (one entry per optuna
        search: its name and figures), ``importance`` (per source: the
        evaluator result), ``seed_stats`` (a DataFrame), ``facets`` (id ->
        recipe, mode, status, source: what the filter bar filters by) and ``swept``.
    """
    table = runs.table
    style = Style(table, runs.sources)
    ok = table[table["status"] == "ok"]
    swept = swept_keys(ok) if len(ok) > 1 else swept_keys(table)
    stats = analysis.seed_stats(table)
    imps = {}
    for source in runs.sources:
        part = table[table["source"] == source]
        sweep = str(part["sweep"].iloc[0]) if len(part) else ""
        imps[source] = analysis.importance(part, swept_keys(part[part["status"] == "ok"]), runs.sweepers.get(sweep, {}))
    optuna_views = []
    for sweep, info in runs.sweepers.items():
        if info.get("kind") != "optuna":
            continue
        part = table[table["sweep"] == sweep]
        keys = swept_keys(part[part["status"] == "ok"])
        optuna_views.append({
            "name": sweep, "study": info.get("study_name"), "direction": info.get("direction", "maximize"),
            "history": figures.optuna_history(part, style, keys, info.get("direction", "maximize")),
            "params": figures.objective_vs_params(part, style, keys, info.get("params") or {})})
    facets = {str(i): {"recipe": facet(r.recipe), "mode": facet(r.mode), "status": facet(r.status),
                       "source": facet(r.source)} for i, r in zip(table.index, table.itertuples())}
    facets.update({f"g{i}": {"recipe": facet(s.recipe), "mode": facet(s.mode), "status": "ok",
                             "source": facet(s.source)} for i, s in zip(stats.index, stats.itertuples())})
    return {
        "figures": {
            "pareto": figures.pareto(table, style, swept), "energy": figures.energy(table, style, swept),
            "parallel": figures.parallel(table, style, swept), "importance": figures.importance_fig(imps, style),
            "drop": figures_agg.drop_heatmap(table, style),
            "curves": figures_agg.curves(table, runs.history, style, swept),
            "seeds": figures_agg.seeds(table, stats, style, swept)},
        "optuna": optuna_views, "importance": imps, "seed_stats": stats, "facets": facets, "swept": swept,
        "style": style}


def render(runs: Runs, dirs: list[str | Path], *, refresh_s: float | None = None) -> str:
    """Render the report page.

    Args:
        runs: the runs, as :func:`snnexp.report.collect.collect` returns them.
        dirs: the directories it was built from (shown in the header).
        refresh_s: while ``--watch`` runs: reload the open page this often (seconds).

    Returns:
        One self-contained HTML document.
    """
    views = build_figures(runs)
    table = runs.table
    style: Style = views["style"]
    counts = table["status"].value_counts().to_dict()
    ok = analysis.ok_runs(table)
    best = ok.sort_values(["quant_accuracy", "memory_bytes"], ascending=[False, True]).head(1)
    bad = table[table["status"] != "ok"]
    filters = {"recipe": style.recipes + ["–"] * bool(table["recipe"].isna().any()),
               "mode": style.modes + ["–"] * bool(table["mode"].isna().any()),
               "status": sorted(table["status"].unique(), key=lambda s: ["ok", "running"].index(s)
                                if s in ("ok", "running") else 2)}
    if style.compare:
        filters["source"] = style.sources
    cols = table_columns(table)
    stats = views["seed_stats"]
    context = {
        "title": "snnexp sweep report", "dirs": [str(Path(d).resolve()) for d in dirs],
        "generated": datetime.now().strftime("%Y-%m-%d %H:%M:%S"), "refresh_s": refresh_s,
        "counts": counts, "n_runs": len(table), "best": _records(best)[0] if len(best) else None,
        "filters": filters, "swept": views["swept"], "sources": runs.sources if style.compare else [],
        "figs": {k: _figure_json(v) for k, v in views["figures"].items()},
        "optuna": [{**o, "history": _figure_json(o["history"]), "params": _figure_json(o["params"])}
                   for o in views["optuna"]],
        "importance": views["importance"], "columns": cols, "rows": _records(table.assign(id=table.index)),
        "failures": _records(bad.assign(id=bad.index)), "seed_rows": _records(stats),
        "facets_json": json.dumps(views["facets"]).replace("</", "<\\/"),
        "plotly_js": plotly.offline.get_plotlyjs(), "css": _static("report.css"), "js": _static("report.js"),
        "capture_js": _static("capture.js"), "selftest_js": _static("selftest.js"),
    }
    return _environment().get_template("report.html.j2").render(**context)
