"""The schema of every config group: ``validate(cfg)`` checks types and ranges before any data loads.

Each group option kind is a dataclass below: one typed field per key, its
range or choices in the field's metadata (a ``Check``). An option is matched
to its dataclass by its ``_target_`` (data loaders, model classes, spyx
neurons and surrogates, optax optimizers and schedules, mode pipelines); the
groups without a target (``optim``, ``logger``, ``quant``, ``trainer``, the
top level) have one dataclass each. A key that the target's signature takes
but no dataclass names (a key added to a target and its YAML together) is
typed from the signature's hints; a target snnexp does not know is checked
against its signature alone. The mode pipelines are typed from their
signatures only (``snnexp.train.pipelines``), and the recipe rules from
``snnexp.quant.Rule``, then ``quant.parse_recipe``.

A bad value fails with one line that names the key, the value and what is
allowed::

    optim.lr='abc' must be a number > 0
    model.hidden=[0] must be a non-empty list of integers >= 1, one width per layer (e.g. [128])
    model.hiden is not a key of model (snnexp.models.FeedForwardSNN); valid keys: [...]

Numbers are not taken from strings (``'3'`` is not an integer), nor booleans
from numbers.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from snnexp import quant
from snnexp.data import encoding, mnist1d, nmnist, shd
from snnexp.errors import ConfigError
from snnexp.models import conv

# ------------------------------------------------------------------ checks


@dataclass(frozen=True)
class Check:
    """A range or choice check on a value of the field's type (``None`` never reaches it).

    Attributes:
        ok: true for an allowed value.
        allowed: what is allowed, in words ("an integer >= 1"); also the
            message for a value of the wrong type.
        template: the message; ``{key}``, ``{value!r}``, ``{allowed}`` are filled in.
    """

    ok: Callable[[Any], bool]
    allowed: str
    template: str = "{key}={value!r} must be {allowed}"


def spec(check: Check | None = None) -> Any:
    """A dataclass field carrying ``check`` in its metadata."""
    return field(metadata={"check": check} if check else {})


def at_least(low: float, what: str = "an integer", template: str | None = None) -> Check:
    """A number ``>= low``."""
    return Check(lambda v: v >= low, f"{what} >= {low:g}", template or Check.template)


def above(low: float, what: str = "a number") -> Check:
    """A number ``> low``."""
    return Check(lambda v: v > low, f"{what} > {low:g}")


def within(low: float, high: float, *, open_low: bool = False, open_high: bool = False) -> Check:
    """A number in ``[low, high]``; either end may be open."""
    def ok(v: float) -> bool:
        return (v > low if open_low else v >= low) and (v < high if open_high else v <= high)
    brackets = ("(" if open_low else "[") + f"{low:g}, {high:g}" + (")" if open_high else "]")
    return Check(ok, f"a number in {brackets}")


def one_of(choices: Sequence[Any]) -> Check:
    """One of ``choices``, in the ``valid choices: [...]`` style of the rest of snnexp."""
    return Check(lambda v: v in choices, str(list(choices)), "{key}={value!r}; valid choices: {allowed}")


def _exists(path: str) -> bool:
    return Path(path).exists()  # as build.pipeline and the pipelines read it


POSITIVE = "{key} must be positive, got {value!r} ({allowed})"  # the data loaders' wording
WIDTHS = Check(lambda v: len(v) >= 1 and all(w >= 1 for w in v),
               "a non-empty list of integers >= 1, one width per layer (e.g. [128])")
PER_LAYER = Check(lambda v: all(w >= 1 for w in v) if isinstance(v, list) else v >= 1,
                  "an integer >= 1, or a list of them (one per layer)")
DECAY = within(0.0, 1.0)
NAME = Check(lambda v: bool(v), "a non-empty string")
TARGET = Check(lambda v: bool(v), "a dotted import path")
NODE = Check(lambda v: "_target_" in v, "a config node with a _target_")


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
class FeedForwardModel(Target):
    """``conf/model/feedforward.yaml``: ``snnexp.models.FeedForwardSNN``."""

    hidden: list[int] = spec(WIDTHS)
    readout_beta: float | None = spec(DECAY)


@dataclass
class RecurrentModel(FeedForwardModel):
    """``conf/model/recurrent.yaml``: ``snnexp.models.RecurrentSNN``."""

    rec_gain: float = spec(at_least(0.0, "a number"))


@dataclass
class ConvModel(FeedForwardModel):
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
class Trainer:
    """``trainer`` in ``conf/train.yaml``."""

    epochs: int = spec(at_least(0))
    batch_size: int = spec(at_least(1))
    eval_batch_size: int = spec(at_least(1))
    steps_per_call: int = spec(at_least(0))
    checkpoint_every: int = spec(at_least(1))


@dataclass
class Run:
    """The top level of ``conf/train.yaml`` besides the groups."""

    seed: int = spec(at_least(0))
    resume: bool = spec()
    objective: str = spec(NAME)
    compile_cache: str | None = spec()


# The option kinds of the groups with a ``_target_``, by target.
BY_TARGET: dict[str, dict[str, type]] = {
    "data": {
        "snnexp.data.digits.load": DigitsData,
        "snnexp.data.mnist1d.load": Mnist1dData,
        "snnexp.data.nmnist.load": NmnistData,
        "snnexp.data.shd.load": ShdData,
        "snnexp.data.synthetic.load": SyntheticData,
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
MODE_CHECKS: dict[str, Check] = {
    "lr_scale": above(0.0),
    "bwd_qtype": one_of(quant.ACT_QTYPES),
    "fp32_checkpoint": Check(_exists, "an existing checkpoints/fp32 directory", "{key}={value!r} does not exist"),
}
GROUPS: dict[str, type | None] = {  # None: selected by ``_target_``
    "trainer": Trainer, "data": None, "model": None, "neuron": None, "surrogate": None,
    "quant": Quant, "mode": None, "optim": Optim, "logger": Logger,
}


# ------------------------------------------------------------------ checking

Field = tuple[Any, Check | None]  # (type, check)


def validate(cfg: DictConfig) -> None:
    """Checks every key of every group of a composed config, before anything is built.

    Args:
        cfg: the composed run config (``conf/train.yaml`` and its groups).

    Raises:
        ConfigError: a missing or unknown key, a value of the wrong type or out
            of range: one line naming the key, the value and what is allowed.
        quant.RecipeError: a recipe rule that ``quant.parse_recipe`` refuses.
    """
    top = _fields_of(Run)
    unknown = set(cfg) - set(top) - set(GROUPS)
    if unknown:
        raise ConfigError(f"{sorted(unknown)[0]} is not a key of the run config; valid keys: "
                          f"{sorted([*top, *GROUPS])}")
    for key, (tp, check) in top.items():
        if key in cfg:
            _check_value(key, _resolved(cfg, key), tp, check)
    for group, kind in GROUPS.items():
        if group not in cfg or not isinstance(cfg[group], DictConfig):
            raise ConfigError(f"{group} is missing or not a config node; conf/train.yaml defines it")
        node = _resolved(cfg, group)
        if kind is None:
            _check_target_node(group, group, node)
        else:
            _check_node(group, group, node, _fields_of(kind))
    optim = _resolved(cfg, "optim")
    _check_target_node("optim.optimizer", "optim.optimizer", optim["optimizer"])
    _check_target_node("optim.schedule", "optim.schedule", optim["schedule"])
    rules = _resolved(cfg, "quant")["rules"] or []
    rule_fields = _hinted_fields(quant.Rule)
    for i, rule in enumerate(rules):
        if not isinstance(rule, dict):
            raise ConfigError(f"quant.rules[{i}]={rule!r} must be a mapping (module_path, weight_qtype, ...)")
        for key, value in rule.items():  # unknown keys: parse_recipe names them
            if key in rule_fields:
                _check_value(f"quant.rules[{i}].{key}", value, *rule_fields[key])
        size = rule.get("tile_size")
        if size is not None and not size > 0:
            raise ConfigError(f"quant.rules[{i}].tile_size={size!r} must be a number > 0 or null")
    quant.parse_recipe(rules)


def _resolved(cfg: DictConfig, key: str) -> Any:
    """``cfg[key]`` with its interpolations resolved, as plain Python values."""
    try:
        value = cfg[key]
        return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    except Exception as e:  # noqa: BLE001 - OmegaConf raises several kinds
        raise ConfigError(f"{key}: {str(e).splitlines()[0]}") from None


def _check_target_node(group: str, path: str, node: Any) -> None:
    """Checks a ``_target_`` node against the option kind of its target, and the target's signature."""
    if not isinstance(node, dict):
        raise ConfigError(f"{path}={node!r} must be a config node with a _target_")
    target = node.get("_target_")
    if not isinstance(target, str) or not target:
        raise ConfigError(f"{path}._target_={target!r} must name what to build (a dotted import path)")
    kind = BY_TARGET[group].get(target)
    try:
        taken = _signature_fields(_import(target), BOUND[group])
    except Exception as e:  # noqa: BLE001 - any import error means the same to a user
        if kind is None:
            raise ConfigError(f"{path}._target_={target!r} is not a function snnexp can import "
                              f"({str(e).splitlines()[0]})") from None
        taken = {}  # a known target that does not import here: building it says why
    if kind is not None and taken is None:
        taken = {}  # its dataclass names every key
    if group == "mode" and taken is not None:
        for name in PIPELINES:  # the knobs of the other modes, which this one ignores
            others = _signature_fields(_import(f"snnexp.train.pipelines.{name}"), BOUND[group]) or {}
            taken = {**others, **taken}
        taken = {k: (tp, _mode_check(k)) for k, (tp, _) in taken.items()}
    fields = _fields_of(kind or (Mode if group == "mode" else Target))
    if taken is None:  # takes **kwargs: any further key, untyped
        fields = {**{k: (Any, None) for k in node}, **fields}
    else:  # a key the target takes but no dataclass names (added to the target and its YAML together)
        fields = {**taken, **fields}
    _check_node(group, path, node, fields, f" ({target})")


