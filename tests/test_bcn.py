"""Batch-Channel Normalization: the official module transcribed, the IN relation, EstBN's update rule and its
stop-gradient backward, running statistics, bad input."""

import numpy as np
import pytest

import normref
from normref import nn
from normref.ops.batch_channel_norm import (batch_channel_norm_backward, batch_channel_norm_forward,
                                            estbn_update)
from normref.ops.instance_norm import instance_norm_forward
from normref.testing.gradcheck import check_function, norm_rel_error


def rand(shape, seed, loc=0.0, scale=1.0):
    return np.random.default_rng(seed).normal(loc, scale, shape)


def official_bcn(x, w_bn, b_bn, w_g, b_g, groups, eps=1e-5, stats=None):
    """BCNorm.forward of the official repository, transcribed: BatchNorm2d, then batch_norm on (1, N·G, -1) with
    no affine, then the (1, G, 1) per-group affine on the (N, G, -1) view."""
    n, c = x.shape[:2]
    axes = (0,) + tuple(range(2, x.ndim))
    expand = (1, c) + (1,) * (x.ndim - 2)
    if stats is None:
        mean, var = x.mean(axis=axes), x.var(axis=axes)
    else:
        mean, var = stats
    y1 = (x - mean.reshape(expand)) / np.sqrt(var.reshape(expand) + eps) * w_bn.reshape(expand) + b_bn.reshape(expand)
    flat = y1.reshape(1, n * groups, -1)
    y2 = (flat - flat.mean(axis=2, keepdims=True)) / np.sqrt(flat.var(axis=2, keepdims=True) + eps)
    y2 = y2.reshape(n, groups, -1) * w_g.reshape(1, groups, 1) + b_g.reshape(1, groups, 1)
    return y2.reshape(x.shape)


def params(c, g, seed):
    rng = np.random.default_rng(seed)
    return (rng.normal(1, 0.5, c), rng.normal(0, 1, c), rng.normal(1, 0.5, g), rng.normal(0, 1, g))


@pytest.mark.parametrize("shape,groups", [((3, 6, 4, 5), 3), ((2, 8, 7), 2), ((4, 4), 2)])
def test_matches_the_official_module(shape, groups):
    x = rand(shape, 0, loc=3.0, scale=2.0)
    p = params(shape[1], groups, 1)
    y, _ = batch_channel_norm_forward(x, *p, num_groups=groups)
    assert np.max(np.abs(y - official_bcn(x, *p, groups))) < 1e-12
    stats = (rand(shape[1], 2), rand(shape[1], 3) ** 2 + 0.5)
    y, _ = batch_channel_norm_forward(x, *p, num_groups=groups, stats=stats)
    assert np.max(np.abs(y - official_bcn(x, *p, groups, stats=stats))) < 1e-12


def test_group_affine_is_per_group():
    """Parameters have shape (G,), and a group's output is scaled by one value: unlike GroupNorm's per-channel."""
    x = rand((2, 6, 5), 4)
    layer = nn.BatchChannelNorm(6, num_groups=3)
    assert layer.params["group_gamma"].shape == layer.params["group_beta"].shape == (3,)
    base = layer.forward(x)
    layer.params["group_gamma"] = np.array([1.0, 2.0, 1.0])
    scaled = layer.forward(x)
    np.testing.assert_allclose(scaled[:, 2:4], 2 * base[:, 2:4])
    np.testing.assert_allclose(scaled[:, [0, 1, 4, 5]], base[:, [0, 1, 4, 5]])


@pytest.mark.parametrize("spatial", [(7,), (3, 4)])
def test_one_sample_with_one_channel_per_group_is_instance_norm(spatial):
    """N = 1, batch statistics, G = C. BN's per-channel statistics over one sample are IN's, and the GN stage is IN
    again. With the BN scale gamma = 1 (any beta: GN's centering removes it) BCN = a·IN_eps'(x)/sqrt(1+eps) + b
    exactly, eps' = eps²/(1+eps); with eps = 0, BCN = a·sign(gamma)·IN_0(x) + b for any gamma."""
    c = 4
    x = rand((1, c) + spatial, 5, loc=2.0, scale=3.0)
    gamma, beta, a, b = params(c, c, 6)
    eps = 1e-5
    y, _ = batch_channel_norm_forward(x, np.ones(c), beta, a, b, num_groups=c, eps=eps)
    b_b = b.reshape((1, c) + (1,) * len(spatial))
    inorm, _ = instance_norm_forward(x, a, None, eps=eps**2 / (1 + eps))  # a·IN_eps'(x)
    assert np.max(np.abs(y - (inorm / np.sqrt(1 + eps) + b_b))) < 1e-13
    # not an accident of eps being small: IN with the same eps and no 1/sqrt(1+eps) is 1e6 times further off
    naive, _ = instance_norm_forward(x, a, b, eps=eps)
    assert np.max(np.abs(y - naive)) > 1e-7

    gamma = gamma * np.array([1, -1, 1, -1])  # both signs
    y0, _ = batch_channel_norm_forward(x, gamma, beta, a, b, num_groups=c, eps=0.0)
    in0, _ = instance_norm_forward(x, a * np.sign(gamma), b, eps=0.0)
    assert np.max(np.abs(y0 - in0)) < 1e-13


