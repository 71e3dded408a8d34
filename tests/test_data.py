"""normref.data: the digits loader, the synthetic sets, stratified splits and seeded mini-batches."""

import sys

import numpy as np
import pytest

from normref.data import (SHAPES, DataLoader, Dataset, MissingDependencyError, batch_moment_fluctuation,
                          load_digits, make_blobs, make_shapes, make_spirals, make_token_task, train_val_test_split)


# -- digits ---------------------------------------------------------------------------------------------------------
def test_digits_loads_the_shipped_copy():
    pytest.importorskip("sklearn", reason="the digits come from scikit-learn, the optional 'data' extra")
    ds = load_digits()
    assert ds.x.shape == (1797, 1, 8, 8) and ds.y.shape == (1797,) and ds.num_classes == 10
    assert ds.x.dtype == np.float64 and ds.x.min() == 0.0 and ds.x.max() == 1.0
    assert np.bincount(ds.y).min() >= 170                                # about 180 per class
    flat = load_digits(flatten=True, dtype=np.float32)
    assert flat.x.shape == (1797, 64) and flat.x.dtype == np.float32
    np.testing.assert_array_equal(flat.x.reshape(-1, 1, 8, 8), ds.x.astype(np.float32))
    # pixel values are multiples of 1/16 (the file stores integers 0..16)
    assert np.allclose(ds.x * 16, np.round(ds.x * 16))


def test_digits_without_sklearn_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)                    # makes `import sklearn...` fail
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match=r'pip install -e "\.\[data\]"') as info:
        load_digits()
    assert isinstance(info.value, MissingDependencyError)


# -- splits ---------------------------------------------------------------------------------------------------------
def _ids(ds):
    return ds.x[:, 0].astype(int)


def test_split_is_stratified_disjoint_exhaustive_and_seeded():
    y = np.repeat(np.arange(3), [50, 30, 20])
    ds = Dataset(np.arange(100.0)[:, None], y, num_classes=3)
    parts = train_val_test_split(ds, val=0.1, test=0.2, seed=4)
    ids = np.concatenate([_ids(p) for p in parts])
    assert sorted(ids.tolist()) == list(range(100))                       # a partition of the samples
    assert np.bincount(parts.test.y).tolist() == [10, 6, 4]               # 20 % of every class
    assert np.bincount(parts.val.y).tolist() == [5, 3, 2]
    np.testing.assert_array_equal(ds.y[_ids(parts.train)], parts.train.y)  # x and y stay aligned
    again = train_val_test_split(ds, val=0.1, test=0.2, seed=4)
    other = train_val_test_split(ds, val=0.1, test=0.2, seed=5)
    np.testing.assert_array_equal(_ids(again.test), _ids(parts.test))
    assert not np.array_equal(np.sort(_ids(other.test)), np.sort(_ids(parts.test)))


def test_split_rejects_bad_fractions():
    ds = Dataset(np.zeros((10, 1)), np.zeros(10, int), num_classes=1)
    with pytest.raises(ValueError, match="val \\+ test"):
        train_val_test_split(ds, val=0.5, test=0.5)
    with pytest.raises(ValueError, match="test"):
        train_val_test_split(ds, test=1.5)
    with pytest.raises(TypeError, match="Dataset"):
        train_val_test_split((ds.x, ds.y))
    with pytest.raises(ValueError, match="same length"):
        Dataset(np.zeros((3, 2)), np.zeros(4))


# -- loader ---------------------------------------------------------------------------------------------------------
def test_loader_epochs_are_permutations_fixed_by_seed_and_epoch():
    ds = Dataset(np.arange(10.0)[:, None], np.arange(10))
    loader = DataLoader(ds, 4, seed=7)
    assert len(loader) == 3
    epochs = [np.concatenate([y for _, y in loader]) for _ in range(3)]
    for order in epochs:
        assert sorted(order.tolist()) == list(range(10))                 # every sample once per epoch
    assert not np.array_equal(epochs[0], epochs[1])                       # reshuffled every epoch
    fresh = DataLoader(ds, 4, seed=7)                                      # epoch 2 alone, in a new loader
    np.testing.assert_array_equal(np.concatenate([y for _, y in fresh.batches(2)]), epochs[2])
    fresh.load_state_dict(loader.state_dict())
    assert fresh.epoch == 3
    assert [len(y) for _, y in DataLoader(ds, 4, drop_last=True)] == [4, 4]
    assert np.concatenate([y for _, y in DataLoader(ds, 4, shuffle=False)]).tolist() == list(range(10))


def test_loader_bad_arguments():
    ds = Dataset(np.zeros((3, 1)), np.zeros(3))
    with pytest.raises(ValueError, match="batch_size"):
        DataLoader(ds, 0)
    with pytest.raises(ValueError, match="leaves no batch"):
        DataLoader(ds, 4, drop_last=True)
    with pytest.raises(TypeError, match="seed"):
        DataLoader(ds, 2, seed=-1)


# -- synthetic sets -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [lambda s: make_blobs(60, 3, seed=s), lambda s: make_spirals(60, 3, seed=s),
                                  lambda s: make_shapes(12, 8, seed=s), lambda s: make_token_task(8, 8, seed=s)])
def test_synthetic_sets_are_seeded(make):
    a, b, c = make(1), make(1), make(2)
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.y, b.y)
    assert not np.array_equal(a.x, c.x)
    assert a.num_classes == len(np.unique(a.y))


