"""Sweep results -> ``results.csv`` and a self-contained ``report.html``.

Why this exists: a Hydra multirun leaves one directory per job, each with its
own ``metrics.json``, ``history.jsonl`` and resolved config. Reading them one at
a time hides what a quantization sweep is for: the trade-off between accuracy
and memory across recipes and modes, and whether a difference is larger than
the seed-to-seed noise. This module gathers every run (finished, failed or cut
short) into one flat table that any tool can load, and one HTML page with the
plots a person looks at first. The page has no external references (plots are
inline SVG, styles and the sorting script are inline), so it opens offline and
can be mailed or archived as a single file.

    python -m snnexp.report outputs/multirun/2026-11-22/07-59-31
    python -m snnexp.report outputs/multirun --out reports/sweep1

A run's ``status.json`` (written by every run: ``running``, ``ok``,
``failed``, ``preempted``, with the error) gives its status; a run with
``metrics.json`` and no ``status.json`` is ``ok``; a run still marked
``running`` or with neither file is ``incomplete`` (still running, killed, or
failed before it could say so).
"""

from __future__ import annotations

import argparse
import csv
import html
import io
import json
import math
import os
import re
import statistics
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from snnexp.tracking import flatten

#: Files or folders whose presence makes a directory a run directory.
RUN_MARKERS = ("metrics.json", "status.json", "config.yaml", ".hydra")
#: Folders inside a run (or next to runs) that never hold runs.
SKIP_DIRS = frozenset({".hydra", "checkpoints", "wandb", "__pycache__", ".git"})
#: Leading columns of ``results.csv``, before the per-override and metric columns.
ID_COLUMNS = ("run", "run_dir", "status", "error", "config", "overrides")
#: Columns read from the resolved config (``recipe`` and ``mode`` are also metrics).
CONFIG_COLUMNS = {
    "seed": "seed",
    "recipe": "quant.name",
    "mode": "mode.name",
    "neuron": "neuron.name",
    "data": "data.name",
}
#: Display order of known recipes and modes; unknown ones follow alphabetically.
RECIPE_ORDER = ("fp32", "weights_only", "w8a8", "w6a8", "w4a8", "ternary")
MODE_ORDER = ("qat", "ptq", "srq", "qt")
MODE_MARKERS = {"qat": "o", "ptq": "s", "srq": "^", "qt": "D"}
_EXTRA_MARKERS = ("v", "P", "X", "<", ">", "h")
_STATUS_ORDER = {"failed": 0, "incomplete": 1}


class ReportError(ValueError):
    """A report that cannot be built as asked (a missing directory, no runs)."""


@dataclass
class Run:
    """One run directory, read.

    Attributes:
        row: the ``results.csv`` row (plain Python values; None where missing).
        history: the rows of ``history.jsonl``, one per epoch.
        config_key: the overrides without ``seed``, sorted: runs sharing it
            repeat one configuration over seeds.
    """

    row: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    config_key: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """Whether the run finished and wrote its metrics."""
        return self.row["status"] == "ok"

    def get(self, key: str) -> Any:
        """Return a value of the row, None when absent."""
        return self.row.get(key)


# --------------------------------------------------------------------- reading


def _natural_key(path: Path) -> list[Any]:
    """Sort key so that ``2`` comes before ``10``."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(path))]


def is_run_dir(path: Path) -> bool:
    """Whether ``path`` is one job's directory (not a multirun or a parent)."""
    return path.is_dir() and any((path / m).exists() for m in RUN_MARKERS)


def find_runs(root: Path) -> list[Path]:
    """Find the run directories under ``root``.

    Args:
        root: a run directory, a multirun directory (``0/ 1/ ...`` and
            ``multirun.yaml``) or any parent of several multiruns.

    Returns:
        Run directories in natural order (``2`` before ``10``); ``[root]`` when
        ``root`` is itself a run.
    """
    root = Path(root)
    if is_run_dir(root):
        return [root]
    found: list[Path] = []
    for dirpath, dirnames, _ in os.walk(root, followlinks=False):
        here = Path(dirpath)
        if here != root and is_run_dir(here):
            found.append(here)
            dirnames[:] = []  # a run's subfolders (checkpoints, wandb) hold no runs
            continue
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS]
    return sorted(found, key=_natural_key)


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def _read_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _dig(tree: Any, dotted: str) -> Any:
    """``tree["a"]["b"]`` for ``"a.b"``, None when any level is missing."""
    for part in dotted.split("."):
        if not isinstance(tree, Mapping) or part not in tree:
            return None
        tree = tree[part]
    return tree


def _override_key(override: str) -> str:
    """``"+quant.bits=4"`` -> ``"quant.bits"``; ``"~logger"`` -> ``"logger"``."""
    return override.split("=", 1)[0].lstrip("+~")


def _override_value(override: str) -> str:
    return override.split("=", 1)[1] if "=" in override else ""


def _cell(value: Any) -> Any:
    """Make a metric value fit one CSV cell (lists become JSON text)."""
    if isinstance(value, (list, tuple)):
        return json.dumps(value)
    return value


