"""The one place that turns configuration into objects.

Everything below this module takes plain typed arguments. Each builder reads
one config group and checks it before anything is computed;
``tests/test_config.py`` builds every option of every group.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from hydra.errors import InstantiationException
from hydra.utils import get_method, instantiate
from omegaconf import DictConfig, OmegaConf

from snnexp import confdir, quant, tracking
from snnexp.data import Dataset
from snnexp.errors import ConfigError
from snnexp.hardware import Profile, from_config
from snnexp.hardware.integer import IntegerNetwork
from snnexp.hardware.qat import grid_qtypes
from snnexp.models import FeedForwardSNN
from snnexp.train.fp32_cache import Fp32Cache
from snnexp.train.loop import LoopSettings
from snnexp.train.pipelines import parse_stages
from snnexp.train.steps import Augment

log = logging.getLogger(__name__)


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
    # A weakly typed leaf (spyx stores a given decay so; the models now hold it as
    # a float32 FixedDecay) would turn strongly typed at the first optimizer
    # update and force a second compilation: cast every leaf to its own dtype.
    state = nnx.state(net)
    nnx.update(net, jax.tree.map(lambda a: jnp.asarray(a, dtype=a.dtype), state))
    return net


def optimizer(cfg: DictConfig, total_steps: int, lr_scale: float = 1.0, *,
              schedule: str | Mapping[str, Any] | None = None,
              warmup_steps: int | None = None) -> optax.GradientTransformation:
    """Builds the optax optimizer of ``cfg.optim`` with its learning-rate schedule.

    ``cfg.optim.schedule`` is an optax schedule (a ``_partial_`` target,
    ``conf/optim/schedule``) of the learning rate relative to ``lr``; its
    ``decay_steps`` is the phase's step count, and a warm-up longer than the
    phase is cut to fit. A phase may have its own (QAT's fine-tuning:
    ``mode.schedule``, ``mode.warmup_steps``).

    Args:
        cfg: the run config.
        total_steps: optimizer steps the schedule spans.
        lr_scale: multiplies the learning rate (quantized fine-tuning).
        schedule: the phase's schedule: None for ``cfg.optim.schedule``, the name
            of a ``conf/optim/schedule`` option, or such a node (with ``_target_``).
        warmup_steps: None: the schedule's own warm-up (``warmup_cosine``'s,
            cut to ``[1, steps - 1]``; none for the others). An integer: a
            linear warm-up from 0 over that many steps (0: none), cut to
            ``steps - 1``: ``warmup_cosine``'s own ``warmup_steps``, or for
            any other schedule a ramp to the schedule's first value joined
            before it, the schedule spanning the steps after the ramp.
    """
    o = cfg.optim
    lr = float(o.lr) * lr_scale
    steps = max(int(total_steps), 1)
    if schedule is None:
        node: Any = o.schedule
    elif isinstance(schedule, str):
        node = OmegaConf.create(confdir.load_option("optim/schedule", schedule))
    else:
        node = OmegaConf.create(dict(schedule))
    relative = relative_schedule(node, steps, warmup_steps)

    def lr_schedule(step: jax.Array) -> jax.Array:
        return lr * relative(step)

    tx = _instantiate(o.optimizer)(learning_rate=lr_schedule)
    if o.get("grad_clip_norm"):
        tx = optax.chain(optax.clip_by_global_norm(float(o.grad_clip_norm)), tx)
    return tx


def relative_schedule(node: DictConfig, steps: int, warmup_steps: int | None = None) -> optax.Schedule:
    """The schedule node ``node`` (relative to ``lr``) over ``steps`` steps; see ``optimizer``'s ``warmup_steps``."""
    make = _instantiate(node)
    params = inspect.signature(make.func).parameters
    decays = "decay_steps" in params
    if warmup_steps is None or "warmup_steps" in params:
        kwargs: dict[str, Any] = {"decay_steps": steps} if decays else {}
        if warmup_steps is not None:
            kwargs["warmup_steps"] = max(min(int(warmup_steps), steps - 1), 0)
        elif "warmup_steps" in make.keywords:
            kwargs["warmup_steps"] = max(min(int(make.keywords["warmup_steps"]), steps - 1), 1)
        return make(**kwargs)
    ramp = max(min(int(warmup_steps), steps - 1), 0)
    main = make(decay_steps=steps - ramp) if decays else make()
    if ramp == 0:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, float(main(0)), ramp), main], [ramp])


