"""``python -m snnexp.report DIR [DIR ...] [--out DIR] [--watch] [--label a,b]``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from snnexp.report.make import ReportError, build_report, console_table, summary_line, watch


def main(argv: Sequence[str] | None = None) -> int:
    """Write ``results.csv`` and ``report.html`` for the runs under the given directories."""
    parser = argparse.ArgumentParser(
        prog="python -m snnexp.report",
        description="Collect the runs of one or several Hydra multiruns into results.csv and an interactive, "
                    "offline report.html.")
    parser.add_argument("dirs", nargs="+", metavar="DIR",
                        help="a multirun directory, a parent of several, or a single run directory")
    parser.add_argument("--out", metavar="OUTDIR", default=None,
                        help="where to write results.csv and report.html (default: the first DIR)")
    parser.add_argument("--label", default=None, metavar="A,B",
                        help="compare: one label per DIR (comma-separated), overlaid in every view")
    parser.add_argument("--watch", action="store_true",
                        help="rewrite the report as jobs finish (the open page reloads itself); Ctrl-C stops")
    parser.add_argument("--interval", type=float, default=5.0, help="--watch: seconds between looks (default 5)")
    parser.add_argument("--timeout", type=float, default=None, help="--watch: stop after this many seconds")
    parser.add_argument("--idle", type=float, default=None,
                        help="--watch: stop once no run is running and nothing changed for this many seconds")
    args = parser.parse_args(argv)
    labels = [s.strip() for s in args.label.split(",")] if args.label else None
    if labels is not None and len(labels) != len(args.dirs):
        parser.error(f"--label names {len(labels)} sources for {len(args.dirs)} directories: give one per DIR")
    if args.interval <= 0:
        parser.error(f"--interval={args.interval}: must be > 0")
    out = Path(args.out or args.dirs[0]).resolve()
    if args.watch:
        print(f"watching {', '.join(args.dirs)} every {args.interval:g} s; open {out / 'report.html'} "
              "(it reloads itself); Ctrl-C stops", flush=True)
        runs = watch(args.dirs, args.out, labels, interval=args.interval, timeout=args.timeout, idle=args.idle,
                     echo=lambda s: print(s, flush=True))
        if runs is None:
            print("no runs found", file=sys.stderr)
            return 2
    else:
        try:
            runs = build_report(args.dirs, args.out, labels)
        except ReportError as e:
            parser.error(str(e))
    print(console_table(runs.table))
    print(f"\n{summary_line(runs.table)}")
    print(f"wrote {out / 'results.csv'}")
    print(f"wrote {out / 'report.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
