"""Quantization: recipes as data (``recipes``), qwix providers that really apply (``providers``).

The only package that touches qwix, workarounds included (``conv``: a
convolution as one ``dot_general``). docs/qwix_on_snns.md says what qwix does
on spiking networks and which of its failures are silent.
"""

from snnexp.quant.conv import conv_as_dot_general
from snnexp.quant.providers import (
    Mode,
    PtqProvider,
    QtProvider,
    check_shapes,
    quantize,
    spike_exact_calibration,
    ternarize,
    ternary_ste,
    to_qwix_rules,
    weight_paths,
)
from snnexp.quant.recipes import (
    ACT_QTYPES,
    CALIBRATION_METHODS,
    FLOAT_QTYPES,
    INT_QTYPES,
    WEIGHT_QTYPES,
    RecipeError,
    Rule,
    parse_recipe,
)

__all__ = [
    "ACT_QTYPES", "CALIBRATION_METHODS", "FLOAT_QTYPES", "INT_QTYPES", "WEIGHT_QTYPES", "Mode", "PtqProvider",
    "QtProvider", "RecipeError", "Rule", "check_shapes", "conv_as_dot_general", "parse_recipe", "quantize",
    "spike_exact_calibration", "ternarize", "ternary_ste", "to_qwix_rules", "weight_paths",
]
