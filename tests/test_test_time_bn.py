"""Test-time BN calibration (α-BN linear mix, TTN mixture variance): which side the weight is on, the two gradient
modes against finite differences and against the closed forms of normalizers.md §7, the limits w_test = 0 and 1,
construction from a trained BatchNorm, and bad inputs."""

import numpy as np
import pytest

import normref
from normref.ops.batch_norm import batch_norm_backward, batch_norm_forward
from normref.ops.test_time_bn import alpha_batch_norm_backward, alpha_batch_norm_forward
from normref.testing.gradcheck import check_function, norm_rel_error, numerical_vjp

AXES = (0, 2)


@pytest.fixture
def case():
    rng = np.random.default_rng(0)
    x = rng.normal(2.0, 3.0, size=(6, 3, 5))
    source = (rng.normal(0.0, 1.0, 3), rng.uniform(0.5, 2.0, 3))
    gamma, beta = 1 + 0.5 * rng.standard_normal(3), rng.standard_normal(3)
    return x, source, gamma, beta, rng.standard_normal(x.shape), rng


def c(v):
    return np.asarray(v).reshape(1, -1, 1)


def test_w_test_weighs_the_test_statistics_and_maps_to_alpha_bn(case):
    """Transcription of You et al.'s α-BN as decided (α on the source): mu = α·mu_s + (1−α)·mu_t, w_test = 1 − α."""
    x, (mu_s, var_s), gamma, beta, _, _ = case
    alpha = 0.7
    mu_t, var_t = x.mean(axis=AXES), x.var(axis=AXES)
    mean, var = alpha * mu_s + (1 - alpha) * mu_t, alpha * var_s + (1 - alpha) * var_t
    expected = c(gamma) * (x - c(mean)) / np.sqrt(c(var) + 1e-5) + c(beta)
    y, _ = alpha_batch_norm_forward(x, gamma, beta, source_stats=(mu_s, var_s), w_test=1 - alpha)
    assert norm_rel_error(y, expected) < 1e-14


def test_ttn_mixture_variance_is_the_variance_of_the_mixture(case):
    """With the TTN term, the mixed statistics are the mean and variance of the w-mixture of two distributions
    with these moments (sampled here as two point clouds with exactly those moments)."""
    x, (mu_s, var_s), _, _, _, rng = case
    w = np.array([0.2, 0.5, 0.9])
    _, cache = alpha_batch_norm_forward(x, source_stats=(mu_s, var_s), w_test=w, mixture_variance=True)
    for ch in range(3):
        test = x[:, ch].ravel()
        src = rng.standard_normal(100000)
        src = (src - src.mean()) / src.std() * np.sqrt(var_s[ch]) + mu_s[ch]
        # a weighted pooled sample: weight w on every test value, 1 − w on every source value
        values = np.concatenate([test, src])
        weights = np.concatenate([np.full(test.size, w[ch] / test.size), np.full(src.size, (1 - w[ch]) / src.size)])
        mean = np.sum(weights * values)
        var = np.sum(weights * (values - mean) ** 2)
        assert abs(cache.norm.mean.ravel()[ch] - mean) < 1e-10
        assert abs(cache.norm.var.ravel()[ch] - var) < 1e-9 * var


@pytest.mark.parametrize("mixture", [False, True])
def test_w_test_one_is_batch_norm_training(case, mixture):
    x, source, gamma, beta, dy, _ = case
    y, cache = alpha_batch_norm_forward(x, gamma, beta, source_stats=source, w_test=1.0, mixture_variance=mixture)
    y_bn, cache_bn = batch_norm_forward(x, gamma, beta)
    assert norm_rel_error(y, y_bn) < 1e-14
    for a, b in zip(alpha_batch_norm_backward(dy, cache), batch_norm_backward(dy, cache_bn)):
        assert norm_rel_error(a, b) < 1e-13


def test_w_test_zero_is_batch_norm_evaluation(case):
    x, source, gamma, beta, dy, _ = case
    y, cache = alpha_batch_norm_forward(x, gamma, beta, source_stats=source, w_test=0.0)
    y_bn, cache_bn = batch_norm_forward(x, gamma, beta, stats=source)
    assert norm_rel_error(y, y_bn) < 1e-14
    for a, b in zip(alpha_batch_norm_backward(dy, cache), batch_norm_backward(dy, cache_bn)):
        assert norm_rel_error(a, b) < 1e-14


@pytest.mark.parametrize("mixture,unbiased", [(False, False), (True, False), (False, True), (True, True)])
def test_exact_gradient_through_the_test_statistics(case, mixture, unbiased):
    x, source, gamma, beta, dy, _ = case
    w = np.array([0.25, 0.6, 0.9])
    kw = dict(source_stats=source, w_test=w, mixture_variance=mixture, unbiased=unbiased)
    y, cache = alpha_batch_norm_forward(x, gamma, beta, **kw)
    grads = alpha_batch_norm_backward(dy, cache)
    report = check_function(lambda x, gamma, beta: alpha_batch_norm_forward(x, gamma, beta, **kw)[0],
                            dict(x=x, gamma=gamma, beta=beta), dict(zip(("x", "gamma", "beta"), grads)), dy,
                            methods=("central", "complex"))
    assert report.passed, report.table()


