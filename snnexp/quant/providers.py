"""Recipe rules turned into qwix providers that really apply, and the model quantized.

This is the only place that calls qwix. It exists because qwix on a spiking
network fails silently in several ways (docs/qwix_on_snns.md):

* a rule whose ``module_path`` matches no layer does nothing, so after
  quantizing we ask qwix for unused rules and raise;
* qwix's symmetric bound is ``qmax + 0.5``, which turns a spike of 1.0 into
  0.996 (int8). The calibration alias ``spikes`` decides per layer: a layer
  fed spikes (every hidden layer and the readout, and the input layer when
  the data are binary) gets a fixed range in which 1.0 is a code exactly,
  also under ``jax.jit`` and in SRQ; a layer fed analog values (the input
  layer on analog data) is calibrated from the data (``absmax``, dynamic or
  static);
* mxfp8/mxfp4 need tiles of 32 and nvfp4 tiles of 16 along the contraction
  axis: the tile defaults to that block size, and ``check_tiles`` refuses a
  layer whose width is not a multiple of it, before any compute;
* qwix's ``int2`` has codes {-2, -1, 0, 1}. ``ternary`` is BitNet b1.58's
  absmean ternary: ``W ~ scale * clip(round(W / mean|W|), -1, 1)`` with a
  straight-through estimator, one ``mean|W|`` per matrix (``ternary_scale:
  channel``: per output channel). The projection is applied to the weight
  before qwix sees it; qwix then stores it exactly as int2 codes in
  {-1, 0, +1} with one scale per output channel (equal to that ``mean|W|``);
* qwix tells a weight from an activation by shape: a square layer fed as many
  rows as it is wide crashes it, so ``check_shapes`` refuses that up front.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
import qwix
from flax import nnx
from qwix._src import averaging, interception
from qwix._src.utils import flax_util

from snnexp.quant.checks import check_tiles, first_matches, input_layer, tile_size, weight_paths
from snnexp.quant.grid import analog_calibration, is_spike_train, spike_exact_calibration, spike_scale
from snnexp.quant.recipes import BWD_QTYPES, RecipeError, Rule

Mode = Literal["qat", "qt", "ptq", "calibrate", "srq"]

# qwix stores a ternary weight as int2 codes: with absmax scaled by 1.5 (the
# int2 bound), the scale of a channel equals its largest |value|, so values
# in {-s, 0, +s} become the codes {-1, 0, +1} exactly.
_TERNARY_AS = {"weight_qtype": "int2", "weight_calibration_method": "absmax,1.5"}


# qtypes whose codes qwix keeps in a container of another dtype (int2/int3 in
# int4, int5..int7 in int8, nf4 in uint4). qwix's quantized backward pass
# asserts ``qtype == qvalue.dtype`` for them unless it keeps the original
# residuals.
_CONTAINED = ("int2", "int3", "int5", "int6", "int7", "nf4", "ternary")


def _expand(rules: Sequence[Rule], analog: Sequence[str],
            paths: Sequence[str] | None) -> list[tuple[Rule, str, bool]]:
    """``(rule, module_path, analog)`` per qwix rule: a ``spikes`` rule is split per input kind.

    The layers in ``analog`` that a ``spikes`` rule matches first get their
    own rule (exact paths, placed just before it, so first-wins still holds);
    the original rule keeps the rest, and is left out when ``paths`` (every
    layer path) shows that nothing is left for it.
    """
    matched = first_matches(rules, analog)
    every = first_matches(rules, paths) if paths is not None else None
    out = []
    for i, r in enumerate(rules):
        mine = matched[i] if (r.act_qtype and r.act_calibration_method == "spikes") else []
        if mine:
            out.append((r, "|".join(re.escape(p) for p in mine), True))
            if every is not None and every[i] and set(every[i]) <= set(mine):
                continue
        out.append((r, r.module_path, False))
    return out


def to_qwix_rules(
    rules: Sequence[Rule], mode: Mode, *, bwd_qtype: str | None = None,
    analog: Sequence[str] = (), paths: Sequence[str] | None = None,
) -> list[qwix.QuantizationRule]:
    """Translates recipe rules to qwix rules for one mode.

    Args:
        rules: validated recipe rules.
        mode: ``qat`` (straight-through fake quant), ``qt`` (quantized backward
            pass with ``bwd_qtype``), ``ptq`` (integer weights, dynamic
            activation scales), ``calibrate`` (collect static activation
            statistics), ``srq`` (integer weights, static activation scales).
        bwd_qtype: gradient qtype in ``qt`` mode.
        analog: paths of the layers whose matmul input is not a spike train
            (``spikes`` calibrates them from the data).
        paths: every layer path of the model, or None (see ``_expand``).

    Returns:
        qwix rules (``QtRule`` for training modes, ``QuantizationRule`` else).
    """
    _check_bwd(mode, bwd_qtype)
    return [_qwix_rule(r, path, is_analog, mode, bwd_qtype) for r, path, is_analog in _expand(rules, analog, paths)]


def _check_bwd(mode: Mode, bwd_qtype: str | None) -> None:
    if mode == "qt" and bwd_qtype is not None and bwd_qtype not in BWD_QTYPES:
        raise RecipeError(f"mode.bwd_qtype={bwd_qtype!r}: qwix's quantized gradients take no tiles; "
                          f"valid choices: {list(BWD_QTYPES)} or null")


def _qwix_rule(r: Rule, module_path: str, is_analog: bool, mode: Mode,
               bwd_qtype: str | None) -> qwix.QuantizationRule:
    static = mode in ("calibrate", "srq")
    kw: dict[str, Any] = dict(
        module_path=module_path,
        weight_qtype=r.weight_qtype,
        weight_calibration_method=r.weight_calibration_method,
        tile_size=tile_size(r),
    )
    if r.weight_qtype == "ternary":
        kw.update(_TERNARY_AS)
    if r.act_qtype is not None:
        kw["act_qtype"] = r.act_qtype
        method = r.act_calibration_method
        if method == "spikes":
            method = analog_calibration(r.act_qtype) if is_analog else spike_exact_calibration(r.act_qtype)
        kw["act_calibration_method"] = method
        kw["act_static_scale"] = static
    if mode in ("qat", "qt", "calibrate"):
        if mode == "qt":
            kw["bwd_qtype"] = bwd_qtype
            if r.weight_qtype in _CONTAINED or r.act_qtype in _CONTAINED:
                # qwix asserts in dot_general_qt for codes kept in a wider container otherwise.
                kw["additional_qt_config"] = {"use_original_residuals": True}
        return qwix.QtRule(**kw)
    return qwix.QuantizationRule(**kw)


def ternarize(w: jax.Array, eps: float = 1e-6, *, per_channel: bool = False) -> tuple[jax.Array, jax.Array]:
    """BitNet b1.58 absmean ternary quantization.

    Args:
        w: a weight matrix ``[in, out]`` (any shape works; the last axis is the output channel).
        eps: guards the scale of an all-zero matrix (or channel).
        per_channel: one scale per output channel (``ternary_scale: channel``) instead of one per matrix.

    Returns:
        ``(codes, scale)``: codes in {-1, 0, +1} (same shape and dtype as
        ``w``) and the scale ``mean|w|``: a scalar, or ``[1, ..., out]`` per channel.
    """
    axes = tuple(range(w.ndim - 1)) if per_channel else None
    scale = jnp.mean(jnp.abs(w), axis=axes, keepdims=per_channel) + eps
    codes = jnp.clip(jnp.round(w / scale), -1, 1)
    return codes, scale


def unquantized_matmul(a: jax.Array, b: jax.Array) -> jax.Array:
    """``a @ b`` that qwix leaves alone even inside a quantized model's intercepted ``__call__``.

    qwix fake-quantizes every ``dot_general`` run inside the model's call; a
    product of integer codes computed there on purpose (the integer-grid
    fine-tuning of ``snnexp.hardware.qat``) must not be requantized.
    """
    return interception.disable_interceptions(jnp.matmul)(a, b)


def ternary_ste(w: jax.Array, *, per_channel: bool = False) -> jax.Array:
    """``scale * ternary codes`` forward, identity gradient (straight-through)."""
    codes, scale = ternarize(w, per_channel=per_channel)
    return w + jax.lax.stop_gradient(codes * scale - w)


class _TernaryMixin:
    """Projects weights of ``ternary`` rules before qwix quantizes them."""

    def __init__(self, rules: Sequence[qwix.QuantizationRule], *, ternary: Sequence[str | None],
                 running_max: Sequence[str] = ()):
        super().__init__(rules)  # type: ignore[call-arg]
        self._ternary_paths = [(r.module_path, t) for r, t in zip(rules, ternary, strict=True)]
        self._running_max = frozenset(running_max)

    def _ternary_scale(self) -> str | None:
        """``tensor`` or ``channel`` for a layer of a ternary rule, None for any other."""
        path = "/".join(map(str, flax_util.get_current_module_path()))
        for pattern, scale in self._ternary_paths:
            if re.fullmatch(pattern, path):
                return scale
        return None

    def dot_general(self, lhs, rhs, *args, **kwargs):
        if isinstance(rhs, jax.Array) and (scale := self._ternary_scale()) and flax_util.find_param(rhs):
            rhs = ternary_ste(rhs, per_channel=scale == "channel")
        return super().dot_general(lhs, rhs, *args, **kwargs)  # type: ignore[misc]


class QtProvider(_TernaryMixin, qwix.QtProvider):
    """qwix's QtProvider (QAT, QT, calibration) with BitNet ternary weights.

    For the layers in ``running_max`` (analog inputs under ``spikes``) a
    static statistic is the absmax over every calibration row and batch, not
    qwix's mean over rows and batches of per-row absmax, which would clip
    every value above the average: nothing seen in calibration is clipped.
    """

    def _update_and_get_quant_stat(self, name: str, batch_axes: tuple[int, ...],
                                   calibration: dict[str, jax.Array]) -> dict[str, jax.Array]:
        path = "/".join(map(str, flax_util.get_current_module_path()))
        if path not in self._running_max or set(calibration) != {"absmax"}:
            return super()._update_and_get_quant_stat(name, batch_axes, calibration)
        calibration = {"absmax": calibration["absmax"].max(axis=tuple(batch_axes), keepdims=True)}
        aggregator = averaging.SimpleMovingAverage()
        stat = flax_util.get_or_create_variable("quant_stats", name, lambda: aggregator.init(calibration))
        if flax_util.should_update_quant_stats():
            old = stat.value
            count = old["count"] + 1
            seen = jnp.where(old["count"] > 0, old["sum_of_absmax"] / jnp.maximum(old["count"], 1), 0.0)
            # stored so that qwix's mean (sum / count) reads the running max
            stat.value = {"count": count, "sum_of_absmax": jnp.maximum(seen, calibration["absmax"]) * count}
        return aggregator.get_calibration(stat.value, calibration)


class PtqProvider(_TernaryMixin, qwix.PtqProvider):
    """qwix's PtqProvider (PTQ, SRQ) with BitNet ternary weights."""


