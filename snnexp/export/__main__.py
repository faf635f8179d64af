"""``python -m snnexp.export RUN_DIR [--out DIR] [--hardware PROFILE] [--dt SECONDS]``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    """Exports a finished run; a run that cannot be exported is one line on stderr and exit 2."""
    parser = argparse.ArgumentParser(prog="python -m snnexp.export", description=(
        "Write a finished run's deployed network as network.nir plus the integer sidecar "
        "(integer.npz, integer.json; schema: docs/export.md)."))
    parser.add_argument("run_dir", type=Path, help="a finished run directory (outputs/<date>/<time>)")
    parser.add_argument("--out", type=Path, default=None, help="export directory (default RUN_DIR/export)")
    parser.add_argument("--hardware", default=None,
                        help="map a hardware=float run onto a profile now: int, loihi, xylo or a YAML file")
    parser.add_argument("--dt", type=float, default=None, help="seconds per time step stated in the files (1e-3)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from snnexp.errors import USER_ERRORS
    from snnexp.export import DT, ExportError, export

    try:
        written = export(args.run_dir, args.out, hardware=args.hardware, dt=args.dt or DT)
    except (ExportError, *USER_ERRORS) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
