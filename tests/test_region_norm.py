"""Region Normalization (RN-B, RN-L): the code's computation path, the bias conventions, the convolution, RN-L's
gradient through the response map, and bad inputs. The spec table adds the gradient and property checks."""

import numpy as np
import pytest
from scipy.signal import correlate2d

import normref
from normref.ops.batch_norm import batch_norm_backward, batch_norm_forward
from normref.ops.region_norm import (conv2d_same_backward, conv2d_same_forward, resize_mask_nearest, rn_b_backward,
                                     rn_b_forward, rn_l_backward, rn_l_forward)
from normref.testing.gradcheck import check_function, check_layer, norm_rel_error, random_params
from normref.testing.specs import get_spec


def official_rn(x, mask, eps=1e-5):
    """Transcription of the code's RN_binarylabel: fill the outside with the region mean, BN, rescale, sum."""
    n, _, h, w = x.shape
    out = np.zeros_like(x)
    for label in (mask, 1.0 - mask):
        region = x * label
        count = label.sum()
        count = 1.0 if count == 0 else count
        mu = region.sum(axis=(0, 2, 3)) / count
        filled = region + (1.0 - label) * mu[None, :, None, None]
        mean = filled.mean(axis=(0, 2, 3), keepdims=True)
        var = filled.var(axis=(0, 2, 3), keepdims=True)
        out += (filled - mean) / np.sqrt(var + eps) * np.sqrt(count / (n * h * w)) * label
    return out


def official_rn_b(x, mask, gf, bf, gb, bb):
    """Transcription of the code's RN_B.forward (mask already at the feature size)."""
    rn_x = official_rn(x, mask)
    c = lambda p: p[None, :, None, None]  # noqa: E731
    return (rn_x * mask) * (1 + c(gf)) + c(bf) + (rn_x * (1 - mask)) * (1 + c(gb)) + c(bb)


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    x = rng.normal(0.3, 2.0, size=(3, 4, 5, 6))
    mask = (rng.random((3, 1, 5, 6)) < 0.3).astype(np.float64)
    params = [rng.standard_normal(4) for _ in range(4)]
    return x, mask, params, rng


def test_rn_b_equals_the_official_code_path(data):
    """Including its effective epsilon eps·P/|S_r|: tiny variances make the epsilon matter."""
    x, mask, params, _ = data
    for scale in (1.0, 1e-3):
        y, _ = rn_b_forward(scale * x, *params, mask=mask)
        assert norm_rel_error(y, official_rn_b(scale * x, mask, *params)) < 1e-13
    y_plain, _ = rn_b_forward(1e-3 * x, mask=mask)  # and the effective epsilon is not the plain one
    hole = mask[:, 0].astype(bool)
    sel = np.moveaxis(1e-3 * x, 1, 0)[:, hole]
    y_sel = np.moveaxis(y_plain, 1, 0)[:, hole]
    with_plain_eps = (sel - sel.mean(axis=1, keepdims=True)) / np.sqrt(sel.var(axis=1, keepdims=True) + 1e-5)
    assert norm_rel_error(y_sel, with_plain_eps) > 1e-3


def test_rn_b_code_bias_is_global_and_paper_bias_is_regionwise(data):
    x, mask, (gf, bf, gb, bb), _ = data
    y_code, _ = rn_b_forward(x, gf, bf, gb, bb, mask=mask)
    y_paper, _ = rn_b_forward(x, gf, bf, gb, bb, mask=mask, regionwise_bias=True)
    # the paper form differs from the code by beta_b on the holes and beta_f on the valid pixels
    expected = y_code - mask * bb[None, :, None, None] - (1 - mask) * bf[None, :, None, None]
    assert norm_rel_error(y_paper, expected) < 1e-14


def test_rn_b_with_one_region_is_batch_norm(data):
    """All-valid mask: RN-B is BatchNorm with gamma = 1 + gamma_b and beta = beta_f + beta_b (eps·P/P = eps)."""
    x, _, (gf, bf, gb, bb), rng = data
    empty = np.zeros((x.shape[0], 1) + x.shape[2:])
    y, cache = rn_b_forward(x, gf, bf, gb, bb, mask=empty)
    y_bn, cache_bn = batch_norm_forward(x, 1 + gb, bf + bb)
    assert norm_rel_error(y, y_bn) < 1e-14
    dy = rng.standard_normal(x.shape)
    dx, dgf, dbf, dgb, dbb = rn_b_backward(dy, cache)
    dx_bn, dgamma_bn, dbeta_bn = batch_norm_backward(dy, cache_bn)
    assert norm_rel_error(dx, dx_bn) < 1e-13 and norm_rel_error(dgb, dgamma_bn) < 1e-13
    assert np.all(dgf == 0) and norm_rel_error(dbf, dbeta_bn) < 1e-13 and norm_rel_error(dbb, dbeta_bn) < 1e-13


