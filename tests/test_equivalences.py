"""Identities between the normalizers, forward and backward, and the staged BatchNorm backward against the fused one.

Each identity is a different reshaping of the same standardization, so it checks the axis bookkeeping of one op
against another's (a wrong reduced set or a wrong parameter view breaks it):

* GroupNorm with G = 1 is LayerNorm over ``(C, *spatial)``; with G = C it is InstanceNorm; in general it is
  LayerNorm of ``x`` viewed as ``(N·G, -1)``;
* InstanceNorm of a batch is BatchNorm applied to each sample on its own;
* RMSNorm is LayerNorm without bias on rows that already have zero mean;
* spatial BatchNorm is BatchNorm of ``(N·H·W, C)`` (channels moved last);
* the staged, node-by-node BatchNorm backward equals the fused formula.

Float64, random ``dy`` and random ``gamma``/``beta`` (never ones and zeros, which can hide a wrong backward).
"""

import numpy as np
import pytest

from normref import nn, ops

RTOL, ATOL = 1e-12, 1e-12  # the two sides differ only by summation order


def close(a, b):
    np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def offset(rng, shape):
    return 5.0 * rng.standard_normal(shape) + 12.0


@pytest.mark.parametrize("shape", [(3, 4, 5), (2, 6, 3, 4), (2, 4)])
@pytest.mark.parametrize("affine", [False, True])
def test_group_norm_one_group_is_layer_norm_over_channels_and_space(rng, shape, affine):
    x, dy = offset(rng, shape), rng.standard_normal(shape)
    c, spatial = shape[1], shape[2:]
    gamma = rng.normal(1.0, 0.5, c) if affine else None
    beta = rng.normal(0.0, 0.5, c) if affine else None
    y_gn, cache_gn = ops.group_norm_forward(x, gamma, beta, num_groups=1)
    # LayerNorm's affine is elementwise over (C, *spatial); GroupNorm's per-channel one is its broadcast.
    per_element = (c,) + (1,) * len(spatial)
    ln_gamma = None if gamma is None else np.broadcast_to(gamma.reshape(per_element), shape[1:]).copy()
    ln_beta = None if beta is None else np.broadcast_to(beta.reshape(per_element), shape[1:]).copy()
    y_ln, cache_ln = ops.layer_norm_forward(x, ln_gamma, ln_beta, normalized_shape=shape[1:])
    close(y_gn, y_ln)
    dx_gn, dgamma_gn, dbeta_gn = ops.group_norm_backward(dy, cache_gn)
    dx_ln, dgamma_ln, dbeta_ln = ops.layer_norm_backward(dy, cache_ln)
    close(dx_gn, dx_ln)
    if affine:  # the per-channel gradient is the elementwise one summed over space
        spatial_axes = tuple(range(1, len(shape) - 1))
        close(dgamma_gn, dgamma_ln.sum(axis=spatial_axes))
        close(dbeta_gn, dbeta_ln.sum(axis=spatial_axes))
    else:
        assert dgamma_gn is dgamma_ln is dbeta_gn is dbeta_ln is None


@pytest.mark.parametrize("shape", [(3, 4, 5), (2, 3, 2, 3)])
@pytest.mark.parametrize("affine", [False, True])
def test_group_norm_one_channel_per_group_is_instance_norm(rng, shape, affine):
    x, dy = offset(rng, shape), rng.standard_normal(shape)
    c = shape[1]
    gamma = rng.normal(1.0, 0.5, c) if affine else None
    beta = rng.normal(0.0, 0.5, c) if affine else None
    y_gn, cache_gn = ops.group_norm_forward(x, gamma, beta, num_groups=c)
    y_in, cache_in = ops.instance_norm_forward(x, gamma, beta)
    close(y_gn, y_in)
    for a, b in zip(ops.group_norm_backward(dy, cache_gn), ops.instance_norm_backward(dy, cache_in)):
        if affine or a is not None or b is not None:
            close(a, b)


