"""Recipe rules turned into qwix providers that really apply, and the model quantized.

This is the only place that calls qwix. It exists because qwix on a spiking
network fails silently in several ways (docs/qwix_on_snns.md):

* a rule whose ``module_path`` matches no layer does nothing, so after
  quantizing we ask qwix for unused rules and raise;
* qwix's symmetric bound is ``qmax + 0.5``, which turns a spike of 1.0 into
  0.996 (int8). The calibration alias ``spikes`` picks a range in which 1.0 is
  a code exactly, for dynamic and static activation scales alike;
* qwix's ``int2`` has codes {-2, -1, 0, 1}. ``ternary`` is BitNet b1.58's
  absmean ternary: ``W ~ scale * clip(round(W / mean|W|), -1, 1)`` with a
  straight-through estimator. The projection is applied to the weight before
  qwix sees it; qwix then stores it exactly as int2 codes in {-1, 0, +1} with
  one scale per output channel (equal to ``mean|W|``);
* qwix tells a weight from an activation by shape: a square layer fed as many
  rows as it is wide crashes it, so ``check_shapes`` refuses that up front.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import qwix
from flax import nnx
from qwix._src.utils import flax_util

from snnexp.errors import ConfigError
from snnexp.quant.recipes import INT_QTYPES, RecipeError, Rule

Mode = Literal["qat", "qt", "ptq", "calibrate", "srq"]

# qwix stores a ternary weight as int2 codes: with absmax scaled by 1.5 (the
# int2 bound), the scale of a channel equals its largest |value|, so values
# in {-s, 0, +s} become the codes {-1, 0, +1} exactly.
_TERNARY_AS = {"weight_qtype": "int2", "weight_calibration_method": "absmax,1.5"}



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


def check_shapes(model: nnx.Module, batch_rows: Sequence[int]) -> None:
    """Refuses a square layer whose input has as many rows as the layer is wide.

    qwix tells weights from activations by shape; such a layer crashes inside
    qwix ("lhs and rhs cannot be both weights").

    Args:
        model: the network.
        batch_rows: every row count a matmul input will have (batch sizes,
            batch x time steps, ...).

    Raises:
        ConfigError: naming the layer and the batch sizes to change.
    """
    for path, m in nnx.iter_modules(model):
        if isinstance(m, nnx.Linear) and m.in_features == m.out_features and m.in_features in batch_rows:
            name = "/".join(map(str, path))
            raise ConfigError(
                f"layer {name} is {m.in_features}x{m.out_features} and a batch has "
                f"{m.in_features} rows: qwix cannot tell its weight from its input. "
                "Choose another trainer.batch_size / trainer.eval_batch_size."
            )