@pytest.mark.parametrize("regionwise_bias", [False, True])
def test_rn_b_gradients_by_central_differences_and_complex_step(data, regionwise_bias):
    x, mask, params, rng = data
    x = 5 * x + 12
    y, cache = rn_b_forward(x, *params, mask=mask, regionwise_bias=regionwise_bias)
    dy = rng.standard_normal(y.shape)
    grads = rn_b_backward(dy, cache)
    names = ("x", "gf", "bf", "gb", "bb")

    def f(x, gf, bf, gb, bb):
        return rn_b_forward(x, gf, bf, gb, bb, mask=mask, regionwise_bias=regionwise_bias)[0]

    report = check_function(f, dict(zip(names, [x, *params])), dict(zip(names, grads)), dy,
                            methods=("central", "complex"))
    assert report.passed, report.table()


def test_rn_b_layer_takes_the_mask_at_forward_and_resizes_it(data):
    x, mask, _, _ = data
    big = np.repeat(np.repeat(mask, 2, axis=2), 3, axis=3)  # (3, 1, 10, 18): nearest resize recovers mask
    assert np.array_equal(resize_mask_nearest(big, (5, 6)), mask)
    layer = normref.RegionNormB(4)
    assert np.array_equal(layer(x, big), layer(x, mask))
    assert np.array_equal(layer.eval()(x, mask[:, 0].astype(bool)), layer.train()(x, mask))  # batch stats in eval
    with pytest.raises(ValueError, match="needs the region mask"):
        normref.RegionNormB(4).forward(x)


@pytest.mark.parametrize("bad,error,match", [
    (np.full((3, 1, 5, 6), 0.5), ValueError, "only 0 and 1"),
    (np.zeros((3, 2, 5, 6)), ValueError, "shape"),
    (np.zeros((2, 1, 5, 6)), ValueError, "shape"),
    (np.zeros((3, 1, 5, 6), dtype=complex), TypeError, "dtype"),
    ([[0, 1]], TypeError, "numpy.ndarray"),
])
def test_rn_b_rejects_bad_masks(data, bad, error, match):
    x = data[0]
    with pytest.raises(error, match=match):
        rn_b_forward(x, mask=bad)


def test_rn_b_bad_inputs(data):
    x, mask, _, _ = data
    with pytest.raises(ValueError, match="gamma_f"):
        rn_b_forward(x, np.ones(3), mask=mask)
    with pytest.raises(ValueError, match="dimensions"):
        rn_b_forward(x[:, :, 0, 0], mask=mask)
    with pytest.raises(ValueError, match="batch statistics"):
        rn_b_forward(x, mask=mask, stats=(np.zeros(4), np.ones(4)))
    with pytest.raises(ValueError, match="channels"):
        normref.RegionNormB(3)(x, mask)


def test_rn_b_float32_stays_float32(data):
    x, mask, params, _ = data
    y, cache = rn_b_forward(x.astype(np.float32), *params, mask=mask)
    assert y.dtype == np.float32
    assert all(g.dtype == np.float32 for g in rn_b_backward(np.ones_like(y), cache))


# ------------------------------------------------------------------------------------------------------------------
# RN-L
# ------------------------------------------------------------------------------------------------------------------
def test_conv2d_same_matches_scipy_and_its_backward_is_exact():
    rng = np.random.default_rng(1)
    x, w, b = rng.standard_normal((2, 2, 5, 6)), rng.standard_normal((3, 2, 3, 3)), rng.standard_normal(3)
    y, cache = conv2d_same_forward(x, w, b)
    expected = np.stack([np.stack([sum(correlate2d(x[n, c], w[o, c], mode="same") for c in range(2)) + b[o]
                                   for o in range(3)]) for n in range(2)])
    assert norm_rel_error(y, expected) < 1e-14
    dy = rng.standard_normal(y.shape)
    grads = conv2d_same_backward(dy, cache)
    report = check_function(lambda x, w, b: conv2d_same_forward(x, w, b)[0], dict(x=x, w=w, b=b),
                            dict(zip("xwb", grads)), dy, methods=("complex",))
    assert report.passed, report.table()


def rn_l_case(seed, shape=(2, 3, 6, 6), threshold=0.5):
    """Small inputs and N(0,1) kernels, redrawn until both regions are non-empty and no point is near a kink."""
    rng = np.random.default_rng(seed)
    while True:
        x = 0.1 * rng.standard_normal(shape) + 0.1
        k = 7
        params = [rng.standard_normal(s) for s in ((1, 2, k, k), (1, 1, k, k), (1,), (1, 1, k, k), (1,))]
        _, cache = rn_l_forward(x, *params, threshold=threshold)
        top2 = np.sort(x, axis=1)[:, -2:]
        frac = (cache.s >= threshold).mean()
        if np.abs(cache.s - threshold).min() > 1e-4 and (top2[:, 1] - top2[:, 0]).min() > 1e-4 and 0 < frac < 1:
            return x, params, rng