def _mode_check(key: str) -> Check | None:
    """The range of a pipeline knob, by its name (``*epochs`` and ``*batches``: counts)."""
    if key in MODE_CHECKS:
        return MODE_CHECKS[key]
    if key.endswith(("epochs", "batches")):
        return at_least(0)
    return None


def _check_node(group: str, path: str, node: Any, fields: dict[str, Field], what: str = "") -> None:
    """Checks a mapping's keys against ``fields``: unknown keys, then each value."""
    if not isinstance(node, dict):
        raise ConfigError(f"{path}={node!r} must be a config node")
    for key in node:
        if key not in fields:
            raise ConfigError(f"{path}.{key} is not a key of {group}{what}; valid keys: {sorted(fields)}")
    for key, value in node.items():
        _check_value(f"{path}.{key}", value, *fields[key])


def _check_value(key: str, value: Any, tp: Any, check: Check | None) -> None:
    """Raises ``ConfigError`` unless ``value`` is of type ``tp`` and passes ``check``."""
    nullable = _allows_none(tp)
    if value is None and nullable:
        return
    good = _matches(value, tp)
    if good and check is not None and value is not None:
        try:
            good = bool(check.ok(value))
        except (TypeError, ValueError):
            good = False
    if good:
        return
    allowed = check.allowed if check is not None else _describe(tp)
    if check is not None and nullable:
        allowed += " or null"
    template = check.template if check is not None else Check.template
    raise ConfigError(template.format(key=key, value=value, allowed=allowed))


