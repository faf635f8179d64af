"""The Yin-Yang data set, generated here exactly as published: a small, offline SNN benchmark.

Kriener, Göltz and Petrovici (2021), "The Yin-Yang dataset", arXiv:2102.08211
(https://doi.org/10.1145/3517343.3517380); reference generator
``YinYangDataset(r_small=0.1, r_big=0.5, size, seed)`` in
https://github.com/lkriener/yin_yang_data_set (``dataset.py``). A point
``(x, y)`` of the disc of radius ``r_big = 0.5`` centred at ``(0.5, 0.5)`` is
one of three classes: 0 and 1, the two interlocking halves of the yin-yang
sign, and 2, the two dots of radius ``r_small = 0.1`` at ``(0.25, 0.5)`` and
``(0.75, 0.5)``. Label 1 is the upper half of the disc, minus the bulge of
radius ``r_big / 2`` around the right dot, plus the bulge around the left dot;
label 0 the rest. (The reference lists the names ``yin, yang, dot`` but
returns ``int(is_yin)``, so its label 1 is the region it computes as "yin";
the labels here are its labels.) A linear classifier reaches about 64 %, a
4-30-3 ANN 97.6 +- 1.5 % (the reference's README): a clear gap that a small
spiking network has to close.

The generator reproduces the reference bit for bit (its seeds 42 / 41 / 40 give
the arrays of its ``publication_data/``): a legacy ``np.random.RandomState(seed)``;
per sample, the goal class ``randint(3)``, then ``rand(2) * 2 * r_big`` drawn
until the point lies in the disc and has the goal class (rejection sampling,
so the three classes are balanced in expectation, not exactly). Each sample's
four inputs are ``(x, y, 1 - x, 1 - y)``, all in [0, 1]: the mirrored pair lets
a network without biases see "small" values as strongly as large ones.

Splits, sizes and seeds are the reference's: train 5000 (seed 42), validation
1000 (seed 41), test 1000 (seed 40). The returned ``Dataset`` trains on train
and evaluates on ``eval_split``: ``test`` (reported numbers) or ``validation``
(for tuning, leaving the test set untouched); the other split is not used.
The generator seeds are fixed by default, apart from the run's ``${seed}``, so
a seed sweep varies the network's initialisation and batch order, not the data.
Generation takes under a second, so nothing is cached; nothing is downloaded.

Encodings of the four values ``v`` in [0, 1] into ``steps`` steps T:

* ``current``: ``v`` itself as a constant input current at every step.
* ``latency``: time to first spike, one spike per channel at step
  ``rint((1 - v) * (T - 1))`` (NumPy's round half to even): ``v = 1`` spikes at
  step 0, ``v = 0`` at step T - 1; no channel is ever silent. The step
  quantizes each coordinate to T levels, which blurs the class boundaries.
"""

from __future__ import annotations

import numpy as np

from snnexp.data.dataset import Dataset

ENCODINGS = ("current", "latency")
EVAL_SPLITS = ("test", "validation")
R_SMALL = 0.1  # the dots' radius
R_BIG = 0.5  # the disc's radius; coordinates lie in [0, 2 * R_BIG]
SIZES = {"train": 5000, "validation": 1000, "test": 1000}
SEEDS = {"train": 42, "validation": 41, "test": 40}  # the reference's seeds per split
N_FEATURES = 4
N_CLASSES = 3
CLASS_NAMES = ("yin", "yang", "dot")  # the reference's list, by label


