"""Plotly figures of single runs: the trade-offs, the swept keys and the optuna search views.

Every function takes the run table (and what else it needs) and returns a
:class:`plotly.graph_objects.Figure`, or None when the runs hold nothing to
draw. Points carry their run id in ``customdata[0]`` (see :mod:`.style`);
traces whose content the page's script recomputes after filtering say so in
``meta.role`` (``pareto``: the front; ``best``: the best value so far).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from snnexp.report.analysis import ok_runs, pareto_front
from snnexp.report.jobdir import natural_key
from snnexp.report.style import Style, hover, layout


def _dodge(runs: pd.DataFrame, x: pd.Series, style: Style) -> list[float]:
    """Spread runs of equal x (log axis) slightly sideways by recipe and mode, so that none hides another."""
    combos: dict[float, list[tuple]] = {}
    keys = [(style.recipes.index(r), style.modes.index(m), s)
            for r, m, s in zip(runs["recipe"], runs["mode"], runs["source"])]
    for xv, k in zip(x, keys):
        if k not in combos.setdefault(xv, []):
            combos[xv].append(k)
    return [xv * 1.035 ** (sorted(combos[xv]).index(k) - (len(combos[xv]) - 1) / 2) for xv, k in zip(x, keys)]


def _points(fig: go.Figure, runs: pd.DataFrame, x: Sequence[float], y: pd.Series, style: Style,
            swept: Sequence[str], extra: Sequence[Any] | None = None, **where: Any) -> None:
    """One trace of markers per recipe (legend: recipes with a finished run), symbol per mode."""
    for recipe in style.ok_recipes:
        sel = (runs["recipe"] == recipe).to_numpy()
        if not sel.any():
            continue
        part = runs[sel]
        custom = [[int(i), (extra[k] if extra is not None else None)]
                  for k, i in zip([j for j, s in enumerate(sel) if s], part.index)]
        fig.add_trace(go.Scatter(
            x=[v for v, s in zip(x, sel) if s], y=y[sel].tolist(), mode="markers", name=recipe,
            legendgroup=recipe, legendgrouptitle_text="recipe" if recipe == style.ok_recipes[0] else None,
            marker=dict(color=style.color[recipe], size=11, line=dict(color="white", width=0.8),
                        symbol=[style.symbol(m, s) for m, s in zip(part["mode"], part["source"])]),
            text=[hover(r, swept) for _, r in part.iterrows()], customdata=custom,
            hovertemplate="%{text}<extra></extra>", meta={"role": "points", "source": None}), **where)


def pareto(table: pd.DataFrame, style: Style, swept: Sequence[str]) -> go.Figure | None:
    """Quantized accuracy against the deployed weight memory, with the Pareto front per source."""
    runs = ok_runs(table)
    runs = runs[pd.to_numeric(runs["memory_bytes"], errors="coerce") > 0] if "memory_bytes" in runs else runs[:0]
    if runs.empty:
        return None
    packed = "weight_bytes_packed" in runs and runs["weight_bytes_packed"].notna().any()
    x = pd.to_numeric(runs["memory_bytes"]).tolist()
    y = 100 * pd.to_numeric(runs["quant_accuracy"])
    fig = go.Figure()
    drawn = _dodge(runs, pd.Series(x), style)
    _points(fig, runs, drawn, y, style, swept, extra=x)
    for source in style.sources:
        here = (runs["source"] == source).to_numpy()
        pts = [(xv, yv, dx) for xv, yv, dx, h in zip(x, y, drawn, here) if h]
        front = [pts[i] for i in pareto_front([p[:2] for p in pts])]  # on the true bytes, drawn where the points are
        fig.add_trace(go.Scatter(
            x=[p[2] for p in front], y=[p[1] for p in front], mode="lines+markers", line_shape="hv",
            name="Pareto front" + (f" ({source})" if style.compare else ""), hoverinfo="skip",
            legendgroup="pareto", legendgrouptitle_text="front" if source == style.sources[0] else None,
            line=dict(color="black", dash=style.dash(source), width=1.4),
            marker=dict(size=17, color="rgba(0,0,0,0)", line=dict(color="black", width=1.4)),
            meta={"role": "pareto", "source": source}))
    style.legend(fig)
    what = "packed weight memory (weight_bytes_packed)" if packed else "weight memory (weight_bytes_quant)"
    layout(fig, "Accuracy vs. memory, with the Pareto front", height=520,
           xaxis=dict(type="log", title=f"{what}, bytes, log scale",
                      range=[math.log10(min(drawn) / 1.4), math.log10(max(drawn) * 1.4)]),
           yaxis=dict(title="quantized test accuracy (%)"))
    return fig


def energy(table: pd.DataFrame, style: Style, swept: Sequence[str]) -> go.Figure | None:
    """Quantized accuracy against synaptic operations per sample and against the mean spike rate."""
    runs = ok_runs(table)
    cols = [(c, t) for c, t in (("synaptic_ops_per_sample", "synaptic operations per sample"),
                                ("spike_rate/mean", "mean spike rate (spikes per neuron and step)"))
            if c in runs and runs[c].notna().any()]
    if runs.empty or not cols:
        return None
    fig = make_subplots(rows=1, cols=len(cols), shared_yaxes=True, horizontal_spacing=0.06)
    y = 100 * pd.to_numeric(runs["quant_accuracy"])
    for k, (col, title) in enumerate(cols, start=1):
        x = pd.to_numeric(runs[col]).tolist()
        before = len(fig.data)
        _points(fig, runs, x, y, style, swept, row=1, col=k)
        for trace in fig.data[before:]:
            trace.showlegend = k == 1
        fig.update_xaxes(title_text=title, row=1, col=k)
    style.legend(fig)
    layout(fig, "Accuracy vs. energy: synaptic operations and spike rate", height=470)
    fig.update_yaxes(title_text="quantized test accuracy (%)", row=1, col=1)
    return fig


def _axis_values(values: pd.Series) -> dict[str, Any]:
    """A parallel-coordinates dimension: numbers as they are, anything else as ordered categories.

    Numbers spanning two decades or more go on a log axis; a few integers
    (seeds, widths, bit widths) are ticked at their own values alone.
    """
    nums = pd.to_numeric(values, errors="coerce")
    if nums.notna().all():
        positive = (nums > 0).all() and nums.max() / max(nums.min(), 1e-300) >= 100
        if positive:
            ticks = sorted(set(nums))
            return dict(values=[math.log10(v) for v in nums], tickvals=[math.log10(v) for v in ticks],
                        ticktext=[f"{v:.3g}" for v in ticks])
        ticks = sorted(set(nums))
        if len(ticks) <= 12 and all(float(v).is_integer() for v in ticks):  # seeds, widths, bits: their own ticks
            return dict(values=nums.tolist(), tickvals=ticks, ticktext=[f"{v:g}" for v in ticks])
        return dict(values=nums.tolist())
    text = values.map(lambda v: "–" if v is None or (not isinstance(v, str) and pd.isna(v))
                      else f"{float(v):.3g}" if _is_number(v) else str(v))
    cats = sorted(text.unique(), key=lambda t: (t != "–", float(t) if _is_number(t) else math.inf, natural_key(t)))
    return dict(values=[cats.index(v) for v in text], tickvals=list(range(len(cats))), ticktext=cats)


def _is_number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def parallel(table: pd.DataFrame, style: Style, swept: Sequence[str]) -> go.Figure | None:
    """Parallel coordinates over every swept key and the objective (one line per finished run)."""
    objective = str(table["objective"].dropna().mode().iat[0]) if table["objective"].notna().any() \
        else "quant_accuracy"
    runs = ok_runs(table, objective)
    if runs.empty or not swept:
        return None
    names = [r if len(r) <= 24 or pd.isna(t) else f"{sw} #{t}"  # search jobs are folders named by overrides
             for r, t, sw in zip(runs["run"], runs["trial"], runs["sweep"].map(lambda s: s.rsplit("/", 1)[-1]))]
    dims = [dict(label="run", **_axis_values(pd.Series(names, index=runs.index)))]
    if style.compare:
        dims.append(dict(label="source", **_axis_values(runs["source"])))
    dims += [dict(label=key, **_axis_values(runs[f"param/{key}"])) for key in swept]
    if objective != "quant_accuracy" and "quant_accuracy" in runs:
        dims.append(dict(label="quant accuracy (%)", values=(100 * runs["quant_accuracy"]).tolist()))
    obj = pd.to_numeric(runs[objective]) * (100 if "accuracy" in objective else 1)
    dims.append(dict(label=f"{objective} (objective{', %' if 'accuracy' in objective else ''})",
                     values=obj.tolist()))
    fig = go.Figure(go.Parcoords(
        dimensions=dims, line=dict(color=obj.tolist(), colorscale="Viridis", showscale=True,
                                   colorbar=dict(title=dict(text=objective, side="right"))),
        meta={"ids": [int(i) for i in runs.index]}, labelangle=-20))
    return layout(fig, "Parallel coordinates: swept keys and objective (drag along an axis to select)",
                  height=max(420, 26 * len(runs) + 120), margin=dict(l=170, r=80, t=110, b=40))


def importance_fig(results: Mapping[str, Mapping[str, Any]], style: Style) -> go.Figure | None:
    """Horizontal bars: the importance of each swept key for the objective, per source."""
    drawn = {s: r for s, r in results.items() if r.get("values")}
    if not drawn:
        return None
    fig = go.Figure()
    for source, res in drawn.items():
        keys = list(res["values"])[::-1]
        fig.add_trace(go.Bar(
            x=[res["values"][k] for k in keys], y=keys, orientation="h", name=source or "importance",
            showlegend=style.compare, text=[f"{res['values'][k]:.2f}" for k in keys], textposition="auto",
            hovertemplate=f"%{{y}}: %{{x:.3f}}<br>{res['evaluator']}<br>{res['basis']}<extra>{source}</extra>",
            meta={"facet": {"source": source}}))
    first = next(iter(drawn.values()))
    layout(fig, f"Parameter importance for {first['objective']} ({first['evaluator']})",
           height=max(260, 46 * max(len(r["values"]) for r in drawn.values()) + 150), barmode="group",
           xaxis=dict(title="importance (sums to 1)", range=[0, 1.05]), margin=dict(l=160, r=30, t=70, b=60))
    return fig


def optuna_history(table: pd.DataFrame, style: Style, swept: Sequence[str], direction: str) -> go.Figure | None:
    """An optuna search: the objective of every trial in order, and the best value so far."""
    objective = str(table["objective"].dropna().mode().iat[0]) if table["objective"].notna().any() \
        else "quant_accuracy"
    runs = ok_runs(table, objective)
    if runs.empty:
        return None
    runs = runs.assign(_trial=pd.to_numeric(runs["trial"], errors="coerce").fillna(pd.Series(range(len(runs)),
                                                                                       index=runs.index)))
    runs = runs.sort_values("_trial")
    scale = 100 if "accuracy" in objective else 1
    y = scale * pd.to_numeric(runs[objective])
    fig = go.Figure()
    _points(fig, runs, runs["_trial"].tolist(), y, style, swept)
    best = y.cummax() if direction == "maximize" else y.cummin()
    fig.add_trace(go.Scatter(x=runs["_trial"].tolist(), y=best.tolist(), mode="lines", line_shape="hv",
                             name="best so far", line=dict(color="#d62728", width=2), hoverinfo="skip",
                             meta={"role": "best", "direction": direction}))
    return layout(fig, f"Optimization history ({direction} {objective})", height=420,
                  xaxis=dict(title="trial (Hydra job number)", dtick=1 if len(runs) <= 30 else None),
                  yaxis=dict(title=objective + (" (%)" if scale == 100 else "")))


def objective_vs_params(table: pd.DataFrame, style: Style, swept: Sequence[str],
                        specs: Mapping[str, Any]) -> go.Figure | None:
    """An optuna search: the objective against each searched parameter (log axis for a log search space)."""
    objective = str(table["objective"].dropna().mode().iat[0]) if table["objective"].notna().any() \
        else "quant_accuracy"
    runs = ok_runs(table, objective)
    keys = [k for k in (list(specs) or swept) if f"param/{k}" in runs]
    if runs.empty or not keys:
        return None
    scale = 100 if "accuracy" in objective else 1
    fig = make_subplots(rows=1, cols=len(keys), shared_yaxes=True, horizontal_spacing=0.05)
    for k, key in enumerate(keys, start=1):
        raw = runs[f"param/{key}"]
        nums = pd.to_numeric(raw, errors="coerce")
        x = nums.tolist() if nums.notna().all() else raw.astype(str).tolist()
        before = len(fig.data)
        _points(fig, runs, x, scale * pd.to_numeric(runs[objective]), style, swept, row=1, col=k)
        for trace in fig.data[before:]:
            trace.showlegend = k == 1
        log = "log" in str(specs.get(key, "")) or (nums.notna().all() and nums.min() > 0
                                                    and nums.max() / nums.min() >= 100)
        fig.update_xaxes(title_text=key, type="log" if log else None, row=1, col=k)
    layout(fig, f"Objective vs. each searched parameter ({objective})", height=420)
    fig.update_yaxes(title_text=objective + (" (%)" if scale == 100 else ""), row=1, col=1)
    return fig