def read_run(run_dir: Path, display_name: str | None = None) -> Run:
    """Read one run directory into a row of the results table.

    Args:
        run_dir: the job's directory.
        display_name: the short name shown in the report (default: the path).

    Returns:
        The run: its row (identity, status, overrides, config fields and every
        metric of ``metrics.json`` flattened as ``spike_rate/mean``), its
        per-epoch history and its configuration key.
    """
    run_dir = Path(run_dir)
    row: dict[str, Any] = {
        "run": display_name or str(run_dir),
        "run_dir": str(run_dir.resolve()),
        "status": "incomplete",
        "error": "",
        "config": "",
        "overrides": "",
    }
    problems: list[str] = []

    overrides: list[str] = []
    ov_path = run_dir / ".hydra" / "overrides.yaml"
    if ov_path.exists():
        try:
            overrides = [str(o) for o in (_read_yaml(ov_path) or [])]
        except (OSError, yaml.YAMLError) as e:
            problems.append(f"unreadable .hydra/overrides.yaml ({e})")
    row["overrides"] = " ".join(overrides)
    for o in overrides:
        row[f"override/{_override_key(o)}"] = _override_value(o)

    cfg: Any = None
    for name in ("config.yaml", ".hydra/config.yaml"):  # resolved first
        if (run_dir / name).exists():
            try:
                cfg = _read_yaml(run_dir / name)
                break
            except (OSError, yaml.YAMLError) as e:
                problems.append(f"unreadable {name} ({e})")
    for column, dotted in CONFIG_COLUMNS.items():
        row[column] = _dig(cfg, dotted)

    metrics: dict[str, Any] | None = None
    if (run_dir / "metrics.json").exists():
        try:
            metrics = _read_json(run_dir / "metrics.json")
        except (OSError, ValueError) as e:
            problems.append(f"unreadable metrics.json ({e})")
    status: dict[str, Any] = {}
    if (run_dir / "status.json").exists():
        try:
            status = dict(_read_json(run_dir / "status.json"))
        except (OSError, ValueError, TypeError) as e:
            problems.append(f"unreadable status.json ({e})")
    if isinstance(metrics, Mapping):
        for key, value in flatten(metrics).items():
            column = f"metric/{key}" if key in ID_COLUMNS else key
            row[column] = _cell(value)
    said = str(status.get("status") or (metrics or {}).get("status") or "")
    if said == "ok" or (not said and isinstance(metrics, Mapping)):
        if isinstance(metrics, Mapping):
            row["status"] = "ok"
        else:
            problems.append("status.json says ok but metrics.json is missing")
    elif said == "running":
        problems.append("status.json says running: still running, or killed (rerun to resume)")
    elif said:
        row["status"] = said
        row["error"] = str(status.get("error") or (metrics or {}).get("error") or "")
    else:
        problems.append("no metrics.json or status.json: running, killed, or failed before writing them")
    if problems:
        row["error"] = "; ".join([row["error"], *problems] if row["error"] else problems)

    history: list[dict[str, Any]] = []
    hist_path = run_dir / "history.jsonl"
    if hist_path.exists():
        for line in hist_path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # a line cut short by a killed job
            if isinstance(entry, dict):
                history.append(entry)

    key_items = sorted(o for o in overrides if _override_key(o) != "seed")
    if not overrides:  # no Hydra record: identify the configuration by its names
        key_items = [f"{c}={row[c]}" for c in ("recipe", "mode", "neuron", "data") if row[c] is not None]
    return Run(row=row, history=history, config_key=tuple(key_items))


def _display_names(run_dirs: Sequence[Path]) -> list[str]:
    """Short, unique names: each run's path from just above the runs' common folder."""
    resolved = [p.resolve() for p in run_dirs]
    if len(resolved) == 1:
        return [f"{resolved[0].parent.name}/{resolved[0].name}"]
    common = Path(os.path.commonpath([str(p) for p in resolved]))
    base = common.parent
    return [str(p.relative_to(base)) for p in resolved]


def _label_configs(runs: Sequence[Run]) -> None:
    """Set each row's ``config``: recipe / mode plus the overrides that vary.

    Overrides shared by every run (``debug=fast``) and ``seed`` are left out:
    the label names what differs between the points of a plot.
    """
    keys = [set(r.config_key) for r in runs]
    common = set.intersection(*keys) if keys else set()
    for run in runs:
        extra = [
            o for o in run.config_key
            if o not in common and _override_key(o) not in ("quant", "mode", "seed")
        ]
        head = f"{run.get('recipe') or '?'} / {run.get('mode') or '?'}"
        run.row["config"] = " ".join([head, *extra])


def collect(dirs: Iterable[str | Path]) -> list[Run]:
    """Find and read every run under ``dirs``.

    Args:
        dirs: run directories, multirun directories or their parents.

    Returns:
        The runs, each directory once, in the order found.

    Raises:
        ReportError: a directory does not exist, or holds no run.
    """
    run_dirs: list[Path] = []
    seen: set[Path] = set()
    for d in dirs:
        d = Path(d)
        if not d.exists():
            raise ReportError(f"{d}: no such directory")
        if not d.is_dir():
            raise ReportError(f"{d}: not a directory")
        found = find_runs(d)
        if not found:
            raise ReportError(
                f"{d}: holds no runs (no folder with metrics.json, status.json, config.yaml or .hydra/)"
            )
        for p in found:
            if p.resolve() not in seen:
                seen.add(p.resolve())
                run_dirs.append(p)
    runs = [read_run(p, name) for p, name in zip(run_dirs, _display_names(run_dirs))]
    _label_configs(runs)
    return runs


# --------------------------------------------------------------------- the CSV


def columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Order the columns: identity, overrides, config fields, then metrics as first seen."""
    seen: dict[str, None] = {}
    for row in rows:
        for key in row:
            seen.setdefault(key, None)
    overrides = [k for k in seen if k.startswith("override/")]
    head = [*ID_COLUMNS, *overrides, *CONFIG_COLUMNS]
    return head + [k for k in seen if k not in head]


def write_csv(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    """Write ``rows`` as CSV; missing values are empty cells, floats keep full precision."""
    cols = columns(rows)
    with Path(path).open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=cols, restval="")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in cols})


# ----------------------------------------------------------------------- plots


def _ordered(values: Iterable[str], order: Sequence[str]) -> list[str]:
    present = set(values)
    return [v for v in order if v in present] + sorted(present - set(order))


def _pct(value: Any) -> float | None:
    return None if value is None else 100.0 * float(value)


def _fmt_bytes(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:.0f} B"


class _Style:
    """Colors per recipe and markers per mode, the same in every plot."""

    def __init__(self, runs: Sequence[Run]):
        import matplotlib as mpl

        self.recipes = _ordered((str(r.get("recipe")) for r in runs if r.get("recipe") is not None),
                                RECIPE_ORDER)
        self.modes = _ordered((str(r.get("mode")) for r in runs if r.get("mode") is not None), MODE_ORDER)
        palette = mpl.colormaps["tab10" if len(self.recipes) <= 10 else "tab20"].colors
        self.color = {rec: palette[i % len(palette)] for i, rec in enumerate(self.recipes)}
        extra = iter(_EXTRA_MARKERS * 4)
        self.marker = {m: MODE_MARKERS.get(m) or next(extra, "o") for m in self.modes}


def _svg(fig: Any) -> str:
    """Render the figure as inline SVG markup (text kept as text; no prolog, no metadata)."""
    import matplotlib.pyplot as plt

    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight",
                metadata={"Creator": None, "Date": None, "Format": None, "Type": None})
    plt.close(fig)
    text = buf.getvalue()
    text = text[text.index("<svg"):]
    # Inline SVG in HTML needs no namespace declarations (the HTML parser maps
    # xlink:href itself); dropping them leaves the page free of any URL.
    text = re.sub(r'\s+xmlns(:\w+)?="[^"]*"', "", text, count=0)
    return f'<div class="fig">{text}</div>'


def _rc() -> dict[str, Any]:
    return {
        "svg.fonttype": "none",
        "font.family": "sans-serif",
        "font.size": 10,
        "axes.titlesize": 12,
        "axes.titleweight": "bold",
        "axes.spines.top": False,
        "axes.spines.right": False,
        "axes.grid": True,
        "grid.alpha": 0.3,
        "legend.frameon": False,
    }


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Find the points that no other point beats on both axes.

    Args:
        points: ``(bytes, accuracy)`` pairs; fewer bytes and more accuracy are better.

    Returns:
        Indices of the front, in order of increasing bytes.
    """
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front: list[int] = []
    best = -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def plot_pareto(runs: Sequence[Run], style: _Style) -> str | None:
    """Quantized accuracy against deployed weight bytes, Pareto front marked."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    pts = [r for r in runs if r.ok and r.get("quant_accuracy") is not None
           and (r.get("weight_bytes_quant") or 0) > 0]
    if not pts:
        return None
    xy = [(float(r.get("weight_bytes_quant")), _pct(r.get("quant_accuracy")) or 0.0) for r in pts]
    # Runs of equal size (a recipe under several modes or seeds) would hide one
    # another: spread each size's recipe/mode pairs slightly sideways (log x).
    combos: dict[float, list[tuple[int, int]]] = {}
    for r, (x, _) in zip(pts, xy):
        c = (style.recipes.index(str(r.get("recipe"))), style.modes.index(str(r.get("mode"))))
        if c not in combos.setdefault(x, []):
            combos[x].append(c)
    dodge = []
    for r, (x, _) in zip(pts, xy):
        here = sorted(combos[x])
        c = (style.recipes.index(str(r.get("recipe"))), style.modes.index(str(r.get("mode"))))
        dodge.append(x * 1.04 ** (here.index(c) - (len(here) - 1) / 2))
    fig, ax = plt.subplots(figsize=(9, 5.2))
    for r, dx, (_, y) in zip(pts, dodge, xy):
        ax.scatter(dx, y, color=style.color[str(r.get("recipe"))], marker=style.marker[str(r.get("mode"))],
                   s=60, alpha=0.85, edgecolor="white", linewidth=0.6, zorder=3)
    front = pareto_front(xy)
    fx, fy = [dodge[i] for i in front], [xy[i][1] for i in front]
    ax.step(fx, fy, where="post", color="black", linestyle="--", linewidth=1.2, zorder=2)
    ax.scatter(fx, fy, s=170, facecolor="none", edgecolor="black", linewidth=1.3, zorder=4)
    several_seeds = len({r.get("seed") for r in pts}) > 1
    for k, i in enumerate(front):
        r = pts[i]
        text = f"{r.get('recipe')} / {r.get('mode')}"
        if several_seeds:
            text += f" (seed {r.get('seed')})"
        ax.annotate(text, (dodge[i], xy[i][1]), xytext=(9, 7 if k % 2 == 0 else -13),
                    textcoords="offset points", fontsize=9, fontweight="bold")
    ax.set_xscale("log")
    lo, hi = min(dodge), max(dodge)
    ax.set_xlim(lo / 1.5, hi * 1.8)  # room on the right for the labels
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: _fmt_bytes(v)))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ys = [p[1] for p in xy]
    pad = max(2.0, 0.08 * (max(ys) - min(ys)))
    ax.set_ylim(max(0.0, min(ys) - pad), min(100.0, max(ys) + pad))
    ax.set_xlabel("weight memory of the deployed network (bytes, log scale)")
    ax.set_ylabel("quantized test accuracy (%)")
    ax.set_title("Accuracy vs. memory: one point per run")
    recipe_handles = [Line2D([], [], linestyle="", marker="o", markersize=8, color=style.color[rec],
                             label=rec) for rec in style.recipes]
    mode_handles = [Line2D([], [], linestyle="", marker=style.marker[m], markersize=8, color="0.35",
                           label=m) for m in style.modes]
    front_handle = [Line2D([], [], color="black", linestyle="--", marker="o", markerfacecolor="none",
                           markersize=11, label="Pareto front")]
    first = ax.legend(handles=recipe_handles, title="recipe", loc="upper left",
                      bbox_to_anchor=(1.01, 1.0))
    ax.add_artist(first)
    ax.legend(handles=mode_handles + front_handle, title="mode", loc="upper left",
              bbox_to_anchor=(1.01, 0.45))
    return _svg(fig)


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    mean = statistics.fmean(values)
    return mean, statistics.stdev(values) if len(values) > 1 else 0.0


def plot_drop_heatmap(runs: Sequence[Run], style: _Style) -> str | None:
    """Mean accuracy drop (fp32 -> quantized) per recipe x mode, as a heatmap."""
    import matplotlib.pyplot as plt
    import numpy as np

    cells: dict[tuple[str, str], list[float]] = {}
    for r in runs:
        if r.ok and r.get("accuracy_drop") is not None:
            cells.setdefault((str(r.get("recipe")), str(r.get("mode"))), []).append(
                100.0 * float(r.get("accuracy_drop")))
    if not cells:
        return None
    recipes = [rec for rec in style.recipes if any(k[0] == rec for k in cells)]
    modes = style.modes
    grid = np.full((len(recipes), len(modes)), np.nan)
    for (rec, m), vals in cells.items():
        grid[recipes.index(rec), modes.index(m)] = statistics.fmean(vals)
    vmax = max(1.0, float(np.nanmax(np.abs(grid))))
    fig, ax = plt.subplots(figsize=(1.6 * len(modes) + 3.2, 0.65 * len(recipes) + 1.9))
    cmap = plt.get_cmap("RdBu_r").with_extremes(bad="0.93")
    im = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=-vmax, vmax=vmax, aspect="auto")
    for i, rec in enumerate(recipes):
        for j, m in enumerate(modes):
            vals = cells.get((rec, m))
            if vals:
                v = grid[i, j]
                color = "white" if abs(v) > 0.6 * vmax else "black"
                ax.text(j, i, f"{v:+.1f} pp\n(n={len(vals)})", ha="center", va="center",
                        fontsize=9, color=color)
            else:
                note = "no drop\n(no fp32 phase)" if m == "qt" else "not run"
                ax.text(j, i, note, ha="center", va="center", fontsize=8, color="0.45")
    ax.set_xticks(range(len(modes)), modes)
    ax.set_yticks(range(len(recipes)), recipes)
    ax.set_xlabel("mode")
    ax.set_ylabel("recipe")
    ax.grid(False)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_title("Accuracy drop, fp32 → quantized (mean over runs)")
    cbar = fig.colorbar(im, ax=ax, fraction=0.05, pad=0.03)
    cbar.set_label("drop (percentage points; > 0 = worse)")
    return _svg(fig)


def _curve(run: Run) -> list[tuple[int, float, str]]:
    """``(epoch, test accuracy %, phase)`` for every epoch of a run's history."""
    out = []
    for entry in run.history:
        for phase in ("fp32", "quant"):
            acc = entry.get(f"{phase}/test_accuracy")
            if acc is not None:
                out.append((int(entry.get("epoch", entry.get("step", len(out) + 1))), 100.0 * acc, phase))
    return sorted(out)