def which_class(
    x: np.ndarray | float, y: np.ndarray | float, r_small: float = R_SMALL, r_big: float = R_BIG
) -> np.ndarray:
    """The label of points, the reference's rule (vectorized).

    Args:
        x: abscissae, any shape, in [0, 2 * r_big].
        y: ordinates, the shape of ``x``.
        r_small: the dots' radius.
        r_big: the disc's radius (centre ``(r_big, r_big)``).

    Returns:
        int64 labels of the shape of ``x``: 2 inside a dot, 1 in the region
        the reference computes as ``is_yin``, 0 elsewhere. Points outside the
        disc get a label too; the generator rejects them first.
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    d_right = np.sqrt((x - 1.5 * r_big) ** 2 + (y - r_big) ** 2)
    d_left = np.sqrt((x - 0.5 * r_big) ** 2 + (y - r_big) ** 2)
    one = (
        (d_right <= r_small)
        | ((d_left > r_small) & (d_left <= 0.5 * r_big))
        | ((y > r_big) & (d_right > 0.5 * r_big))
    )
    dot = (d_right < r_small) | (d_left < r_small)
    return np.where(dot, 2, one.astype(np.int64))


def generate(
    size: int, seed: int, r_small: float = R_SMALL, r_big: float = R_BIG
) -> tuple[np.ndarray, np.ndarray]:
    """Generates one split as the reference does, draw for draw.

    Args:
        size: number of samples N (at least 1).
        seed: seed of the legacy ``np.random.RandomState``; 42 / 41 / 40 give the
            reference's train / validation / test splits.
        r_small: the dots' radius.
        r_big: the disc's radius.

    Returns:
        ``values`` ``[N, 4]`` float64 ``(x, y, 1 - x, 1 - y)`` and ``labels``
        ``[N]`` int32 in [0, 3).
    """
    if int(size) != size or size < 1:
        raise ValueError(f"yinyang: size must be an integer >= 1, got {size!r}")
    rng = np.random.RandomState(seed)
    xy = np.empty((size, 2), dtype=np.float64)
    labels = np.empty(size, dtype=np.int32)
    for i in range(size):
        goal = rng.randint(3)
        while True:  # reject until the point is in the disc and of the goal class
            x, y = rng.rand(2) * 2.0 * r_big
            if np.sqrt((x - r_big) ** 2 + (y - r_big) ** 2) > r_big:
                continue
            if which_class(x, y, r_small, r_big) == goal:
                break
        xy[i] = x, y
        labels[i] = goal
    return np.concatenate([xy, 1.0 - xy], axis=1), labels


def encode(values: np.ndarray, steps: int, encoding: str) -> np.ndarray:
    """Encodes the inputs into ``steps`` time steps (see the module docstring).

    Args:
        values: inputs ``[N, F]`` in [0, 1].
        steps: time steps T (at least 1).
        encoding: ``current`` or ``latency``.

    Returns:
        float32 ``[N, T, F]``: the values repeated (``current``) or one spike
        per channel at step ``rint((1 - v) * (T - 1))`` (``latency``).
    """
    if encoding not in ENCODINGS:
        raise ValueError(f"data.encoding={encoding!r}; valid choices: {list(ENCODINGS)}")
    if int(steps) != steps or steps < 1:
        raise ValueError(f"data.steps must be positive, got {steps!r}")
    values = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0)
    if encoding == "current":
        return np.repeat(values[:, None, :], steps, axis=1).astype(np.float32)
    t_spike = np.rint((1.0 - values) * (steps - 1)).astype(np.int64)
    return (np.arange(steps)[None, :, None] == t_spike[:, None, :]).astype(np.float32)


def load(
    encoding: str = "current",
    steps: int = 20,
    eval_split: str = "test",
    train_seed: int = SEEDS["train"],
    validation_seed: int = SEEDS["validation"],
    test_seed: int = SEEDS["test"],
) -> Dataset:
    """Loads Yin-Yang: 5000 train samples and the 1000 of ``eval_split``.

    Args:
        encoding: ``current`` (constant input current) or ``latency`` (one
            spike per channel, earlier for larger values).
        steps: time steps T.
        eval_split: the split returned as the test set: ``test`` or
            ``validation`` (tune on it, report on ``test``).
        train_seed: generator seed of the train split (42: the reference).
        validation_seed: generator seed of the validation split (41).
        test_seed: generator seed of the test split (40).

    Returns:
        A ``Dataset`` with ``x_train`` ``[5000, T, 4]`` and ``x_test``
        ``[1000, T, 4]`` float32, labels int32 in [0, 3).
    """
    if encoding not in ENCODINGS:
        raise ValueError(f"data.encoding={encoding!r}; valid choices: {list(ENCODINGS)}")
    if int(steps) != steps or steps < 1:
        raise ValueError(f"data.steps must be positive, got {steps!r}")
    if eval_split not in EVAL_SPLITS:
        raise ValueError(f"data.eval_split={eval_split!r}; valid choices: {list(EVAL_SPLITS)}")
    eval_seed = test_seed if eval_split == "test" else validation_seed
    if eval_seed == train_seed:
        raise ValueError(
            f"data.train_seed and the {eval_split} split's seed are both {train_seed}: "
            "the two splits would hold the same samples"
        )
    v_train, y_train = generate(SIZES["train"], train_seed)
    v_eval, y_eval = generate(SIZES[eval_split], eval_seed)
    return Dataset(
        encode(v_train, int(steps), encoding),
        y_train,
        encode(v_eval, int(steps), encoding),
        y_eval,
        n_classes=N_CLASSES,
        name="yinyang",
    )