def test_rn_l_gradients():
    x, params, rng = rn_l_case(0)
    y, cache = rn_l_forward(x, *params, threshold=0.5)
    dy = rng.standard_normal(y.shape)
    grads = rn_l_backward(dy, cache)
    names = ("x", "w_sa", "w_gamma", "b_gamma", "w_beta", "b_beta")
    report = check_function(lambda **kw: rn_l_forward(*kw.values(), threshold=0.5)[0],
                            dict(zip(names, [x, *params])), dict(zip(names, grads)), dy, methods=("complex",))
    assert report.passed, report.table()


@pytest.mark.parametrize("shape", get_spec("RegionNormL").shapes)
def test_the_spec_inputs_of_rn_l_are_away_from_ties_and_the_threshold(shape):
    """Replays what the checker draws for the RegionNormL spec (seed 0) and asserts the margins its docstring claims."""
    spec = get_spec("RegionNormL")
    rng = np.random.default_rng(0)
    layer = spec.build(shape, True, rng=rng)
    x = spec.make_input(rng, shape)
    random_params(layer, rng)
    layer.forward(x)
    s = layer.cache.s
    top2 = np.sort(x, axis=1)[:, -2:]
    assert np.abs(s - layer.threshold).min() > 1e-5  # the probes move s by ~1e-6 at most
    assert (top2[:, 1] - top2[:, 0]).min() > 1e-5
    assert 0 < layer.last_mask().mean() < 1  # two regions
    assert np.ptp(s) > 0.1  # and s is not saturated: the path through s carries gradient


def test_rn_l_gradient_reaches_x_through_the_response_map():
    """Freezing s (mask, gamma_s and beta_s as constants) must change dx: the path through s is not negligible."""
    x, params, rng = rn_l_case(2)
    y, cache = rn_l_forward(x, *params, threshold=0.5)
    dy = rng.standard_normal(y.shape)
    dx = rn_l_backward(dy, cache)[0]
    frozen_scale, frozen_shift = cache.scale, (y - cache.xhat * cache.scale)
    mask = (cache.s >= 0.5).astype(float)
    # RN with the same mask, then the same pixel maps as constants
    y_frozen, c_frozen = rn_b_forward(x, mask=mask)
    assert norm_rel_error(y_frozen * frozen_scale + frozen_shift, y) < 1e-13
    dx_frozen = rn_b_backward(dy * frozen_scale, c_frozen)[0]
    assert norm_rel_error(dx_frozen, dx) > 1e-2


def test_rn_l_uses_the_official_mean_max_sigmoid_threshold_pipeline():
    """Transcription of SelfAware_Affine and RN_L.forward with scipy's correlation."""
    x, params, _ = rn_l_case(3)
    w_sa, w_g, b_g, w_b, b_b = params
    pooled = np.concatenate([x.mean(axis=1, keepdims=True), x.max(axis=1, keepdims=True)], axis=1)
    z = np.stack([sum(correlate2d(pooled[n, c], w_sa[0, c], mode="same") for c in range(2)) for n in range(2)])
    s = 1 / (1 + np.exp(-z))
    gamma = np.stack([correlate2d(s[n], w_g[0, 0], mode="same") for n in range(2)]) + b_g
    beta = np.stack([correlate2d(s[n], w_b[0, 0], mode="same") for n in range(2)]) + b_b
    mask = (s >= 0.5).astype(float)[:, None]
    expected = official_rn(x, mask) * (1 + gamma[:, None]) + beta[:, None]
    y, _ = rn_l_forward(x, *params, threshold=0.5)
    assert norm_rel_error(y, expected) < 1e-12


def test_rn_l_layer_defaults_and_checks():
    layer = normref.RegionNormL(3)
    assert layer.threshold == 0.8 and layer.params["w_sa"].shape == (1, 2, 7, 7)
    x, _, rng = rn_l_case(4)
    y = layer(x)
    assert y.shape == x.shape and layer.last_mask().shape == (2, 1, 6, 6)
    layer.params.update({k: rng.standard_normal(v.shape) for k, v in layer.params.items()})
    layer.threshold = 0.5
    report = check_layer(layer, x, rng=rng, randomize=False, methods=("complex",))
    assert report.passed, report.table()
    with pytest.raises(ValueError, match="odd"):
        normref.RegionNormL(3, kernel_size=4)
    with pytest.raises(ValueError, match="w_sa"):
        rn_l_forward(x, np.ones((1, 1, 7, 7)), np.ones((1, 1, 7, 7)), None, np.ones((1, 1, 7, 7)))
    with pytest.raises(ValueError, match="w_gamma"):
        rn_l_forward(x, np.ones((1, 2, 3, 3)), np.ones((1, 1, 7, 7)), None, np.ones((1, 1, 3, 3)))
    with pytest.raises(ValueError, match="dimensions"):
        rn_l_forward(x[0], *layer.params.values())
