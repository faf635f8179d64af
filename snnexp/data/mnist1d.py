"""MNIST-1D, generated offline and fed to the network one sample point per step.

MNIST-1D (Greydanus & Steinbach) is a small temporal benchmark with published
baselines: ten 1-D digit templates, padded, scaled, translated, sheared and
noised into sequences of 40 points; 4000 train and 1000 test samples.
The ``mnist1d`` package ships the templates and the generator; this loader
calls the generator (``mnist1d.data.make_dataset``) with the reference
arguments (``get_dataset_args()``) and never its ``get_dataset``, the one
function that can download. So no code path here touches the network.

Each sequence becomes a time series of T=40 steps (40 x ``repeat`` with each
point held for ``repeat`` consecutive steps, so the network integrates each
point over more steps: ``repeat=2`` gives T=80):

* ``current``: the analog value itself as input current (F=1), centred by the
  train mean and divided by the 99th percentile of the train magnitudes, so
  99 % of the train values lie in [-1, 1] (the rest overshoot a little; the
  largest magnitude would squeeze the bulk of the signal into a narrow band).
* ``delta``: send-on-delta spikes (F=2, up and down): a channel spikes when
  the signal has moved by more than ``threshold`` from its value at the last
  spike (the reference starts at 0, the signal's resting level).
* ``level``: a population code over ``levels`` channels (F=levels): at each
  step exactly one channel spikes, the one whose equal-width bin of [-1, 1]
  holds the value (values outside are clipped). Keeps the absolute level,
  which ``delta`` throws away.

Generation takes a few seconds, so the raw arrays are cached as ``.npz`` under
``cache_dir``, keyed by seed and package version; the next load is instant.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import random
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from snnexp.data.dataset import Dataset

ENCODINGS = ("current", "delta", "level")
EVAL_SPLITS = ("test", "validation")
VALIDATION_SIZE = 500  # the last 500 of the 4000 training sequences, held out when eval_split=validation
STEPS = 40
N_TRAIN = 4000
N_TEST = 1000
N_CLASSES = 10
REFERENCE_SEED = 42
SCALE_PERCENTILE = 99.0  # this share of train values lands in [-1, 1]

log = logging.getLogger(__name__)


def _package_version() -> str:
    try:
        return importlib.metadata.version("mnist1d")
    except importlib.metadata.PackageNotFoundError:
        return "missing"


def _generate(seed: int) -> dict[str, np.ndarray]:
    """Run the package's generator with the reference arguments, offline."""
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as exc:
        raise ImportError(
            "data=mnist1d needs the `mnist1d` package (generated offline from its templates): "
            'pip install -e "." or pip install mnist1d'
        ) from exc
    args = get_dataset_args()
    args.seed = seed
    # make_dataset seeds the global NumPy and `random` generators; leave them as they were.
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        raw = make_dataset(args)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    return {
        "x_train": np.asarray(raw["x"], dtype=np.float64),
        "y_train": np.asarray(raw["y"], dtype=np.int32),
        "x_test": np.asarray(raw["x_test"], dtype=np.float64),
        "y_test": np.asarray(raw["y_test"], dtype=np.int32),
    }


def _valid(arrays: dict[str, np.ndarray]) -> bool:
    expected = {
        "x_train": (N_TRAIN, STEPS),
        "y_train": (N_TRAIN,),
        "x_test": (N_TEST, STEPS),
        "y_test": (N_TEST,),
    }
    return all(k in arrays and arrays[k].shape == shape for k, shape in expected.items())


def _read_cache(path: Path) -> dict[str, np.ndarray] | None:
    if not path.is_file():
        return None
    try:
        with np.load(path) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        log.warning("mnist1d: ignoring unreadable cache %s (%s); generating again", path, exc)
        return None
    if not _valid(arrays):
        log.warning("mnist1d: cache %s holds unexpected arrays; generating again", path)
        return None
    return arrays


def _write_cache(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write atomically, so parallel runs never read a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=path.name, suffix=".tmp", delete=False) as fh:
        np.savez(fh, **arrays)
        tmp = fh.name
    os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; a cache may be shared
    os.replace(tmp, path)


def generate(
    seed: int = REFERENCE_SEED, cache_dir: str | os.PathLike[str] | None = None
) -> dict[str, np.ndarray]:
    """Generate (or read from the cache) the raw MNIST-1D sequences.

    Args:
        seed: the generator's seed; 42 gives the reference data set.
        cache_dir: where the ``.npz`` cache lives (``~`` expanded); ``None``
            generates every time and writes nothing.

    Returns:
        ``x_train`` ``[4000, 40]`` and ``x_test`` ``[1000, 40]`` float64 (the
        package's standardized values), ``y_train`` ``[4000]`` and ``y_test``
        ``[1000]`` int32 in [0, 10).
    """
    path = None
    if cache_dir is not None:
        name = f"mnist1d-{_package_version()}-seed{seed}-n{N_TRAIN + N_TEST}-len{STEPS}.npz"
        path = Path(os.path.expanduser(str(cache_dir))) / name
        cached = _read_cache(path)
        if cached is not None:
            return cached
    arrays = _generate(seed)
    if not _valid(arrays):
        shapes = {k: v.shape for k, v in arrays.items()}
        raise RuntimeError(f"mnist1d generated unexpected shapes {shapes}; expected 4000/1000 x 40")
    if path is not None:
        _write_cache(path, arrays)
    return arrays


