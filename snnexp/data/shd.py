"""Spiking Heidelberg Digits (SHD) from its HDF5 files, binned into time steps.

SHD (Cramer et al. 2020) is spoken digits 0-9 in English and German (20
classes) turned into spikes of 700 cochlear channels: the standard temporal
SNN benchmark. The data is not downloaded here: ``shd_train.h5`` and
``shd_test.h5`` must already sit in ``root``.

Each file holds ragged per-sample ``spikes/times`` (seconds, float16 on disk)
and ``spikes/units`` (channel ids 0..699), and ``labels``. A spike at time
``t`` lands in step ``floor(t / dt)``; spikes at or after ``steps * dt`` (and
non-finite times, which a few SHD samples carry) are dropped, but their
samples are kept, so the test set stays whole. Times are widened to float64
before any arithmetic: float16 overflows (``t * 1e6`` is ``inf``) and is too
coarse to bin near 1 s.

``channels`` pools adjacent channels by summing (700 -> 140 sums groups of 5);
``binary`` then caps each count at 1.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from snnexp.data.dataset import DataError, Dataset

N_UNITS = 700
N_CLASSES = 20
URL = "https://zenkelab.org/resources/spiking-heidelberg-datasets-shd/"
DATASETS = ("spikes/times", "spikes/units", "labels")
CHANNEL_CHOICES = tuple(c for c in range(1, N_UNITS + 1) if N_UNITS % c == 0)
_CHUNK_ENTRIES = 1 << 23  # dense counts built per chunk of samples: ~64 MB of int64


def _read(path: Path) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
    """Read one SHD file: float64 times, int64 units per sample, int64 labels."""
    import h5py

    if not path.is_file():
        gz = path.with_name(path.name + ".gz")
        hint = (
            f"{gz} is there: unpack it with `gunzip {gz}`."
            if gz.is_file()
            else f"Download shd_train.h5.gz and shd_test.h5.gz from {URL} and gunzip them into "
            f"{path.parent} (or set data.root=<directory holding them>)."
        )
        raise FileNotFoundError(f"SHD file not found: {path}. {hint}")
    try:
        with h5py.File(path, "r") as f:
            missing = [name for name in DATASETS if name not in f]
            if missing:
                raise DataError(
                    f"{path} lacks the dataset(s) {missing}; an SHD file holds {list(DATASETS)} "
                    f"(ragged spike times in seconds, ragged channel ids 0..{N_UNITS - 1}, labels)"
                )
            times = [np.asarray(t, dtype=np.float64) for t in f["spikes/times"][:]]
            units = [np.asarray(u, dtype=np.int64) for u in f["spikes/units"][:]]
            labels = np.asarray(f["labels"][:], dtype=np.int64)
    except OSError as exc:
        raise DataError(
            f"cannot read {path} as an HDF5 file ({exc}); expected SHD's {path.name} with datasets "
            f"{list(DATASETS)}. A truncated or still gzipped download gives this: download it again "
            f"from {URL} and gunzip it."
        ) from exc
    except (TypeError, ValueError) as exc:
        raise DataError(
            f"{path}: the datasets {list(DATASETS)} are not in SHD's format (ragged numeric spike "
            f"times and units, one label per sample): {exc}"
        ) from exc
    if labels.ndim != 1 or not len(times) == len(units) == len(labels):
        raise DataError(
            f"{path}: spikes/times has {len(times)} samples, spikes/units {len(units)}, labels "
            f"shape {labels.shape}; expected one entry per sample in each"
        )
    for i, (t, u) in enumerate(zip(times, units)):
        if t.shape != u.shape or t.ndim != 1:
            raise DataError(f"{path}: sample {i} has {t.shape} spike times but {u.shape} units")
        if len(u) and (u.min() < 0 or u.max() >= N_UNITS):
            bad = u[(u < 0) | (u >= N_UNITS)][0]
            raise DataError(f"{path}: sample {i} has channel id {bad}, outside 0..{N_UNITS - 1}")
    return times, units, labels


def bin_spikes(
    times: list[np.ndarray],
    units: list[np.ndarray],
    steps: int,
    dt: float,
    channels: int = N_UNITS,
    binary: bool = True,
) -> np.ndarray:
    """Bin ragged spike events into dense per-step counts.

    Args:
        times: per sample, spike times in seconds ``[n_spikes]`` (any float dtype).
        units: per sample, channel ids in ``[0, 700)`` ``[n_spikes]``.
        steps: time steps T; a spike at ``t`` lands in step ``floor(t / dt)``.
        dt: step width in seconds.
        channels: output channels C, a divisor of 700; channel ``u`` adds into
            ``u // (700 // C)``.
        binary: cap the counts at 1.

    Returns:
        float32 ``[N, steps, channels]``.
    """
    if channels not in CHANNEL_CHOICES:
        raise ValueError(f"channels={channels!r}; valid choices: {list(CHANNEL_CHOICES)}")
    channels = int(channels)
    group = N_UNITS // channels
    out = np.zeros((len(times), steps, channels), dtype=np.float32)
    chunk = max(1, _CHUNK_ENTRIES // (steps * channels))
    for start in range(0, len(times), chunk):
        stop = min(start + chunk, len(times))
        t = np.concatenate([np.zeros(0)] + [np.asarray(a, dtype=np.float64) for a in times[start:stop]])
        u = np.concatenate([np.zeros(0, np.int64)] + [np.asarray(a, np.int64) for a in units[start:stop]])
        sample = np.repeat(np.arange(stop - start), [len(a) for a in times[start:stop]])
        with np.errstate(invalid="ignore"):
            step = np.floor(t / dt)
        keep = np.isfinite(step) & (step >= 0) & (step < steps)
        flat = (sample[keep] * steps + step[keep].astype(np.int64)) * channels + u[keep] // group
        counts = np.bincount(flat, minlength=(stop - start) * steps * channels)
        out[start:stop] = counts.reshape(stop - start, steps, channels)
    if binary:
        np.minimum(out, 1.0, out=out)
    return out


def load(
    root: str = "~/data/shd",
    steps: int = 100,
    dt: float = 0.01,
    channels: int = N_UNITS,
    binary: bool = True,
) -> Dataset:
    """Load SHD from ``root``/shd_{train,test}.h5 as binned spikes.

    Args:
        root: directory holding ``shd_train.h5`` and ``shd_test.h5`` (``~`` expanded).
        steps: time steps T.
        dt: step width in seconds; ``steps * dt`` seconds are kept (1 s by default,
            which holds nearly every spike of SHD).
        channels: input channels after pooling adjacent ones, a divisor of 700.
        binary: cap the per-step counts at 1 (spikes); ``False`` keeps counts.

    Returns:
        A ``Dataset`` with ``x_train`` ``[8156, steps, channels]`` and ``x_test``
        ``[2264, steps, channels]`` float32, labels int32 in [0, 20).
    """
    if isinstance(steps, bool) or int(steps) != steps or steps <= 0:
        raise ValueError(f"data.steps must be a positive integer, got {steps}")
    if not dt > 0:
        raise ValueError(f"data.dt must be positive (seconds), got {dt}")
    if isinstance(channels, bool) or channels not in CHANNEL_CHOICES:
        raise ValueError(
            f"data.channels={channels!r} must divide {N_UNITS} (adjacent channels are pooled "
            f"in equal groups); valid choices: {list(CHANNEL_CHOICES)}"
        )
    if not root:
        raise ValueError("data.root must name the directory holding shd_train.h5 and shd_test.h5")
    base = Path(os.path.expanduser(str(root)))
    paths = {split: base / f"shd_{split}.h5" for split in ("train", "test")}
    for path in paths.values():  # both files before the slow reading
        if not path.is_file():
            _read(path)  # raises FileNotFoundError with the download instructions
    arrays: dict[str, np.ndarray] = {}
    for split, path in paths.items():
        times, units, labels = _read(path)
        arrays[f"x_{split}"] = bin_spikes(times, units, int(steps), float(dt), int(channels), binary)
        arrays[f"y_{split}"] = labels.astype(np.int32)
    return Dataset(**arrays, n_classes=N_CLASSES, name="shd")
