"""The fp32 network cache: the jobs of a sweep that share an fp32 phase train it once.

``qat``, ``ptq`` and ``srq`` all start by training the same float network
(``fp32_phase``); in a recipes x modes sweep 15 of 20 jobs would train the
identical network. With ``fp32_cache=true`` (the default) the fp32 phase is
stored under a key made from everything that determines it, and every job
with that key reuses it:

* the **key** is the SHA-256 of the canonical JSON of ``keyed_config``: the
  resolved ``data``, ``model``, ``neuron``, ``surrogate`` and ``optim`` groups
  (schedule, learning rate, gradient clipping included), ``seed``, the
  batch sizes, the fp32 epochs, and the ``environment`` (snnexp's version and
  a hash of its source, the versions of jax, jaxlib, flax, optax, spyx,
  numpy, scikit-learn and orbax, the backend and device kind, x64 and matmul
  precision, ``XLA_FLAGS``). Nothing else enters it: not the recipe, the mode's
  name, its other knobs, the hardware profile (``build.network`` leaves the
  float network as it is built), the logger, ``trainer.steps_per_call`` and
  ``trainer.checkpoint_every`` (the same training, cut into other calls),
  ``resume``, ``report``, ``objective``, ``compile_cache``;
* an **entry** is a directory ``<fp32_cache_dir>/<key>/`` holding the orbax
  checkpoint of the trained network (``checkpoint/``) and ``entry.json``: the
  keyed config, the phase's test evaluation, its steps and seconds, its
  per-epoch history rows, and which run trained it. It is written into a
  temporary directory beside it (``<key>.tmp-*``) and renamed into place
  when complete, so an entry is never seen half-written; a temporary
  directory left by a killed job is ignored, and removed by the next writer;
* **one job trains it**: a job without the entry takes the key's lock
  (``<key>.lock``, ``fcntl.flock`` through ``filelock``), looks again, and
  trains only if the entry is still missing; the others wait on the lock
  (saying for whom, from ``<key>.owner.json``), then reuse the entry. A job
  that dies while training releases the lock with its process, and the next
  waiter trains. A file system without ``flock`` gets no coordination (each
  job may train), but entries stay atomic.

``snnexp.shared_cache.EntryCache`` is that protocol, for any entry;
``fp32_network`` is the fp32 phase's use of it (called by
``snnexp.train.pipelines.fp32_phase``).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax
import numpy as np
from flax import nnx

import snnexp
from snnexp import checkpoint
from snnexp.rundir import write_json
from snnexp.shared_cache import EntryCache
from snnexp.train.loop import FitResult, Progress

if TYPE_CHECKING:
    from snnexp.train.pipelines import Setup

log = logging.getLogger(__name__)

FORMAT = 1  # of keyed_config; a change makes new keys
KEY_CHARS = 24  # hex digits of the SHA-256 kept in the key (96 bits)
# The groups of the resolved config that determine the fp32 network, whole.
GROUPS = ("data", "model", "neuron", "surrogate", "optim")
# Trainer settings that do: the batches, their augmentation (and the evaluation that the history records).
TRAINER = ("batch_size", "eval_batch_size", "augment")
# Packages whose versions can change the trained network or the stored checkpoint.
PACKAGES = ("jax", "jaxlib", "flax", "optax", "spyx", "numpy", "scikit-learn", "orbax-checkpoint")


# ------------------------------------------------------------------ the key


def canonical_json(value: Any) -> str:
    """``value`` as canonical JSON: sorted keys, no spaces, ASCII; NaN refused."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def key_of(keyed: dict[str, Any]) -> str:
    """The key of a keyed config: the first ``KEY_CHARS`` hex digits of the SHA-256 of its canonical JSON."""
    return hashlib.sha256(canonical_json(keyed).encode()).hexdigest()[:KEY_CHARS]


