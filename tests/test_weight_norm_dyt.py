"""WeightNorm (Salimans & Kingma) and DyT (Zhu et al.): definitions, gradients on every axis layout, the DyT
linear regime, layers, bad input."""

import numpy as np
import pytest

import normref
from normref import nn
from normref.ops.dyt import dyt_backward, dyt_forward
from normref.ops.weight_norm import weight_norm_backward, weight_norm_forward
from normref.testing.gradcheck import check_function


def rand(shape, seed, loc=0.0, scale=1.0):
    return np.random.default_rng(seed).normal(loc, scale, shape)


# --- WeightNorm ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape,dim", [((4, 3, 2, 2), 0), ((5, 6), 0), ((3, 4, 2), 1), ((3, 4, 2), -1),
                                       ((4, 3), None)])
def test_weight_norm_definition_and_gradient(shape, dim):
    v = rand(shape, 0)
    g_shape = () if dim is None else (shape[dim],)
    g = rand(g_shape, 1, loc=1.0)
    dw = rand(shape, 2)
    w, cache = weight_norm_forward(v, g, dim=dim)
    axes = tuple(range(len(shape))) if dim is None else tuple(i for i in range(len(shape)) if i != dim % len(shape))
    norms = np.sqrt((v * v).sum(axis=axes, keepdims=True))
    g_b = g if dim is None else g.reshape(tuple(shape[i] if i == dim % len(shape) else 1 for i in range(len(shape))))
    np.testing.assert_allclose(w, g_b * v / norms, rtol=1e-14)
    dv, dg = weight_norm_backward(dw, cache)
    assert dv.shape == v.shape and dg.shape == g_shape
    # the gradient for v has no component along v (per kept index): descent can only grow ‖v‖
    np.testing.assert_allclose((dv * v).sum(axis=axes), 0, atol=1e-13)
    report = check_function(lambda v, g: weight_norm_forward(v, g, dim=dim)[0], {"v": v, "g": g},
                            {"v": dv, "g": dg}, dw, methods=("central", "complex"))
    assert report.passed, "\n" + report.table()


def test_weight_norm_without_g_is_the_unit_direction():
    v = rand((3, 5), 3)
    w, cache = weight_norm_forward(v)
    np.testing.assert_allclose(np.linalg.norm(w, axis=1), 1.0)
    dv, dg = weight_norm_backward(rand((3, 5), 4), cache)
    assert dg is None


def test_weight_norm_layer_init_from_reproduces_the_weight_and_accumulates():
    v = rand((4, 3, 3), 5)
    layer = nn.WeightNorm(4).init_from(v)
    np.testing.assert_allclose(layer.forward(v), v, rtol=1e-14)  # PyTorch's g = ‖v‖ initialization
    dw = rand(v.shape, 6)
    dv = layer.backward(dw)
    layer.backward(dw)
    _, cache = weight_norm_forward(v, layer.params["g"])
    dv_ref, dg_ref = weight_norm_backward(dw, cache)
    np.testing.assert_allclose(dv, dv_ref)
    np.testing.assert_allclose(layer.grads["g"], 2 * dg_ref)
    assert normref.WeightNorm is nn.WeightNorm
    scalar = nn.WeightNorm(4, dim=None).init_from(v)
    assert scalar.params["g"].shape == () and np.isclose(scalar.params["g"], np.linalg.norm(v))


def test_weight_norm_float32_and_no_mutation():
    v = rand((3, 4), 7).astype(np.float32)
    g = np.array([1.0, 2.0, 3.0])
    v0, g0 = v.copy(), g.copy()
    w, cache = weight_norm_forward(v, g)
    dv, dg = weight_norm_backward(np.ones_like(w), cache)
    assert w.dtype == dv.dtype == dg.dtype == np.float32
    assert np.array_equal(v, v0) and np.array_equal(g, g0)


@pytest.mark.parametrize("call,err,match", [
    (lambda: weight_norm_forward(np.zeros((2, 3))), ValueError, "row of zeros"),
    (lambda: weight_norm_forward(rand((2, 3), 0), np.ones(3)), ValueError, r"g must have shape \(2,\)"),
    (lambda: weight_norm_forward(rand((2, 3), 0), dim=2), ValueError, "dim must be in"),
    (lambda: weight_norm_forward(rand((2, 3), 0), dim=0.5), TypeError, "dim must be an int"),
    (lambda: weight_norm_forward(np.ones((2, 3), int)), TypeError, "v must have a float"),
    (lambda: weight_norm_forward(np.array(1.0)), ValueError, "at least one axis"),
    (lambda: nn.WeightNorm(3).forward(rand((4, 2), 0)), ValueError, "num_outputs=3"),
    (lambda: nn.WeightNorm(3, affine=False).init_from(rand((3, 2), 0)), ValueError, "affine=True"),
])
def test_weight_norm_bad_input(call, err, match):
    with pytest.raises(err, match=match):
        call()


# --- DyT -------------------------------------------------------------------------------------------------------------