def quantize(
    model: nnx.Module,
    rules: Sequence[Rule],
    mode: Mode,
    sample: jax.Array,
    *,
    bwd_qtype: str | None = None,
    analog_inputs: Sequence[str] | None = None,
) -> nnx.Module:
    """Returns a quantized copy of ``model``; raises if a rule matched nothing.

    Args:
        model: a network whose ``__call__(x, loop=...)`` takes ``[B, T, F]``.
        rules: validated recipe rules; empty means fp32 (a plain copy).
        mode: see ``to_qwix_rules``.
        sample: an input ``[B, T, F]``; its first time step is what qwix's
            first call sees. Unless ``analog_inputs`` is given, the layer fed
            the network input counts as fed spikes iff ``sample`` is binary
            (pass an analog sample for analog data: ``representative_sample``).
        bwd_qtype: gradient qtype in ``qt`` mode.
        analog_inputs: the paths of the layers fed analog values, or None to
            decide from ``sample``. Recorded on the result as
            ``analog_inputs`` (``snnexp.checkpoint.save`` keeps it, so a
            deployed network is rebuilt the same way).

    Returns:
        The quantized model. ``ptq``/``srq`` models hold integer weights and
        are for inference only. In ``srq`` the static scale of a layer fed
        spikes is the exact ``spike_scale``, not the averaged statistic.

    Raises:
        RecipeError: a rule matches no layer, or a tile does not divide a
            layer's contraction size (``check_tiles``).
    """
    if not rules:
        return nnx.clone(model)
    paths = weight_paths(model)
    check_tiles(model, rules)
    if analog_inputs is None:
        analog_inputs = () if is_spike_train(sample) else (input_layer(model, sample),)
    analog_inputs = tuple(analog_inputs)
    _check_bwd(mode, bwd_qtype)
    expanded = _expand(rules, analog_inputs, paths)
    qrules = [_qwix_rule(r, path, is_analog, mode, bwd_qtype) for r, path, is_analog in expanded]
    ternary = [r.ternary_scale if r.weight_qtype == "ternary" else None for r, _, _ in expanded]
    cls = PtqProvider if mode in ("ptq", "srq") else QtProvider
    running_max = [p for p in analog_inputs if any(a and r.act_calibration_method == "spikes"
                                                    for r, _, a in expanded if r.act_qtype)]
    provider = cls(qrules, ternary=ternary, running_max=running_max)
    qmodel = qwix.quantize_model(model, provider, sample[:, :1], loop="unrolled")
    unused = provider.get_unused_rules()
    if unused:
        used_paths = [r.module_path for r in unused]
        raise RecipeError(
            f"quantization rule(s) with module_path {used_paths} matched no layer; layers with "
            f"weights: {paths} (module_path is a regex fullmatched "
            "against these paths, not against class names)"
        )
    if mode == "srq":
        _exact_spike_scales(qmodel, rules, analog_inputs)
    qmodel.analog_inputs = analog_inputs
    return qmodel


def _exact_spike_scales(qmodel: nnx.Module, rules: Sequence[Rule], analog: Sequence[str]) -> None:
    """Sets the static scale of every layer fed spikes to ``spike_scale`` (in place).

    qwix's static scale is a float32 running mean of the calibration; even of
    the constant spike range it is one ulp low after a few batches.
    """
    modules = {"/".join(map(str, p)): m for p, m in nnx.iter_modules(qmodel)}
    for r, mine in zip(rules, first_matches(rules, list(modules)), strict=True):
        if not r.act_qtype or r.act_calibration_method != "spikes":
            continue
        exact = spike_scale(r.act_qtype)
        for path in mine:
            if path in analog:
                continue
            for name, aux in vars(modules[path]).items():
                # qwix keeps a static scale as WithAux(array=Param([[s]]), how=...)
                scale = getattr(aux, "array", None)
                if name.endswith("_lhs_scale") and isinstance(scale, nnx.Variable):
                    scale.set_value(jnp.full_like(scale.get_value(), exact))

