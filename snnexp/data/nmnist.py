"""N-MNIST from a local copy through tonic, events binned into T frames.

N-MNIST (Orchard et al. 2015) is MNIST shown to an event camera moved in three
saccades: per sample ~300 ms of ON/OFF events on a 34x34 sensor, 10 classes,
60000 train / 10000 test recordings. Reading goes through tonic's
``NMNIST`` data set (its file walk, its event reader ``read_mnist_file``) and
``ToFrame(n_time_bins=steps)``, which cuts each recording's own duration into
``steps`` equal windows and counts events per (polarity, y, x).

tonic downloads whenever it thinks the data is missing (fewer than 10000
``.bin`` files or no ``train.zip``), so the loader uses a subclass whose
``download`` raises and whose presence check only asks for ``.bin`` files:
nothing here ever touches the network. The local copy must follow tonic's
layout::

    <root>/NMNIST/Train/<digit>/*.bin
    <root>/NMNIST/Test/<digit>/*.bin

Frames are flattened polarity-major to F = 2 * (34 // pool)**2 features;
``pool`` sums ``pool x pool`` pixel blocks. ``binary`` caps counts at 1.
Memory grows as N * T * F * 4 bytes (60000 x 20 x 578 is 2.8 GB), so
``max_samples`` picks a seeded random subset per split for quick runs.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from snnexp.data.dataset import Dataset

SENSOR = (34, 34, 2)  # x, y, polarity: tonic's sensor_size
POOL_CHOICES = tuple(p for p in range(1, SENSOR[0] + 1) if SENSOR[0] % p == 0)
N_CLASSES = 10
FULL_SIZES = {"Train": 60000, "Test": 10000}
URL = "https://www.garrickorchard.com/datasets/n-mnist"
MIRROR = "https://data.mendeley.com/datasets/468j46mzdv/1"

log = logging.getLogger(__name__)


def _import_tonic() -> Any:
    try:
        import tonic
    except ImportError as exc:
        raise ImportError(
            'data=nmnist reads N-MNIST through tonic, an optional dependency: pip install -e ".[data]"'
        ) from exc
    return tonic


def _missing_message(folder: Path, root: Path) -> str:
    return (
        f"N-MNIST not found: no .bin files under {folder}. Expected tonic's layout "
        f"{root}/NMNIST/Train/<digit>/*.bin and {root}/NMNIST/Test/<digit>/*.bin (set data.root to the "
        f"directory holding NMNIST/). Download the Train and Test archives from {URL} (mirror: {MIRROR}) "
        f"and unzip them into {root}/NMNIST, or, on a machine with network, let tonic fetch them once: "
        f"python -c \"import tonic; [tonic.datasets.NMNIST(save_to='{root}', train=s) "
        f'for s in (True, False)]"'
    )


def _local_nmnist(tonic: Any, root: Path) -> type:
    """Return tonic's ``NMNIST`` reading ``root`` only: its ``download`` raises.

    The subclass keeps the name ``NMNIST`` because tonic derives the data
    directory (``<save_to>/NMNIST``) from the class name.
    """

    class NMNIST(tonic.datasets.NMNIST):
        """tonic's N-MNIST that never downloads."""

        def _check_exists(self) -> bool:
            return any(Path(self.location_on_system, self.folder_name).rglob("*.bin"))

        def download(self) -> None:
            raise FileNotFoundError(_missing_message(Path(self.location_on_system, self.folder_name), root))

    return NMNIST


def load(
    root: str = "~/data",
    steps: int = 20,
    pool: int = 2,
    binary: bool = True,
    max_samples: int | None = None,
    seed: int = 0,
) -> Dataset:
    """Load N-MNIST from ``root``/NMNIST as binned event frames.

    Args:
        root: directory holding ``NMNIST/Train`` and ``NMNIST/Test`` (tonic's
            ``save_to``; ``~`` expanded).
        steps: time steps T (tonic's ``n_time_bins``): each recording's span
            cut into T equal windows.
        pool: sums ``pool x pool`` pixel blocks; a divisor of 34.
        binary: cap the per-frame counts at 1 (spikes); ``False`` keeps counts.
        max_samples: at most this many samples per split, a random subset
            drawn with ``seed``; ``None`` keeps all.
        seed: seeds the ``max_samples`` subset.

    Returns:
        A ``Dataset`` with ``x`` of shape ``[N, steps, 2 * (34 // pool) ** 2]``
        float32 (features ordered polarity, y, x), labels int32 in [0, 10).
    """
    if isinstance(steps, bool) or int(steps) != steps or steps <= 0:
        raise ValueError(f"data.steps must be a positive integer, got {steps}")
    if isinstance(pool, bool) or pool not in POOL_CHOICES:
        raise ValueError(f"data.pool={pool!r} must divide 34; valid choices: {list(POOL_CHOICES)}")
    if max_samples is not None and (int(max_samples) != max_samples or max_samples <= 0):
        raise ValueError(f"data.max_samples must be a positive integer or null, got {max_samples}")
    if not root:
        raise ValueError("data.root must name the directory holding NMNIST/Train and NMNIST/Test")
    tonic = _import_tonic()
    base = Path(os.path.expanduser(str(root)))
    for folder in FULL_SIZES:
        path = base / "NMNIST" / folder
        if not any(path.rglob("*.bin")):
            raise FileNotFoundError(_missing_message(path, base))

    steps, pool = int(steps), int(pool)
    frame = tonic.transforms.ToFrame(sensor_size=SENSOR, n_time_bins=steps)
    side = SENSOR[0] // pool
    data_cls = _local_nmnist(tonic, base)
    rng = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray] = {}
    for split, folder in (("train", "Train"), ("test", "Test")):
        ds = data_cls(save_to=str(base), train=split == "train", transform=frame)
        if max_samples is None and len(ds) < FULL_SIZES[folder]:
            log.warning(
                "nmnist: %s holds %d recordings, the full split has %d", folder, len(ds), FULL_SIZES[folder]
            )
        index = np.arange(len(ds))
        if max_samples is not None and max_samples < len(ds):
            index = np.sort(rng.choice(len(ds), size=int(max_samples), replace=False))
        x = np.zeros((len(index), steps, SENSOR[2] * side * side), dtype=np.float32)
        y = np.zeros(len(index), dtype=np.int32)
        for row, i in enumerate(index):
            frames, label = ds[int(i)]  # [steps, 2, 34, 34] counts (t, p, y, x)
            frames = np.asarray(frames, dtype=np.float32)
            if pool > 1:
                frames = frames.reshape(steps, SENSOR[2], side, pool, side, pool).sum(axis=(3, 5))
            x[row] = frames.reshape(steps, -1)
            y[row] = label
        if binary:
            np.minimum(x, 1.0, out=x)
        arrays[f"x_{split}"], arrays[f"y_{split}"] = x, y
    return Dataset(**arrays, n_classes=N_CLASSES, name="nmnist")