def _fields_of(kind: type) -> dict[str, Field]:
    """The ``(type, check)`` of each field of a schema dataclass."""
    hints = typing.get_type_hints(kind)
    return {f.name: (hints[f.name], f.metadata.get("check")) for f in dataclasses.fields(kind)}


def _hinted_fields(kind: type) -> dict[str, Field]:
    """The ``(type, None)`` of each field of a plain dataclass (``quant.Rule``)."""
    hints = typing.get_type_hints(kind)
    return {f.name: (hints[f.name], None) for f in dataclasses.fields(kind)}


def _signature_fields(func: Any, bound: set[str]) -> dict[str, Field] | None:
    """The keyword arguments of ``func`` (a class: its ``__init__``) typed by their hints.

    Returns:
        ``{name: (type, None)}``, ``Any`` where a hint is missing or foreign;
        ``None`` when ``func`` takes ``**kwargs``.
    """
    if inspect.isclass(func):  # an nnx.Module's metaclass hides the signature of __init__
        func = func.__init__
    try:
        sig = inspect.signature(func, eval_str=True)
    except (NameError, TypeError, ValueError):
        try:
            sig = inspect.signature(func)
        except (TypeError, ValueError):
            return None
    out: dict[str, Field] = {}
    for p in sig.parameters.values():
        if p.kind is p.VAR_KEYWORD:
            return None
        if p.kind is p.VAR_POSITIONAL or p.name in bound or p.name == "self":
            continue
        hint = p.annotation
        out[p.name] = (hint if _known_type(hint) else Any, None)
    return out


