"""Orbax checkpoints of a model's state (atomic: a killed save leaves no
half-written checkpoint under the final name)."""

from __future__ import annotations

from pathlib import Path

import orbax.checkpoint as ocp
from flax import nnx


def save(path: Path, model: nnx.Module) -> Path:
    """Saves every variable of ``model`` (params, quantization scales, stats).

    Args:
        path: target directory; replaced if it exists.
        model: the model to save.

    Returns:
        The absolute checkpoint path.
    """
    path = Path(path).absolute()
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(path, nnx.state(model), force=True)
        ckptr.wait_until_finished()
    return path


def restore(path: Path, model: nnx.Module) -> nnx.Module:
    """Loads a checkpoint into ``model`` in place (shapes must match).

    Args:
        path: a directory written by ``save``.
        model: a model of the same structure; its values are replaced.

    Returns:
        ``model``, updated.
    """
    path = Path(path).absolute()
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    with ocp.StandardCheckpointer() as ckptr:
        state = ckptr.restore(path, nnx.state(model))
    nnx.update(model, state)
    return model