def _delta(x: np.ndarray, threshold: float) -> np.ndarray:
    """Send-on-delta spikes ``[N, T, 2]`` (up, down) from signals ``[N, T]``."""
    spikes = np.zeros((*x.shape, 2), dtype=np.float32)
    ref = np.zeros(len(x))
    for t in range(x.shape[1]):
        up = x[:, t] - ref > threshold
        down = ref - x[:, t] > threshold
        spikes[:, t, 0] = up
        spikes[:, t, 1] = down
        moved = up | down
        ref = np.where(moved, x[:, t], ref)
    return spikes


def _level(x: np.ndarray, levels: int) -> np.ndarray:
    """One-hot population code ``[N, T, levels]`` of signals ``[N, T]`` in [-1, 1]."""
    idx = np.clip(np.floor((x + 1.0) / 2.0 * levels), 0, levels - 1).astype(np.int64)
    return (idx[..., None] == np.arange(levels)).astype(np.float32)


def load(
    encoding: str = "current",
    threshold: float = 0.1,
    levels: int = 16,
    cache_dir: str | None = "~/.cache/snnexp/mnist1d",
    seed: int = REFERENCE_SEED,
    eval_split: str = "test",
    repeat: int = 1,
) -> Dataset:
    """Load MNIST-1D as a time series of T = 40 x ``repeat`` steps.

    Args:
        encoding: ``current`` (F=1), ``delta`` (F=2) or ``level`` (F=levels).
        threshold: the change, in units of the scaled signal (99 % of the
            train values in [-1, 1]), that fires a ``delta`` spike; positive.
        levels: channels of the ``level`` code; at least 2.
        cache_dir: directory of the ``.npz`` cache (``~`` expanded); ``None``
            disables caching.
        seed: the generator's seed; 42 is the reference data set with
            published baselines.
        eval_split: ``test``: train on the 4000 training sequences, evaluate
            on the 1000 test ones (the published protocol). ``validation``:
            train on the first 3500, evaluate on the last 500 training
            sequences, the test set unseen (for a hyperparameter search).
        repeat: steps each of the 40 points is held for (encoded after
            holding: ``delta`` fires on the first step of a held point
            alone); a positive integer.

    Returns:
        A ``Dataset`` with ``x_train`` ``[4000, T, F]`` and ``x_test``
        ``[1000, T, F]`` float32 (``[3500, T, F]`` and ``[500, T, F]`` for
        ``validation``), T = 40 x ``repeat``, labels int32 in [0, 10).
    """
    if encoding not in ENCODINGS:
        raise ValueError(f"data.encoding={encoding!r}; valid choices: {list(ENCODINGS)}")
    if eval_split not in EVAL_SPLITS:
        raise ValueError(f"data.eval_split={eval_split!r}; valid choices: {list(EVAL_SPLITS)}")
    if encoding == "delta" and not threshold > 0:
        raise ValueError(f"data.threshold must be positive, got {threshold}")
    if encoding == "level" and (int(levels) != levels or levels < 2):
        raise ValueError(f"data.levels must be an integer >= 2, got {levels}")
    if int(repeat) != repeat or repeat < 1:
        raise ValueError(f"data.repeat must be an integer >= 1, got {repeat}")

    raw = generate(seed, cache_dir)
    x_train, y_train, x_test, y_test = raw["x_train"], raw["y_train"], raw["x_test"], raw["y_test"]
    if eval_split == "validation":
        cut = len(x_train) - VALIDATION_SIZE
        x_train, y_train, x_test, y_test = x_train[:cut], y_train[:cut], x_train[cut:], y_train[cut:]
    centre = x_train.mean()  # from the sequences trained on alone
    scale = np.percentile(np.abs(x_train - centre), SCALE_PERCENTILE)
    x_train = (x_train - centre) / scale
    x_test = (x_test - centre) / scale

    def encode(x: np.ndarray) -> np.ndarray:
        x = np.repeat(x, int(repeat), axis=1)  # each point held for `repeat` steps
        if encoding == "current":
            return x[..., None].astype(np.float32)
        if encoding == "delta":
            return _delta(x, threshold)
        return _level(x, int(levels))

    return Dataset(
        encode(x_train),
        y_train.astype(np.int32),
        encode(x_test),
        y_test.astype(np.int32),
        n_classes=N_CLASSES,
        name="mnist1d",
    )