def test_estbn_update_matches_the_official_rule_over_several_steps():
    """EstBN.forward: under no_grad, m = mean x, v = mean (x - μ̂_old)², μ̂ ← (1-r)μ̂ + r m, σ̂² ← (1-r)σ̂² + r v; then
    normalize with the updated estimates. Three steps of the layer against the transcription."""
    r, c, g = 0.3, 4, 2
    layer = nn.BatchChannelNorm(c, num_groups=g, estimate=True, moving_speed=r)
    p = params(c, g, 7)
    for name, value in zip(("gamma", "beta", "group_gamma", "group_beta"), p):
        layer.params[name] = value
    mu, var = np.zeros(c), np.ones(c)
    for step in range(3):
        x = rand((2, c, 5), 10 + step, loc=4.0 + step, scale=2.0)
        m = x.mean(axis=(0, 2))
        v = ((x - mu[None, :, None]) ** 2).mean(axis=(0, 2))
        mu, var = (1 - r) * mu + r * m, (1 - r) * var + r * v
        y = layer.forward(x)
        np.testing.assert_allclose(layer.buffers["running_mean"], mu, rtol=1e-13)
        np.testing.assert_allclose(layer.buffers["running_var"], var, rtol=1e-13)
        np.testing.assert_allclose(y, official_bcn(x, *p, g, stats=(mu, var)), rtol=1e-12, atol=1e-13)
    # eval uses the estimates, without moving them
    layer.eval()
    y = layer.forward(x + 1.0)
    np.testing.assert_allclose(layer.buffers["running_var"], var, rtol=1e-13)
    np.testing.assert_allclose(y, official_bcn(x + 1.0, *p, g, stats=(mu, var)), rtol=1e-12, atol=1e-13)


def test_estbn_backward_is_the_gradient_of_the_frozen_statistics_function():
    """With moving speed r > 0 the training forward depends on x through the estimates too; the backward ignores
    that (stop-gradient). It matches finite differences of the frozen function and misses the full one by O(r)."""
    c, g = 4, 2
    x = rand((2, c, 6), 20, loc=1.0, scale=2.0)
    dy = rand(x.shape, 21)
    p = params(c, g, 22)
    layer = nn.BatchChannelNorm(c, num_groups=g, estimate=True, moving_speed=0.5)
    for name, value in zip(("gamma", "beta", "group_gamma", "group_beta"), p):
        layer.params[name] = value
    start = {k: np.copy(v) for k, v in layer.buffers.items()}
    layer.forward(x)
    dx = layer.backward(dy)
    frozen = (layer.buffers["running_mean"].copy(), layer.buffers["running_var"].copy())

    def frozen_f(x):
        return batch_channel_norm_forward(x, *p, num_groups=g, stats=frozen)[0]

    report = check_function(frozen_f, {"x": x}, {"x": dx}, dy, methods=("central", "complex"))
    assert report.passed, "\n" + report.table()

    def full_f(x):
        mean, var = estbn_update(start["running_mean"], start["running_var"], x, moving_speed=0.5)
        return batch_channel_norm_forward(x, *p, num_groups=g, stats=(mean, var))[0]

    full = check_function(full_f, {"x": x}, {"x": dx}, dy)
    assert full.rows[0].norm_rel_err > 1e-2  # the stop-gradient is a real approximation at r = 0.5