@pytest.mark.parametrize("mixture", [False, True])
def test_exact_gradient_matches_the_closed_forms_of_normalizers_md(case, mixture):
    """§7: TTN: dx = (ĝ − α mean(ĝ) − α x̂ mean(ĝ x̂))/s; linear mix: the last x̂ replaced by (x − mu_t)/s."""
    x, source, gamma, _, dy, _ = case
    w = 0.35
    y, cache = alpha_batch_norm_forward(x, gamma, None, source_stats=source, w_test=w, mixture_variance=mixture)
    s = 1 / cache.norm.rstd
    xhat = cache.norm.xhat
    g = c(gamma) * dy
    last = xhat if mixture else (x - x.mean(axis=AXES, keepdims=True)) / s
    expected = (g - w * g.mean(axis=AXES, keepdims=True) - w * last * (g * xhat).mean(axis=AXES, keepdims=True)) / s
    assert norm_rel_error(alpha_batch_norm_backward(dy, cache)[0], expected) < 1e-13


def test_stop_gradient_is_the_derivative_of_the_frozen_statistics_function(case):
    x, source, gamma, beta, dy, _ = case
    kw = dict(source_stats=source, w_test=0.4, unbiased=True)
    _, cache = alpha_batch_norm_forward(x, gamma, beta, stats_grad=False, **kw)
    dx, dgamma, dbeta = alpha_batch_norm_backward(dy, cache)
    frozen = (cache.test_mean, cache.test_var)  # the test statistics of x, held fixed
    fd_frozen = numerical_vjp(lambda x: alpha_batch_norm_forward(x, gamma, beta, stats=frozen, **kw)[0],
                              dict(x=x), "x", dy)
    assert norm_rel_error(dx, fd_frozen) < 1e-8
    assert norm_rel_error(dx, c(gamma) * dy / np.sqrt(cache.norm.var + 1e-5)) < 1e-14
    # ... and it is not the derivative of the layer: finite differences of the real function disagree by O(w)
    fd_true = numerical_vjp(lambda x: alpha_batch_norm_forward(x, gamma, beta, **kw)[0], dict(x=x), "x", dy)
    assert norm_rel_error(dx, fd_true) > 1e-2
    # the affine gradients are exact in both modes
    _, cache_exact = alpha_batch_norm_forward(x, gamma, beta, **kw)
    _, dgamma_exact, dbeta_exact = alpha_batch_norm_backward(dy, cache_exact)
    assert norm_rel_error(dgamma, dgamma_exact) < 1e-14 and norm_rel_error(dbeta, dbeta_exact) < 1e-14


def test_unbiased_option_scales_the_test_variance(case):
    x, source, *_ = case
    m = x.shape[0] * x.shape[2]
    _, biased = alpha_batch_norm_forward(x, source_stats=source, w_test=0.5)
    _, unbiased = alpha_batch_norm_forward(x, source_stats=source, w_test=0.5, unbiased=True)
    assert norm_rel_error(unbiased.test_var, biased.test_var * m / (m - 1)) < 1e-15


def test_from_batch_norm_and_pinned_statistics():
    rng = np.random.default_rng(1)
    bn = normref.BatchNorm(3)
    bn.params["gamma"], bn.params["beta"] = rng.uniform(0.5, 2, 3), rng.standard_normal(3)
    for _ in range(5):
        bn(rng.normal(1.0, 2.0, size=(16, 3, 4)))
    layer = normref.AlphaBatchNorm.from_batch_norm(bn, w_test=0.25, mixture_variance=True)
    assert layer.eps == bn.eps and np.array_equal(layer.params["gamma"], bn.params["gamma"])
    assert np.array_equal(layer.buffers["running_mean"], bn.buffers["running_mean"])
    layer.buffers["running_mean"][0] += 1.0  # a copy, not a view of bn's buffer
    assert not np.array_equal(layer.buffers["running_mean"], bn.buffers["running_mean"])
    x = rng.normal(5.0, 3.0, size=(8, 3, 4))
    assert np.array_equal(layer.train()(x), layer.eval()(x))  # a test-time layer: both modes are the same
    # calibrate on a batch, then normalize single samples with the same statistics
    layer.pin_test_stats(x)
    y_batch = layer(x)
    y_single = np.concatenate([layer(x[i:i + 1]) for i in range(8)])
    assert norm_rel_error(y_single, y_batch) < 1e-14
    layer.unpin_test_stats()
    assert norm_rel_error(layer(x[:2]), y_batch[:2]) > 1e-3
    # w_test = 0 reproduces the trained layer's evaluation output
    frozen = normref.AlphaBatchNorm.from_batch_norm(bn, w_test=0.0)
    assert norm_rel_error(frozen(x), bn.eval()(x)) < 1e-14


@pytest.mark.parametrize("w,error", [(1.5, ValueError), (-0.1, ValueError), (np.ones(2), ValueError),
                                     (True, TypeError), ("0.5", TypeError)])
def test_bad_w_test(case, w, error):
    x, source, *_ = case
    with pytest.raises(error, match="w_test"):
        alpha_batch_norm_forward(x, source_stats=source, w_test=w)
    with pytest.raises(error, match="w_test"):
        normref.AlphaBatchNorm(3, w_test=w)


def test_bad_source_stats_and_layers(case):
    x, (mu_s, var_s), *_ = case
    with pytest.raises(TypeError, match="source_stats"):
        alpha_batch_norm_forward(x, source_stats=None)
    with pytest.raises(ValueError, match="source_stats"):
        alpha_batch_norm_forward(x, source_stats=(mu_s[:2], var_s))
    with pytest.raises(ValueError, match="track_running_stats"):
        normref.AlphaBatchNorm.from_batch_norm(normref.BatchNorm(3, track_running_stats=False))
    with pytest.raises(ValueError, match="channels"):
        normref.AlphaBatchNorm(4)(x)
    y, cache = alpha_batch_norm_forward(x.astype(np.float32), source_stats=(mu_s, var_s))
    assert y.dtype == np.float32 and alpha_batch_norm_backward(np.ones_like(y), cache)[0].dtype == np.float32
