"""Up-front checks of a recipe against a model: tiles, square layers, the input layer's path.

qwix fails late (or silently) on these: a tile that does not divide a layer's
contraction size, a square layer fed as many rows as it is wide ("lhs and
rhs cannot be both weights"). They are refused before any compute.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import jax
import qwix
from flax import nnx
from qwix._src.utils import flax_util

from snnexp.errors import ConfigError
from snnexp.quant.recipes import BLOCK_SIZES, RecipeError, Rule


def tile_size(rule: Rule) -> int | float | None:
    """The sub-channel tile of ``rule``: its ``tile_size``, else the block size its qtypes require."""
    if rule.tile_size is not None:
        return rule.tile_size
    blocks = [BLOCK_SIZES[q] for q in (rule.weight_qtype, rule.act_qtype) if q in BLOCK_SIZES]
    return blocks[0] if blocks else None


def first_matches(rules: Sequence[Rule], paths: Sequence[str]) -> list[list[str]]:
    """For each rule, the layer paths it is the first to fullmatch."""
    out: list[list[str]] = [[] for _ in rules]
    for p in paths:
        for i, r in enumerate(rules):
            if re.fullmatch(r.module_path, p):
                out[i].append(p)
                break
    return out


class _FirstMatmul(Exception):  # noqa: N818 - a signal, not an error
    """Raised by ``_Probe`` at the first matmul, carrying its module path."""


class _Probe(qwix.QtProvider):
    """A provider without rules that stops the forward pass at its first matmul."""

    def _stop(self, *args: Any, **kwargs: Any) -> Any:
        raise _FirstMatmul("/".join(map(str, flax_util.get_current_module_path())))

    dot_general = _stop
    conv_general_dilated = _stop
    einsum = _stop


def input_layer(model: nnx.Module, sample: jax.Array) -> str:
    """The path of the layer whose matmul takes the network input (``fc/0``, ``conv/0``).

    Found by running ``model`` on one step of ``sample`` until its first
    matmul (qwix intercepts it; nothing is quantized).
    """
    try:
        qwix.quantize_model(model, _Probe([]), sample[:1, :1], loop="unrolled")
    except _FirstMatmul as e:
        return str(e)
    raise RecipeError("the model ran no matmul: there is no layer to quantize")


def check_tiles(model: nnx.Module, rules: Sequence[Rule]) -> None:
    """Refuses a tile that does not divide the contraction size of a layer it applies to.

    qwix tiles the innermost contraction axis (``in_features``; a
    convolution's input channels) of both the weight and the matmul input.

    Args:
        model: the network.
        rules: validated recipe rules.

    Raises:
        RecipeError: naming the layer, its width, the tile and what would work.
    """
    layers = {"/".join(map(str, p)): m for p, m in nnx.iter_modules(model) if isinstance(m, (nnx.Linear, nnx.Conv))}
    for r, mine in zip(rules, first_matches(rules, list(layers)), strict=True):
        tile = tile_size(r)
        if tile is None:
            continue
        for path in mine:
            width = int(layers[path].in_features)
            size = tile if isinstance(tile, int) else round(width * tile)
            if size < 1 or width % size:
                need = [q for q in (r.weight_qtype, r.act_qtype) if q in BLOCK_SIZES]
                why = f"{need[0]} quantizes in blocks of {BLOCK_SIZES[need[0]]}" if need else "tile_size must divide it"
                raise RecipeError(
                    f"layer {path} contracts over {width} inputs, which is not a multiple of the tile "
                    f"{size} (rule module_path={r.module_path!r}, weight_qtype={r.weight_qtype!r}, "
                    f"act_qtype={r.act_qtype!r}, tile_size={r.tile_size!r}): {why}. Make the layer's input "
                    f"width a multiple of {size} (model.hidden, or the data's features), exclude {path} "
                    "with an earlier rule, or choose another qtype."
                )


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
