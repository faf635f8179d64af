"""One dataclass per group option kind: a typed field per key, its range or choices as a ``Check``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from snnexp import confdir, quant
from snnexp.data import encoding, mnist1d, nmnist, shd, yinyang
from snnexp.errors import ConfigError
from snnexp.models import conv
from snnexp.models.time_loop import READOUTS
from snnexp.schema.checks import (
    DECAY,
    NAME,
    NODE,
    PER_LAYER,
    POSITIVE,
    TARGET,
    WIDTHS,
    Check,
    above,
    at_least,
    exists,
    one_of,
    spec,
    within,
)

# ------------------------------------------------------------------ groups


@dataclass
class Target:
    """What every ``_target_`` node may carry besides its target's arguments."""

    _target_: str = spec(TARGET)
    _partial_: bool = spec()
    name: str = spec(NAME)  # a label; ``build`` leaves it out


@dataclass
class DigitsData(Target):
    """``conf/data/digits.yaml``: ``snnexp.data.digits.load``."""

    steps: int = spec(at_least(1, template=POSITIVE))
    encoding: str = spec(one_of(encoding.ENCODINGS))
    test_fraction: float = spec(within(0.0, 1.0, open_low=True, open_high=True))
    seed: int = spec(at_least(0))


@dataclass
class Mnist1dData(Target):
    """``conf/data/mnist1d.yaml``: ``snnexp.data.mnist1d.load``."""

    encoding: str = spec(one_of(mnist1d.ENCODINGS))
    threshold: float = spec(above(0.0))
    levels: int = spec(at_least(2))
    cache_dir: str | None = spec()
    seed: int = spec(at_least(0))
    eval_split: str = spec(one_of(mnist1d.EVAL_SPLITS))
    repeat: int = spec(at_least(1))


@dataclass
class NmnistData(Target):
    """``conf/data/nmnist.yaml``: ``snnexp.data.nmnist.load``."""

    root: str = spec(NAME)
    steps: int = spec(at_least(1, template=POSITIVE))
    pool: int = spec(one_of(nmnist.POOL_CHOICES))
    binary: bool = spec()
    max_samples: int | None = spec(at_least(1))
    seed: int = spec(at_least(0))


@dataclass
class ShdData(Target):
    """``conf/data/shd.yaml``: ``snnexp.data.shd.load``."""

    root: str = spec(NAME)
    steps: int = spec(at_least(1, template=POSITIVE))
    dt: float = spec(above(0.0))
    channels: int = spec(one_of(shd.CHANNEL_CHOICES))
    binary: bool = spec()


@dataclass
class SyntheticData(Target):
    """``conf/data/synthetic.yaml``: ``snnexp.data.synthetic.load``."""

    n_train: int = spec(at_least(1, template=POSITIVE))
    n_test: int = spec(at_least(1, template=POSITIVE))
    steps: int = spec(at_least(1, template=POSITIVE))
    features: int = spec(at_least(1, template=POSITIVE))
    n_classes: int = spec(at_least(1, template=POSITIVE))
    seed: int = spec(at_least(0))


@dataclass
class YinYangData(Target):
    """``conf/data/yinyang.yaml``: ``snnexp.data.yinyang.load``."""

    encoding: str = spec(one_of(yinyang.ENCODINGS))
    steps: int = spec(at_least(1, template=POSITIVE))
    eval_split: str = spec(one_of(yinyang.EVAL_SPLITS))
    train_seed: int = spec(at_least(0))
    validation_seed: int = spec(at_least(0))
    test_seed: int = spec(at_least(0))


@dataclass
class SpikingModel(Target):
    """What every model takes: hidden widths and the LI readout."""

    hidden: list[int] = spec(WIDTHS)
    readout_beta: float | None = spec(DECAY)
    readout: str = spec(one_of(READOUTS))


@dataclass
class FeedForwardModel(SpikingModel):
    """``conf/model/feedforward.yaml``: ``snnexp.models.FeedForwardSNN``."""

    input_delays: int = spec(at_least(1, template=POSITIVE))
    delay_stride: int = spec(at_least(1, template=POSITIVE))


@dataclass
class RecurrentModel(FeedForwardModel):
    """``conf/model/recurrent.yaml``: ``snnexp.models.RecurrentSNN``."""

    rec_gain: float = spec(at_least(0.0, "a number"))


@dataclass
class ConvModel(SpikingModel):
    """``conf/model/conv.yaml``: ``snnexp.models.ConvSNN``."""

    kernel_size: int | list[int] = spec(PER_LAYER)
    pool: int | list[int] = spec(PER_LAYER)
    pooling: str = spec(one_of(conv.POOLINGS))
    image: list[int] | None = spec(Check(lambda v: len(v) == 3 and all(d >= 1 for d in v),
                                         "[C, H, W], three integers >= 1"))
    impl: str = spec(one_of(conv.CONV_IMPLS))


