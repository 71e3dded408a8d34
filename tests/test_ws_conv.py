"""WSConv2d: a convolution with a Weight-Standardized kernel (its gradients are checked in tests/test_gradcheck.py
through normref/testing/specs/ws_conv.py; these are the properties that make it WS)."""

import numpy as np
import pytest

from normref.nn import Conv2d, Sequential, WSConv2d
from normref.nn.factory import make_norm
from normref.ops.conv import conv2d_forward
from normref.ops.weight_standardization import weight_standardization_forward
from normref.train import scale_invariant_weights


def _layer_and_input(seed=0, **kw):
    rng = np.random.default_rng(seed)
    layer = WSConv2d(3, 4, 3, padding=1, rng=seed, **kw)
    layer.params["weight"] = 2.0 + 3.0 * rng.standard_normal(layer.params["weight"].shape)
    return layer, rng.standard_normal((2, 3, 5, 5)), rng


def test_forward_is_the_convolution_with_the_standardized_kernel():
    layer, x, _ = _layer_and_input()
    w_hat, _ = weight_standardization_forward(layer.params["weight"])
    expected, _ = conv2d_forward(x, w_hat, layer.params["bias"], padding=1)
    np.testing.assert_allclose(layer(x), expected, rtol=1e-13, atol=1e-13)
    rows = w_hat.reshape(4, -1)
    np.testing.assert_allclose(rows.mean(axis=1), 0, atol=1e-12)
    np.testing.assert_allclose(rows.var(axis=1), 1, rtol=1e-4)


def test_output_ignores_a_per_channel_rescaling_and_shift_of_the_raw_weight():
    layer, x, rng = _layer_and_input(eps=0.0)
    y = layer(x)
    scale = rng.uniform(0.1, 10.0, (4, 1, 1, 1))
    shift = rng.standard_normal((4, 1, 1, 1))
    layer.params["weight"] = scale * layer.params["weight"] + shift
    np.testing.assert_allclose(layer(x), y, rtol=1e-11, atol=1e-11)


def test_raw_weight_gradient_is_projected_off_ones_and_the_weight():
    """Per output channel, dw is orthogonal to 1 and to the centred weight (the WS paper's projection)."""
    layer, x, rng = _layer_and_input(eps=0.0)
    layer.zero_grad()
    y = layer(x)
    layer.backward(rng.standard_normal(y.shape))
    dw = layer.grads["weight"].reshape(4, -1)
    w = layer.params["weight"].reshape(4, -1)
    centred = w - w.mean(axis=1, keepdims=True)
    scale = np.abs(dw).max()
    assert scale > 0
    np.testing.assert_allclose(dw.sum(axis=1) / scale, 0, atol=1e-12)
    np.testing.assert_allclose((dw * centred).sum(axis=1) / (scale * np.abs(centred).max()), 0, atol=1e-12)


def test_a_plain_conv_gradient_is_not_projected():
    """The property above is WS's, not the convolution's (the test can fail)."""
    rng = np.random.default_rng(0)
    conv = Conv2d(3, 4, 3, padding=1, rng=0)
    y = conv(rng.standard_normal((2, 3, 5, 5)))
    conv.backward(rng.standard_normal(y.shape))
    assert np.abs(conv.grads["weight"].reshape(4, -1).sum(axis=1)).max() > 1e-3


def test_from_conv_copies_geometry_and_parameters():
    conv = Conv2d(2, 3, (3, 2), stride=2, padding=(1, 0), bias=True, rng=4)
    ws = WSConv2d.from_conv(conv, eps_mode="outside", unbiased=True)
    assert (ws.kernel_size, ws.stride, ws.padding) == (conv.kernel_size, conv.stride, conv.padding)
    np.testing.assert_array_equal(ws.params["weight"], conv.params["weight"])
    np.testing.assert_array_equal(ws.params["bias"], conv.params["bias"])
    assert ws.params["weight"] is not conv.params["weight"]
    assert ws.ws.eps_mode == "outside" and ws.ws.unbiased
    with pytest.raises(TypeError, match="Conv2d"):
        WSConv2d.from_conv(object())


def test_it_counts_as_a_convolution_for_scale_invariance():
    net = Sequential(WSConv2d(1, 4, 3, padding=1, bias=False, rng=0), make_norm("bcn", 4))
    assert scale_invariant_weights(net) == ["0.weight"]