def test_blobs_and_spirals_geometry():
    blobs = make_blobs(300, 3, dim=5, spread=0.5, separation=4.0, seed=0)
    dist = np.linalg.norm(blobs.x[:, None, :] - blobs.info["centers"][None], axis=2)
    assert np.mean(np.argmin(dist, axis=1) == blobs.y) > 0.95               # each point sits near its own center
    spirals = make_spirals(300, 2, noise=0.0, turns=1.0, seed=0)
    r = np.linalg.norm(spirals.x, axis=1)
    angle = np.arctan2(spirals.x[:, 1], spirals.x[:, 0])
    # noise-free: the angle is 2π(r + k/K) modulo 2π
    expected = 2 * np.pi * (r + spirals.y / 2)
    assert np.allclose(np.angle(np.exp(1j * (angle - expected))), 0, atol=1e-9)


def test_shapes_draw_what_their_label_says():
    ds = make_shapes(120, 12, noise=0.0, seed=3)
    assert ds.x.shape == (120, 1, 12, 12) and np.bincount(ds.y).tolist() == [20] * 6
    for img, label in zip(ds.x[:, 0], ds.y):
        rows, cols = np.nonzero(img)
        kind = SHAPES[label]
        assert len(rows) >= 3, kind
        if kind == "horizontal":
            assert len(set(rows)) <= 2 and len(set(cols)) >= 6
        elif kind == "vertical":
            assert len(set(cols)) <= 2 and len(set(rows)) >= 6
        elif kind == "diagonal":
            assert len(set(rows - cols)) == 1
        elif kind == "antidiagonal":
            assert len(set(rows + cols)) == 1
        elif kind == "box":
            assert img[rows.min():rows.max() + 1, cols.min():cols.max() + 1].sum() < (np.ptp(rows) + 1) ** 2
            assert np.ptp(rows) == np.ptp(cols)
        else:  # plus: one full row and one full column through the center
            r, c = np.bincount(rows).argmax(), np.bincount(cols).argmax()
            assert set(rows[cols != c]) == {r} and set(cols[rows != r]) == {c}


def test_token_task_structure():
    ds = make_token_task(200, 16, vocab_size=128, num_classes=4, topic_tokens=5, seed=0)
    lengths = ds.info["lengths"]
    positions = np.arange(16)[None, :]
    assert np.all(ds.x[positions >= lengths[:, None]] == 0)               # padding after the length
    assert np.all(ds.x[positions < lengths[:, None]] != 0)                # real tokens are never the pad id
    topic = ds.info["topic_ids"]
    for c in range(4):                                                    # a class never shows another's topics
        others = np.setdiff1d(topic.ravel(), topic[c])
        assert not np.isin(ds.x[ds.y == c], others).any()
        assert np.isin(ds.x[ds.y == c], topic[c]).mean() > 0.1
    feats = make_token_task(200, 16, vocab_size=128, num_classes=4, topic_tokens=5, features=True, seed=0)
    assert feats.x.shape == (200, 16, 16)
    np.testing.assert_array_equal(np.all(feats.x == 0, axis=2), ds.x == 0)  # pads are zero vectors
    with np.errstate(invalid="ignore"):                                   # 0/0 at the pads, masked below
        ratio = feats.x / ds.info["embedding"][ds.x]                        # features = embedding * sequence scale
    real = ds.x != 0
    per_seq = np.nanmean(np.where(real[..., None], ratio, np.nan), axis=(1, 2))
    assert np.allclose(np.where(real[..., None], ratio, per_seq[:, None, None]), per_seq[:, None, None])


def test_token_features_fluctuate_across_batches_far_more_than_images():
    tokens = make_token_task(1024, 32, features=True, seed=0)
    pad = np.all(tokens.x == 0, axis=-1)
    text = batch_moment_fluctuation(tokens.x, 32, mask=pad)
    images = batch_moment_fluctuation(make_shapes(1024, 12, seed=0).x, 32, channel_axis=1)
    calm = make_token_task(1024, 32, features=True, sequence_sigma=0.0, seed=0)
    calm_text = batch_moment_fluctuation(calm.x, 32, mask=pad)
    assert text["var"] > 5 * images["var"]
    assert calm_text["var"] < text["var"]                                 # the per-sequence scale is a cause


def test_batch_moment_fluctuation_is_scale_free_and_checks_inputs():
    x = np.random.default_rng(0).standard_normal((256, 3, 4))
    a = batch_moment_fluctuation(x, 16, channel_axis=1)
    b = batch_moment_fluctuation(7.0 * x + 3.0, 16, channel_axis=1)
    assert a["var"] == pytest.approx(b["var"], rel=1e-10) and a["mean"] == pytest.approx(b["mean"], rel=1e-8)
    with pytest.raises(ValueError, match="2 \\* batch_size"):
        batch_moment_fluctuation(x, 200)
    with pytest.raises(ValueError, match="mask"):
        batch_moment_fluctuation(x, 16, channel_axis=1, mask=np.zeros((256, 3), bool))


def test_generators_reject_bad_arguments():
    with pytest.raises(ValueError, match="size"):
        make_shapes(10, 4)
    with pytest.raises(ValueError, match="vocab_size"):
        make_token_task(10, 8, vocab_size=16, num_classes=4, topic_tokens=4)
    with pytest.raises(TypeError, match="seed"):
        make_blobs(10, seed=1.5)
    with pytest.raises(ValueError, match="num_classes"):
        make_spirals(10, 0)