_SCALARS = (int, float, bool, str, type(None), dict, list)


def _known_type(tp: Any) -> bool:
    """Whether ``_matches`` understands ``tp`` (scalars, lists, unions of them)."""
    if tp in _SCALARS:
        return True
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return all(_known_type(a) for a in typing.get_args(tp))
    if origin in (list, tuple, Sequence):
        return all(_known_type(a) for a in typing.get_args(tp) if a is not Ellipsis)
    return False


def _allows_none(tp: Any) -> bool:
    if tp is Any or tp is type(None):
        return True
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return any(_allows_none(a) for a in typing.get_args(tp))
    return False


def _matches(value: Any, tp: Any) -> bool:
    """Whether ``value`` (plain Python, as OmegaConf resolves it) is of type ``tp``, strictly."""
    if tp is Any:
        return True
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if tp is dict or typing.get_origin(tp) in (dict, Mapping):
        return isinstance(value, Mapping)
    if tp is list:
        return isinstance(value, list | tuple)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if origin in (list, tuple, Sequence):
        if not isinstance(value, list | tuple):
            return False
        item = args[0] if args else Any
        return all(_matches(v, item) for v in value)
    return True  # a type this module does not check


def _describe(tp: Any, plural: bool = False) -> str:
    """``tp`` in words: ``an integer``, ``a list of numbers``, ``a string or null``."""
    words = {int: ("an integer", "integers"), float: ("a number", "numbers"),
             bool: ("true or false", "booleans"), str: ("a string", "strings"),
             type(None): ("null", "nulls"), dict: ("a config node", "config nodes"),
             list: ("a list", "lists"), Any: ("anything", "anything")}
    if tp in words:
        return words[tp][plural]
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        parts = [a for a in args if a is not type(None) and not (a is int and float in args)]
        text = " or ".join(_describe(a, plural) for a in parts)
        return text + (" or null" if len(parts) < len(args) else "")
    if origin in (list, tuple, Sequence):
        return f"a list of {_describe(args[0], True)}" if args else "a list"
    if origin in (dict, Mapping):
        return "a config node"
    return str(tp)


def _import(path: str) -> Any:
    """The object at a dotted path (a module attribute, possibly nested), without Hydra's logging."""
    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        for name in parts[i:]:
            obj = getattr(obj, name)
        return obj
    raise ModuleNotFoundError(f"no module named {parts[0]!r}")
