"""Exporting a finished run for hardware: ``python -m snnexp.export RUN_DIR [--out DIR]``.

* ``network.nir``: the deployed network as a NIR graph (``nir_graph``): float
  weights that are exactly its codes x scales, read by other frameworks;
* ``integer.npz`` + ``integer.json``: the integer sidecar (``sidecar``), what
  NIR cannot hold, which ``snnexp.reference`` runs spike for spike.

The schema of both is docs/export.md; ``export`` is the one entry point.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np

from snnexp.errors import ConfigError

log = logging.getLogger(__name__)
DT = 1e-3  # seconds per step stated in network.nir and integer.json


class ExportError(ConfigError):
    """A run that cannot be exported; the message says why."""


def export(run_dir: Path, out: Path | None = None, *, hardware: str | None = None, dt: float = DT) -> list[Path]:
    """Writes ``network.nir`` and, where the run has integer neuron state, the integer sidecar.

    Args:
        run_dir: a finished snnexp run (any mode).
        out: the export directory (default ``RUN_DIR/export``); replaced as a whole,
            only once everything is written.
        hardware: a profile name (``int``, ``loihi``, ``xylo``) or a profile YAML
            file, to map a run trained with ``hardware=float`` onto integers now
            (post-training: its data are loaded for the input coding). A run
            trained for a profile exports its own sidecar.
        dt: the time step in seconds stated in the files.

    Returns:
        The paths written.

    Raises:
        ExportError: the run has no deployed network (unfinished, failed or
            not an snnexp run), or no integer form.
    """
    from omegaconf import OmegaConf

    from snnexp import build, rundir
    from snnexp.export import nir_graph, sidecar
    from snnexp.hardware import integer

    run_dir = Path(run_dir)
    profile_file = _profile_file(hardware) if hardware is not None else None  # a bad name fails first
    status = rundir.read_json(run_dir / "status.json", {})
    if status.get("status") != "ok":
        state = status.get("status", "no status.json")
        why = f": {status['error']}" if status.get("error") else ""
        raise ExportError(f"{run_dir} has no deployed network to export (status: {state}{why}); "
                          "export a run whose status.json reads ok")
    try:
        cfg, deployed = rundir.load_deployed(run_dir)
    except FileNotFoundError as e:
        raise ExportError(f"{e}; nothing to export") from None
    out = Path(out) if out is not None else run_dir / "export"
    tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=out.parent if out.parent.exists() else None))
    try:
        nir_graph.write_nir(nir_graph.to_nir(nir_graph.dequantized_model(cfg, deployed), dt), tmp / "network.nir")
        own = run_dir / "integer"
        if hardware is None and (own / "integer.json").exists():
            for name in ("integer.npz", "integer.json"):
                shutil.copy2(own / name, tmp / name)
            _set_dt(tmp / "integer.json", dt)
        elif profile_file is not None:
            profile = build.hardware(OmegaConf.create({"hardware": OmegaConf.load(profile_file)}))
            data = build.data(cfg)
            net = integer.IntegerNetwork.from_deployed(deployed, build.rules(cfg), profile, np.asarray(data.x_train))
            sidecar.write(net, tmp, dt=dt, source={"run": str(run_dir), "recipe": cfg.quant.name,
                                                    "mode": cfg.mode.name, "mapped_after_training": True})
        else:
            log.warning("%s was trained with hardware=float: its neuron state has no integer form, so only "
                        "network.nir is written; --hardware int|loihi|xylo maps it onto a profile now", run_dir)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return sorted(out.iterdir())


def _profile_file(hardware: str) -> Path:
    """The YAML of ``--hardware``: a file, or a profile of ``conf/hardware`` by name."""
    if hardware.endswith(".yaml"):
        path = Path(hardware)
        if not path.is_file():
            raise ExportError(f"--hardware {hardware}: no such file")
        return path
    conf = Path(__file__).resolve().parents[2] / "conf" / "hardware"
    names = sorted(p.stem for p in conf.glob("*.yaml") if p.stem != "float")
    if hardware not in names:
        raise ExportError(f"--hardware {hardware!r}; valid choices: {', '.join(names)} or a profile .yaml file")
    return conf / f"{hardware}.yaml"


def _set_dt(path: Path, dt: float) -> None:
    meta = json.loads(path.read_text())
    meta["dt"] = dt
    path.write_text(json.dumps(meta, indent=2) + "\n")