def rules(cfg: DictConfig) -> list[quant.Rule]:
    """The recipe of ``cfg.quant``, checked (``quant.RecipeError`` names the bad value)."""
    return quant.parse_recipe(OmegaConf.to_container(cfg.quant.rules, resolve=True))


def loop_settings(cfg: DictConfig) -> LoopSettings:
    """The ``trainer`` group, checked: each key an integer in range.

    Raises:
        ConfigError: naming the key, its value and what is allowed.
    """
    t = cfg.trainer
    for key, low in (("epochs", 0), ("batch_size", 1), ("eval_batch_size", 1), ("steps_per_call", 0),
                     ("checkpoint_every", 1)):
        value = t[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ConfigError(f"trainer.{key}={value!r} must be an integer >= {low}")
    aug = t.get("augment") or {}
    return LoopSettings(t.batch_size, t.eval_batch_size, t.steps_per_call, t.checkpoint_every, int(cfg.seed),
                        Augment(shift=int(aug.get("shift", 0)), noise=float(aug.get("noise", 0.0)),
                                dropout=float(aug.get("dropout", 0.0))))


def hardware(cfg: DictConfig) -> Profile:
    """The ``hardware`` group as a checked ``Profile`` (``float`` where a config predates the group).

    Raises:
        HardwareError: an unknown key or a value out of range, naming it.
    """
    node = cfg.get("hardware")
    return from_config(None if node is None else OmegaConf.to_container(node, resolve=True))


def pipeline(cfg: DictConfig) -> Callable[..., dict[str, Any]]:
    """The mode's pipeline (``cfg.mode._target_``) with its knobs bound, checked.

    A knob the pipeline does not take (a preset may set the knobs of several
    modes, say ``quant_epochs`` for ``qt``) is left out and logged.

    Raises:
        ConfigError: the target is not a pipeline, or a knob is out of range.
    """
    m = cfg.mode
    target = m.get("_target_")
    try:
        func = get_method(target)
    except Exception as e:  # noqa: BLE001 - Hydra raises several kinds here
        raise ConfigError(f"mode._target_={target!r} is not a function snnexp can import ({e})") from None
    takes = set(inspect.signature(func).parameters) - {"setup"}
    knobs = {k: v for k, v in m.items() if k not in ("_target_", "_partial_", "name")}
    ignored = sorted(set(knobs) - takes)
    if ignored:
        log.info("mode=%s takes no %s; ignored", m.name, ", ".join(f"mode.{k}" for k in ignored))
    kw = OmegaConf.to_container(OmegaConf.create({k: v for k, v in knobs.items() if k in takes}), resolve=True)
    bwd = kw.get("bwd_qtype")
    if bwd is not None and bwd not in quant.BWD_QTYPES:  # mx/nvfp4 gradients would need tiles over the batch
        raise ConfigError(f"mode.bwd_qtype={bwd!r}; valid choices: {list(quant.BWD_QTYPES)} or null")
    ckpt = kw.get("fp32_checkpoint")
    if ckpt and not Path(ckpt).exists():
        raise ConfigError(f"mode.fp32_checkpoint={ckpt!r} does not exist")
    for key, value in kw.items():
        if key.endswith(("epochs", "batches")) and (not isinstance(value, int) or isinstance(value, bool)
                                                     or value < 0):
            raise ConfigError(f"mode.{key}={value!r} must be an integer >= 0")
    if "stages" in kw:  # QAT's progressive stages: every recipe named exists
        parse_stages(kw["stages"])
    schedule = kw.get("schedule")
    if isinstance(schedule, str):
        confdir.load_option("optim/schedule", schedule)  # names the valid choices
    return functools.partial(func, **kw)


def network(cfg: DictConfig, data: Dataset, rules: list[quant.Rule],
            settings: LoopSettings) -> tuple[nnx.Module, jax.Array]:
    """The network for ``data``, with the recipe checked against it.

    Every rule must match a layer (a dry quantization asks qwix), and no
    square layer may see a batch of its own width (qwix would crash).

    Args:
        cfg: the run config.
        data: the data set (its widths and one sample).
        rules: the recipe.
        settings: the loop settings, batch sizes fit to ``data``.

    Returns:
        ``(model, sample)``: the float network and one input ``[1, T, F]``.
    """
    net = model(cfg, data.features, data.n_classes)
    profile = hardware(cfg)
    check_dropout(cfg, net, settings.augment.dropout, profile)
    bs, ebs, t = settings.batch_size, settings.eval_batch_size, data.steps
    quant.check_shapes(net, [1, bs, ebs, bs * t, ebs * t, t])
    # analog if any input is: quant.quantize decides from it whether the input layer is fed spikes
    sample = jnp.asarray(quant.representative_sample(data.x_train))
    if profile.integer:  # the neuron, model and recipe must have an integer form, before any compute
        dry = quant.quantize(net, rules, "ptq", sample)  # a rule that matches nothing fails here
        IntegerNetwork.from_deployed(dry, rules, profile, np.asarray(sample))
        if cfg.mode.name in ("qat", "qt"):  # fine-tuned on the integer grid
            grid_qtypes(net, rules)
    else:  # the same check, traced only: no eager op compiles (seconds of a cold start)
        nnx.eval_shape(lambda m: quant.quantize(m, rules, "ptq", sample), net)
    return net, sample


def check_dropout(cfg: DictConfig, net: nnx.Module, rate: float, profile: Profile) -> None:
    """Refuses ``trainer.augment.dropout`` where it would not apply, before any compute.

    Raises:
        ConfigError: dropout on a model without it (``model=conv``), or on the
            integer grid of QAT/QT for an integer profile (which trains without it).
    """
    if rate <= 0.0:
        return
    if not isinstance(net, FeedForwardSNN):
        raise ConfigError(f"trainer.augment.dropout={rate!r}: {type(net).__name__} has no dropout; valid "
                          "choices: model=feedforward or model=recurrent, or trainer.augment.dropout=0")
    if profile.integer and cfg.mode.name in ("qat", "qt"):
        raise ConfigError(f"trainer.augment.dropout={rate!r}: hardware={cfg.hardware.name} with mode="
                          f"{cfg.mode.name} fine-tunes on the integer grid, which has no dropout; use "
                          "trainer.augment.dropout=0 or hardware=float")


def fp32_cache(cfg: DictConfig, resolved: dict) -> Fp32Cache | None:
    """The fp32 network cache of ``fp32_cache`` / ``fp32_cache_dir``, or None when it is off or not needed.

    Not needed: a mode without an fp32 phase (``qt``), or one given
    ``mode.fp32_checkpoint``. The directory is made here, so that one the
    run cannot write is named before any training.

    Args:
        cfg: the run config.
        resolved: the same config resolved to plain values (what the key is made from).

    Raises:
        ConfigError: ``fp32_cache_dir`` cannot be created or written.
    """
    if not cfg.get("fp32_cache", False) or "fp32_epochs" not in cfg.mode or cfg.mode.get("fp32_checkpoint"):
        return None
    root = Path(cfg.fp32_cache_dir).absolute()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"fp32_cache_dir={str(cfg.fp32_cache_dir)!r} cannot be created ({e}); choose another "
                          "directory or switch the cache off with fp32_cache=false") from None
    if not os.access(root, os.W_OK | os.X_OK):
        raise ConfigError(f"fp32_cache_dir={str(cfg.fp32_cache_dir)!r} is not writable; choose another directory "
                          "or switch the cache off with fp32_cache=false")
    return Fp32Cache(root, resolved)


def tracker(cfg: DictConfig, out_dir: Path, resolved: dict, *, resume_step: int = 0) -> tracking.Tracker:
    """The local record and W&B run of ``cfg.logger``.

    Tags name the recipe, mode, neuron and data; a resumed run keeps its
    history up to ``resume_step`` and continues its W&B run.
    """
    lg = cfg.logger
    tags = [f"quant:{cfg.quant.name}", f"mode:{cfg.mode.name}", f"neuron:{cfg.neuron.name}",
            f"data:{cfg.data.name}", *lg.get("tags", [])]
    return tracking.Tracker(out_dir, resolved, backend=lg.backend, project=lg.get("project", "snnexp"),
                            entity=lg.get("entity"), group=lg.get("group"), name=lg.get("name"), tags=tags,
                            mode=lg.get("mode"), resume_step=resume_step)
