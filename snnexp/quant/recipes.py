"""Quantization recipes as data: rules written in YAML, checked before any compute.

A recipe is a list of rules (``conf/quant/*.yaml``), the first matching rule
winning. ``parse_recipe`` refuses what qwix would take silently and get
wrong (docs/qwix_on_snns.md): qtypes outside the allow-list (``int1`` and
``uint8`` zero the weights), rules without a weight qtype (ignored by qwix),
unknown keys and calibration methods.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any

INT_QTYPES = ("int2", "int3", "int4", "int5", "int6", "int7", "int8")
FLOAT_QTYPES = ("nf4", "float8_e4m3fn", "float8_e5m2", "mxfp8", "mxfp4", "nvfp4")
WEIGHT_QTYPES = (*INT_QTYPES, *FLOAT_QTYPES, "ternary")
ACT_QTYPES = (*INT_QTYPES, *FLOAT_QTYPES)
CALIBRATION_METHODS = ("absmax", "minmax", "rms", "fixed", "spikes")
TERNARY_SCALES = ("tensor", "channel")  # one absmean scale per matrix, or per output channel
# Sub-channel block size each microscaling format requires: qwix refuses any
# other tile, so ``tile_size: null`` means this size for these formats.
BLOCK_SIZES = {"mxfp8": 32, "mxfp4": 32, "nvfp4": 16}
# Gradient qtypes of QT (mode.bwd_qtype): a microscaling gradient would need
# tiles along the batch rows the weight gradient contracts over, whose count
# varies; qwix raises "Format mxfp4 requires `tiled_axes`" for them.
BWD_QTYPES = tuple(q for q in ACT_QTYPES if q not in BLOCK_SIZES)


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
    # Sub-channel tile size along the contraction axis, or None: none, or for
    # mxfp8/mxfp4/nvfp4 their block size (BLOCK_SIZES).
    tile_size: int | float | None = None
    # ternary only: one absmean scale per matrix ("tensor", BitNet b1.58) or
    # per output channel ("channel": each neuron's own mean|w|, TWN-style).
    ternary_scale: str = "tensor"


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
        _check_choice(f"{where}.ternary_scale", rule.ternary_scale, TERNARY_SCALES)
        if rule.ternary_scale != "tensor" and rule.weight_qtype != "ternary":
            raise RecipeError(f"{where}.ternary_scale={rule.ternary_scale!r} is for weight_qtype: ternary; "
                              f"weight_qtype={rule.weight_qtype!r} has qwix's per-channel scales already")
        if rule.weight_qtype == "ternary" and rule.tile_size is not None:
            raise RecipeError(f"{where}: ternary uses one absmean scale; tile_size must be null")
        _check_blocks(where, rule)
        parsed.append(rule)
    return parsed


def _check_blocks(where: str, rule: Rule) -> None:
    """Refuses a tile that a microscaling qtype of ``rule`` cannot use."""
    blocks = {q: BLOCK_SIZES[q] for q in (rule.weight_qtype, rule.act_qtype) if q in BLOCK_SIZES}
    if not blocks:
        return
    if len(set(blocks.values())) > 1:
        raise RecipeError(
            f"{where}: {', '.join(f'{q} needs tiles of {b}' for q, b in blocks.items())}, and a rule has one "
            "tile_size for weights and activations; use the same block size for both (mxfp8/mxfp4: 32, "
            "nvfp4: 16), or split the layers over two rules"
        )
    (qtype, block), *_ = blocks.items()
    if rule.weight_qtype == "ternary":
        raise RecipeError(
            f"{where}: act_qtype={rule.act_qtype!r} needs tiles of {block}, but ternary weights use one "
            "absmean scale per matrix (no tiles); choose another act_qtype"
        )
    if rule.tile_size is not None and rule.tile_size != block:
        raise RecipeError(
            f"{where}.tile_size={rule.tile_size!r}: {qtype} quantizes in blocks of {block}; "
            f"valid choices: {block} or null (which means {block})"
        )


def _check_choice(where: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        raise RecipeError(f"{where}={value!r} is not supported; valid choices: {list(choices)}")
