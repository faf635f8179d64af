"""Yin-Yang: the generator against the reference's published arrays and an independent geometry; encodings; no network.

The golden values below were read from the reference repository's
``publication_data/{train,validation,test}_{samples,labels}.npy``
(github.com/lkriener/yin_yang_data_set, commit e6eef96), which its
``YinYangDataset(size, seed)`` reproduces with seeds 42 / 41 / 40; the arrays
themselves are not stored here.
"""

from __future__ import annotations

import socket

import jax.numpy as jnp
import numpy as np
import pytest

from snnexp import build
from snnexp.data import yinyang
from snnexp.train import run
from tests.conftest import make_cfg

# split -> (seed, size, first two rows (x, y, 1-x, 1-y), first 8 labels, counts per class, sum of x and y)
GOLDEN = {
    "train": (42, 5000, [[0.6803075385877797, 0.450499251969543, 0.3196924614122203, 0.549500748030457],
                         [0.09767211400638387, 0.6842330265121569, 0.9023278859936161, 0.3157669734878431]],
              [2, 1, 2, 1, 1, 1, 0, 2], [1681, 1702, 1617], 5034.089318317108),
    "validation": (41, 1000, [[0.6805727261759029, 0.3209733938933629, 0.3194272738240971, 0.6790266061066371],
                              [0.6685157172603458, 0.9174478488708967, 0.33148428273965425, 0.0825521511291033]],
                   [0, 1, 0, 0, 2, 1, 1, 1], [316, 336, 348], 990.057443152265),
    "test": (40, 1000, [[0.23409664559563403, 0.4017249751828972, 0.765903354404366, 0.5982750248171028],
                        [0.7513290219574494, 0.4682425192680968, 0.24867097804255056, 0.5317574807319032]],
             [2, 2, 1, 1, 1, 2, 2, 0], [350, 316, 334], 987.037225026263),
}


def _refuse(*args, **kwargs):
    raise AssertionError(f"network access attempted: {args!r}")


@pytest.fixture(scope="module")
def splits():
    """The three reference splits, generated once with every socket refused."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket, "socket", _refuse)
        mp.setattr(socket, "create_connection", _refuse)
        mp.setattr(socket, "getaddrinfo", _refuse)
        return {s: yinyang.generate(yinyang.SIZES[s], yinyang.SEEDS[s]) for s in GOLDEN}


def _independent_labels(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The yin-yang sign drawn in words, not with the reference's criteria.

    Disc of radius 1/2 centred at (1/2, 1/2); bulges of radius 1/4 around
    (1/4, 1/2) (left) and (3/4, 1/2) (right); dots of radius 1/10 at their
    centres. Class 0 is the lower half of the disc outside the left bulge,
    together with the right bulge; class 1 the rest of the disc; the dots are
    class 2 whichever half they lie in.
    """
    p = x + 1j * y
    left, right = abs(p - (0.25 + 0.5j)), abs(p - (0.75 + 0.5j))
    zero = ((y <= 0.5) & (left > 0.25)) | (right <= 0.25)
    return np.select([(left < 0.1) | (right < 0.1), zero], [2, 0], default=1)


@pytest.mark.parametrize("split", list(GOLDEN))
def test_generator_reproduces_the_reference_arrays(splits, split):
    seed, size, rows, first_labels, counts, xy_sum = GOLDEN[split]
    values, labels = splits[split]
    assert (yinyang.SEEDS[split], yinyang.SIZES[split]) == (seed, size)
    assert values.shape == (size, 4) and values.dtype == np.float64
    assert labels.shape == (size,) and labels.dtype == np.int32
    assert values[:2].tolist() == rows  # bit for bit
    assert labels[:8].tolist() == first_labels
    assert np.bincount(labels, minlength=3).tolist() == counts
    assert float(values[:, :2].sum()) == pytest.approx(xy_sum, rel=1e-13)


@pytest.mark.parametrize("split", list(GOLDEN))
def test_points_lie_in_the_disc_and_match_the_geometry(splits, split):
    values, labels = splits[split]
    x, y = values[:, 0], values[:, 1]
    assert ((x >= 0) & (x <= 1) & (y >= 0) & (y <= 1)).all()
    assert ((x - 0.5) ** 2 + (y - 0.5) ** 2 <= 0.25).all()
    np.testing.assert_array_equal(labels, _independent_labels(x, y))
    # the inputs are (x, y, 1 - x, 1 - y), exactly
    np.testing.assert_array_equal(values[:, 2:], 1.0 - values[:, :2])


@pytest.mark.parametrize("split", list(GOLDEN))
def test_rejection_sampling_balances_the_classes(splits, split):
    _, labels = splits[split]
    n = len(labels)
    counts = np.bincount(labels, minlength=3)
    # each goal class is drawn with p = 1/3: within 4 binomial standard deviations
    assert (np.abs(counts - n / 3) < 4 * np.sqrt(n * (1 / 3) * (2 / 3))).all()


def test_which_class_on_hand_placed_points():
    # centre of each dot; the top and bottom of the disc; the bulges' far sides
    x = np.array([0.25, 0.75, 0.5, 0.5, 0.1, 0.9])
    y = np.array([0.5, 0.5, 0.95, 0.05, 0.5, 0.5])
    assert yinyang.which_class(x, y).tolist() == [2, 2, 1, 0, 1, 0]
    assert yinyang.which_class(x, y).tolist() == _independent_labels(x, y).tolist()


