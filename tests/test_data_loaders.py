"""The MNIST-1D, SHD and N-MNIST loaders, on data made here: no download, no network.

MNIST-1D is generated from the package's templates (once per module, ~10 s);
SHD and N-MNIST are read from small files the tests write in the real formats
(HDF5 with ragged float16/uint16 datasets; N-MNIST's 5-byte event records in
tonic's directory layout), so the binning is checked against hand-placed
events and an independent per-event loop.
"""

from __future__ import annotations

import random
import socket
import sys

import numpy as np
import pytest

from snnexp import build
from snnexp.data import mnist1d, nmnist, shd
from snnexp.data.dataset import DataError
from tests.conftest import make_cfg
from tests.helpers import write_nmnist_bin, write_shd


def _refuse(*args, **kwargs):
    raise AssertionError(f"network access attempted: {args!r}")


@pytest.fixture
def no_network(monkeypatch):
    """Any connection attempt (or name lookup) fails the test."""
    monkeypatch.setattr(socket.socket, "connect", _refuse)
    monkeypatch.setattr(socket, "create_connection", _refuse)
    monkeypatch.setattr(socket, "getaddrinfo", _refuse)


# ---------------------------------------------------------------- MNIST-1D


@pytest.fixture(scope="module")
def mnist1d_cache(tmp_path_factory):
    """Generates the reference MNIST-1D once into a fresh cache, with the network refused."""
    cache = tmp_path_factory.mktemp("mnist1d_cache")
    np_state, py_state = np.random.get_state(), random.getstate()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", _refuse)
        mp.setattr(socket, "create_connection", _refuse)
        mp.setattr(socket, "getaddrinfo", _refuse)
        raw = mnist1d.generate(seed=42, cache_dir=cache)
    # make_dataset reseeds the global generators; the loader puts them back.
    assert np.array_equal(np.random.get_state()[1], np_state[1]) and random.getstate() == py_state
    return cache, raw


def test_mnist1d_generates_reference_shapes_offline(mnist1d_cache):
    cache, raw = mnist1d_cache
    assert raw["x_train"].shape == (4000, 40) and raw["x_test"].shape == (1000, 40)
    assert np.isfinite(raw["x_train"]).all()
    for y in (raw["y_train"], raw["y_test"]):
        assert y.dtype == np.int32 and set(np.unique(y)) == set(range(10))
    assert len(list(cache.glob("*.npz"))) == 1


def test_mnist1d_generation_is_deterministic(mnist1d_cache, no_network):
    _, raw = mnist1d_cache
    again = mnist1d.generate(seed=42, cache_dir=None)  # generated afresh, nothing cached
    for key, value in raw.items():
        np.testing.assert_array_equal(again[key], value)


def test_mnist1d_second_load_reads_the_cache(mnist1d_cache, monkeypatch):
    cache, raw = mnist1d_cache
    (path,) = cache.glob("*.npz")
    mtime = path.stat().st_mtime_ns
    monkeypatch.setattr(mnist1d, "_generate", _refuse)  # a cache miss would fail here
    ds = mnist1d.load(encoding="current", cache_dir=str(cache))
    assert path.stat().st_mtime_ns == mtime
    np.testing.assert_array_equal(ds.y_train, raw["y_train"])


def test_mnist1d_unreadable_cache_is_regenerated(mnist1d_cache, tmp_path, monkeypatch):
    _, raw = mnist1d_cache
    name = next(mnist1d_cache[0].glob("*.npz")).name
    (tmp_path / name).write_bytes(b"not an npz")
    calls = []
    monkeypatch.setattr(mnist1d, "_generate", lambda seed: calls.append(seed) or raw)
    got = mnist1d.generate(seed=42, cache_dir=tmp_path)
    assert calls == [42]
    np.testing.assert_array_equal(got["x_test"], raw["x_test"])
    with np.load(tmp_path / name) as f:  # the bad file was replaced
        np.testing.assert_array_equal(f["x_test"], raw["x_test"])