def test_batch_statistics_running_stats_follow_pytorch():
    c = 6
    bcn, bn = nn.BatchChannelNorm(c, num_groups=3, momentum=0.2), nn.BatchNorm(c, momentum=0.2)
    for step in range(3):
        x = rand((4, c, 3), 30 + step, loc=2.0, scale=3.0)
        bcn.forward(x)
        bn.forward(x)
    for key in ("running_mean", "running_var", "num_batches_tracked"):
        np.testing.assert_allclose(bcn.buffers[key], bn.buffers[key], rtol=1e-14)
    bcn.eval()
    x = rand((2, c, 3), 40)
    stats = (bn.buffers["running_mean"], bn.buffers["running_var"])
    np.testing.assert_allclose(bcn.forward(x), official_bcn(x, np.ones(c), np.zeros(c), np.ones(3), np.zeros(3), 3,
                                                             stats=stats), rtol=1e-12, atol=1e-13)
    # without tracking, eval keeps using batch statistics
    untracked = nn.BatchChannelNorm(c, num_groups=3, track_running_stats=False).eval()
    np.testing.assert_allclose(untracked.forward(x), bcn.train().forward(x), rtol=1e-12, atol=1e-13)


def test_backward_composes_the_two_stages_exactly():
    """dgroup_gamma is the sum over a group of the tied per-channel GN gradient; all checked by finite differences."""
    x = rand((3, 6, 2, 3), 50, loc=5.0, scale=4.0)
    dy = rand(x.shape, 51)
    p = params(6, 3, 52)
    y, cache = batch_channel_norm_forward(x, *p, num_groups=3)
    grads = batch_channel_norm_backward(dy, cache)
    names = ("x", "gamma", "beta", "group_gamma", "group_beta")

    def f(x, gamma, beta, group_gamma, group_beta):
        return batch_channel_norm_forward(x, gamma, beta, group_gamma, group_beta, num_groups=3)[0]

    report = check_function(f, dict(zip(names, (x,) + p)), dict(zip(names, grads)), dy,
                            methods=("central", "complex"), max_elements=400)
    assert report.passed, "\n" + report.table()


def test_float32_and_no_mutation():
    x = rand((2, 4, 5), 60).astype(np.float32)
    p = tuple(a.astype(np.float32) for a in params(4, 2, 61))
    saved = [a.copy() for a in (x,) + p]
    y, cache = batch_channel_norm_forward(x, *p, num_groups=2)
    grads = batch_channel_norm_backward(np.ones_like(y), cache)
    assert y.dtype == np.float32 and all(gr.dtype == np.float32 for gr in grads)
    assert all(np.array_equal(a, b) for a, b in zip(saved, (x,) + p))
    rm, rv = np.zeros(4, np.float32), np.ones(4, np.float32)
    new_m, new_v = estbn_update(rm, rv, x, moving_speed=0.1)
    assert new_m.dtype == new_v.dtype == np.float32
    assert np.all(rm == 0) and np.all(rv == 1)
    y64, _ = batch_channel_norm_forward(x.astype(np.float64), *p, num_groups=2)
    assert norm_rel_error(y, y64) < 1e-5
    assert normref.BatchChannelNorm is nn.BatchChannelNorm


@pytest.mark.parametrize("call,err,match", [
    (lambda: batch_channel_norm_forward(np.ones((2, 6, 3)), num_groups=4), ValueError, "num_groups must divide"),
    (lambda: batch_channel_norm_forward(rand((2, 6, 3), 0), None, None, np.ones(6), num_groups=3), ValueError,
     r"group_gamma must have shape \(3,\)"),
    (lambda: batch_channel_norm_forward(rand((2, 6, 3), 0), np.ones(3), num_groups=3), ValueError, "gamma"),
    (lambda: batch_channel_norm_forward(rand((1, 6), 0), num_groups=3), ValueError, "more than 1 value"),
    (lambda: batch_channel_norm_forward(np.ones((2, 6, 3), int), num_groups=3), TypeError, "x must have a float"),
    (lambda: batch_channel_norm_forward(np.ones(6), num_groups=3), ValueError, "x must have"),
    (lambda: estbn_update(np.zeros(3), np.ones(3), rand((2, 3, 4), 0), moving_speed=1.5), ValueError,
     "moving_speed"),
    (lambda: estbn_update(np.zeros(4), np.ones(3), rand((2, 3, 4), 0), moving_speed=0.1), ValueError, "est_mean"),
    (lambda: nn.BatchChannelNorm(6, num_groups=4), ValueError, "num_groups must divide"),
    (lambda: nn.BatchChannelNorm(6, num_groups=3).forward(rand((2, 5, 3), 0)), ValueError, "num_channels=6"),
    (lambda: nn.BatchChannelNorm(6, num_groups=3, moving_speed=-0.1), ValueError, "moving_speed"),
])
def test_bad_input(call, err, match):
    with pytest.raises(err, match=match):
        call()