def _shade(color: Sequence[float], k: int) -> tuple[float, ...]:
    """Vary a recipe's color for its ``k``-th configuration in one panel: lighter, darker, lighter..."""
    if k == 0:
        return tuple(color[:3])
    t = min(0.3 * ((k + 1) // 2), 0.7)
    target = 1.0 if k % 2 else 0.0
    return tuple(c + (target - c) * t for c in color[:3])


def _mean_curve(members: Sequence[Run]) -> list[tuple[int, float, float, str]]:
    """``(epoch, mean %, std %, phase)`` over the runs of one configuration."""
    by_epoch: dict[int, list[float]] = {}
    phase_of: dict[int, str] = {}
    for r in members:
        for epoch, acc, phase in _curve(r):
            by_epoch.setdefault(epoch, []).append(acc)
            phase_of[epoch] = phase
    return [(e, *_mean_std(by_epoch[e]), phase_of[e]) for e in sorted(by_epoch)]


def plot_curves(runs: Sequence[Run], style: _Style) -> str | None:
    """Test accuracy per epoch, one panel per mode, one line per configuration (mean over seeds).

    Configurations whose fp32 phase is identical (the same fp32 training before
    different recipes) share one gray fp32 line instead of hiding each other.
    """
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    with_hist = [r for r in runs if r.get("recipe") is not None and r.get("mode") is not None and _curve(r)]
    if not with_hist:
        return None
    modes = [m for m in style.modes if any(str(r.get("mode")) == m for r in with_hist)]
    ncols = min(len(modes), 2)
    nrows = -(-len(modes) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(6.4 * ncols, 5.0 * nrows), squeeze=False,
                             sharey=True)
    for ax in axes.flat[len(modes):]:
        ax.set_visible(False)
    for ax, mode in zip(axes.flat, modes):
        groups: dict[str, list[Run]] = {}
        for r in with_hist:
            if str(r.get("mode")) == mode:
                groups.setdefault(str(r.get("config")), []).append(r)
        ordered = sorted(groups.items(), key=lambda kv: (style.recipes.index(str(kv[1][0].get("recipe"))),
                                                          kv[0]))
        recipes_here = [str(g[0].get("recipe")) for _, g in ordered]
        # legend names: the recipe plus the overrides that differ within this panel
        extras = {label: [o for o in g[0].config_key if _override_key(o) not in ("quant", "mode", "seed")]
                  for label, g in ordered}
        shared_extras = set.intersection(*(set(e) for e in extras.values()))
        names = {label: " ".join([recipes_here[k], *(o for o in extras[label] if o not in shared_extras)])
                 for k, (label, _) in enumerate(ordered)}
        nth = [recipes_here[:k].count(rec) for k, rec in enumerate(recipes_here)]
        curves = {label: _mean_curve(members) for label, members in ordered}
        fp32_part = {label: tuple(p[:3] for p in c if p[3] == "fp32") for label, c in curves.items()}
        shared_count: dict[tuple, int] = {}
        for part in fp32_part.values():
            if part:
                shared_count[part] = shared_count.get(part, 0) + 1
        drawn: set[tuple] = set()
        handles = []

        def band(pts: Sequence[tuple], color: Any, n: int, ax: Any = ax) -> None:
            if n > 1 and len(pts) > 1:
                ax.fill_between([p[0] for p in pts], [p[1] - p[2] for p in pts],
                                [p[1] + p[2] for p in pts], color=color, alpha=0.12, linewidth=0)

        for k, (label, members) in enumerate(ordered):
            color = _shade(style.color[recipes_here[k]], nth[k])
            n = len(members)
            curve = curves[label]
            part = fp32_part[label]
            shared = shared_count.get(part, 0) > 1
            if part and not (shared and part in drawn):
                line_color = "0.35" if shared else color
                ax.plot([p[0] for p in part], [p[1] for p in part], color=line_color, linewidth=1.8,
                        marker="o", markersize=3)
                band(part, line_color, n)
                drawn.add(part)
            quant = [p for p in curve if p[3] == "quant"]
            if quant:
                seg = ([part[-1]] if part else []) + [p[:3] for p in quant]
                ax.plot([p[0] for p in seg], [p[1] for p in seg], color=color, linewidth=1.8,
                        linestyle=(0, (4, 2)), marker="o", markersize=3)
                band(seg, color, n)
            final = [_pct(r.get("quant_accuracy")) for r in members if r.get("quant_accuracy") is not None]
            if final:
                # after the last epoch, spread so that equal accuracies stay visible
                x = curve[-1][0] + 0.25 + 0.1 * (k - (len(ordered) - 1) / 2) * (len(ordered) > 1)
                ax.scatter([x], [statistics.fmean(final)], marker="*", s=160, color=color,
                           edgecolor="black", linewidth=0.6, zorder=5)
            short = names[label]
            handles.append(Line2D([], [], color=color, linewidth=2.5,
                                  label=f"{short} (n={n})" if n > 1 else short))
        ax.set_title(f"mode: {mode}")
        ax.set_xlabel("epoch")
        ax.set_ylabel("test accuracy (%)")
        ax.tick_params(labelleft=True)
        first = min(p[0] for c in curves.values() for p in c)
        last = max(p[0] for c in curves.values() for p in c)
        ax.set_xlim(first - 0.3, last + 0.7)  # room for the deployed stars
        if last - first <= 12:
            ax.set_xticks(range(first, last + 1))
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(handles=handles, fontsize=8.5, loc="upper center", bbox_to_anchor=(0.5, -0.14),
                  ncol=1 if ncols > 1 else 2)
    style_handles = [
        Line2D([], [], color="0.35", marker="o", markersize=3,
               label="fp32 training (gray: the same for several recipes)"),
        Line2D([], [], color="0.35", linestyle=(0, (4, 2)), label="quantized training"),
        Line2D([], [], color="0.35", marker="*", markersize=11, linestyle="", markeredgecolor="black",
               label="deployed network (integer weights), after the last epoch"),
    ]
    height = fig.get_figheight()
    fig.suptitle("Test accuracy per epoch (mean over seeds; band = ± 1 std)", fontweight="bold",
                 y=1 - 0.1 / height)
    fig.legend(handles=style_handles, loc="upper center", ncol=3, fontsize=9,
               bbox_to_anchor=(0.5, 1 - 0.4 / height))
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.6 / height))
    return _svg(fig)