@dataclass
class Neuron(Target):
    """Every spyx neuron: its firing threshold and surrogate (``activation: ${surrogate}``)."""

    threshold: float = spec(above(0.0))
    activation: dict = spec(NODE)


@dataclass
class LifNeuron(Neuron):
    """``conf/neuron/lif.yaml``: ``spyx.nn.LIF``; ``beta: null`` learns the decays."""

    beta: float | None = spec(DECAY)


@dataclass
class AlifNeuron(LifNeuron):
    """``conf/neuron/alif.yaml``: ``spyx.nn.ALIF``, with threshold adaptation ``gamma``."""

    gamma: float | None = spec(DECAY)


@dataclass
class CubaLifNeuron(LifNeuron):
    """``conf/neuron/cuba_lif.yaml``: ``spyx.nn.CuBaLIF``, with synaptic decay ``alpha``."""

    alpha: float | None = spec(DECAY)


@dataclass
class SlopeSurrogate(Target):
    """``conf/surrogate/{arctan,superspike,tanh,triangular}.yaml``: the slope ``k``."""

    k: float = spec(above(0.0))


@dataclass
class BoxcarSurrogate(Target):
    """``conf/surrogate/boxcar.yaml``: ``spyx.axn.boxcar``."""

    width: float = spec(above(0.0))
    height: float = spec(above(0.0))


@dataclass
class Adam(Target):
    """``optim.optimizer`` of ``conf/optim/adam.yaml``: ``optax.adam`` (``learning_rate`` is bound)."""

    b1: float = spec(within(0.0, 1.0, open_high=True))
    b2: float = spec(within(0.0, 1.0, open_high=True))
    eps: float = spec(above(0.0))
    eps_root: float = spec(at_least(0.0, "a number"))
    nesterov: bool = spec()


@dataclass
class AdamW(Adam):
    """``optim.optimizer`` of ``conf/optim/adamw.yaml``: ``optax.adamw``."""

    weight_decay: float = spec(at_least(0.0, "a number"))


@dataclass
class ConstantSchedule(Target):
    """``conf/optim/schedule/constant.yaml``, relative to ``optim.lr``."""

    value: float = spec(above(0.0))


@dataclass
class CosineSchedule(Target):
    """``conf/optim/schedule/cosine.yaml``; ``decay_steps`` is the phase's steps."""

    init_value: float = spec(above(0.0))
    alpha: float = spec(within(0.0, 1.0))
    exponent: float = spec(above(0.0))


@dataclass
class WarmupCosineSchedule(Target):
    """``conf/optim/schedule/warmup_cosine.yaml``; ``decay_steps`` is the phase's steps."""

    init_value: float = spec(at_least(0.0, "a number"))
    peak_value: float = spec(above(0.0))
    warmup_steps: int = spec(at_least(0))
    end_value: float = spec(at_least(0.0, "a number"))
    exponent: float = spec(above(0.0))


@dataclass
class Mode(Target):
    """What a mode has besides its pipeline's knobs (typed from ``snnexp.train.pipelines``)."""


@dataclass
class Optim:
    """``conf/optim/*.yaml``: the optimizer and schedule nodes are checked by their targets."""

    name: str = spec(NAME)
    optimizer: dict = spec(NODE)
    lr: float = spec(above(0.0))
    grad_clip_norm: float | None = spec(above(0.0))
    schedule: dict = spec(NODE)


@dataclass
class Logger:
    """``conf/logger/*.yaml`` (``none.yaml`` sets ``backend`` alone)."""

    backend: str = spec(one_of(("wandb", "none")))
    project: str = spec(NAME)
    entity: str | None = spec()
    group: str | None = spec()
    name: str | None = spec()
    tags: list[str] = spec()
    mode: str | None = spec(one_of(("online", "offline", "disabled")))
    log_checkpoint: bool = spec()


@dataclass
class Quant:
    """``conf/quant/*.yaml``: each rule is a ``quant.Rule``, then checked by ``quant.parse_recipe``."""

    name: str = spec(NAME)
    weight_bits: int = spec(one_of([int(q.removeprefix("int")) for q in quant.INT_QTYPES]))
    rules: list[dict] = spec()


@dataclass
class Hardware:
    """``conf/hardware/*.yaml``: ``float``, or an integer ``snnexp.hardware.Profile`` (joint ranges: there)."""

    name: str = spec(NAME)
    state_bits: int = spec(at_least(2))
    decay: str = spec(one_of(("multiply", "shift")))
    decay_bits: int = spec(at_least(1))
    threshold_bits: int = spec(at_least(1))
    accumulator_bits: int = spec(at_least(2))
    overflow: str = spec(one_of(("saturate", "wrap")))
    current_overflow: str | None = spec(one_of(("saturate", "wrap")))
    reset: str = spec(one_of(("subtract", "zero")))
    shift: int = spec(at_least(0))
    weight_bits: int = spec(at_least(2))
    input_bits: int = spec(at_least(2))
    follows: str = spec()