@pytest.mark.parametrize(("encoding", "features"), [("current", 1), ("delta", 2), ("level", 16)])
def test_mnist1d_encodings(mnist1d_cache, encoding, features):
    cache, raw = mnist1d_cache
    ds = mnist1d.load(encoding=encoding, levels=16, cache_dir=str(cache))
    assert ds.name == "mnist1d" and ds.n_classes == 10
    assert ds.x_train.shape == (4000, 40, features) and ds.x_test.shape == (1000, 40, features)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    if encoding == "current":
        inside = np.mean(np.abs(ds.x_train) <= 1.0)
        assert 0.985 <= inside <= 0.995 and abs(ds.x_train.mean()) < 1e-5
        # an affine map of the package's values, so the ordering within a sample is kept
        assert np.array_equal(np.argsort(ds.x_train[0, :, 0]), np.argsort(raw["x_train"][0]))
    else:
        assert set(np.unique(ds.x_train)) == {0.0, 1.0}
    if encoding == "delta":
        assert not (ds.x_train[..., 0] * ds.x_train[..., 1]).any()  # never up and down at once
    if encoding == "level":
        assert (ds.x_train.sum(axis=2) == 1).all()


@pytest.mark.parametrize("encoding", ["current", "delta", "level"])
def test_mnist1d_repeat_holds_each_point(mnist1d_cache, encoding):
    """``repeat=2``: T=80, each of the 40 points held for 2 steps; delta fires on the first step of a hold alone."""
    cache, _ = mnist1d_cache
    once = mnist1d.load(encoding=encoding, cache_dir=str(cache))
    held = mnist1d.load(encoding=encoding, cache_dir=str(cache), repeat=2)
    assert held.x_train.shape == (4000, 80, once.x_train.shape[2]) and held.x_test.shape[1] == 80
    np.testing.assert_array_equal(held.y_test, once.y_test)
    if encoding == "delta":  # the held copy of a point has not moved: no spike on it
        np.testing.assert_array_equal(held.x_test[:, 0::2], once.x_test)
        assert not held.x_test[:, 1::2].any()
    else:
        np.testing.assert_array_equal(held.x_test[:, 0::2], once.x_test)
        np.testing.assert_array_equal(held.x_test[:, 1::2], once.x_test)


def test_mnist1d_delta_tracks_the_last_spike():
    x = np.array([[0.0, 0.05, 0.2, 0.25, 0.05, 0.0, -0.2]])
    spikes = mnist1d._delta(x, threshold=0.1)
    # 0.2 - 0 > 0.1: up (ref 0.2); 0.2 - 0.05 > 0.1: down (ref 0.05); 0.05 - (-0.2) > 0.1: down
    np.testing.assert_array_equal(spikes[0, :, 0], [0, 0, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(spikes[0, :, 1], [0, 0, 0, 0, 1, 0, 1])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"encoding": "rate"}, r"'rate'.*current.*delta.*level"),
        ({"encoding": "delta", "threshold": 0.0}, "threshold must be positive, got 0.0"),
        ({"encoding": "level", "levels": 1}, "levels must be an integer >= 2, got 1"),
        ({"eval_split": "val"}, r"eval_split='val'; valid choices: \['test', 'validation'\]"),
        ({"repeat": 0}, "repeat must be an integer >= 1, got 0"),
        ({"repeat": 1.5}, "repeat must be an integer >= 1, got 1.5"),
    ],
)
def test_mnist1d_bad_arguments(kwargs, match, monkeypatch):
    monkeypatch.setattr(mnist1d, "generate", _refuse)  # checked before any work
    with pytest.raises(ValueError, match=match):
        mnist1d.load(**kwargs)


def test_mnist1d_validation_split_holds_out_the_last_500_training_sequences(mnist1d_cache):
    """A search evaluates on 500 held-out training sequences, scaled by the other 3500 alone; the test set unseen."""
    cache, raw = mnist1d_cache
    ds = mnist1d.load(eval_split="validation", cache_dir=str(cache))
    assert ds.x_train.shape == (3500, 40, 1) and ds.x_test.shape == (500, 40, 1)
    np.testing.assert_array_equal(ds.y_train, raw["y_train"][:3500])
    np.testing.assert_array_equal(ds.y_test, raw["y_train"][3500:])
    assert set(np.unique(ds.y_test)) == set(range(10))  # every class among the held-out sequences
    fit = raw["x_train"][:3500]
    centre = fit.mean()
    scale = np.percentile(np.abs(fit - centre), 99.0)
    np.testing.assert_allclose(ds.x_test[..., 0], (raw["x_train"][3500:] - centre) / scale, rtol=1e-6, atol=1e-6)
    test = mnist1d.load(cache_dir=str(cache))  # the default, the published protocol, is unchanged
    assert test.x_train.shape == (4000, 40, 1)
    np.testing.assert_array_equal(test.y_test, raw["y_test"])


