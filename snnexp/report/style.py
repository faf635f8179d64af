"""What every figure shares: one color per recipe, one symbol per mode, hover text naming the run.

Each plotted point carries ``customdata[0]``: the id of its run (the row of the
run table) or of its group (``g<n>``, a configuration over seeds). The page's
script looks the id up in the facets (recipe, mode, status, source) to filter
every figure with one filter bar.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from snnexp.report.analysis import mode_order, recipe_order

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf",
           "#bcbd22", "#7f7f7f", "#393b79", "#ad494a", "#637939", "#843c39", "#7b4173", "#3182bd")
MODE_SYMBOLS = {"qat": "circle", "ptq": "square", "srq": "triangle-up", "qt": "diamond"}
EXTRA_SYMBOLS = ("cross", "x", "star", "hexagon", "pentagon", "triangle-down")
SOURCE_SUFFIX = ("", "-open", "-dot", "-open-dot")
SOURCE_DASH = ("solid", "dot", "dashdot", "longdash")
FONT = dict(family="system-ui, -apple-system, Segoe UI, Roboto, Helvetica, Arial, sans-serif", size=12)


class Style:
    """Colors per recipe, symbols per mode, symbol fill per source: the same in every figure.

    Only recipes and modes with at least one finished run get a legend entry (see :meth:`legend`).
    """

    def __init__(self, table: pd.DataFrame, sources: Sequence[str]):
        self.recipes = sorted(table["recipe"].dropna().astype(str).unique(), key=recipe_order)
        self.modes = sorted(table["mode"].dropna().astype(str).unique(), key=mode_order)
        self.sources = list(sources)
        self.compare = len(self.sources) > 1
        self.color = {r: PALETTE[i % len(PALETTE)] for i, r in enumerate(self.recipes)}
        extra = iter(EXTRA_SYMBOLS * 4)
        self.symbol_of = {m: MODE_SYMBOLS.get(m) or next(extra, "circle") for m in self.modes}
        ok = table[table["status"] == "ok"]
        self.ok_recipes = [r for r in self.recipes if (ok["recipe"] == r).any()]
        self.ok_modes = [m for m in self.modes if (ok["mode"] == m).any()]

    def symbol(self, mode: Any, source: Any = "") -> str:
        """The marker symbol of a mode, open or dotted for the second and later sources."""
        base = self.symbol_of.get(str(mode), "circle")
        k = self.sources.index(source) if source in self.sources else 0
        return base + SOURCE_SUFFIX[k % len(SOURCE_SUFFIX)]

    def dash(self, source: Any) -> str:
        """The line dash of a source (solid for the first)."""
        k = self.sources.index(source) if source in self.sources else 0
        return SOURCE_DASH[k % len(SOURCE_DASH)]

    def legend(self, fig: go.Figure, modes: bool = True) -> None:
        """Add legend-only entries: the modes' symbols and, when comparing, the sources."""
        if modes:
            for m in self.ok_modes:
                fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=f"mode {m}",
                                         legendgroup="modes", legendgrouptitle_text="mode",
                                         marker=dict(symbol=self.symbol_of[m], color="#555", size=9)))
        if self.compare:
            for s in self.sources:
                fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers+lines", name=s,
                                         legendgroup="sources", legendgrouptitle_text="source",
                                         marker=dict(symbol=self.symbol("qat", s), color="#555", size=9),
                                         line=dict(color="#555", dash=self.dash(s))))


def layout(fig: go.Figure, title: str, height: int = 480, **kw: Any) -> go.Figure:
    """The common look: white background, title at the top left, legend to the right."""
    settings = dict(title=dict(text=title, x=0.01, xanchor="left", font=dict(size=16)), height=height,
                    template="plotly_white", font=FONT, margin=dict(l=70, r=30, t=70, b=60),
                    hoverlabel=dict(align="left"), legend=dict(groupclick="toggleitem"))
    fig.update_layout(**{**settings, **kw})
    return fig


def pct(value: Any) -> str:
    """A fraction as a percentage (``0.875`` -> ``87.50 %``); a dash when missing."""
    try:
        return "–" if value is None or pd.isna(value) else f"{100 * float(value):.2f} %"
    except (TypeError, ValueError):
        return str(value)


def hover(row: pd.Series, swept: Sequence[str] = ()) -> str:
    """Hover text of one run: its name, source, recipe/mode/status, the swept values and overrides."""
    e = html.escape
    lines = [f"<b>{e(str(row['run']))}</b>"]
    if row.get("source"):
        lines.append(f"source: {e(str(row['source']))}")
    lines.append(f"{e(str(row.get('recipe')))} / {e(str(row.get('mode')))} · {e(str(row.get('status')))}")
    for key in swept:
        value = row.get(f"param/{key}")
        if value is not None and not pd.isna(value):
            lines.append(f"{e(key)} = {e(str(value))}")
    lines.append(f"quant acc {pct(row.get('quant_accuracy'))} · fp32 acc {pct(row.get('fp32_accuracy'))}")
    overrides = str(row.get("overrides") or "")
    lines.append(f"overrides: {e(overrides) if overrides else '–'}")
    return "<br>".join(lines)
