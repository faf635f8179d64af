"""The one place that turns configuration into objects.

Everything below this module takes plain typed arguments. Each builder reads
one config group; ``tests/test_config.py`` builds every option of every group.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from snnexp.data import Dataset

SCHEDULES = ("constant", "cosine", "warmup_cosine")


def _instantiate(node: DictConfig, **kwargs: Any) -> Any:
    """Instantiates a ``_target_`` node, leaving out its ``name`` label."""
    fields = {k: v for k, v in node.items() if k != "name"}
    try:
        return instantiate(OmegaConf.create(fields), **kwargs)
    except InstantiationException as e:
        # Hydra wraps the target's own error; the user needs that error.
        if isinstance(e.__cause__, (ValueError, TypeError, OSError, ImportError)):
            raise e.__cause__ from None
        raise


def data(cfg: DictConfig) -> Dataset:
    """Loads the data set of ``cfg.data``."""
    return _instantiate(cfg.data)


def neuron(cfg: DictConfig) -> functools.partial:
    """The spyx neuron class of ``cfg.neuron``, with its surrogate, as a partial."""
    return _instantiate(cfg.neuron)


def model(cfg: DictConfig, n_in: int, n_out: int) -> nnx.Module:
    """Builds the network of ``cfg.model`` with the neuron of ``cfg.neuron``.

    Args:
        cfg: the run config.
        n_in: input features per time step.
        n_out: number of classes.
    """
    factory = _instantiate(cfg.model)
    net = factory(n_in=n_in, n_out=n_out, neuron=neuron(cfg), rngs=nnx.Rngs(cfg.seed))
    # spyx stores a given decay as a weakly typed scalar; the first optimizer
    # update makes it strongly typed and would force a second compilation.
    state = nnx.state(net)
    nnx.update(net, jax.tree.map(lambda a: jnp.asarray(a, dtype=a.dtype), state))
    return net


def optimizer(cfg: DictConfig, total_steps: int, lr_scale: float = 1.0) -> optax.GradientTransformation:
    """Builds the optax optimizer of ``cfg.optim`` with its learning-rate schedule.

    Args:
        cfg: the run config.
        total_steps: optimizer steps the schedule spans.
        lr_scale: multiplies the learning rate (quantized fine-tuning).
    """
    o = cfg.optim
    lr = float(o.lr) * lr_scale
    steps = max(int(total_steps), 1)
    warmup = min(int(o.get("warmup_steps", 0)), steps - 1)
    if o.schedule == "constant":
        schedule: optax.Schedule = optax.constant_schedule(lr)
    elif o.schedule == "cosine":
        schedule = optax.cosine_decay_schedule(lr, steps, alpha=float(o.get("final_lr_fraction", 0.0)))
    elif o.schedule == "warmup_cosine":
        schedule = optax.warmup_cosine_decay_schedule(
            0.0, lr, max(warmup, 1), steps, end_value=lr * float(o.get("final_lr_fraction", 0.0))
        )
    else:
        raise ValueError(f"optim.schedule={o.schedule!r}; valid choices: {list(SCHEDULES)}")
    tx = _instantiate(o.optimizer)(learning_rate=schedule)
    if o.get("grad_clip_norm"):
        tx = optax.chain(optax.clip_by_global_norm(float(o.grad_clip_norm)), tx)
    return tx
