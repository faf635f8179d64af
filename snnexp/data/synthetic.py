"""A tiny learnable spiking task made on the spot, for tests and trials.

Each class has its own firing-rate profile over the input channels; samples
are Bernoulli spike trains drawn from it. Learnable in a few steps.
"""

from __future__ import annotations

import numpy as np

from snnexp.data.dataset import Dataset


def load(
    n_train: int = 64,
    n_test: int = 32,
    steps: int = 8,
    features: int = 16,
    n_classes: int = 4,
    seed: int = 0,
) -> Dataset:
    """Makes the synthetic data set.

    Args:
        n_train: training samples.
        n_test: test samples.
        steps: time steps T.
        features: input channels F.
        n_classes: classes.
        seed: seeds the profiles and the spikes.

    Returns:
        A ``Dataset`` with ``x`` of shape ``[N, steps, features]``.
    """
    for name, value in (("n_train", n_train), ("n_test", n_test), ("steps", steps),
                        ("features", features), ("n_classes", n_classes)):
        if value <= 0:
            raise ValueError(f"data.{name} must be positive, got {value}")
    rng = np.random.default_rng(seed)
    profiles = rng.uniform(0.02, 0.6, size=(n_classes, features))

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, n_classes, size=n).astype(np.int32)
        p = profiles[y][:, None, :]
        x = (rng.random((n, steps, features)) < p).astype(np.float32)
        return x, y

    x_train, y_train = draw(n_train)
    x_test, y_test = draw(n_test)
    return Dataset(x_train, y_train, x_test, y_test, n_classes=n_classes, name="synthetic")