def test_mnist1d_config_builds(mnist1d_cache):
    cfg = make_cfg("data=mnist1d", f"data.cache_dir={mnist1d_cache[0]}", "data.encoding=delta")
    ds = build.data(cfg)
    assert ds.name == cfg.data.name and ds.x_train.shape == (4000, 40, 2)
    # the tuned preset holds each point for 2 steps (data.repeat=2), through the config
    preset = make_cfg("experiment=mnist1d_recurrent_256", f"data.cache_dir={mnist1d_cache[0]}")
    assert preset.data.repeat == 2 and build.data(preset).x_test.shape == (1000, 80, 1)


# ---------------------------------------------------------------- SHD


@pytest.fixture
def shd_root(tmp_path):
    # train: hand-placed spikes; 0.9995 s is the last bin (and inf if scaled in float16)
    write_shd(
        tmp_path / "shd_train.h5",
        times=[[0.0149, 0.0351, 0.9995], [np.nan, 0.5049, 1.2], []],
        units=[[5, 699, 10], [1, 0, 3], []],
        labels=[3, 19, 0],
    )
    # test: every spike of sample 0 is past steps * dt; the sample must stay
    write_shd(tmp_path / "shd_test.h5", times=[[1.05, 1.3], [0.0001]], units=[[1, 2], [7]], labels=[0, 12])
    return tmp_path


def test_shd_bins_hand_placed_spikes(shd_root):
    ds = shd.load(root=str(shd_root), steps=100, dt=0.01)
    assert ds.name == "shd" and ds.n_classes == 20
    assert ds.x_train.shape == (3, 100, 700) and ds.x_test.shape == (2, 100, 700)
    np.testing.assert_array_equal(ds.y_train, [3, 19, 0])
    np.testing.assert_array_equal(ds.y_test, [0, 12])
    expected = np.zeros((3, 100, 700), np.float32)
    expected[0, 1, 5] = expected[0, 3, 699] = expected[0, 99, 10] = 1  # 0.9995 s: step 99, finite
    expected[1, 50, 0] = 1  # NaN and 1.2 s (past 1 s) dropped
    np.testing.assert_array_equal(ds.x_train, expected)
    assert ds.x_test[0].sum() == 0 and ds.x_test[1, 0, 7] == 1 and ds.x_test.sum() == 1
    with np.errstate(over="ignore"):  # what the loader must not do
        assert np.isinf(np.array([0.9995], dtype=np.float16) * 1e6).all()


