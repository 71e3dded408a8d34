"""Norm Loss and Weight Compander: values against direct loops, gradients against finite differences.

Tolerances (float64, norm-relative error ``max|a−b|/max|b|``): central differences with ``h = 1e-6·scale`` leave
about 1e-9 of truncation and rounding error on these smooth, O(1)-conditioned functions, so
``CENTRAL_TOL = 1e-6`` (the project-wide value) fails any derivation mistake, which shows up at 1e-2 or worse. The
complex step has no cancellation and is exact up to rounding (~1e-15); ``COMPLEX_TOL = 1e-11``. Test points stay
away from the non-smooth points: zero rows (Norm Loss, "norm" form) and ``w = 0`` (the compander's sign).
"""

from __future__ import annotations

import numpy as np
import pytest

from normref.gradcheck import COMPLEX_TOL, CENTRAL_TOL, norm_rel_error, numerical_vjp
from normref.nn import Conv2d, Linear, Sequential, flatten_grads, flatten_params, set_flat_params
from normref.optim import SGD, Companded, NormLoss, compander_backward, compander_forward, norm_loss


def _weight(shape, seed):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=shape) * 0.7
    w[np.abs(w) < 0.05] += 0.1          # keep entries away from 0 (the compander's kink)
    return w


# -- Norm Loss -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("form", ["norm", "squared"])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("shape", [(4, 5), (3, 2, 2, 3)], ids=["linear", "conv"])
def test_norm_loss_value_and_gradient(form, reduction, shape):
    w = _weight(shape, 0)
    value, grad = norm_loss(w, form=form, reduction=reduction)
    expected = 0.0                                            # a direct loop over filters
    for row in w.reshape(shape[0], -1):
        n = np.sqrt(sum(float(v) ** 2 for v in row))
        expected += (1 - n) ** 2 if form == "norm" else (1 - n ** 2) ** 2
    expected /= shape[0] if reduction == "mean" else 1
    assert abs(float(value) - expected) <= 1e-14 * max(1.0, expected)

    def f(w):
        return norm_loss(w, form=form, reduction=reduction)[0]

    central = numerical_vjp(f, {"w": w}, "w", np.array(1.0))
    assert norm_rel_error(grad, central) < CENTRAL_TOL
    complex_step = numerical_vjp(f, {"w": w}, "w", np.array(1.0), method="complex")
    assert norm_rel_error(grad, complex_step) < COMPLEX_TOL


def test_norm_loss_minimizers_and_zero_rows():
    w = np.array([[0.6, 0.8, 0.0], [0.0, 0.0, 1.0]])          # unit rows: the oblique manifold
    for form in ("norm", "squared"):
        value, grad = norm_loss(w, form=form)
        assert float(value) == 0.0 and np.abs(grad).max() == 0.0
    value, grad = norm_loss(np.zeros((2, 3)))
    assert float(value) == 2.0 and np.all(grad == 0)          # the documented choice at the kink
    with pytest.raises(ValueError, match="ndim"):
        norm_loss(np.ones(3))
    with pytest.raises(ValueError, match="form"):
        norm_loss(w, form="cubic")


def test_norm_loss_on_a_model_accumulates_and_drives_norms_to_one():
    model = Sequential(Linear(6, 4, rng=0), Linear(4, 3, rng=1))
    model[0].params["weight"] = model[0].params["weight"] * 4.0
    reg = NormLoss(0.5, form="norm")
    value = reg(model)
    ref = 0.5 * sum(float(norm_loss(model[i].params["weight"])[0]) for i in (0, 1))
    assert value == pytest.approx(ref, rel=1e-14)
    assert reg.backward(model) == pytest.approx(ref, rel=1e-14)
    once = flatten_grads(model).copy()
    reg.backward(model)
    assert np.allclose(flatten_grads(model), 2 * once, rtol=1e-15, atol=0)      # accumulates like backward
    assert np.all(model[0].grads["bias"] == 0)                                    # biases are not penalized
    # the gradient of the whole penalty as a function of the flat parameter vector
    theta = flatten_params(model)
    model.zero_grad()
    reg.backward(model)
    analytic = flatten_grads(model)

    def total(theta):
        set_flat_params(model, theta)
        return np.asarray(reg(model))

    numeric = numerical_vjp(total, {"theta": theta}, "theta", np.array(1.0))
    set_flat_params(model, theta)
    assert norm_rel_error(analytic, numeric) < CENTRAL_TOL
    opt = SGD(model, lr=0.1)
    for _ in range(200):
        model.zero_grad()
        reg.backward(model)
        opt.step()
    norms = np.linalg.norm(model[0].params["weight"], axis=1)
    assert np.abs(norms - 1).max() < 1e-6


def test_norm_loss_conv_and_selection():
    conv = Conv2d(2, 3, 3, rng=0)
    reg = NormLoss(1.0, reduction="mean", params=["weight"])
    w = conv.params["weight"]
    assert reg(conv) == pytest.approx(float(norm_loss(w.reshape(3, -1), reduction="mean")[0]), rel=1e-14)
    with pytest.raises(ValueError, match="ndim >= 2"):
        NormLoss(1.0, params=["bias"])(conv)