def seed_stats(runs: Sequence[Run]) -> list[dict[str, Any]]:
    """Mean and spread of the quantized accuracy per configuration run more than once.

    Returns:
        One dict per repeated configuration (``config``, ``n``, ``seeds``,
        ``mean``, ``std``, ``min``, ``max``, ``drop_mean``, ``values``), accuracies
        as fractions, sorted by mean accuracy (best first). ``std`` is the sample
        standard deviation.
    """
    groups: dict[tuple[str, ...], list[Run]] = {}
    for r in runs:
        if r.ok and r.get("quant_accuracy") is not None:
            groups.setdefault(r.config_key, []).append(r)
    out = []
    for members in groups.values():
        if len(members) < 2:
            continue
        accs = [float(r.get("quant_accuracy")) for r in members]
        drops = [float(r.get("accuracy_drop")) for r in members if r.get("accuracy_drop") is not None]
        mean, std = _mean_std(accs)
        out.append({
            "config": members[0].get("config"),
            "recipe": members[0].get("recipe"),
            "mode": members[0].get("mode"),
            "n": len(members),
            "seeds": sorted((r.get("seed") for r in members), key=str),
            "mean": mean,
            "std": std,
            "min": min(accs),
            "max": max(accs),
            "drop_mean": statistics.fmean(drops) if drops else None,
            "values": accs,
        })
    return sorted(out, key=lambda s: -s["mean"])