@dataclass
class Trainer:
    """``trainer`` in ``conf/train.yaml``."""

    epochs: int = spec(at_least(0))
    batch_size: int = spec(at_least(1))
    eval_batch_size: int = spec(at_least(1))
    steps_per_call: int = spec(at_least(0))
    checkpoint_every: int = spec(at_least(1))
    augment: dict = spec()  # its keys: ``Augment``


@dataclass
class Augment:
    """``trainer.augment``: ``snnexp.train.steps.Augment``, the random transforms of the training batches."""

    shift: int = spec(at_least(0))
    noise: float = spec(at_least(0.0, "a number"))
    dropout: float = spec(within(0.0, 1.0, open_high=True))


@dataclass
class Run:
    """The top level of ``conf/train.yaml`` besides the groups."""

    seed: int = spec(at_least(0))
    resume: bool = spec()
    objective: str = spec(NAME)
    compile_cache: str | None = spec()
    report: bool = spec()
    fp32_cache: bool = spec()
    fp32_cache_dir: str = spec(NAME)


# The option kinds of the groups with a ``_target_``, by target.
BY_TARGET: dict[str, dict[str, type]] = {
    "data": {
        "snnexp.data.digits.load": DigitsData,
        "snnexp.data.mnist1d.load": Mnist1dData,
        "snnexp.data.nmnist.load": NmnistData,
        "snnexp.data.shd.load": ShdData,
        "snnexp.data.synthetic.load": SyntheticData,
        "snnexp.data.yinyang.load": YinYangData,
    },
    "model": {
        "snnexp.models.FeedForwardSNN": FeedForwardModel,
        "snnexp.models.RecurrentSNN": RecurrentModel,
        "snnexp.models.ConvSNN": ConvModel,
    },
    "neuron": {
        "spyx.nn.LIF": LifNeuron,
        "spyx.nn.IF": Neuron,
        "spyx.nn.ALIF": AlifNeuron,
        "spyx.nn.CuBaLIF": CubaLifNeuron,
    },
    "surrogate": {
        "spyx.axn.arctan": SlopeSurrogate,
        "spyx.axn.superspike": SlopeSurrogate,
        "spyx.axn.tanh": SlopeSurrogate,
        "spyx.axn.triangular": SlopeSurrogate,
        "spyx.axn.boxcar": BoxcarSurrogate,
    },
    "optim.optimizer": {"optax.adam": Adam, "optax.adamw": AdamW},
    "optim.schedule": {
        "optax.constant_schedule": ConstantSchedule,
        "optax.cosine_decay_schedule": CosineSchedule,
        "optax.warmup_cosine_decay_schedule": WarmupCosineSchedule,
    },
    "mode": {},
}
# Arguments that ``build`` passes itself: not config keys.
BOUND: dict[str, set[str]] = {
    "data": set(),
    "model": {"n_in", "n_out", "neuron", "rngs"},
    "neuron": {"hidden_shape", "rngs"},
    "surrogate": set(),
    "optim.optimizer": {"learning_rate"},
    "optim.schedule": {"decay_steps"},
    "mode": {"setup"},
}
# A mode may carry the knobs of the other modes (``debug=fast`` sets
# ``quant_epochs`` and ``calib_batches`` for all); its pipeline ignores them.
PIPELINES = ("qat", "qt", "ptq", "srq")
def _stages_problem(key: str, value: Any) -> str | None:
    """``snnexp.train.pipelines.parse_stages``' message for a bad ``mode.stages``, or None."""
    from snnexp.train.pipelines import parse_stages  # imported when used: the training stack imports the schema

    try:
        parse_stages(value, where=key)
    except ConfigError as e:
        return str(e)
    return None


SCHEDULES = confdir.options("optim/schedule")
MODE_CHECKS: dict[str, Check] = {
    "lr_scale": above(0.0),
    "bwd_qtype": one_of(quant.ACT_QTYPES),
    "fp32_checkpoint": Check(exists, "an existing checkpoints/fp32 directory", "{key}={value!r} does not exist"),
    "schedule": Check(lambda v: "_target_" in v if isinstance(v, dict) else v in SCHEDULES,
                      f"{SCHEDULES} (conf/optim/schedule), a schedule node with a _target_",
                      "{key}={value!r}; valid choices: {allowed}"),
    "warmup_steps": at_least(0),
    "distill_weight": within(0.0, 1.0),
    "distill_temperature": above(0.0),
    "stages": Check(lambda v: _stages_problem("mode.stages", v) is None,
                    "a list of stages {quant: <a recipe of conf/quant>, epochs: <an integer >= 0>}",
                    explain=_stages_problem),
}
GROUPS: dict[str, type | None] = {  # None: selected by ``_target_``
    "trainer": Trainer, "data": None, "model": None, "neuron": None, "surrogate": None,
    "quant": Quant, "mode": None, "optim": Optim, "logger": Logger, "hardware": Hardware,
}
