"""Checks of one value: a type (``matches``, ``describe``) and a range or choice (``Check``)."""

from __future__ import annotations

import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# ------------------------------------------------------------------ checks


@dataclass(frozen=True)
class Check:
    """A range or choice check on a value of the field's type (``None`` never reaches it).

    Attributes:
        ok: true for an allowed value.
        allowed: what is allowed, in words ("an integer >= 1"); also the
            message for a value of the wrong type.
        template: the message; ``{key}``, ``{value!r}``, ``{allowed}`` are filled in.
        explain: for a value of the right type that ``ok`` refuses, the whole
            message from ``(key, value)`` (which part is wrong, for a list of
            nodes), or None to use ``template``.
    """

    ok: Callable[[Any], bool]
    allowed: str
    template: str = "{key}={value!r} must be {allowed}"
    explain: Callable[[str, Any], str | None] | None = None


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


def exists(path: str) -> bool:
    """Whether ``path`` exists."""
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



_SCALARS = (int, float, bool, str, type(None), dict, list)


def known_type(tp: Any) -> bool:
    """Whether ``matches`` understands ``tp`` (scalars, lists, unions of them)."""
    if tp in _SCALARS:
        return True
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return all(known_type(a) for a in typing.get_args(tp))
    if origin in (list, tuple, Sequence):
        return all(known_type(a) for a in typing.get_args(tp) if a is not Ellipsis)
    return False


def allows_none(tp: Any) -> bool:
    """Whether the type hint ``tp`` admits None."""
    if tp is Any or tp is type(None):
        return True
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return any(allows_none(a) for a in typing.get_args(tp))
    return False


def matches(value: Any, tp: Any) -> bool:
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
        return any(matches(value, a) for a in args)
    if origin in (list, tuple, Sequence):
        if not isinstance(value, list | tuple):
            return False
        item = args[0] if args else Any
        return all(matches(v, item) for v in value)
    return True  # a type this module does not check


def describe(tp: Any, plural: bool = False) -> str:
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
        text = " or ".join(describe(a, plural) for a in parts)
        return text + (" or null" if len(parts) < len(args) else "")
    if origin in (list, tuple, Sequence):
        return f"a list of {describe(args[0], True)}" if args else "a list"
    if origin in (dict, Mapping):
        return "a config node"
    return str(tp)