def plot_seeds(stats: Sequence[Mapping[str, Any]], style: _Style) -> str | None:
    """Mean ± std of the quantized accuracy per repeated configuration, seeds as dots."""
    import matplotlib.pyplot as plt

    if not stats:
        return None
    rows = list(reversed(stats))  # best at the top
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(rows) + 1.6))
    for y, s in enumerate(rows):
        color = style.color.get(str(s["recipe"]), "0.3")
        vals = [100 * v for v in s["values"]]
        jitter = [(k - (len(vals) - 1) / 2) * 0.06 for k in range(len(vals))]
        ax.scatter(vals, [y + j for j in jitter], s=14, color="0.55", zorder=2)
        ax.errorbar(100 * s["mean"], y, xerr=100 * s["std"], fmt=style.marker.get(str(s["mode"]), "o"),
                    color=color, markersize=8, capsize=4, linewidth=1.8, zorder=3)
        ax.annotate(f"{100 * s['mean']:.1f} ± {100 * s['std']:.1f} %  (n={s['n']})",
                    (100 * (s["mean"] + s["std"]), y), xytext=(8, 0), textcoords="offset points",
                    va="center", fontsize=9)
    ax.set_yticks(range(len(rows)), [str(s["config"]) for s in rows])
    ax.set_ylim(-0.7, len(rows) - 0.3)
    lo = min(min(*s["values"], s["mean"] - s["std"]) for s in rows) * 100
    hi = max(max(*s["values"], s["mean"] + s["std"]) for s in rows) * 100
    span = max(hi - lo, 4.0)
    ax.set_xlim(lo - 0.1 * span, hi + 0.45 * span)  # room for the labels
    ax.grid(axis="y", visible=False)
    ax.set_xlabel("quantized test accuracy (%)")
    ax.set_title("Spread over seeds: mean ± std (gray dots: single seeds)")
    return _svg(fig)


# ------------------------------------------------------------------------ HTML

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:0;
 color:#1d2430;background:#f6f7f9;line-height:1.45}
main{max-width:1320px;margin:0 auto;padding:24px 28px 60px}
h1{margin:0 0 4px;font-size:26px} h2{margin:34px 0 8px;font-size:19px;border-bottom:2px solid #dde1e7;
 padding-bottom:4px}