def test_group_norm_is_layer_norm_of_the_grouped_view(rng):
    """GN without affine = LN of x viewed as (N·G, C/G·H·W), the reshape CS231n hints at; forward and dx."""
    n, c, h, w, groups = 2, 6, 3, 2, 3
    x, dy = offset(rng, (n, c, h, w)), rng.standard_normal((n, c, h, w))
    y_gn, cache_gn = ops.group_norm_forward(x, num_groups=groups)
    rows = (n * groups, -1)
    y_ln, cache_ln = ops.layer_norm_forward(x.reshape(rows), normalized_shape=x.size // (n * groups))
    close(y_gn, y_ln.reshape(x.shape))
    dx_ln = ops.layer_norm_backward(dy.reshape(rows), cache_ln)[0]
    close(ops.group_norm_backward(dy, cache_gn)[0], dx_ln.reshape(x.shape))


def test_instance_norm_is_batch_norm_of_each_sample(rng):
    shape = (3, 4, 5, 2)
    x, dy = offset(rng, shape), rng.standard_normal(shape)
    gamma, beta = rng.normal(1.0, 0.5, 4), rng.normal(0.0, 0.5, 4)
    y_in, cache_in = ops.instance_norm_forward(x, gamma, beta)
    dx_in, dgamma_in, dbeta_in = ops.instance_norm_backward(dy, cache_in)
    dgamma_sum, dbeta_sum = np.zeros(4), np.zeros(4)
    for i in range(shape[0]):
        y_bn, cache_bn = ops.batch_norm_forward(x[i:i + 1], gamma, beta)
        close(y_in[i:i + 1], y_bn)
        dx_bn, dgamma_bn, dbeta_bn = ops.batch_norm_backward(dy[i:i + 1], cache_bn)
        close(dx_in[i:i + 1], dx_bn)
        dgamma_sum, dbeta_sum = dgamma_sum + dgamma_bn, dbeta_sum + dbeta_bn
    close(dgamma_in, dgamma_sum)
    close(dbeta_in, dbeta_sum)


@pytest.mark.parametrize("normalized_shape", [(7,), (3, 4)])
@pytest.mark.parametrize("affine", [False, True])
def test_rms_norm_is_layer_norm_without_bias_on_zero_mean_rows(rng, normalized_shape, affine):
    shape = (4,) + normalized_shape
    axes = tuple(range(1, len(shape)))
    x = offset(rng, shape)
    x = x - x.mean(axis=axes, keepdims=True)  # zero-mean rows: mean square = variance
    dy = rng.standard_normal(shape)
    gamma = rng.normal(1.0, 0.5, normalized_shape) if affine else None
    y_rms, cache_rms = ops.rms_norm_forward(x, gamma, normalized_shape=normalized_shape, eps=1e-5)
    y_ln, cache_ln = ops.layer_norm_forward(x, gamma, None, normalized_shape=normalized_shape, eps=1e-5)
    close(y_rms, y_ln)
    dx_rms, dgamma_rms = ops.rms_norm_backward(dy, cache_rms)
    dx_ln, dgamma_ln, dbeta_ln = ops.layer_norm_backward(dy, cache_ln)
    assert dbeta_ln is None
    # The two functions agree only on the zero-mean subspace, so their gradients agree there: LayerNorm's dx is
    # RMSNorm's with the row mean removed (the extra -mean(g)·rstd term), and the difference is not zero.
    close(dx_ln, dx_rms - dx_rms.mean(axis=axes, keepdims=True))
    assert np.abs(dx_rms.mean(axis=axes)).min() > 1e-6
    if affine:
        close(dgamma_rms, dgamma_ln)
    else:
        assert dgamma_rms is None and dgamma_ln is None


@pytest.mark.parametrize("shape", [(4, 3, 5), (2, 3, 4, 5), (2, 2, 3, 2, 3)])
def test_spatial_batch_norm_is_batch_norm_of_the_channels_last_matrix(rng, shape):
    """BN of (N, C, *spatial) = BN of (N·prod(spatial), C): forward, backward, and with given statistics."""
    c = shape[1]
    x, dy = offset(rng, shape), rng.standard_normal(shape)
    gamma, beta = rng.normal(1.0, 0.5, c), rng.normal(0.0, 0.5, c)
    last = (0,) + tuple(range(2, len(shape))) + (1,)  # channels last
    back = tuple(np.argsort(last))

    def as_matrix(a):
        return a.transpose(last).reshape(-1, c)

    def from_matrix(m):
        return m.reshape(tuple(shape[i] for i in last)).transpose(back)

    stats_options = [None, (rng.normal(12.0, 1.0, c), rng.uniform(10.0, 30.0, c))]
    for stats in stats_options:
        y, cache = ops.batch_norm_forward(x, gamma, beta, stats=stats)
        y_m, cache_m = ops.batch_norm_forward(as_matrix(x), gamma, beta, stats=stats)
        close(y, from_matrix(y_m))
        dx, dgamma, dbeta = ops.batch_norm_backward(dy, cache)
        dx_m, dgamma_m, dbeta_m = ops.batch_norm_backward(as_matrix(dy), cache_m)
        close(dx, from_matrix(dx_m))
        close(dgamma, dgamma_m)
        close(dbeta, dbeta_m)
    # The batch statistics fed to the running buffers agree too (same mean, variance and count m).
    for a, b in zip(ops.batch_norm_batch_stats(ops.batch_norm_forward(x)[1]),
                    ops.batch_norm_batch_stats(ops.batch_norm_forward(as_matrix(x))[1])):
        close(a, b)


def test_layers_agree_like_the_ops(rng):
    """The same identity through the stateful layers: GroupNorm(1, C) and LayerNorm((C, H, W)), with gradients."""
    shape = (2, 3, 4, 5)
    x, dy = offset(rng, shape), rng.standard_normal(shape)
    gn, ln = nn.GroupNorm(1, 3), nn.LayerNorm(shape[1:])
    gn.params["gamma"], gn.params["beta"] = rng.normal(1.0, 0.5, 3), rng.normal(0.0, 0.5, 3)
    ln.params["gamma"] = np.broadcast_to(gn.params["gamma"][:, None, None], shape[1:]).copy()
    ln.params["beta"] = np.broadcast_to(gn.params["beta"][:, None, None], shape[1:]).copy()
    close(gn(x), ln(x))
    close(gn.backward(dy), ln.backward(dy))
    close(gn.grads["gamma"], ln.grads["gamma"].sum(axis=(1, 2)))
    close(gn.grads["beta"], ln.grads["beta"].sum(axis=(1, 2)))


@pytest.mark.parametrize("shape", [(6, 3), (3, 2), (4, 3, 5), (2, 3, 4, 5), (2, 2, 3, 2, 3)])
def test_staged_backward_equals_fused(rng, shape):
    c = shape[1]
    x, dy = offset(rng, shape), rng.standard_normal(shape)
    gamma, beta = rng.normal(1.0, 0.5, c), rng.normal(0.0, 0.5, c)
    _, cache = ops.batch_norm_forward(x, gamma, beta)
    dx_fused = ops.batch_norm_backward(dy, cache)[0]
    dx_staged = ops.batch_norm_backward_staged(dy, cache)
    assert dx_staged.shape == x.shape
    # Not the same arithmetic (the staged graph sums (x-mu)·dxhat, then rescales), so they agree to rounding relative
    # to the size of the terms that cancel, rstd·|gamma·dy|.
    scale = np.abs(cache.rstd * cache.gamma_b * dy.reshape(cache.xhat.shape)).max()
    np.testing.assert_allclose(dx_staged, dx_fused, rtol=0, atol=1e-13 * scale)
    assert np.abs(dx_fused).max() > 1e-3 * scale  # dx is not itself rounding noise


def test_staged_backward_refuses_what_it_does_not_derive(rng):
    x = offset(rng, (4, 3))
    _, cache_no_gamma = ops.batch_norm_forward(x)
    with pytest.raises(ValueError, match="training forward with gamma"):
        ops.batch_norm_backward_staged(np.ones_like(x), cache_no_gamma)
    _, cache_eval = ops.batch_norm_forward(x, np.ones(3), None, stats=(np.zeros(3), np.ones(3)))
    with pytest.raises(ValueError, match="training forward with gamma"):
        ops.batch_norm_backward_staged(np.ones_like(x), cache_eval)
