"""Quantization recipes as data, turned into qwix providers that really apply.

A recipe is a list of rules written in YAML (``conf/quant/*.yaml``). This module
validates those rules before any compute, translates them to qwix rules for a
mode, and quantizes a model with qwix. It exists because qwix on a spiking
network fails silently in several ways (see ``shared/QWIX_FACTS.md``):

* a qtype such as ``"int1"`` or ``"uint8"`` is accepted and zeroes the weights,
  so qtypes are checked against an allow-list;
* a rule with only an activation qtype does nothing, so it is an error;
* a rule whose ``module_path`` matches no layer does nothing, so after
  quantizing we ask qwix for unused rules and raise;
* qwix's symmetric bound is ``qmax + 0.5``, which turns a spike of 1.0 into
  0.996 (int8). The calibration alias ``spikes`` picks a range in which 1.0 is
  a code exactly, for dynamic and static activation scales alike;
* qwix's ``int2`` has codes {-2, -1, 0, 1}. ``ternary`` is BitNet b1.58's
  absmean ternary: ``W ~ scale * clip(round(W / mean|W|), -1, 1)`` with a
  straight-through estimator. The projection is applied to the weight before
  qwix sees it; qwix then stores it exactly as int2 codes in {-1, 0, +1} with
  one scale per output channel (equal to ``mean|W|``).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import qwix
from flax import nnx
from qwix._src.utils import flax_util

Mode = Literal["qat", "qt", "ptq", "calibrate", "srq"]

INT_QTYPES = ("int2", "int3", "int4", "int5", "int6", "int7", "int8")
FLOAT_QTYPES = ("nf4", "float8_e4m3fn", "float8_e5m2", "mxfp8", "mxfp4", "nvfp4")
WEIGHT_QTYPES = (*INT_QTYPES, *FLOAT_QTYPES, "ternary")
ACT_QTYPES = (*INT_QTYPES, *FLOAT_QTYPES)
CALIBRATION_METHODS = ("absmax", "minmax", "rms", "fixed", "spikes")

# qwix stores a ternary weight as int2 codes: with absmax scaled by 1.5 (the
# int2 bound), the scale of a channel equals its largest |value|, so values
# in {-s, 0, +s} become the codes {-1, 0, +1} exactly.
_TERNARY_AS = {"weight_qtype": "int2", "weight_calibration_method": "absmax,1.5"}


class RecipeError(ValueError):
    """A quantization recipe that cannot be applied as written."""


@dataclasses.dataclass(frozen=True)
class Rule:
    """One rule of a recipe, as written in ``conf/quant/*.yaml``."""

    # Regex fullmatched against the '/'-joined module path: fc/0, readout.
    module_path: str = ".*"
    # Weight type: one of WEIGHT_QTYPES. Required: a rule quantizes weights.
    weight_qtype: str | None = None
    # Activation (matmul input) type, one of ACT_QTYPES, or None for float.
    act_qtype: str | None = None
    # qwix calibration of weights: absmax[,k], minmax[,k], rms,k, fixed,a,b.
    weight_calibration_method: str = "absmax"
    # Calibration of activations: a qwix method, or "spikes" (1.0 exact).
    act_calibration_method: str = "spikes"
    # Sub-channel tile size along the contraction axis, or None.
    tile_size: int | float | None = None


def parse_recipe(rules: Sequence[Mapping[str, Any]] | None) -> list[Rule]:
    """Validates a recipe's rules; raises ``RecipeError`` naming the bad value.

    Args:
        rules: the ``quant.rules`` list of the config (mappings).

    Returns:
        The rules as frozen ``Rule`` objects, in order of precedence.
    """
    fields = {f.name for f in dataclasses.fields(Rule)}
    parsed = []
    for i, raw in enumerate(rules or []):
        where = f"quant.rules[{i}]"
        unknown = set(raw) - fields
        if unknown:
            raise RecipeError(
                f"{where}: unknown key(s) {sorted(unknown)}; valid keys: {sorted(fields)}"
            )
        rule = Rule(**dict(raw))
        try:
            re.compile(rule.module_path)
        except re.error as e:
            raise RecipeError(f"{where}.module_path={rule.module_path!r} is not a regex: {e}") from e
        if rule.weight_qtype is None:
            raise RecipeError(
                f"{where}: weight_qtype is null. qwix silently ignores a rule that quantizes "
                f"only activations; give weight_qtype one of {list(WEIGHT_QTYPES)}."
            )
        _check_choice(f"{where}.weight_qtype", rule.weight_qtype, WEIGHT_QTYPES)
        if rule.act_qtype is not None:
            _check_choice(f"{where}.act_qtype", rule.act_qtype, ACT_QTYPES)
        for name in ("weight_calibration_method", "act_calibration_method"):
            method = str(getattr(rule, name)).split(",")[0]
            _check_choice(f"{where}.{name}", method, CALIBRATION_METHODS)
        if rule.weight_calibration_method.startswith("spikes"):
            raise RecipeError(f"{where}.weight_calibration_method: 'spikes' is for activations only")
        if rule.weight_qtype == "ternary" and rule.tile_size is not None:
            raise RecipeError(f"{where}: ternary uses one absmean scale; tile_size must be null")
        parsed.append(rule)
    return parsed


def _check_choice(where: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        raise RecipeError(f"{where}={value!r} is not supported; valid choices: {list(choices)}")


def spike_exact_calibration(qtype: str, *, static: bool) -> str:
    """A qwix calibration method under which an activation of 1.0 is exact.

    qwix maps ``absmax`` to ``qmax + 0.5`` for integer types, so 1.0 lands
    between codes. Scaling the range by about ``(qmax + 0.5) / qmax`` puts 1.0
    on the top code; the factor is nudged by float32 ulps until
    ``qmax * scale`` is exactly 1.0 in float32. Dynamic scales use it on the
    measured absmax; static scales use the fixed range ``[-c, c]`` (an
    averaged absmax would shrink spikes, since most time steps are silent).

    Args:
        qtype: the activation qtype.
        static: whether the scale is static (SRQ) or computed per call.

    Returns:
        A calibration string such as ``"absmax,1.0039370078740157"``.
    """
    if qtype not in INT_QTYPES:
        return "fixed,-1,1" if static else "absmax"  # 1.0 is exact in these formats
    factor = _spike_factor(2 ** (int(qtype[3:]) - 1) - 1)
    return f"fixed,{-factor!r},{factor!r}" if static else f"absmax,{factor!r}"


def _spike_factor(qmax: int) -> float:
    bound = np.float32(qmax + 0.5)
    f = np.float32((qmax + 0.5) / qmax)
    for _ in range(64):
        scale = np.float32(f / bound)
        if np.float32(qmax * scale) == 1.0 and np.rint(np.float32(1.0) / scale) == qmax:
            return float(f)
        f = np.nextafter(f, np.float32(2.0))
    raise AssertionError(f"no float32 range keeps 1.0 exact for qmax={qmax}")


def to_qwix_rules(
    rules: Sequence[Rule], mode: Mode, *, bwd_qtype: str | None = None
) -> list[qwix.QuantizationRule]:
    """Translates recipe rules to qwix rules for one mode.

    Args:
        rules: validated recipe rules.
        mode: ``qat`` (straight-through fake quant), ``qt`` (quantized backward
            pass with ``bwd_qtype``), ``ptq`` (integer weights, dynamic
            activation scales), ``calibrate`` (collect static activation
            statistics), ``srq`` (integer weights, static activation scales).
        bwd_qtype: gradient qtype in ``qt`` mode.

    Returns:
        qwix rules (``QtRule`` for training modes, ``QuantizationRule`` else).
    """
    static = mode in ("calibrate", "srq")
    out = []
    for r in rules:
        kw: dict[str, Any] = dict(
            module_path=r.module_path,
            weight_qtype=r.weight_qtype,
            weight_calibration_method=r.weight_calibration_method,
            tile_size=r.tile_size,
        )
        if r.weight_qtype == "ternary":
            kw.update(_TERNARY_AS)
        if r.act_qtype is not None:
            kw["act_qtype"] = r.act_qtype
            method = r.act_calibration_method
            if method == "spikes":
                method = spike_exact_calibration(r.act_qtype, static=static)
            kw["act_calibration_method"] = method
            kw["act_static_scale"] = static
        if mode in ("qat", "qt", "calibrate"):
            if mode == "qt":
                kw["bwd_qtype"] = bwd_qtype
                if _weight_bits(kw["weight_qtype"]) <= 3:
                    # qwix asserts in dot_general_qt for int2/int3 weights otherwise.
                    kw["additional_qt_config"] = {"use_original_residuals": True}
            out.append(qwix.QtRule(**kw))
        else:
            out.append(qwix.QuantizationRule(**kw))
    return out


def _weight_bits(qtype: str) -> int:
    return int(qtype[3:]) if qtype in INT_QTYPES else 8


def ternarize(w: jax.Array, eps: float = 1e-6) -> tuple[jax.Array, jax.Array]:
    """BitNet b1.58 absmean ternary quantization.

    Args:
        w: a weight matrix ``[in, out]`` (any shape works).
        eps: guards the scale of an all-zero matrix.

    Returns:
        ``(codes, scale)``: codes in {-1, 0, +1} (same shape and dtype as
        ``w``) and the scalar scale ``mean|w|``.
    """
    scale = jnp.mean(jnp.abs(w)) + eps
    codes = jnp.clip(jnp.round(w / scale), -1, 1)
    return codes, scale


def ternary_ste(w: jax.Array) -> jax.Array:
    """``scale * ternary codes`` forward, identity gradient (straight-through)."""
    codes, scale = ternarize(w)
    return w + jax.lax.stop_gradient(codes * scale - w)


class _TernaryMixin:
    """Projects weights of ``ternary`` rules before qwix quantizes them."""

    def __init__(self, rules: Sequence[qwix.QuantizationRule], *, ternary: Sequence[bool]):
        super().__init__(rules)  # type: ignore[call-arg]
        self._ternary_paths = [(r.module_path, t) for r, t in zip(rules, ternary, strict=True)]

    def _is_ternary(self) -> bool:
        path = "/".join(map(str, flax_util.get_current_module_path()))
        for pattern, is_ternary in self._ternary_paths:
            if re.fullmatch(pattern, path):
                return is_ternary
        return False

    def dot_general(self, lhs, rhs, *args, **kwargs):
        if isinstance(rhs, jax.Array) and self._is_ternary() and flax_util.find_param(rhs):
            rhs = ternary_ste(rhs)
        return super().dot_general(lhs, rhs, *args, **kwargs)  # type: ignore[misc]


class QtProvider(_TernaryMixin, qwix.QtProvider):
    """qwix's QtProvider (QAT, QT, calibration) with BitNet ternary weights."""


class PtqProvider(_TernaryMixin, qwix.PtqProvider):
    """qwix's PtqProvider (PTQ, SRQ) with BitNet ternary weights."""


def quantize(
    model: nnx.Module,
    rules: Sequence[Rule],
    mode: Mode,
    sample: jax.Array,
    *,
    bwd_qtype: str | None = None,
) -> nnx.Module:
    """Returns a quantized copy of ``model``; raises if a rule matched nothing.

    Args:
        model: a network whose ``__call__(x, loop=...)`` takes ``[B, T, F]``.
        rules: validated recipe rules; empty means fp32 (a plain copy).
        mode: see ``to_qwix_rules``.
        sample: an input ``[B, T, F]``; only its first time step is used.
        bwd_qtype: gradient qtype in ``qt`` mode.

    Returns:
        The quantized model. ``ptq``/``srq`` models hold integer weights and
        are for inference only.
    """
    if not rules:
        return nnx.clone(model)
    qrules = to_qwix_rules(rules, mode, bwd_qtype=bwd_qtype)
    ternary = [r.weight_qtype == "ternary" for r in rules]
    cls = PtqProvider if mode in ("ptq", "srq") else QtProvider
    provider = cls(qrules, ternary=ternary)
    qmodel = qwix.quantize_model(model, provider, sample[:, :1], loop="unrolled")
    unused = provider.get_unused_rules()
    if unused:
        paths = [r.module_path for r in unused]
        raise RecipeError(
            f"quantization rule(s) with module_path {paths} matched no layer; layers with "
            f"weights: {weight_paths(model)} (module_path is a regex fullmatched "
            "against these paths, not against class names)"
        )
    return qmodel


def weight_paths(model: nnx.Module) -> list[str]:
    """The '/'-joined paths of the modules that own a matmul weight."""
    return [
        "/".join(map(str, path))
        for path, m in nnx.iter_modules(model)
        if isinstance(m, (nnx.Linear, nnx.Conv))
    ]