.sub{color:#5a6473;font-size:13px} .sub code{font-size:12px}
.cards{display:flex;gap:12px;flex-wrap:wrap;margin:16px 0}
.card{background:#fff;border:1px solid #dde1e7;border-radius:8px;padding:10px 16px;min-width:120px}
.card b{display:block;font-size:22px} .card span{color:#5a6473;font-size:12px}
.card.bad b{color:#b42318} .card.warn b{color:#a15c07} .card.good b{color:#1a7f37}
.fig{background:#fff;border:1px solid #dde1e7;border-radius:8px;padding:10px;overflow-x:auto}
.fig svg{max-width:100%;height:auto;display:block;margin:0 auto}
.cap{color:#5a6473;font-size:13px;margin:6px 2px 0}
.note{background:#fff;border:1px dashed #c3c9d3;border-radius:8px;padding:12px 16px;color:#5a6473}
.tablewrap{overflow:auto;max-height:80vh;background:#fff;border:1px solid #dde1e7;border-radius:8px}
table{border-collapse:collapse;font-size:12.5px;width:max-content;min-width:100%}
th,td{padding:5px 9px;border-bottom:1px solid #eceff3;text-align:left;vertical-align:top}
td.num{text-align:right;font-variant-numeric:tabular-nums}
thead th{position:sticky;top:0;background:#eef1f5;cursor:pointer;white-space:nowrap;z-index:1}
thead th:hover{background:#e1e6ed}
tbody tr:hover{background:#f3f6fa}
tr.failed{background:#fdecea} tr.incomplete{background:#fff6e0}
.st{font-weight:600;border-radius:4px;padding:1px 6px;font-size:11.5px}
.st.ok{background:#dafbe1;color:#1a7f37} .st.failed{background:#ffd8d3;color:#b42318}
.st.incomplete{background:#fff0c2;color:#a15c07}
td.err{max-width:520px;white-space:pre-wrap;font-family:ui-monospace,Menlo,Consolas,monospace;
 font-size:11.5px;color:#8c1d13}
"""

_SORT_JS = """
document.querySelectorAll("table.sortable").forEach(function(t){
  t.querySelectorAll("thead th").forEach(function(th,i){
    th.title="click to sort";
    th.addEventListener("click",function(){
      var asc=th.dataset.dir!=="asc"; th.dataset.dir=asc?"asc":"desc";
      var body=t.tBodies[0], rows=Array.prototype.slice.call(body.rows);
      rows.sort(function(a,b){
        var x=a.cells[i].dataset.v!==undefined?a.cells[i].dataset.v:a.cells[i].textContent;
        var y=b.cells[i].dataset.v!==undefined?b.cells[i].dataset.v:b.cells[i].textContent;
        var nx=parseFloat(x), ny=parseFloat(y);
        if(x===""&&y!=="")return 1; if(y===""&&x!=="")return -1;
        var c=(!isNaN(nx)&&!isNaN(ny))?nx-ny:String(x).localeCompare(String(y),undefined,{numeric:true});
        return asc?c:-c;});
      rows.forEach(function(r){body.appendChild(r);});
    });
  });
});
"""


def _fmt(column: str, value: Any) -> str:
    """Format a value as shown in the HTML table."""
    if value is None or value == "":
        return "–"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        if "accuracy" in column or column.endswith("_drop"):
            return f"{100 * value:.2f} %"
        if column.startswith("weight_bytes"):
            return f"{value:,.0f}"
        return f"{value:.4g}"
    if isinstance(value, int) and column.startswith("weight_bytes"):
        return f"{value:,}"
    return str(value)


def _td(column: str, value: Any) -> str:
    e = html.escape
    if column == "status":
        return f'<td><span class="st {e(str(value))}">{e(str(value))}</span></td>'
    if column == "error":
        return f'<td class="err">{e(str(value or ""))}</td>'
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f'<td class="num" data-v="{value!r}">{e(_fmt(column, value))}</td>'
    return f'<td data-v="{e(str(value if value is not None else ""))}">{e(_fmt(column, value))}</td>'


def _html_columns(cols: Sequence[str]) -> list[str]:
    """Reorder the CSV columns for reading: names and key metrics first, paths last."""
    first = ["run", "status", "recipe", "mode", "seed", "neuron", "data", "quant_accuracy",
             "fp32_accuracy", "accuracy_drop", "weight_bytes_quant", "weight_bytes_fp32",
             "bits_per_weight", "spike_rate/mean", "synaptic_ops_per_sample"]
    last = ["config", "overrides", *(c for c in cols if c.startswith("override/")), "error", "run_dir"]
    head = [c for c in first if c in cols]
    tail = [c for c in last if c in cols]
    return head + [c for c in cols if c not in head and c not in tail] + tail


def _table(rows: Sequence[Mapping[str, Any]], cols: Sequence[str], cls: str = "sortable") -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "\n".join(
        f'<tr class="{html.escape(str(r.get("status", "")))}">' + "".join(_td(c, r.get(c)) for c in cols)
        + "</tr>"
        for r in rows
    )
    return (f'<div class="tablewrap"><table class="{cls}"><thead><tr>{head}</tr></thead>'
            f"<tbody>\n{body}\n</tbody></table></div>")


def _section(title: str, figure: str | None, caption: str, empty: str) -> str:
    inner = f"{figure}<p class=\"cap\">{caption}</p>" if figure else f'<p class="note">{empty}</p>'
    return f"<h2>{html.escape(title)}</h2>\n{inner}"


def render_html(runs: Sequence[Run], sources: Sequence[str | Path]) -> str:
    """Render the report page: summary, plots (inline SVG), failures and the full table.

    Args:
        runs: the runs, as :func:`collect` returns them.
        sources: the directories the report was built from (shown in the header).

    Returns:
        One self-contained HTML document.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    style = _Style(runs)
    counts = {s: sum(r.row["status"] == s for r in runs) for s in ("ok", "failed", "incomplete")}
    other = len(runs) - sum(counts.values())
    stats = seed_stats(runs)
    with plt.rc_context(_rc()):
        pareto = plot_pareto(runs, style)
        heat = plot_drop_heatmap(runs, style)
        curves = plot_curves(runs, style)
        seeds = plot_seeds(stats, style)

    ok_runs = [r for r in runs if r.ok and r.get("quant_accuracy") is not None]
    best = max(ok_runs, key=lambda r: (r.get("quant_accuracy"), -(r.get("weight_bytes_quant") or 0)),
               default=None)
    cards = [
        ("", str(len(runs)), "runs"),
        ("good", str(counts["ok"]), "ok"),
        ("bad" if counts["failed"] else "", str(counts["failed"] + other), "failed"),
        ("warn" if counts["incomplete"] else "", str(counts["incomplete"]), "incomplete"),
    ]
    if best is not None:
        cards.append(("", f"{100 * best.get('quant_accuracy'):.1f} %",
                      f"best quantized accuracy: {best.get('config')}"))
    cards_html = "".join(
        f'<div class="card {c}"><b>{html.escape(v)}</b><span>{html.escape(t)}</span></div>'
        for c, v, t in cards
    )
    src = ", ".join(f"<code>{html.escape(str(Path(s).resolve()))}</code>" for s in sources)
    now = datetime.now().strftime("%Y-%m-%d %H:%M")

    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>snnexp sweep report</title>",
        f"<style>{_CSS}</style></head><body><main>",
        "<h1>snnexp sweep report</h1>",
        f'<div class="sub">from {src} · generated {now} · table: <code>results.csv</code></div>',
        f'<div class="cards">{cards_html}</div>',
    ]
    bad = sorted((r for r in runs if not r.ok),
                 key=lambda r: (_STATUS_ORDER.get(r.row["status"], 2), _natural_key(Path(r.row["run"]))))
    if bad:
        parts.append("<h2>Failed and incomplete runs</h2>")
        parts.append(_table([r.row for r in bad], ["run", "status", "overrides", "error", "run_dir"]))
    parts.append(_section(
        "Accuracy vs. memory", pareto,
        "Each point is one finished run: the test accuracy of the network converted to integer weights "
        "against the bytes its weights take (runs of equal size are spread slightly sideways so that none "
        "hides another). Color: recipe; marker: mode. The dashed step line joins the "
        "Pareto front (no other run is both smaller and more accurate); its points are circled and named.",
        "No finished run reports quant_accuracy and weight_bytes_quant."))
    parts.append(_section(
        "Accuracy drop per recipe and mode", heat,
        "fp32 accuracy minus quantized accuracy, in percentage points, averaged over all finished runs of "
        "each cell (seeds and any other swept setting); n = number of runs. Red: the quantized network is "
        "worse; blue: better. Quantized training (qt) has no fp32 phase and so no drop.",
        "No finished run reports an accuracy drop (qt runs have none)."))
    parts.append(_section(
        "Training curves", curves,
        "Test accuracy after each epoch (history.jsonl): solid during fp32 training, dashed during "
        "quantized training; the star is the final accuracy of the deployed integer network. Runs that "
        "differ only in their seed are averaged, the band is ± 1 standard deviation.",
        "No run has a history.jsonl with test accuracies."))
    seed_table = ""
    if stats:
        seed_rows = [{
            "config": s["config"], "n": s["n"], "seeds": ", ".join(map(str, s["seeds"])),
            "quant_accuracy mean": s["mean"], "quant_accuracy std": s["std"],
            "quant_accuracy min": s["min"], "quant_accuracy max": s["max"],
            "accuracy_drop mean": s["drop_mean"],
        } for s in stats]
        seed_table = '<p class="cap">The same numbers:</p>' + _table(seed_rows, list(seed_rows[0]))
    parts.append(_section(
        "Mean and spread over seeds", seeds,
        "Configurations run with more than one seed (same overrides apart from seed): mean ± sample "
        "standard deviation of the quantized test accuracy; gray dots are the single runs. A difference "
        "between two configurations smaller than their spread is noise.",
        "No configuration was run more than once; repeat a sweep over seeds (e.g. "
        "<code>seed=0,1,2</code>) to see the spread.") + seed_table)
    parts.append("<h2>All runs</h2>")
    parts.append('<p class="cap">Click a column header to sort. Accuracies in %, '
                 "weight bytes in bytes; every column is also in <code>results.csv</code>.</p>")
    parts.append(_table([r.row for r in runs], _html_columns(columns([r.row for r in runs]))))
    parts.append(f"</main><script>{_SORT_JS}</script></body></html>")
    return "\n".join(parts) + "\n"


# ---------------------------------------------------------------- entry points


def console_table(rows: Sequence[Mapping[str, Any]], max_error: int = 60) -> str:
    """Format a short text table of the runs for the terminal."""
    cols = [("run", "run"), ("status", "status"), ("recipe", "recipe"), ("mode", "mode"),
            ("seed", "seed"), ("quant acc", "quant_accuracy"), ("drop", "accuracy_drop"),
            ("bytes", "weight_bytes_quant"), ("error", "error")]

    def cell(key: str, value: Any) -> str:
        if value is None or value == "":
            return "-"
        if key in ("quant_accuracy", "accuracy_drop"):
            return f"{100 * float(value):.2f}%"
        if key == "weight_bytes_quant":
            return f"{float(value):.0f}"
        text = str(value).replace("\n", " ")
        return text if len(text) <= max_error else text[: max_error - 1] + "…"

    table = [[cell(k, r.get(k)) if not (k == "error" and r.get("status") == "ok") else "" for _, k in cols]
             for r in rows]
    widths = [max(len(h), *(len(t[i]) for t in table)) for i, (h, _) in enumerate(cols)]
    lines = ["  ".join(h.ljust(w) for (h, _), w in zip(cols, widths)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(t, widths)).rstrip() for t in table]
    return "\n".join(lines)


def build_report(dirs: Sequence[str | Path], out_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """Read every run under ``dirs`` and write ``results.csv`` and ``report.html``.

    Args:
        dirs: run directories, multirun directories or parents of multiruns.
        out_dir: where to write the two files (created if missing); default:
            the first of ``dirs``.

    Returns:
        The rows of ``results.csv`` (plain Python values; None where missing).

    Raises:
        ReportError: no directories given, a directory does not exist, or one
            holds no runs.
    """
    if isinstance(dirs, (str, Path)):
        dirs = [dirs]
    if not dirs:
        raise ReportError("no directories given")
    runs = collect(dirs)
    out = Path(out_dir) if out_dir is not None else Path(dirs[0])
    out.mkdir(parents=True, exist_ok=True)
    rows = [r.row for r in runs]
    write_csv(rows, out / "results.csv")
    (out / "report.html").write_text(render_html(runs, dirs), encoding="utf-8")
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m snnexp.report DIR [DIR ...] [--out OUTDIR]``."""
    parser = argparse.ArgumentParser(
        prog="python -m snnexp.report",
        description="Collect the runs of one or several Hydra multiruns into results.csv and an "
                    "offline report.html.",
    )
    parser.add_argument("dirs", nargs="+", metavar="DIR",
                        help="a multirun directory, a parent of several, or a single run directory")
    parser.add_argument("--out", metavar="OUTDIR", default=None,
                        help="where to write results.csv and report.html (default: the first DIR)")
    args = parser.parse_args(argv)
    try:
        rows = build_report(args.dirs, args.out)
    except ReportError as e:
        parser.error(str(e))
    out = Path(args.out or args.dirs[0]).resolve()
    print(console_table(rows))
    n_ok = sum(r["status"] == "ok" for r in rows)
    print(f"\n{len(rows)} runs ({n_ok} ok, {len(rows) - n_ok} not)")
    print(f"wrote {out / 'results.csv'}")
    print(f"wrote {out / 'report.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
