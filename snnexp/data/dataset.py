"""The one container every loader returns, checked when it is made."""

from __future__ import annotations

import dataclasses

import numpy as np


class DataError(ValueError):
    """A data set that cannot be trained on as given."""


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Train and test splits of a spiking classification data set.

    Attributes:
        x_train: inputs ``[N_train, T, F]`` float32 (spikes or currents).
        y_train: labels ``[N_train]`` int32 in ``[0, n_classes)``.
        x_test: inputs ``[N_test, T, F]`` float32.
        y_test: labels ``[N_test]`` int32.
        n_classes: number of classes.
        name: the data set's name, for logs.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    n_classes: int
    name: str

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if x.ndim != 3:
                raise DataError(f"{self.name}: x_{split} must be [N, T, F], got shape {x.shape}")
            if len(x) == 0:
                raise DataError(f"{self.name}: the {split} split is empty")
            if y.shape != (len(x),):
                raise DataError(
                    f"{self.name}: y_{split} has shape {y.shape}, expected ({len(x)},)"
                )
            if y.min() < 0 or y.max() >= self.n_classes:
                bad = y[(y < 0) | (y >= self.n_classes)][0]
                raise DataError(
                    f"{self.name}: label {bad} in the {split} split is out of range "
                    f"[0, {self.n_classes})"
                )
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise DataError(
                f"{self.name}: train steps/features {self.x_train.shape[1:]} differ from "
                f"test {self.x_test.shape[1:]}"
            )

    @property
    def steps(self) -> int:
        """Time steps T."""
        return self.x_train.shape[1]

    @property
    def features(self) -> int:
        """Input features F per time step."""
        return self.x_train.shape[2]
