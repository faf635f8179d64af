"""Writing the report: ``results.csv`` and ``report.html``, once or again as jobs finish (``--watch``).

The page is written to a temporary file and renamed, so a browser reloading it
while ``--watch`` rewrites it never reads half a page.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from snnexp.report.collect import ReportError, Runs, collect, find_runs, swept_keys, write_csv
from snnexp.report.page import render

WATCHED_FILES = ("status.json", "metrics.json", "history.jsonl")


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def build_report(dirs: Sequence[str | Path], out_dir: str | Path | None = None,
                 labels: Sequence[str] | None = None, *, refresh_s: float | None = None) -> Runs:
    """Read every run under ``dirs`` and write ``results.csv`` and ``report.html``.

    Args:
        dirs: run directories, multirun directories or parents of multiruns.
        out_dir: where to write the two files (created if missing); default: the first of ``dirs``.
        labels: one label per directory to compare sweeps (the ``source`` column).
        refresh_s: make the page reload itself this often (while watching).

    Returns:
        The runs that were read.

    Raises:
        ReportError: no directories, a missing directory, one without runs, or labels that do not match.
    """
    if isinstance(dirs, str | Path):
        dirs = [dirs]
    if not dirs:
        raise ReportError("no directories given")
    runs = collect(dirs, labels)
    out = Path(out_dir) if out_dir is not None else Path(dirs[0])
    out.mkdir(parents=True, exist_ok=True)
    write_csv(runs.table, out / "results.csv")
    _write_atomic(out / "report.html", render(runs, list(dirs), refresh_s=refresh_s))
    return runs


def _cell(key: str, value: Any, width: int = 60) -> str:
    if value is None or (not isinstance(value, str) and pd.isna(value)) or value == "":
        return "-"
    if key in ("quant_accuracy", "accuracy_drop"):
        return f"{100 * float(value):.2f}%"
    if key == "memory_bytes":
        return f"{float(value):.0f}"
    if isinstance(value, float) and key == "last_epoch":
        return f"{value:.0f}"
    text = str(value).replace("\n", " ")
    if key == "run" and len(text) > 40:  # a search's job folders are named by their overrides: keep the end
        return "…" + text[-39:]
    return text if len(text) <= width else text[: width - 1] + "…"


def console_table(table: pd.DataFrame) -> str:
    """A short text table of the runs for the terminal, with a column per swept key (the lr of a search)."""
    swept = [k for k in swept_keys(table) if k not in ("quant", "mode", "seed")]
    cols = [("run", "run")]
    if table["source"].ne("").any():
        cols.append(("source", "source"))
    cols += [("status", "status"), ("recipe", "recipe"), ("mode", "mode"), ("seed", "seed"),
             *((k, f"param/{k}") for k in swept), ("quant acc", "quant_accuracy"), ("drop", "accuracy_drop"),
             ("mem bytes", "memory_bytes"), ("epoch", "last_epoch"), ("error", "error")]
    def shown(key: str, row: dict[str, Any]) -> str:
        if key == "error" and row.get("status") == "ok":
            return ""
        if key == "accuracy_drop" and row.get("recipe") == "fp32":
            return "n/a"  # the fp32 recipe against its own fp32 phase is no drop
        return _cell(key, row.get(key))

    cells = [[shown(k, row) for _, k in cols] for row in table.to_dict("records")]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, (h, _) in enumerate(cols)]
    lines = ["  ".join(h.ljust(w) for (h, _), w in zip(cols, widths)).rstrip(), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in cells]
    return "\n".join(lines)


def summary_line(table: pd.DataFrame) -> str:
    """``12 runs: 10 ok, 1 running, 1 failed``."""
    counts = table["status"].value_counts()
    return f"{len(table)} runs: " + ", ".join(f"{n} {s}" for s, n in counts.items())


def fingerprint(dirs: Sequence[str | Path]) -> tuple:
    """What changes when a job starts, logs an epoch or ends: the run dirs and their record files' sizes/times."""
    out = []
    for d in dirs:
        if not Path(d).is_dir():
            continue
        for run in find_runs(Path(d)):
            for name in WATCHED_FILES:
                p = run / name
                st = p.stat() if p.exists() else None
                out.append((str(run), name, st.st_mtime_ns if st else 0, st.st_size if st else -1))
    return tuple(out)


def watch(dirs: Sequence[str | Path], out_dir: str | Path | None = None, labels: Sequence[str] | None = None, *,
          interval: float = 5.0, timeout: float | None = None, idle: float | None = None,
          echo: Callable[[str], None] = print) -> Runs | None:
    """Rewrite the report whenever a run changes, until Ctrl-C, ``timeout`` or ``idle``.

    The page written while watching reloads itself (keeping its filter and
    scroll position); the last one, written on the way out, does not.

    Args:
        dirs: as for :func:`build_report`; they may not exist yet (a sweep about to start).
        out_dir: as for :func:`build_report`.
        labels: as for :func:`build_report`.
        interval: seconds between two looks at the directories.
        timeout: stop after this many seconds (None: no limit).
        idle: stop once no run is running and nothing changed for this many seconds (None: never).
        echo: where to say what was written.

    Returns:
        The runs of the last report written (None if no run ever appeared).
    """
    start = time.monotonic()
    last, changed, runs = None, start, None
    refresh = max(2.0, float(interval))
    try:
        while True:
            now = time.monotonic()
            fp = fingerprint(dirs)
            if fp != last:
                try:
                    runs = build_report(dirs, out_dir, labels, refresh_s=refresh)
                    echo(f"[{time.strftime('%H:%M:%S')}] report rewritten: {summary_line(runs.table)}")
                    last = fp
                except ReportError as e:
                    echo(f"[{time.strftime('%H:%M:%S')}] waiting for runs ({e})")
                    last = fp
                changed = now
            running = runs is not None and runs.table["status"].eq("running").any()
            if timeout is not None and now - start >= timeout:
                echo(f"watched for {timeout:g} s: stopping")
                break
            if idle is not None and runs is not None and not running and now - changed >= idle:
                echo(f"no run running and nothing changed for {idle:g} s: stopping")
                break
            time.sleep(interval)
    except KeyboardInterrupt:
        echo("stopped (Ctrl-C)")
    if runs is not None or any(Path(d).is_dir() for d in dirs):
        try:
            runs = build_report(dirs, out_dir, labels)
        except ReportError as e:
            echo(f"no report written: {e}")
    return runs
