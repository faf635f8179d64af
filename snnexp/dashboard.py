"""A W&B workspace for one sweep group, built with ``wandb-workspaces``: the report's views, on W&B.

    python -m snnexp.dashboard wandb --project snnexp --group lr-search
    python -m snnexp.dashboard wandb --project snnexp --group lr-search --from outputs/multirun/<date>/<time>
    python -m snnexp.dashboard wandb --project snnexp --group G --dry-run workspace.json

The workspace holds the views of ``python -m snnexp.report``: accuracy against
weight bytes and against synaptic operations, parallel coordinates over the
swept keys and the objective, parameter importance, the accuracy drop per
recipe (bar chart) and the training curves. Every key it names is one a run
logs: summary keys are the flattened ``metrics.json`` (``tracking.flatten``),
history keys the ``history.jsonl`` columns, config keys the resolved config.
``--from DIR`` reads the swept keys and the objective of a local sweep; without
it the usual keys of a quantization sweep are used.

``--dry-run`` writes the specification (the workspace as W&B stores it, and the
keys it reads) as JSON without any server. Saving needs a reachable W&B server
and an API key; without them the command says so and stops: it never hangs.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

#: Swept keys used without ``--from``: recipe, mode, learning rate, seed (config keys of the resolved config).
DEFAULT_SWEPT = ("quant.name", "mode.name", "optim.lr", "seed")
#: Summary keys (flattened ``metrics.json``) the views read.
SUMMARY = {"objective": "quant_accuracy", "bytes": "weight_bytes_quant", "packed": "weight_bytes_packed",
           "ops": "synaptic_ops_per_sample", "drop": "accuracy_drop", "fp32": "fp32_accuracy"}
#: History keys (``history.jsonl``) of the training curves, against ``epoch``.
CURVES = ("fp32/test_accuracy", "quant/test_accuracy", "fp32/train_loss", "quant/train_loss")
SAVE_TIMEOUT_S = 60.0


class DashboardError(RuntimeError):
    """A workspace that cannot be saved (no server, no key) or specified (a bad ``--from``)."""


def keys_from_sweep(directory: str | Path) -> tuple[list[str], str, bool]:
    """The swept config keys, the objective and whether runs report packed bytes, from a local sweep.

    A swept group (``quant=w8a8,w4a8``) becomes its ``name`` key (``quant.name``); a
    swept value (``optim.lr``) stays as it is.
    """
    from snnexp.report import ReportError, collect, swept_keys

    try:
        runs = collect([directory])
    except ReportError as e:
        raise DashboardError(str(e)) from e
    table = runs.table
    keys = []
    for key in swept_keys(table):
        cfg = Path(table["run_dir"].iloc[0]) / "config.yaml"
        group = cfg.exists() and isinstance(_config(cfg).get(key), dict)
        keys.append(f"{key}.name" if group else key)
    objective = str(table["objective"].dropna().mode().iat[0]) if table["objective"].notna().any() \
        else SUMMARY["objective"]
    packed = "weight_bytes_packed" in table and bool(table["weight_bytes_packed"].notna().any())
    return keys, objective, packed


def _config(path: Path) -> dict[str, Any]:
    import yaml

    return yaml.safe_load(path.read_text()) or {}


def build_workspace(project: str, group: str, entity: str | None = None, *, swept: Sequence[str] = DEFAULT_SWEPT,
                    objective: str = SUMMARY["objective"], packed: bool = False, name: str | None = None) -> Any:
    """The workspace for one sweep group (a ``wandb_workspaces.workspaces.Workspace``)."""
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.workspaces as ws

    size = SUMMARY["packed"] if packed else SUMMARY["bytes"]
    acc = wr.SummaryMetric(objective)
    trade_offs = [
        wr.ScatterPlot(title=f"{objective} vs. {size}", x=wr.SummaryMetric(size), y=acc, log_x=True),
        wr.ScatterPlot(title=f"{objective} vs. synaptic operations", x=wr.SummaryMetric(SUMMARY["ops"]), y=acc),
        wr.BarPlot(title="accuracy drop (fp32 phase - quantized) per recipe",
                   metrics=[wr.SummaryMetric(SUMMARY["drop"])], groupby=wr.Config("quant.name"),
                   groupby_aggfunc="mean", groupby_rangefunc="stddev"),
    ]
    sweep = [
        wr.ParallelCoordinatesPlot(title="swept keys and objective", columns=[
            *(wr.ParallelCoordinatesPlotColumn(metric=wr.Config(k), log=k.endswith("lr")) for k in swept),
            wr.ParallelCoordinatesPlotColumn(metric=acc)]),
        wr.ParameterImportancePlot(with_respect_to=objective),
    ]
    curves = [wr.LinePlot(title=key, x="epoch", y=[key]) for key in CURVES]
    return ws.Workspace(
        entity=entity or "", project=project, name=name or f"snnexp sweep {group}",
        sections=[ws.Section(name="Trade-offs", panels=trade_offs, is_open=True),
                  ws.Section(name="Sweep", panels=sweep, is_open=True),
                  ws.Section(name="Training curves", panels=curves, is_open=True)],
        runset_settings=ws.RunsetSettings(filters=ws.And(ws.Metric("Group") == group)))


def spec_keys(spec: dict[str, Any]) -> dict[str, list[str]]:
    """The run keys a stored workspace reads, by where a run logs them: ``summary``, ``config``, ``history``."""
    out: dict[str, set[str]] = {"summary": set(), "config": set(), "history": set()}

    def accessor(text: str) -> None:
        section, _, key = text.partition(":")
        if section == "summary":
            out["summary"].add(key)
        elif section == "config":
            out["config"].add(key.replace(".value", "", 1))

    for section in spec["spec"]["section"]["panelBankConfig"]["sections"]:
        for panel in section["panels"]:
            cfg, kind = panel["config"], panel["viewType"]
            if kind == "Scatter Plot":
                accessor(cfg["xAxis"])
                accessor(cfg["yAxis"])
            elif kind == "Parallel Coordinates Plot":
                for col in cfg["columns"]:
                    accessor(col["accessor"])
            elif kind == "Parameter Importance":
                out["summary"].add(cfg["targetKey"])
            elif kind == "Bar Chart":
                out["summary"].update(m.removeprefix("summary_metrics.") for m in cfg["metrics"])
                out["config"].add(cfg["groupBy"].replace(".value", "", 1))
            elif kind == "Run History Line Plot":
                out["history"].update([cfg["xAxis"], *cfg["metrics"]])
    return {k: sorted(v) for k, v in out.items()}


def specification(workspace: Any) -> dict[str, Any]:
    """The workspace as W&B stores it (``workspace``) and the run keys it reads (``keys``)."""
    spec = workspace._to_model().model_dump(mode="json", by_alias=True, exclude_none=True)
    return {"workspace": spec, "keys": spec_keys(spec)}


def _reachable(base_url: str, timeout: float = 5.0) -> str | None:
    """None when a TCP connection to the W&B server opens within ``timeout``, else why not."""
    url = urlparse(base_url)
    host, port = url.hostname or "", url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as e:
        return f"{type(e).__name__}: {e}"


def save(workspace: Any, timeout: float = SAVE_TIMEOUT_S) -> str:
    """Save the workspace to W&B and return its URL.

    Raises:
        DashboardError: no API key, the server is not reachable, or saving did not finish within ``timeout``.
    """
    base_url = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
    why = _reachable(base_url)
    if why is not None:
        raise DashboardError(f"W&B server {base_url} is not reachable ({why}); nothing saved. "
                             "Use --dry-run to write the specification without a server.")
    import wandb

    if not (os.environ.get("WANDB_API_KEY") or wandb.Api(timeout=10).api_key):
        raise DashboardError("no W&B API key (run `wandb login` or set WANDB_API_KEY); nothing saved")
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["url"] = workspace.save().url
        except Exception as e:  # noqa: BLE001 - reported below with its type
            result["error"] = f"{type(e).__name__}: {e}"

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise DashboardError(f"saving to {base_url} did not finish within {timeout:g} s; nothing confirmed")
    if "error" in result:
        raise DashboardError(f"saving to {base_url} failed: {result['error']}")
    return str(result["url"])


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m snnexp.dashboard wandb --project P [--entity E] --group G [--dry-run OUT.json]``."""
    parser = argparse.ArgumentParser(prog="python -m snnexp.dashboard", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="backend", required=True)
    p = sub.add_parser("wandb", help="a W&B workspace for one sweep group")
    p.add_argument("--project", required=True)
    p.add_argument("--entity", default=None, help="W&B entity (default: your default entity)")
    p.add_argument("--group", required=True, help="the sweep's W&B group (logger.group)")
    p.add_argument("--name", default=None, help="the workspace's name (default: 'snnexp sweep GROUP')")
    p.add_argument("--from", dest="source", default=None, metavar="DIR",
                   help="a local multirun directory: take its swept keys and objective")
    p.add_argument("--dry-run", default=None, metavar="OUT.json",
                   help="write the specification as JSON instead of saving (no server needed)")
    args = parser.parse_args(argv)
    try:
        swept, objective, packed = keys_from_sweep(args.source) if args.source else (DEFAULT_SWEPT, "quant_accuracy",
                                                                                      False)
        workspace = build_workspace(args.project, args.group, args.entity, swept=swept, objective=objective,
                                    packed=packed, name=args.name)
        if args.dry_run:
            Path(args.dry_run).write_text(json.dumps(specification(workspace), indent=2) + "\n")
            print(f"wrote {Path(args.dry_run).resolve()} (dry run: nothing sent to W&B)")
            return 0
        print(f"saved {save(workspace)}")
    except DashboardError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
