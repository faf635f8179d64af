"""Sweep results -> ``results.csv`` and one interactive, offline ``report.html``.

A Hydra multirun leaves one directory per job. :mod:`.jobdir` reads one, :mod:`.collect` all into
one pandas DataFrame (status, overrides, config keys, every metric),
:mod:`.analysis` derives the Pareto front, seed spread, drop grid and parameter
importance, :mod:`.figures` and :mod:`.figures_agg` draw plotly figures,
:mod:`.page` renders them with a jinja2 template into one page that opens
offline, and :mod:`.make` writes it once or as jobs finish (``--watch``);
:mod:`.callback` is a Hydra callback that does so for a running sweep.

    python -m snnexp.report outputs/multirun/2026-11-22/07-59-31
    python -m snnexp.report A B --label before,after --out reports/compare
    python -m snnexp.report outputs/multirun/<date>/<time> --watch
"""

from snnexp.report.analysis import pareto_front, seed_stats
from snnexp.report.collect import ReportError, Runs, collect, find_runs, swept_keys
from snnexp.report.make import build_report, console_table, watch

__all__ = ["ReportError", "Runs", "build_report", "collect", "console_table", "find_runs", "pareto_front",
           "seed_stats", "swept_keys", "watch"]
