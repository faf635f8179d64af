"""Turning static intensities into spike trains ``[N, T, F]``."""

from __future__ import annotations

from typing import Literal

import numpy as np

Encoding = Literal["rate", "latency"]
ENCODINGS = ("rate", "latency")


def encode(values: np.ndarray, steps: int, encoding: str, rng: np.random.Generator) -> np.ndarray:
    """Encodes intensities in [0, 1] as binary spike trains.

    ``rate``: each step spikes with probability equal to the intensity.
    ``latency``: one spike per feature, earlier for larger intensities
    (intensity 1 at step 0, intensity just above 0 at step T-1); zeros stay
    silent.

    Args:
        values: intensities ``[N, F]`` in [0, 1].
        steps: number of time steps T (positive).
        encoding: ``"rate"`` or ``"latency"``.
        rng: random generator (used by ``rate``).

    Returns:
        float32 spikes ``[N, T, F]``.
    """
    if steps <= 0:
        raise ValueError(f"data.steps must be positive, got {steps}")
    if encoding == "rate":
        u = rng.random((values.shape[0], steps, values.shape[1]))
        return (u < values[:, None, :]).astype(np.float32)
    if encoding == "latency":
        t_spike = np.round((1.0 - values) * (steps - 1)).astype(np.int64)
        t = np.arange(steps)[None, :, None]
        return ((t == t_spike[:, None, :]) & (values[:, None, :] > 0)).astype(np.float32)
    raise ValueError(f"data.encoding={encoding!r}; valid choices: {list(ENCODINGS)}")
