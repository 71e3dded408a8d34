"""EvoNorm-B0 and -S0: the TF reference transcribed, both branches of B0's max, the v = 0 relation to GroupNorm,
running variance conventions, group-count rule, bad input."""

import numpy as np
import pytest

import normref
from normref import nn
from normref.ops.evonorm import (default_groups, evonorm_b0_forward, evonorm_backward, evonorm_s0_forward)
from normref.ops.group_norm import group_norm_forward
from normref.testing.gradcheck import check_function
from normref.testing.specs import get_spec


def rand(shape, seed, loc=0.0, scale=1.0):
    return np.random.default_rng(seed).normal(loc, scale, shape)


def tf_b0(x, gamma, beta, v, eps=1e-5, moving_var=None):
    """resnet_model.py evonorm (B0 branch), NCHW: x / max(batch_std, v·x + instance_std) · γ + β."""
    bc = (1, -1, 1, 1)
    if moving_var is None:
        var = x.var(axis=(0, 2, 3), keepdims=True)
    else:
        var = moving_var.reshape(bc)
    batch_std = np.sqrt(var + eps)
    instance_std = np.sqrt(x.var(axis=(2, 3), keepdims=True) + eps)
    den = np.maximum(batch_std, v.reshape(bc) * x + instance_std)
    return x / den * gamma.reshape(bc) + beta.reshape(bc)


