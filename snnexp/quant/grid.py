"""The spike grid: ranges under which a spike of 1.0 is a code exactly, and which inputs are spikes.

qwix's symmetric bound is ``qmax + 0.5``, so absmax calibration turns a spike
of 1.0 into 0.996 (int8); XLA's reciprocal under ``jax.jit`` and SRQ's
float32 running mean each put it one ulp off. A layer fed spikes gets a fixed
range whose float32 scale round-trips 1.0 exactly (docs/qwix_on_snns.md §4);
a layer fed analog values is calibrated from the data.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from snnexp.quant.recipes import INT_QTYPES


def _bound(qtype: str) -> float:
    """The symmetric bound qwix uses for ``qtype`` (``qmax + 0.5`` for integers)."""
    if qtype in INT_QTYPES:
        return 2 ** (int(qtype[3:]) - 1) - 0.5
    return {"nf4": 1.0, "float8_e4m3fn": 448.0, "float8_e5m2": 57344.0, "mxfp8": 448.0,
            "mxfp4": 6.0, "nvfp4": 6.0}[qtype]


def spike_range(qtype: str) -> float:
    """The half-width ``c`` of the fixed range ``[-c, c]`` under which a spike of 1.0 is exact.

    Integers: ``c ≈ bound / qmax`` (``(qmax + 0.5) / qmax``), nudged by float32
    ulps until the scale ``s = fl(c / bound)`` satisfies ``fl(qmax * s) == 1``
    and ``rint(fl(1 / s)) == qmax``, so 1.0 quantizes to the top code and
    comes back as 1.0 whether the quantizer divides by ``s`` or multiplies by
    ``1 / s`` (what XLA makes of a division under ``jax.jit``). Floating
    formats: ``c = bound / 2**k`` with ``2**k`` the largest power of two
    ``<= bound``, so the scale is the power of two ``2**-k`` and 1.0 is the
    code ``2**k``, exact in the format (mxfp's power-of-two and nvfp4's
    float8 scale rounding leave it unchanged).

    Args:
        qtype: an activation qtype of ``ACT_QTYPES``.

    Returns:
        ``c`` as a Python float (exactly a float32 value).
    """
    if qtype in INT_QTYPES:
        return _spike_factor(2 ** (int(qtype[3:]) - 1) - 1)
    bound = _bound(qtype)
    return float(np.float32(bound / 2.0 ** np.floor(np.log2(bound))))


def spike_scale(qtype: str) -> np.float32:
    """The activation scale of the spike range: ``fl(spike_range / bound)`` in float32."""
    return np.float32(np.float32(spike_range(qtype)) / np.float32(_bound(qtype)))


def spike_exact_calibration(qtype: str, *, static: bool = False) -> str:
    """The qwix calibration method of a layer fed spikes: the fixed range of ``spike_range``.

    The range does not depend on the data, so it is the same for dynamic and
    static scales; it is written ``"fixed,c"``, which qwix reads as
    ``[-c, c]``. (An absmax scaled to the same value would be computed at run
    time, and under ``jax.jit`` one float32 ulp off; a static statistic
    averaged over many batches too.)

    Args:
        qtype: the activation qtype.
        static: whether the scale is static (SRQ) or per call; the same range either way.

    Returns:
        A calibration string such as ``"fixed,1.003937005996704"``.
    """
    del static  # the same exact range serves both
    return f"fixed,{spike_range(qtype)!r}"


def analog_calibration(qtype: str) -> str:
    """The qwix calibration method of a layer fed analog values: absmax of the data.

    For integers the absmax is scaled by ``(qmax + 0.5) / qmax``, so the
    largest value is the top code itself, not rounded past it; nothing inside
    the calibrated range is clipped. Floating formats map absmax to their
    largest value already.
    """
    if qtype in INT_QTYPES:
        return f"absmax,{spike_range(qtype)!r}"
    return "absmax"


def _spike_factor(qmax: int) -> float:
    bound = np.float32(qmax + 0.5)
    f = np.float32((qmax + 0.5) / qmax)
    for _ in range(64):
        scale = np.float32(f / bound)
        if np.float32(qmax * scale) == 1.0 and np.rint(np.float32(1.0) / scale) == qmax:
            return float(f)
        f = np.nextafter(f, np.float32(2.0))
    raise AssertionError(f"no float32 range keeps 1.0 exact for qmax={qmax}")


def is_spike_train(x: Any) -> bool:
    """Whether every value of ``x`` is 0 or 1 (a binary spike train)."""
    a = np.asarray(x)
    return bool(np.all((a == 0) | (a == 1)))


def representative_sample(x: np.ndarray) -> np.ndarray:
    """One input ``[1, T, F]`` of ``x`` ``[N, T, F]`` that is analog if any input is.

    ``quantize`` decides from its sample whether the input layer is fed
    spikes; this picks the first sample that is not binary, or the first
    sample when all are binary spike trains.
    """
    a = np.asarray(x)
    for start in range(0, len(a), 1024):  # in chunks: no boolean copy of a whole large data set
        chunk = a[start : start + 1024]
        binary = np.all((chunk == 0) | (chunk == 1), axis=tuple(range(1, a.ndim)))
        if not binary.all():
            i = start + int(np.argmin(binary))
            return a[i : i + 1]
    return a[:1]