def _naive_bins(times, units, steps, dt, channels):
    out = np.zeros((len(times), steps, channels))
    for n, (ts, us) in enumerate(zip(times, units)):
        for t, u in zip(ts, us):
            k = int(np.floor(float(np.float16(t)) / dt))
            if 0 <= k < steps:
                out[n, k, int(u) * channels // 700] += 1
    return out


def test_shd_binning_matches_an_independent_loop(tmp_path):
    rng = np.random.default_rng(0)
    times = [np.sort(rng.uniform(0, 0.6, 300)) for _ in range(5)]
    units = [rng.integers(0, 700, 300) for _ in range(5)]
    labels = rng.integers(0, 20, 5)
    write_shd(tmp_path / "shd_train.h5", times, units, labels)
    write_shd(tmp_path / "shd_test.h5", times[:2], units[:2], labels[:2])
    counts = shd.load(root=str(tmp_path), steps=50, dt=0.01, channels=700, binary=False).x_train
    np.testing.assert_array_equal(counts, _naive_bins(times, units, 50, 0.01, 700))
    assert counts.max() > 1
    pooled = shd.load(root=str(tmp_path), steps=50, dt=0.01, channels=140, binary=False).x_train
    np.testing.assert_array_equal(pooled, counts.reshape(5, 50, 140, 5).sum(-1))  # sums of 5 neighbours
    spikes = shd.load(root=str(tmp_path), steps=50, dt=0.01, channels=140, binary=True).x_train
    np.testing.assert_array_equal(spikes, np.minimum(pooled, 1))


def test_shd_missing_file_says_where_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        shd.load(root=str(tmp_path))
    message = str(err.value)
    assert str(tmp_path / "shd_train.h5") in message
    assert "https://zenkelab.org/resources/spiking-heidelberg-datasets-shd/" in message
    assert "shd_train.h5.gz" in message and "gunzip" in message


def test_shd_gzipped_file_says_gunzip(shd_root):
    (shd_root / "shd_test.h5").rename(shd_root / "shd_test.h5.gz")
    with pytest.raises(FileNotFoundError, match=r"gunzip .*shd_test\.h5\.gz"):
        shd.load(root=str(shd_root))


def test_shd_missing_dataset_is_named(tmp_path):
    write_shd(tmp_path / "shd_train.h5", [[0.1]], [[1]], [1], skip=("labels",))
    write_shd(tmp_path / "shd_test.h5", [[0.1]], [[1]], [1])
    with pytest.raises(DataError, match=r"shd_train\.h5 lacks the dataset\(s\) \['labels'\]"):
        shd.load(root=str(tmp_path))


def test_shd_truncated_or_foreign_file_is_named(shd_root):
    path = shd_root / "shd_train.h5"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cannot read .*shd_train\.h5 as an HDF5 file"):
        shd.load(root=str(shd_root))
    path.write_bytes(b"\x1f\x8b" + bytes(100))  # e.g. the .gz renamed without unpacking
    with pytest.raises(DataError, match="truncated or still gzipped"):
        shd.load(root=str(shd_root))


def test_shd_unit_out_of_range_is_named(tmp_path):
    write_shd(tmp_path / "shd_train.h5", [[0.1, 0.2]], [[1, 700]], [1])
    write_shd(tmp_path / "shd_test.h5", [[0.1]], [[1]], [1])
    with pytest.raises(DataError, match="sample 0 has channel id 700"):
        shd.load(root=str(tmp_path))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"steps": 0}, "steps must be a positive integer, got 0"),
        ({"dt": -0.01}, "dt must be positive.*got -0.01"),
        ({"channels": 3}, r"channels=3 .*valid choices: \[1, 2, 4, 5, 7, 10, .*140, 175, 350, 700\]"),
        ({"root": ""}, "root must name"),
    ],
)
def test_shd_bad_arguments_before_reading(kwargs, match, tmp_path):
    with pytest.raises(ValueError, match=match):  # not FileNotFoundError: checked first
        shd.load(**{"root": str(tmp_path / "nowhere"), **kwargs})


def test_shd_config_builds(shd_root):
    cfg = make_cfg("data=shd", f"data.root={shd_root}", "data.channels=350", "data.steps=20", "data.dt=0.05")
    ds = build.data(cfg)
    assert ds.name == cfg.data.name and ds.x_train.shape == (3, 20, 350)
    assert ds.x_train[0, 19, 5] == 1  # 0.9995 s, unit 10 -> step 19, channel 5


# ---------------------------------------------------------------- N-MNIST


# The hand-placed recording: 0..100 ms cut into 10 frames of 10 ms.
HAND = [(3, 5, 0, 1), (33, 0, 55_000, 0), (20, 30, 100_000, 1)]


@pytest.fixture
def nmnist_root(tmp_path):
    rng = np.random.default_rng(1)

    def recording() -> list[tuple[int, int, int, int]]:
        t = np.sort(rng.integers(0, 300_000, 400))
        xs, ys, ps = rng.integers(0, 34, 400), rng.integers(0, 34, 400), rng.integers(0, 2, 400)
        return [(int(a), int(b), int(c), int(d)) for a, b, c, d in zip(xs, ys, t, ps)]

    for digit in range(3):
        for k in range(2):
            events = HAND if (digit, k) == (0, 0) else recording()
            write_nmnist_bin(tmp_path / "NMNIST" / "Train" / str(digit) / f"{k:05d}.bin", events)
    for digit in (4, 9):
        write_nmnist_bin(tmp_path / "NMNIST" / "Test" / str(digit) / "00001.bin", recording())
    return tmp_path