@functools.cache
def source_hash() -> str:
    """SHA-256 of snnexp's Python source (every ``snnexp/**/*.py``, path and content): any edit changes it."""
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def environment() -> dict[str, Any]:
    """What besides the config decides the trained numbers: code, package versions, device, numerics flags."""

    def version(name: str) -> str | None:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    device = jax.devices()[0]
    return {
        "snnexp": snnexp.__version__,
        "source": source_hash(),
        "packages": {name: version(name) for name in PACKAGES},
        "backend": jax.default_backend(),
        "device_kind": device.device_kind,
        "x64": bool(jax.config.jax_enable_x64),
        "matmul_precision": jax.config.jax_default_matmul_precision,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


def keyed_config(resolved: dict[str, Any], epochs: int, env: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything that determines the fp32 phase of a run: what its key hashes, kept readable in the entry.

    Args:
        resolved: the run's resolved config (``OmegaConf.to_container(cfg, resolve=True)``).
        epochs: the fp32 epochs the pipeline trains (``mode.fp32_epochs``).
        env: ``environment()``, computed when None.
    """
    return {
        "format": FORMAT,
        **{group: resolved[group] for group in GROUPS},
        "trainer": {k: resolved["trainer"][k] for k in TRAINER if k in resolved["trainer"]},
        "seed": resolved["seed"],
        "fp32_epochs": int(epochs),
        "environment": environment() if env is None else env,
    }


# ------------------------------------------------------------------ the fp32 phase's use


@dataclass
class Fp32Cache:
    """Where a run's fp32 phase is shared (``fp32_cache_dir``) and what of its config keys it."""

    root: Path
    resolved: dict[str, Any]  # the run's resolved config

    def keyed(self, epochs: int) -> dict[str, Any]:
        """The keyed config of this run's fp32 phase of ``epochs`` epochs."""
        return keyed_config(self.resolved, epochs)


RECORD = "fp32_cache.json"  # in the run's checkpoints/: how its fp32 network came (kept for a resume)


def fp32_network(setup: Setup, cache: Fp32Cache, epochs: int,
                 train: Callable[[], tuple[FitResult, dict[str, Any]]]) -> dict[str, Any]:
    """The fp32 phase through the cache: reuses the entry of its key, or trains (``train``) and stores it.

    A reused network is restored into ``setup.model`` with its history rows
    logged again; the run records a phase of 0 steps (it trained nothing),
    a training-state checkpoint at the phase's end (so that a resume keeps
    that history) and ``checkpoints/fp32_cache.json``, which becomes the
    metrics' ``fp32_cache``.

    Args:
        setup: the run.
        cache: the cache and the run's config.
        epochs: the fp32 epochs.
        train: trains ``setup.model`` in place (recording the phase) and
            returns what it took and the network's test evaluation.

    Returns:
        The fp32 network's test evaluation.
    """
    rd, model, tracker = setup.run_dir, setup.model, setup.trainer.tracker
    keyed = cache.keyed(epochs)
    key = key_of(keyed)
    entries = EntryCache(cache.root, name="fp32 cache")

    def create(tmp: Path) -> dict[str, Any]:
        log.info("fp32 cache: no entry for key %s; training the fp32 network here, then storing it in %s",
                 key, entries.entry_path(key))
        fit, evaluation = train()
        checkpoint.save(tmp / "checkpoint", model)
        history = [r for r in _rows(tracker.history_path) if any(k.startswith("fp32/") for k in r)]
        return {"evaluation": evaluation, "steps": fit.steps, "seconds": fit.seconds, "epochs": epochs,
                "history": history, "source": str(rd.path.absolute())}

    entry, created = entries.get_or_create(key, keyed, create, owner={"run_dir": str(rd.path.absolute())},
                                           stop_check=setup.trainer.stop.check)
    meta = entry.meta
    record = {"key": key, "hit": not created, "entry": str(entry.path), "source": meta["source"],
              "train_steps": meta["steps"], "train_time_s": meta["seconds"]}
    if created:
        log.info("fp32 cache: stored the fp32 network of key %s in %s", key, entry.path)
    else:
        _uncommitted(checkpoint.restore(entry.path / "checkpoint", model))
        logged = {r.get("step") for r in _rows(tracker.history_path)}  # a resumed run kept its first epochs
        for row in meta["history"]:
            if row["step"] not in logged:
                tracker.log({k: v for k, v in row.items() if k != "step"}, step=row["step"])
        setup.fits.append(FitResult(0, 0.0))
        rd.finish_phase("fp32", 0, 0.0)
        done = Progress("fp32", epoch=epochs, done=True, global_epoch=epochs)  # as fit leaves it
        opt = _optimizer(setup, epochs)  # not trained: the phase is done, a resume never steps it
        setup.trainer.state.save(setup.trainer.state.next_step(), model, opt, done.to_json())
        log.info("fp32 network reused from the cache (not trained here): key %s, entry %s, trained by %s "
                 "(%d steps, %.1f s)", key, entry.path, meta["source"], meta["steps"], meta["seconds"])
    rd.checkpoints.mkdir(parents=True, exist_ok=True)
    write_json(rd.checkpoints / RECORD, record)
    setup.fp32_cache_record = record
    return meta["evaluation"]


def _uncommitted(model: nnx.Module) -> None:
    """Places the restored arrays of ``model`` as a freshly built model holds them: on the default device, uncommitted.

    orbax returns arrays committed to their device; the rest of the run
    (and, in a sequential sweep, the jobs after it) would compile every
    program a second time for committed inputs.
    """
    nnx.update(model, jax.tree.map(lambda a: jax.device_put(np.asarray(a)) if isinstance(a, jax.Array) else a,
                                   nnx.state(model)))


def _optimizer(setup: Setup, epochs: int) -> nnx.Optimizer:
    """The fp32 phase's optimizer, as ``fit`` makes it (freshly initialized)."""
    return nnx.Optimizer(setup.model, setup.optimizer(epochs * setup.steps_per_epoch, 1.0), wrt=nnx.Param)


def _rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a ``history.jsonl``."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def recorded(run_checkpoints: Path) -> dict[str, Any] | None:
    """The ``fp32_cache`` record a run wrote when its fp32 network came through the cache, or None."""
    path = run_checkpoints / RECORD
    return json.loads(path.read_text()) if path.exists() else None