def tf_s0(x, gamma, beta, v, groups, eps=1e-5):
    """resnet_model.py evonorm (S0 branch), NCHW: x·sigmoid(v·x) / group_std · γ + β."""
    n, c, h, w = x.shape
    bc = (1, -1, 1, 1)
    grouped = x.reshape(n, groups, c // groups, h, w)
    std = np.sqrt(grouped.var(axis=(2, 3, 4), keepdims=True) + eps)
    std = np.broadcast_to(std, grouped.shape).reshape(x.shape)
    return x * (1 / (1 + np.exp(-v.reshape(bc) * x))) / std * gamma.reshape(bc) + beta.reshape(bc)


def params(c, seed):
    rng = np.random.default_rng(seed)
    return rng.normal(1, 0.5, c), rng.normal(0, 1, c), rng.normal(0, 1, c)


def test_b0_matches_the_tf_reference_in_train_and_eval():
    x = rand((4, 3, 5, 6), 0)
    gamma, beta, v = params(3, 1)
    y, _ = evonorm_b0_forward(x, gamma, beta, v)
    assert np.max(np.abs(y - tf_b0(x, gamma, beta, v))) < 1e-13
    rv = rand(3, 2) ** 2 + 0.5
    y, _ = evonorm_b0_forward(x, gamma, beta, v, stats=(None, rv))
    assert np.max(np.abs(y - tf_b0(x, gamma, beta, v, moving_var=rv))) < 1e-13


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_s0_matches_the_tf_reference(groups):
    x = rand((2, 8, 3, 4), 3, loc=0.5, scale=2.0)
    gamma, beta, v = params(8, 4)
    y, _ = evonorm_s0_forward(x, gamma, beta, v, num_groups=groups)
    assert np.max(np.abs(y - tf_s0(x, gamma, beta, v, groups))) < 1e-13


def test_b0_spec_inputs_use_both_branches_away_from_ties():
    """The spec's inputs exercise both sides of the max, with a margin far larger than a probe's step."""
    spec = get_spec("EvoNormB0")
    for shape in spec.shapes:
        for seed in range(3):
            rng = np.random.default_rng(seed)
            layer = spec.build(shape, True, rng=rng)
            v = rng.standard_normal(shape[1])  # as the checker's random_params draws it
            x = spec.make_input(rng, shape)
            _, cache = evonorm_b0_forward(x, None, None, v)
            r = v.reshape((1, -1) + (1,) * (x.ndim - 2)) * x + np.sqrt(x.var(axis=tuple(range(2, x.ndim)),
                                                                               keepdims=True) + 1e-5)
            big_l = np.sqrt(x.var(axis=(0,) + tuple(range(2, x.ndim)), keepdims=True) + 1e-5)
            assert 0 < cache.mask_r.mean() < 1
            assert np.min(np.abs(r - big_l) / big_l) > 1e-4
            assert layer.buffers["num_batches_tracked"] == spec.warmup_steps


@pytest.mark.parametrize("branch", ["instance", "batch"])
def test_b0_gradient_on_each_branch(branch):
    """Mostly one branch at a time: on mostly positive x, v = 5 makes R = v x + s win, v = -5 makes L win."""
    x = rand((3, 2, 4, 4), 5) + 1.0
    v = np.array([5.0, 3.0]) if branch == "instance" else np.array([-5.0, -5.0])
    gamma, beta, _ = params(2, 6)
    dy = rand(x.shape, 7)
    _, cache = evonorm_b0_forward(x, gamma, beta, v)
    assert bool(cache.mask_r.mean() > 0.5) is (branch == "instance")
    dx, dgamma, dbeta, dv = evonorm_backward(dy, cache)

    def f(x, v):
        return evonorm_b0_forward(x, gamma, beta, v)[0]

    report = check_function(f, {"x": x, "v": v}, {"x": dx, "v": dv}, dy, methods=("central", "complex"))
    assert report.passed, "\n" + report.table()


def test_s0_with_v_zero_is_group_norm_without_centering():
    """v = 0: sigmoid = 1/2, S0 = (γ/2)·x/std_group + β, i.e. GroupNorm with the given mean 0 and x's own group
    variance; on input whose groups have zero mean, ordinary GroupNorm with γ/2."""
    n, c, groups = 2, 6, 3
    x = rand((n, c, 4, 3), 8, loc=1.5, scale=2.0)
    gamma, beta, _ = params(c, 9)
    y, _ = evonorm_s0_forward(x, gamma, beta, np.zeros(c), num_groups=groups)
    var_g = x.reshape(n, groups, -1).var(axis=2)
    gn, _ = group_norm_forward(x, gamma / 2, beta, num_groups=groups, stats=(np.zeros((n, groups)), var_g))
    assert np.max(np.abs(y - gn)) < 1e-13
    centered = (x.reshape(n, groups, -1) - x.reshape(n, groups, -1).mean(axis=2, keepdims=True)).reshape(x.shape)
    y0, _ = evonorm_s0_forward(centered, gamma, beta, np.zeros(c), num_groups=groups)
    gn0, _ = group_norm_forward(centered, gamma / 2, beta, num_groups=groups)
    assert np.max(np.abs(y0 - gn0)) < 1e-13
    assert np.max(np.abs(y - group_norm_forward(x, gamma / 2, beta, num_groups=groups)[0])) > 0.1  # x not centered


def test_s0_with_v_one_is_swish_over_group_std():
    x = rand((2, 4, 5), 10)
    y, _ = evonorm_s0_forward(x, None, None, np.ones(4), num_groups=2)
    std = np.sqrt(x.reshape(2, 2, -1).var(axis=2) + 1e-5)
    swish = x / (1 + np.exp(-x))
    np.testing.assert_allclose(y.reshape(2, 2, -1), swish.reshape(2, 2, -1) / std[..., None], rtol=1e-13)


@pytest.mark.parametrize("unbiased", [True, False])
def test_b0_running_variance_pytorch_momentum_equals_tf_decay(unbiased):
    """momentum 0.1 (new-batch weight) = TF decay 0.9: mv -= (mv - var)(1 - 0.9); unbiased stores var·m/(m-1)."""
    layer = nn.EvoNormB0(3, unbiased=unbiased)
    mv = np.ones(3)
    for step in range(3):
        x = rand((2, 3, 4), 20 + step, loc=1.0, scale=2.0 + step)
        var = x.var(axis=(0, 2))
        if unbiased:
            var = var * 8 / 7
        mv = mv - (mv - var) * (1 - 0.9)
        layer.forward(x)
    np.testing.assert_allclose(layer.buffers["running_var"], mv, rtol=1e-13)
    assert layer.buffers["num_batches_tracked"] == 3
    layer.eval()
    x = rand((2, 3, 4), 30)
    y = layer.forward(x)
    np.testing.assert_allclose(layer.buffers["running_var"], mv, rtol=1e-13)  # eval does not update
    ref, _ = evonorm_b0_forward(x, layer.params["gamma"], layer.params["beta"], layer.params["v"],
                                stats=(None, mv))
    np.testing.assert_allclose(y, ref, rtol=1e-13)


def test_group_count_rule():
    """TF: start at 32 and decrement until it divides C. The layer applies it only when num_groups is None."""
    assert [default_groups(c) for c in (64, 48, 20, 6, 96, 100)] == [32, 24, 20, 6, 32, 25]
    assert nn.EvoNormS0(48).num_groups == 24
    assert nn.EvoNormS0(48, num_groups=8).num_groups == 8
    with pytest.raises(ValueError, match="num_groups must divide"):
        nn.EvoNormS0(48, num_groups=32)


def test_without_activation_it_is_only_the_affine():
    x = rand((2, 3, 4), 40, loc=3.0)
    gamma, beta, _ = params(3, 41)
    for forward, hyper in ((evonorm_b0_forward, {}), (evonorm_s0_forward, {"num_groups": 3})):
        y, cache = forward(x, gamma, beta, None, **hyper)
        np.testing.assert_allclose(y, x * gamma[:, None] + beta[:, None])
        dx, dgamma, dbeta, dv = evonorm_backward(np.ones_like(x), cache)
        assert dv is None
        np.testing.assert_allclose(dx, np.broadcast_to(gamma[:, None], x.shape))
    assert "v" not in nn.EvoNormB0(3, apply_act=False).params
    assert "v" not in nn.EvoNormS0(3, apply_act=False).params


def test_s0_frozen_group_variance_gradient():
    x = rand((2, 4, 5), 50, scale=2.0)
    gamma, beta, v = params(4, 51)
    dy = rand(x.shape, 52)
    var = rand((2, 2), 53) ** 2 + 1.0
    _, cache = evonorm_s0_forward(x, gamma, beta, v, num_groups=2, stats=(None, var))
    dx, dgamma, dbeta, dv = evonorm_backward(dy, cache)

    def f(x, v):
        return evonorm_s0_forward(x, gamma, beta, v, num_groups=2, stats=(None, var))[0]

    report = check_function(f, {"x": x, "v": v}, {"x": dx, "v": dv}, dy, methods=("central", "complex"))
    assert report.passed, "\n" + report.table()


def test_float32_and_no_mutation():
    x = rand((2, 4, 3, 3), 60).astype(np.float32)
    p = params(4, 61)  # float64 parameters: cast to float32, not promoted to
    saved = [np.copy(a) for a in (x,) + p]
    for forward, hyper in ((evonorm_b0_forward, {}), (evonorm_s0_forward, {"num_groups": 2})):
        y, cache = forward(x, *p, **hyper)
        grads = evonorm_backward(np.ones_like(y), cache)
        assert y.dtype == np.float32 and all(g.dtype == np.float32 for g in grads)
    assert all(np.array_equal(a, b) for a, b in zip(saved, (x,) + p))
    layer = nn.EvoNormB0(4, dtype=np.float32)
    layer.forward(x)
    assert layer.buffers["running_var"].dtype == np.float32
    assert normref.EvoNormB0 is nn.EvoNormB0 and normref.EvoNormS0 is nn.EvoNormS0


@pytest.mark.parametrize("call,err,match", [
    (lambda: evonorm_b0_forward(np.ones((4, 3)), v=np.ones(3)), ValueError, "x must have 3 or 4 or 5"),
    (lambda: evonorm_b0_forward(rand((2, 3, 4), 0), v=np.ones(4)), ValueError, r"v must have shape \(3,\)"),
    (lambda: evonorm_b0_forward(rand((2, 3, 4), 0), np.ones(2), v=np.ones(3)), ValueError, "gamma"),
    (lambda: evonorm_b0_forward(rand((1, 3, 1), 0), v=np.ones(3)), ValueError, "more than 1 value"),
    (lambda: evonorm_b0_forward(rand((2, 3, 4), 0), v=np.ones(3), stats=(np.ones(3), np.ones(3))), ValueError,
     "stats"),
    (lambda: evonorm_b0_forward(rand((2, 3, 4), 0), v=np.ones(3), eps=-1), ValueError, "eps"),
    (lambda: evonorm_s0_forward(rand((2, 6, 4), 0), v=np.ones(6), num_groups=4), ValueError, "num_groups"),
    (lambda: evonorm_s0_forward(rand((2, 6, 4), 0), v=np.ones(6), num_groups=3, stats=(None, np.ones(3))),
     ValueError, r"stats\[1\]"),
    (lambda: evonorm_s0_forward(np.ones((2, 6, 4), int), num_groups=3), TypeError, "x must have a float"),
    (lambda: nn.EvoNormB0(3).forward(rand((2, 4, 5), 0)), ValueError, "num_features=3"),
    (lambda: nn.EvoNormB0(3, momentum=2.0), ValueError, "momentum"),
    (lambda: default_groups(0), ValueError, "num_channels"),
])
def test_bad_input(call, err, match):
    with pytest.raises(err, match=match):
        call()
