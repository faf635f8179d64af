"""Plotly figures over several runs: the drop heatmap, the training curves, the spread over seeds.

The heatmap's rows and columns say which recipe, mode and source they hold
(``meta.rows`` / ``meta.cols``) so that the page's filter can hide them; the
seed view's aggregate points carry a group id (``g<n>``) whose facets the page
also knows.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from snnexp.report.analysis import drop_grid, mode_order, recipe_order
from snnexp.report.style import Style, hover, layout


def drop_heatmap(table: pd.DataFrame, style: Style) -> go.Figure | None:
    """Mean accuracy drop (fp32 phase -> quantized network) per recipe and mode; n/a where it is no drop."""
    grid = drop_grid(table)
    if grid.empty:
        return None
    rows = sorted({(s, r) for s, r in zip(grid["source"], grid["recipe"])},
                  key=lambda sr: (style.sources.index(sr[0]) if sr[0] in style.sources else 0, recipe_order(sr[1])))
    cols = sorted(grid["mode"].unique(), key=mode_order)
    z = np.full((len(rows), len(cols)), np.nan)
    text = [["not run"] * len(cols) for _ in rows]
    for g in grid.itertuples():
        i, j = rows.index((g.source, g.recipe)), cols.index(g.mode)
        z[i, j] = g.drop
        text[i][j] = g.note + f" (n={g.n})" if g.note else f"{g.drop:+.1f} pp (n={g.n})"
    vmax = max(1.0, float(np.nanmax(np.abs(z)))) if np.isfinite(z).any() else 1.0
    labels = [f"{s} · {r}" if style.compare else r for s, r in rows]
    fig = go.Figure(go.Heatmap(
        z=z.tolist(), x=cols, y=labels, text=text, texttemplate="%{text}", colorscale="RdBu_r", zmin=-vmax,
        zmax=vmax, zmid=0, hoverongaps=True, xgap=2, ygap=2,
        hovertemplate="recipe %{y}, mode %{x}<br>%{text}<extra></extra>",
        colorbar=dict(title=dict(text="drop, pp (> 0: worse)", side="right"), len=1.0, y=0.5, yanchor="middle",
                      thickness=14),
        meta={"rows": [{"source": s, "recipe": r} for s, r in rows], "cols": [{"mode": m} for m in cols]}))
    layout(fig, "Accuracy drop: the fp32 phase of each run vs. its quantized network (mean, percentage points)",
           height=max(300, 58 * len(rows) + 170), xaxis=dict(title="mode", side="bottom", showgrid=False),
           yaxis=dict(title="recipe", autorange="reversed", showgrid=False), margin=dict(l=110, r=40, t=90, b=60))
    return fig


def curves(table: pd.DataFrame, history: pd.DataFrame, style: Style, swept: Sequence[str]) -> go.Figure | None:
    """Test accuracy per epoch, one panel per mode, one line per run (solid: fp32 phase, dashed: quantized)."""
    if history.empty or "test_accuracy" not in history:
        return None
    hist = history[history["test_accuracy"].notna()].merge(
        table[["recipe", "mode", "source"]], left_on="id", right_index=True)
    modes = sorted(hist["mode"].dropna().unique(), key=mode_order)
    if not modes:
        return None
    ncols = min(len(modes), 2)
    nrows = -(-len(modes) // ncols)
    fig = make_subplots(rows=nrows, cols=ncols, shared_yaxes=True, subplot_titles=[f"mode: {m}" for m in modes],
                        horizontal_spacing=0.06, vertical_spacing=0.14)
    shown: set[str] = set()
    for k, mode in enumerate(modes):
        where = dict(row=k // ncols + 1, col=k % ncols + 1)
        for run_id, h in hist[hist["mode"] == mode].groupby("id", sort=False):
            row = table.loc[run_id]
            recipe = str(row["recipe"])
            color = style.color.get(recipe, "#777")
            fp32 = h[h["phase"] == "fp32"].sort_values("epoch")
            quant = h[h["phase"] == "quant"].sort_values("epoch")
            if not fp32.empty and not quant.empty:
                quant = pd.concat([fp32.tail(1), quant])
            text = hover(row, swept)
            for part, dash in ((fp32, style.dash(row["source"])), (quant, "dash")):
                if part.empty:
                    continue
                first = recipe not in shown
                shown.add(recipe)
                fig.add_trace(go.Scatter(
                    x=part["epoch"].tolist(), y=(100 * part["test_accuracy"]).tolist(), mode="lines+markers",
                    name=recipe, legendgroup=recipe, showlegend=first, line=dict(color=color, dash=dash, width=1.8),
                    marker=dict(size=5), customdata=[[int(run_id)]] * len(part),
                    text=[f"{text}<br>epoch {e}: {100 * a:.2f} % ({p})" for e, a, p in
                          zip(part["epoch"], part["test_accuracy"], part["phase"])],
                    hovertemplate="%{text}<extra></extra>"), **where)
            acc = row.get("quant_accuracy")
            if row["status"] == "ok" and acc is not None and not pd.isna(acc):
                fig.add_trace(go.Scatter(
                    x=[float(h["epoch"].max()) + 0.25], y=[100 * float(acc)], mode="markers", legendgroup=recipe,
                    showlegend=False, customdata=[[int(run_id)]],
                    marker=dict(symbol="star", size=13, color=color, line=dict(color="black", width=0.7)),
                    text=[f"{text}<br>deployed network: {100 * float(acc):.2f} %"],
                    hovertemplate="%{text}<extra></extra>"), **where)
    fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name="deployed (after the last epoch)",
                             marker=dict(symbol="star", size=12, color="#777", line=dict(color="black", width=0.7))))
    fig.update_xaxes(title_text="epoch", dtick=1 if hist["epoch"].max() <= 15 else None)
    fig.update_yaxes(title_text="test accuracy (%)", col=1)
    layout(fig, "Training curves: test accuracy per epoch (solid: fp32 phase, dashed: quantized)",
           height=380 * nrows + 60)
    return fig


def seeds(table: pd.DataFrame, stats: pd.DataFrame, style: Style, swept: Sequence[str]) -> go.Figure | None:
    """Mean ± sample standard deviation of the quantized accuracy per configuration repeated over seeds."""
    if stats.empty:
        return None
    labels = [f"{s} · {c}" if style.compare else str(c) for s, c in zip(stats["source"], stats["config"])]
    fig = go.Figure()
    ok = table[(table["status"] == "ok") & table["quant_accuracy"].notna()]
    for k, st in enumerate(stats.itertuples()):
        members = ok[(ok["source"] == st.source) & (ok["config"] == st.config)]
        fig.add_trace(go.Scatter(
            x=(100 * members["quant_accuracy"]).tolist(), y=[labels[k]] * len(members), mode="markers",
            marker=dict(color="#999", size=7), showlegend=False, customdata=[[int(i)] for i in members.index],
            text=[hover(r, swept) + f"<br>seed {r['seed']}" for _, r in members.iterrows()],
            hovertemplate="%{text}<extra></extra>"))
    for recipe in style.ok_recipes:
        sel = stats["recipe"] == recipe
        if not sel.any():
            continue
        part = stats[sel]
        fig.add_trace(go.Scatter(
            x=(100 * part["mean"]).tolist(), y=[labels[i] for i in part.index], mode="markers", name=recipe,
            error_x=dict(type="data", array=(100 * part["std"]).tolist(), thickness=2, width=6),
            marker=dict(color=style.color[recipe], size=13, symbol=[style.symbol(m, s) for m, s in
                                                                    zip(part["mode"], part["source"])]),
            customdata=[[f"g{i}"] for i in part.index],
            text=[f"<b>{c}</b><br>n={n} (seeds {', '.join(map(str, sd))})<br>mean {100 * m:.2f} % ± {100 * s:.2f}"
                  for c, n, sd, m, s in zip(part["config"], part["n"], part["seeds"], part["mean"], part["std"])],
            hovertemplate="%{text}<extra></extra>"))
    layout(fig, "Mean ± sd over seeds (gray: single runs)", height=max(280, 44 * len(stats) + 150),
           xaxis=dict(title="quantized test accuracy (%)"), yaxis=dict(autorange="reversed", automargin=True))
    return fig