def test_nmnist_reads_tonic_layout_and_bins(nmnist_root, no_network):
    pytest.importorskip("tonic")
    ds = nmnist.load(root=str(nmnist_root), steps=10, pool=1, binary=False)
    assert ds.name == "nmnist" and ds.n_classes == 10
    assert ds.x_train.shape == (6, 10, 2 * 34 * 34) and ds.x_test.shape == (2, 10, 2 * 34 * 34)
    np.testing.assert_array_equal(ds.y_train, [0, 0, 1, 1, 2, 2])
    np.testing.assert_array_equal(ds.y_test, [4, 9])
    frames = ds.x_train[0].reshape(10, 2, 34, 34)  # (t, p, y, x)
    assert frames[0, 1, 5, 3] == 1  # t=0 -> frame 0
    assert frames[5, 0, 0, 33] == 1  # t=55 ms -> frame 5
    assert 2 <= frames.sum() <= 3  # tonic may leave out the very last event
    assert ds.x_train[1:].sum() > 300  # the random recordings' events land in the frames


def test_nmnist_pooling_sums_blocks_and_binary_caps(nmnist_root, no_network):
    pytest.importorskip("tonic")
    counts = nmnist.load(root=str(nmnist_root), steps=4, pool=1, binary=False).x_train
    pooled = nmnist.load(root=str(nmnist_root), steps=4, pool=2, binary=False).x_train
    assert pooled.shape == (6, 4, 2 * 17 * 17)
    blocks = counts.reshape(6, 4, 2, 17, 2, 17, 2).sum(axis=(4, 6)).reshape(6, 4, -1)
    np.testing.assert_array_equal(pooled, blocks)
    spikes = nmnist.load(root=str(nmnist_root), steps=4, pool=2, binary=True).x_train
    np.testing.assert_array_equal(spikes, np.minimum(pooled, 1))


def test_nmnist_max_samples_is_a_seeded_subset(nmnist_root, no_network):
    pytest.importorskip("tonic")
    a = nmnist.load(root=str(nmnist_root), steps=4, max_samples=3, seed=5)
    b = nmnist.load(root=str(nmnist_root), steps=4, max_samples=3, seed=5)
    assert a.x_train.shape[0] == 3 and a.x_test.shape[0] == 2
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_train, b.y_train)


def test_nmnist_missing_data_never_downloads(tmp_path, no_network):
    tonic = pytest.importorskip("tonic")
    with pytest.raises(FileNotFoundError) as err:
        nmnist.load(root=str(tmp_path))
    message = str(err.value)
    assert str(tmp_path / "NMNIST" / "Train") in message and nmnist.URL in message
    # tonic's own class would download here; the loader's subclass raises instead
    with pytest.raises(FileNotFoundError, match="N-MNIST not found"):
        nmnist._local_nmnist(tonic, tmp_path)(save_to=str(tmp_path), train=False)


def test_nmnist_without_tonic_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tonic", None)  # import tonic now raises ImportError
    with pytest.raises(ImportError, match=r'pip install -e "\.\[data\]"'):
        nmnist.load(root=str(tmp_path))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"steps": 0}, "steps must be a positive integer, got 0"),
        ({"pool": 3}, r"pool=3 .*valid choices: \[1, 2, 17, 34\]"),
        ({"max_samples": 0}, "max_samples must be a positive integer or null, got 0"),
    ],
)
def test_nmnist_bad_arguments(kwargs, match, tmp_path):
    with pytest.raises(ValueError, match=match):
        nmnist.load(**{"root": str(tmp_path), **kwargs})


def test_nmnist_config_builds(nmnist_root, no_network):
    pytest.importorskip("tonic")
    cfg = make_cfg("data=nmnist", f"data.root={nmnist_root}", "data.steps=5")
    ds = build.data(cfg)
    assert ds.name == cfg.data.name and ds.x_train.shape == (6, 5, 578)
    assert set(np.unique(ds.x_train)) <= {0.0, 1.0}


def test_digits_reads_scikit_learns_file_without_importing_it():
    """The digits loader reads the very arrays ``load_digits`` returns, without the second-long sklearn import."""
    import subprocess

    code = ("import sys; from snnexp.data import digits; x, y = digits.digits_arrays(); "
            "assert 'sklearn' not in sys.modules, 'sklearn was imported'; print(x.shape, y.shape)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "(1797, 64) (1797,)"

    from sklearn.datasets import load_digits

    from snnexp.data import digits

    x, y = digits.digits_arrays()
    want_x, want_y = load_digits(return_X_y=True)
    np.testing.assert_array_equal(x, want_x)
    np.testing.assert_array_equal(y, want_y)
