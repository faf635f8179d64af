"""``validate(cfg)``: every key of every group checked against its option kind, before anything is built."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import typing
from typing import Any

from omegaconf import DictConfig, OmegaConf

from snnexp import quant
from snnexp.errors import ConfigError
from snnexp.schema.checks import Check, allows_none, at_least, describe, known_type, matches
from snnexp.schema.groups import BOUND, BY_TARGET, GROUPS, MODE_CHECKS, PIPELINES, Augment, Mode, Run, Target

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
    _check_node("trainer.augment", "trainer.augment", _resolved(cfg, "trainer")["augment"], _fields_of(Augment))
    optim = _resolved(cfg, "optim")
    _check_target_node("optim.optimizer", "optim.optimizer", optim["optimizer"])
    _check_target_node("optim.schedule", "optim.schedule", optim["schedule"])
    schedule = _resolved(cfg, "mode").get("schedule")
    if isinstance(schedule, dict):  # QAT's own schedule, written out as a node
        _check_target_node("optim.schedule", "mode.schedule", schedule)
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
    nullable = allows_none(tp)
    if value is None and nullable:
        return
    good = matches(value, tp)
    if good and check is not None and value is not None:
        try:
            good = bool(check.ok(value))
        except (TypeError, ValueError):
            good = False
    if good:
        return
    if check is not None and check.explain is not None and matches(value, tp):
        message = check.explain(key, value)
        if message:
            raise ConfigError(message)
    allowed = check.allowed if check is not None else describe(tp)
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
        out[p.name] = (hint if known_type(hint) else Any, None)
    return out



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
