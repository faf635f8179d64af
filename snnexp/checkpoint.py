"""Orbax checkpoints: finished networks, and the training state a rerun resumes.

Both kinds are atomic: orbax writes into a temporary directory and renames it
when complete, so a run killed during a save leaves the previous checkpoint
intact. The training state (model, optimizer, where the loop stands) is kept
by a ``CheckpointManager`` holding the two latest saves.

orbax cannot store every dtype qwix uses: ``nf4`` codes are ``uint4``
(orbax: ``Unsupported data type: "uint4"``). ``save`` stores such an array
widened to a dtype orbax takes (``uint8``), records the original dtype in the
checkpoint's own metadata (written inside the same atomic save), and
``restore`` narrows it back, exactly: every code fits both dtypes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx


class CheckpointError(ValueError):
    """A checkpoint that does not fit the model it is loaded into."""


# dtypes orbax cannot store -> the dtype they are stored in (holding every value exactly).
WIDENED = {"uint4": "uint8", "uint2": "uint8"}

# Attributes of a model that ``save`` records in the checkpoint's metadata and
# ``info`` returns (``snnexp.quant.quantize`` sets ``analog_inputs``).
MODEL_INFO = ("analog_inputs",)


def _leaf_name(path: tuple) -> str:
    keys = [str(getattr(k, "key", getattr(k, "idx", k))) for k in path]
    return "/".join(k for k in keys if k not in ("value", ".value"))


def _widen(tree: Any) -> tuple[Any, dict[str, str]]:
    """``tree`` with every leaf of a ``WIDENED`` dtype widened; ``{leaf name: original dtype}``."""
    widened: dict[str, str] = {}

    def widen(path: tuple, leaf: Any) -> Any:
        dtype = str(getattr(leaf, "dtype", ""))
        if dtype in WIDENED:
            widened[_leaf_name(path)] = dtype
            return jnp.asarray(leaf).astype(WIDENED[dtype])
        return leaf

    return jax.tree_util.tree_map_with_path(widen, tree), widened


def save(path: Path, model: nnx.Module) -> Path:
    """Saves every variable of ``model`` (params, quantization scales, stats).

    Arrays of a ``WIDENED`` dtype (qwix's ``uint4`` nf4 codes) are stored
    widened; their dtypes and the model's ``MODEL_INFO`` attributes go into
    the checkpoint's metadata, in the same atomic save.

    Args:
        path: target directory; replaced if it exists.
        model: the model to save.

    Returns:
        The absolute checkpoint path.
    """
    path = Path(path).absolute()
    state, widened = _widen(nnx.state(model))
    meta = {"widened": widened, "model_info": {k: _plain(getattr(model, k)) for k in MODEL_INFO
                                               if hasattr(model, k)}}
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(path, state, force=True, custom_metadata=meta)
        ckptr.wait_until_finished()
    return path


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def info(path: Path) -> dict[str, Any]:
    """The ``MODEL_INFO`` recorded by ``save`` (``{}`` for a checkpoint written without it)."""
    with ocp.StandardCheckpointer() as ckptr:
        custom = ckptr.metadata(Path(path).absolute()).custom_metadata or {}
    return dict(custom.get("model_info", {}))


def _check_fits(path: Path, stored: Any, template: Any) -> None:
    """Raises ``CheckpointError`` naming the first parameter that differs."""
    def names(tree: Any) -> dict[str, Any]:
        return {_leaf_name(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}

    t_names, s_names = names(template), names(stored)
    missing = sorted(set(t_names) - set(s_names))
    extra = sorted(set(s_names) - set(t_names))
    if missing or extra:
        raise CheckpointError(
            f"checkpoint {path} does not fit this model: missing {missing[:5]}, unexpected {extra[:5]} "
            "(was it written by another model, recipe or mode?)"
        )
    for key, t in t_names.items():
        s = s_names[key]
        if tuple(s.shape) != tuple(np.shape(t)):
            raise CheckpointError(
                f"checkpoint {path} does not fit this model: parameter {key} has shape "
                f"{tuple(s.shape)} in the checkpoint but {tuple(np.shape(t))} in the model "
                "(check model.hidden and the data set's features/classes)"
            )


def restore(path: Path, model: nnx.Module) -> nnx.Module:
    """Loads a checkpoint written by ``save`` into ``model`` in place.

    Args:
        path: a directory written by ``save``.
        model: a model of the same structure; its values are replaced.

    Returns:
        ``model``, updated.

    Raises:
        FileNotFoundError: no checkpoint at ``path``.
        CheckpointError: a parameter's name or shape differs.
    """
    path = Path(path).absolute()
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    template, widened = _widen(nnx.state(model))
    with ocp.StandardCheckpointer() as ckptr:
        meta = ckptr.metadata(path)
        _check_fits(path, meta.item_metadata, template)
        stored = dict((meta.custom_metadata or {}).get("widened", {}))
        if stored != widened:
            raise CheckpointError(
                f"checkpoint {path} does not fit this model: narrow dtypes {stored} in the checkpoint, "
                f"{widened} in the model (was it written by another recipe?)"
            )
        state = ckptr.restore(path, template)

    def narrow(p: tuple, leaf: Any) -> Any:
        dtype = widened.get(_leaf_name(p))
        return jnp.asarray(leaf).astype(dtype) if dtype else leaf

    nnx.update(model, jax.tree_util.tree_map_with_path(narrow, state))
    return model


class TrainState:
    """The latest training states of one run directory (model, optimizer, progress)."""

    def __init__(self, directory: Path):
        """Opens (or creates) ``directory`` for training-state checkpoints."""
        self.directory = Path(directory).absolute()
        self.manager = ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True)
        )

    def latest_progress(self) -> dict[str, Any] | None:
        """The progress record of the latest complete save, or None."""
        step = self.manager.latest_step()
        if step is None:
            return None
        restored = self.manager.restore(step, args=ocp.args.Composite(progress=ocp.args.JsonRestore()))
        return dict(restored["progress"])

    def next_step(self) -> int:
        """The number the next save gets (one more than the latest)."""
        latest = self.manager.latest_step()
        return 0 if latest is None else latest + 1

    def save(self, step: int, model: nnx.Module, opt: nnx.Optimizer, progress: dict[str, Any]) -> None:
        """Saves model, optimizer and progress as checkpoint ``step`` (blocking)."""
        state = {"model": nnx.state(model), "opt": nnx.state(opt)}
        self.manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), progress=ocp.args.JsonSave(progress)),
            force=True,
        )
        self.manager.wait_until_finished()

    def restore(self, model: nnx.Module, opt: nnx.Optimizer) -> dict[str, Any]:
        """Loads the latest save into ``model`` and ``opt``; returns its progress."""
        step = self.manager.latest_step()
        template = {"model": nnx.state(model), "opt": nnx.state(opt)}
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardRestore(template), progress=ocp.args.JsonRestore()),
        )
        nnx.update(model, restored["state"]["model"])
        nnx.update(opt, restored["state"]["opt"])
        return dict(restored["progress"])

    def close(self) -> None:
        """Waits for pending saves and releases the manager."""
        self.manager.close()
