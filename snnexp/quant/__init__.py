"""Quantization: recipes as data (``recipes``), qwix providers that really apply (``providers``).

The only package that touches qwix, workarounds included: the spike grid
(``grid``), up-front checks against the model (``checks``), a convolution as
one ``dot_general`` (``conv``). docs/qwix_on_snns.md says what qwix does
on spiking networks and which of its failures are silent.
"""

from snnexp.quant.checks import check_shapes, check_tiles, input_layer, tile_size, weight_paths
from snnexp.quant.conv import conv_as_dot_general
from snnexp.quant.grid import (
    analog_calibration,
    is_spike_train,
    representative_sample,
    spike_exact_calibration,
    spike_range,
    spike_scale,
)
from snnexp.quant.providers import (
    Mode,
    PtqProvider,
    QtProvider,
    quantize,
    ternarize,
    ternary_ste,
    to_qwix_rules,
    unquantized_matmul,
)
from snnexp.quant.recipes import (
    ACT_QTYPES,
    BLOCK_SIZES,
    BWD_QTYPES,
    CALIBRATION_METHODS,
    FLOAT_QTYPES,
    INT_QTYPES,
    WEIGHT_QTYPES,
    RecipeError,
    Rule,
    parse_recipe,
)

__all__ = [
    "ACT_QTYPES", "BLOCK_SIZES", "BWD_QTYPES", "CALIBRATION_METHODS", "FLOAT_QTYPES", "INT_QTYPES", "WEIGHT_QTYPES",
    "Mode", "PtqProvider", "QtProvider", "RecipeError", "Rule", "analog_calibration", "check_shapes", "check_tiles",
    "conv_as_dot_general", "input_layer", "is_spike_train", "parse_recipe", "quantize", "representative_sample",
    "spike_exact_calibration", "spike_range", "spike_scale", "ternarize", "ternary_ste", "tile_size",
    "to_qwix_rules", "unquantized_matmul", "weight_paths",
]