# -- Weight Compander ------------------------------------------------------------------------------------------------
def test_compander_shape_properties():
    w = np.linspace(-3, 3, 601)
    f, _ = compander_forward(w, alpha=0.5, beta=0.1)
    assert np.allclose(f, -f[::-1], atol=1e-15)                                  # odd
    assert f[300] == 0.0 and np.all(np.diff(f) > 0)                             # f(0) = 0, increasing
    slope = np.diff(f) / np.diff(w)
    assert slope[:300].max() <= slope[299] + 1e-12 and slope[299] > 1.0        # steepest at 0: expands small w
    assert np.all(np.abs(f[np.abs(w) > 1.5]) < np.abs(w[np.abs(w) > 1.5]))       # compresses large w
    f32, _ = compander_forward(w.astype(np.float32))
    assert f32.dtype == np.float32
    with pytest.raises(ValueError, match="beta"):
        compander_forward(w, beta=0.0)


@pytest.mark.parametrize("alpha,beta", [(0.5, 0.1), (0.3, 0.02), (1.5, 1.0)])
def test_compander_gradients(alpha, beta):
    w = _weight((3, 4), 1)
    dy = np.random.default_rng(2).normal(size=w.shape)
    _, cache = compander_forward(w, alpha, beta)
    dw, dalpha, dbeta = compander_backward(dy, cache)
    inputs = {"w": w, "alpha": np.array(alpha), "beta": np.array(beta)}

    def f(w, alpha, beta):
        return compander_forward(w, alpha, beta)[0]

    for name, analytic in (("w", dw), ("alpha", dalpha), ("beta", dbeta)):
        central = numerical_vjp(f, inputs, name, dy)
        assert norm_rel_error(analytic, central) < CENTRAL_TOL, name
        complex_step = numerical_vjp(f, inputs, name, dy, method="complex")
        assert norm_rel_error(analytic, complex_step) < COMPLEX_TOL, name


def test_compander_slope_is_continuous_at_zero():
    """f is C¹ at 0: the one-sided slopes agree with f'(0) = α·β^(α−1)."""
    h = 1e-7
    f = lambda x: compander_forward(np.array([x]), 0.5, 0.1)[0][0]        # noqa: E731
    expected = 0.5 * 0.1 ** -0.5
    assert (f(h) - f(0.0)) / h == pytest.approx(expected, rel=1e-5)
    assert (f(0.0) - f(-h)) / h == pytest.approx(expected, rel=1e-5)
    _, cache = compander_forward(np.array([0.0]), 0.5, 0.1)
    assert compander_backward(np.array([1.0]), cache)[0][0] == pytest.approx(expected, rel=1e-14)


@pytest.mark.parametrize("learnable", [False, True])
def test_companded_layer_gradients(learnable):
    layer = Linear(4, 3, rng=0)
    layer.params["weight"] = _weight((3, 4), 3)
    net = Companded(layer, alpha=0.4, beta=0.05, learnable=learnable)
    names = [n for n, _ in net.named_parameters()]
    assert names == (["weight", "alpha", "beta", "layer.bias"] if learnable else ["weight", "layer.bias"])
    rng = np.random.default_rng(4)
    x, dy = rng.normal(size=(5, 4)), rng.normal(size=(5, 3))
    w_eff = compander_forward(net.params["weight"], 0.4, 0.05)[0]
    assert np.allclose(net(x), x @ w_eff.T + layer.params["bias"], rtol=1e-14, atol=1e-14)
    net.zero_grad()
    net(x)
    dx = net.backward(dy)
    analytic = flatten_grads(net)
    theta = flatten_params(net)

    def out(theta):
        set_flat_params(net, theta)
        return net(x)

    numeric = numerical_vjp(out, {"theta": theta}, "theta", dy)
    set_flat_params(net, theta)
    assert norm_rel_error(analytic, numeric) < CENTRAL_TOL
    numeric_x = numerical_vjp(lambda x: net(x), {"x": x}, "x", dy)
    assert norm_rel_error(dx, numeric_x) < CENTRAL_TOL
    assert "weight" not in layer.params and "weight" not in layer.grads      # the raw weight lives on the wrapper


def test_companded_trains_with_an_optimizer():
    net = Companded(Linear(3, 1, rng=0), alpha=0.5, beta=0.1)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 3))
    target = x @ np.array([0.5, -0.25, 0.1])
    opt = SGD(net, lr=0.05)
    for _ in range(300):
        net.zero_grad()
        r = net(x)[:, 0] - target
        net.backward((2 * r / len(r))[:, None])
        opt.step()
    assert np.mean(r ** 2) < 1e-6
    assert np.allclose(net.effective_weight()[0], [0.5, -0.25, 0.1], atol=1e-3)
