"""scikit-learn's 8x8 digits (ships with scikit-learn: no download), as spikes.

1797 images of 64 pixels, 10 classes; each pixel becomes one input channel
whose intensity (0..16 scaled to [0, 1]) is rate- or latency-encoded into
``steps`` time steps. Good for smoke runs; too easy to separate recipes.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from snnexp.data.dataset import Dataset
from snnexp.data.encoding import encode


def load(steps: int = 16, encoding: str = "rate", test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """Loads digits as spike trains.

    Args:
        steps: time steps T.
        encoding: ``rate`` or ``latency``.
        test_fraction: share of samples held out for testing, in (0, 1).
        seed: seeds the split and the rate encoding.

    Returns:
        A ``Dataset`` with ``x`` of shape ``[N, steps, 64]``.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"data.test_fraction must be in (0, 1), got {test_fraction}")
    images, labels = digits_arrays()
    rng = np.random.default_rng(seed)
    x = encode(images.astype(np.float32) / 16.0, steps, encoding, rng)
    order = rng.permutation(len(x))
    n_test = int(round(len(x) * test_fraction))
    test, train = order[:n_test], order[n_test:]
    y = labels.astype(np.int32)
    return Dataset(x[train], y[train], x[test], y[test], n_classes=10, name="digits")


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The 1797 digits as scikit-learn ships them: pixels ``[1797, 64]`` (0..16) and labels ``[1797]``.

    Read straight from scikit-learn's ``datasets/data/digits.csv.gz`` (what
    ``sklearn.datasets.load_digits`` reads), without importing scikit-learn:
    that import alone costs about a second of every run's start.
    """
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("data=digits needs scikit-learn installed (it ships the digits file)")
    table = np.loadtxt(Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz",
                       delimiter=",")
    return table[:, :-1], table[:, -1].astype(np.int64)