def test_dyt_matches_the_official_module_in_both_layouts():
    """DynamicTanh.forward: tanh(alpha·x), then weight·x + bias on the last dim, or weight[:, None, None] for NCHW."""
    alpha = np.array([0.7])
    gamma, beta = rand(5, 0, loc=1.0), rand(5, 1)
    x_last = rand((2, 3, 5), 2, scale=2.0)
    y, _ = dyt_forward(x_last, alpha, gamma, beta)
    np.testing.assert_allclose(y, np.tanh(0.7 * x_last) * gamma + beta, rtol=1e-14)
    x_nchw = rand((2, 5, 3, 4), 3, scale=2.0)
    y, _ = dyt_forward(x_nchw, alpha, gamma, beta, channels_last=False)
    np.testing.assert_allclose(y, np.tanh(0.7 * x_nchw) * gamma[:, None, None] + beta[:, None, None], rtol=1e-14)


@pytest.mark.parametrize("shape,channels_last", [((3, 4), True), ((2, 3, 4), True), ((2, 4, 3, 2), False)])
@pytest.mark.parametrize("affine", [True, False])
def test_dyt_gradient(shape, channels_last, affine):
    c = shape[-1] if channels_last else shape[1]
    x, dy = rand(shape, 4, scale=1.5), rand(shape, 5)
    alpha = np.array([0.8])
    gamma, beta = (rand(c, 6, loc=1.0), rand(c, 7)) if affine else (None, None)
    y, cache = dyt_forward(x, alpha, gamma, beta, channels_last=channels_last)
    dx, dalpha, dgamma, dbeta = dyt_backward(dy, cache)
    assert dalpha.shape == (1,)
    analytic = {"x": dx, "alpha": dalpha}
    if affine:
        analytic.update(gamma=dgamma, beta=dbeta)
    else:
        assert dgamma is None and dbeta is None

    def f(x, alpha, gamma, beta):
        return dyt_forward(x, alpha, gamma, beta, channels_last=channels_last)[0]

    report = check_function(f, {"x": x, "alpha": alpha, "gamma": gamma, "beta": beta}, analytic, dy,
                            methods=("central", "complex"))
    assert report.passed, "\n" + report.table()


@pytest.mark.parametrize("scale", [1e-1, 1e-2, 1e-3])
def test_dyt_is_nearly_linear_for_small_alpha_x(scale):
    """tanh z = z - z³/3 + O(z⁵): |y - (γαx + β)| ≤ |γ||αx|³/3, and the cubic term is really there (the bound is
    attained to within a few per cent at the largest |αx|)."""
    alpha = np.array([0.5])
    x = np.linspace(-scale, scale, 41)[None, :] * np.ones((2, 1))
    gamma, beta = np.linspace(0.5, 2.0, 41), np.linspace(-1, 1, 41)
    y, _ = dyt_forward(x, alpha, gamma, beta)
    err = np.abs(y - (gamma * 0.5 * x + beta))
    bound = np.abs(gamma) * np.abs(0.5 * x) ** 3 / 3
    assert np.all(err <= bound * (1 + 1e-6) + 1e-15)
    edge = np.abs(x) == scale
    if scale >= 1e-2:  # below that the cubic term is under the rounding of beta
        assert np.all(err[edge] >= 0.95 * bound[edge])


def test_dyt_layer_defaults_and_reexport():
    layer = nn.DyT(4)
    assert layer.params["alpha"].shape == (1,) and layer.params["alpha"][0] == 0.5
    assert np.array_equal(layer.params["gamma"], np.ones(4)) and np.array_equal(layer.params["beta"], np.zeros(4))
    assert "beta" not in nn.DyT(4, bias=False).params
    x = rand((3, 4), 8)
    assert np.array_equal(layer.train().forward(x), layer.eval().forward(x))
    assert normref.DyT is nn.DyT


def test_dyt_float32_and_no_mutation():
    x = rand((3, 4), 9).astype(np.float32)
    alpha, gamma, beta = np.array([0.5]), rand(4, 10), rand(4, 11)
    saved = [a.copy() for a in (x, alpha, gamma, beta)]
    y, cache = dyt_forward(x, alpha, gamma, beta)
    grads = dyt_backward(np.ones_like(y), cache)
    assert y.dtype == np.float32 and all(g.dtype == np.float32 for g in grads)
    assert all(np.array_equal(a, b) for a, b in zip(saved, (x, alpha, gamma, beta)))


@pytest.mark.parametrize("call,err,match", [
    (lambda: dyt_forward(rand((3, 4), 0), None), TypeError, "alpha must be an array"),
    (lambda: dyt_forward(rand((3, 4), 0), np.array(0.5)), ValueError, r"alpha must have shape \(1,\)"),
    (lambda: dyt_forward(rand((3, 4), 0), np.array([0.5]), np.ones(3)), ValueError, "gamma"),
    (lambda: dyt_forward(rand((3, 4), 0), np.array([0.5]), np.ones(3), channels_last=False), ValueError, "gamma"),
    (lambda: dyt_forward(rand(4, 0), np.array([0.5]), channels_last=False), ValueError, "at least 2 axes"),
    (lambda: dyt_forward(np.ones((3, 4), int), np.array([0.5])), TypeError, "x must have a float"),
    (lambda: nn.DyT(4).forward(rand((3, 5), 0)), ValueError, "normalized_shape=4"),
    (lambda: nn.DyT(4, alpha_init_value="big"), TypeError, "alpha_init_value"),
    (lambda: nn.DyT(4).backward(rand((3, 4), 0)), RuntimeError, "before forward"),
])
def test_dyt_bad_input(call, err, match):
    with pytest.raises(err, match=match):
        call()