def test_generation_is_deterministic_per_seed():
    a, la = yinyang.generate(200, seed=7)
    b, lb = yinyang.generate(200, seed=7)
    c, _ = yinyang.generate(200, seed=8)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(la, lb)
    assert not np.array_equal(a, c)


def test_current_encoding_repeats_the_values(splits):
    values, _ = splits["test"]
    x = yinyang.encode(values, 7, "current")
    assert x.shape == (1000, 7, 4) and x.dtype == np.float32
    for t in range(7):
        np.testing.assert_array_equal(x[:, t], values.astype(np.float32))


@pytest.mark.parametrize("steps", [1, 2, 20, 31])
def test_latency_encoding_one_spike_per_channel_at_the_documented_step(splits, steps):
    values, _ = splits["train"]
    x = yinyang.encode(values, steps, "latency")
    assert x.shape == (5000, steps, 4) and x.dtype == np.float32
    assert set(np.unique(x).tolist()) <= {0.0, 1.0}
    np.testing.assert_array_equal(x.sum(axis=1), 1.0)  # exactly one spike per channel
    np.testing.assert_array_equal(x.argmax(axis=1), np.rint((1.0 - values) * (steps - 1)))


def test_latency_encoding_hand_values():
    v = np.array([[1.0, 0.0, 0.5, 0.25]])
    # T = 5: steps (1 - v) * 4 = 0, 4, 2, 3
    assert yinyang.encode(v, 5, "latency")[0].argmax(axis=0).tolist() == [0, 4, 2, 3]
    # T = 4: (1 - v) * 3 = 0, 3, 1.5 -> 2 (half to even), 2.25 -> 2
    assert yinyang.encode(v, 4, "latency")[0].argmax(axis=0).tolist() == [0, 3, 2, 2]


@pytest.mark.parametrize(("split", "seed"), [("test", 40), ("validation", 41)])
def test_load_trains_on_train_and_evaluates_the_chosen_split(splits, split, seed):
    ds = yinyang.load(encoding="latency", steps=12, eval_split=split)
    assert ds.name == "yinyang" and ds.n_classes == 3
    assert ds.x_train.shape == (5000, 12, 4) and ds.x_test.shape == (1000, 12, 4)
    assert ds.y_train.dtype == np.int32 and ds.x_train.dtype == np.float32
    np.testing.assert_array_equal(ds.y_train, splits["train"][1])
    np.testing.assert_array_equal(ds.y_test, splits[split][1])
    np.testing.assert_array_equal(ds.x_test, yinyang.encode(splits[split][0], 12, "latency"))


def test_load_with_sockets_blocked(monkeypatch):
    monkeypatch.setattr(socket, "socket", _refuse)
    monkeypatch.setattr(socket, "create_connection", _refuse)
    monkeypatch.setattr(socket, "getaddrinfo", _refuse)
    ds = yinyang.load()
    assert ds.x_train.shape == (5000, 20, 4)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"encoding": "rate"}, r"data.encoding='rate'; valid choices: \['current', 'latency'\]"),
        ({"steps": 0}, "data.steps must be positive, got 0"),
        ({"eval_split": "train"}, r"data.eval_split='train'; valid choices: \['test', 'validation'\]"),
        ({"test_seed": 42}, "same samples"),
        ({"eval_split": "validation", "validation_seed": 42}, "same samples"),
    ],
)
def test_bad_arguments_are_named(kwargs, match, monkeypatch):
    monkeypatch.setattr(yinyang, "generate", _refuse)  # checked before any work
    with pytest.raises(ValueError, match=match):
        yinyang.load(**kwargs)


def test_config_builds():
    cfg = make_cfg("data=yinyang", "data.encoding=latency", "data.steps=8")
    assert (cfg.data.train_seed, cfg.data.validation_seed, cfg.data.test_seed) == (42, 41, 40)
    ds = build.data(cfg)
    assert ds.x_train.shape == (5000, 8, 4) and ds.x_test.shape == (1000, 8, 4)


@pytest.mark.parametrize("preset", ["yinyang", "yinyang_quant"])
def test_preset_composes_and_builds(preset):
    cfg = make_cfg(f"experiment={preset}")
    assert cfg.data.name == "yinyang" and cfg.data.eval_split == "test"
    model = build.model(cfg, n_in=yinyang.N_FEATURES, n_out=yinyang.N_CLASSES)
    out, _ = model(jnp.zeros((2, cfg.data.steps, 4)))
    assert out.shape == (2, cfg.data.steps, 3) and np.isfinite(np.asarray(out)).all()


@pytest.mark.slow
def test_preset_learns_in_a_few_epochs(tmp_path):
    cfg = make_cfg("experiment=yinyang", "logger=none", "trainer.epochs=3", "mode.quant_epochs=1",
                   "data.eval_split=validation", "compile_cache=null")
    m = run(cfg, tmp_path)
    assert m["status"] == "ok"
    assert m["fp32_accuracy"] > 0.85 and m["quant_accuracy"] > 0.85
