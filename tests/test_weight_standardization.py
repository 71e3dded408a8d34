"""Weight Standardization and Scaled WS: identities, reference transcriptions, every variant's gradient, the
projection identity, the layers, bad input."""

import numpy as np
import pytest

import normref
from normref import nn
from normref.ops.batch_norm import batch_norm_backward, batch_norm_forward
from normref.ops.layer_norm import layer_norm_backward, layer_norm_forward
from normref.ops.weight_standardization import (NF_GAMMA, WS_VARIANTS, scaled_weight_standardization_forward,
                                                weight_standardization_backward, weight_standardization_forward)
from normref.testing.gradcheck import check_function, norm_rel_error


def weight(shape, seed=0, loc=0.3, scale=2.0):
    return np.random.default_rng(seed).normal(loc, scale, shape)


@pytest.mark.parametrize("shape", [(4, 3, 3, 3), (6, 5), (3, 2, 7)])
def test_ws_is_layernorm_over_fan_in_and_bn_of_the_weight(shape):
    """Default WS ≡ LayerNorm over the fan-in (no affine) ≡ train-mode BatchNorm of w viewed as (1, O, fan_in)."""
    w = weight(shape)
    out, fan_in = shape[0], int(np.prod(shape[1:]))
    dy = weight(shape, seed=1)
    w_hat, cache = weight_standardization_forward(w)
    dw, dgain = weight_standardization_backward(dy, cache)
    assert dgain is None

    y_ln, c_ln = layer_norm_forward(w.reshape(out, fan_in), normalized_shape=fan_in, eps=1e-5)
    dx_ln, _, _ = layer_norm_backward(dy.reshape(out, fan_in), c_ln)
    y_bn, c_bn = batch_norm_forward(w.reshape(1, out, fan_in), eps=1e-5)
    dx_bn, _, _ = batch_norm_backward(dy.reshape(1, out, fan_in), c_bn)
    for y_ref, dx_ref in ((y_ln, dx_ln), (y_bn, dx_bn)):
        assert np.max(np.abs(w_hat - y_ref.reshape(shape))) < 1e-13
        assert norm_rel_error(dw, dx_ref.reshape(shape)) < 1e-13


def test_official_variant_matches_a_transcription_of_the_official_code():
    """pytorch-classification's WS: w - mean, then divide by torch.std (unbiased) + 1e-5, per output channel."""
    w = weight((5, 3, 3, 3), seed=2)
    rows = w.reshape(5, -1)
    centered = rows - rows.mean(axis=1, keepdims=True)
    expected = centered / (centered.std(axis=1, ddof=1, keepdims=True) + 1e-5)
    got, _ = weight_standardization_forward(w, **WS_VARIANTS["official"])
    assert np.max(np.abs(got.reshape(5, -1) - expected)) < 1e-13
    # and the BCN repository's variant: sqrt(var_unbiased + 1e-5)
    got, _ = weight_standardization_forward(w, **WS_VARIANTS["bcn_repo"])
    expected = centered / np.sqrt(rows.var(axis=1, ddof=1, keepdims=True) + 1e-5)
    assert np.max(np.abs(got.reshape(5, -1) - expected)) < 1e-13


def deepmind_standardize(w_hwio, gain, eps=1e-4):
    """nfnets/base.py WSConv2D.standardize_weight, transcribed (weight in HWIO, statistics over H, W, I)."""
    mean = w_hwio.mean(axis=(0, 1, 2), keepdims=True)
    var = w_hwio.var(axis=(0, 1, 2), keepdims=True)
    fan_in = np.prod(w_hwio.shape[:-1])
    scale = 1.0 / np.sqrt(np.maximum(var * fan_in, eps)) * gain
    return w_hwio * scale - mean * scale


@pytest.mark.parametrize("loc,scale", [(0.3, 2.0), (0.1, 1e-4)])  # floor inactive / active on every row
def test_scaled_ws_matches_deepmind_transcription(loc, scale):
    w = weight((6, 4, 3, 3), seed=3, loc=loc, scale=scale)  # OIHW
    gain = weight((6,), seed=4, loc=1.0, scale=0.5)
    expected = deepmind_standardize(w.transpose(2, 3, 1, 0), gain).transpose(3, 2, 0, 1)
    got, cache = scaled_weight_standardization_forward(w, gain)
    assert np.max(np.abs(got - expected)) < 1e-12 * np.max(np.abs(expected))
    floor_active = bool(np.all(cache.k == 0))
    assert floor_active is (scale < 1e-3)


def test_scaled_ws_timm_form_is_bn_of_the_weight_with_folded_gain():
    """timm ScaledStdConv2d: batch_norm(w as (1, O, fan_in), weight = gain·gamma/sqrt(fan_in), eps)."""
    w = weight((5, 3, 2, 2), seed=5)
    gain = weight((5,), seed=6, loc=1.0)
    gamma = NF_GAMMA["silu"]
    got, _ = scaled_weight_standardization_forward(w, gain, eps_mode="inside", eps=1e-6, gamma=gamma)
    ref, _ = batch_norm_forward(w.reshape(1, 5, -1), gain * gamma / np.sqrt(12), eps=1e-6)
    assert np.max(np.abs(got - ref.reshape(w.shape))) < 1e-13
    # each row has norm |gain·gamma| (up to eps), the point of the fan-in scaling
    norms = np.linalg.norm(got.reshape(5, -1), axis=1)
    assert np.allclose(norms, np.abs(gain) * gamma, rtol=1e-6)


VARIANTS = [
    ("ws", dict(unbiased=False, eps_mode="inside", eps=1e-5)),
    ("ws", dict(unbiased=True, eps_mode="inside", eps=1e-5)),
    ("ws", dict(unbiased=False, eps_mode="outside", eps=1e-5)),
    ("ws", dict(unbiased=True, eps_mode="outside", eps=1e-5)),
    ("ws", dict(unbiased=False, eps_mode="floor", eps=0.5)),  # eps = 0.5: some rows above the floor, some on it
    ("sws", dict(eps_mode="floor", eps=1e-4, gamma=NF_GAMMA["relu"])),
    ("sws", dict(eps_mode="floor", eps=2.0)),  # the floor active on some rows
    ("sws", dict(eps_mode="inside", eps=1e-6)),
    ("sws", dict(eps_mode="outside", eps=1e-3, unbiased=True)),
]


@pytest.mark.parametrize("kind,hyper", VARIANTS, ids=[f"{k}-{h}" for k, h in VARIANTS])
@pytest.mark.parametrize("with_gain", [True, False])
def test_every_variant_gradient_against_central_and_complex_step(kind, hyper, with_gain):
    forward = weight_standardization_forward if kind == "ws" else scaled_weight_standardization_forward
    # rows of very different spread, so that a floor of moderate size is active on some rows only
    w = weight((5, 2, 3), seed=7) * np.array([0.1, 0.3, 1.0, 3.0, 0.05])[:, None, None]
    gain = weight((5,), seed=8, loc=1.0) if with_gain else None
    dy = weight(w.shape, seed=9)
    y, cache = forward(w, gain, **hyper)
    dw, dgain = weight_standardization_backward(dy, cache)
    if hyper["eps_mode"] == "floor":
        active = (cache.k == 0).ravel()
        assert active.any() or hyper["eps"] < 1e-3
        # keep the probes away from the floor's kink
        rows_nv = (w.reshape(5, -1).var(axis=1) * (6 if kind == "sws" else 1))
        assert np.min(np.abs(rows_nv - hyper["eps"])) > 1e-3 * hyper["eps"]

    def f(w, gain):
        return forward(w, gain, **hyper)[0]

    analytic = {"w": dw} if gain is None else {"w": dw, "gain": dgain}
    report = check_function(f, {"w": w, "gain": gain}, analytic, dy, methods=("central", "complex"))
    assert report.passed, "\n" + report.table()


def test_floor_active_gradient_is_centered_and_constant_scaled():
    """On the floor D = sqrt(eps) is constant: dw = (g - mean g)/sqrt(eps) (normalizers.md §5)."""
    w = weight((3, 8), seed=10, scale=1e-4)
    dy = weight((3, 8), seed=11)
    _, cache = scaled_weight_standardization_forward(w, eps_mode="floor", eps=1e-4)
    dw, _ = weight_standardization_backward(dy, cache)
    expected = (dy - dy.mean(axis=1, keepdims=True)) / np.sqrt(1e-4)
    assert np.max(np.abs(dw - expected)) < 1e-12 * np.max(np.abs(expected))


def test_projection_identity():
    """eps = 0: dw ⊥ 1 and dw ⊥ ŵ per row, and ‖dw‖² = (‖dŵ‖² - <1,dŵ>²/I - <ŵ,dŵ>²/I)/σ² (landscape.md §8.2)."""
    w = weight((6, 4, 3, 3), seed=12)
    dy = weight(w.shape, seed=13)
    w_hat, cache = weight_standardization_forward(w, eps=0.0)
    dw, _ = weight_standardization_backward(dy, cache)
    rows_w, rows_hat, rows_g, rows_dw = (a.reshape(6, -1) for a in (w, w_hat, dy, dw))
    fan_in = rows_w.shape[1]
    sigma = rows_w.std(axis=1)
    scale = np.abs(rows_dw).max()
    assert np.max(np.abs(rows_dw.sum(axis=1))) < 1e-12 * scale * fan_in
    assert np.max(np.abs((rows_dw * rows_hat).sum(axis=1))) < 1e-12 * scale * fan_in
    lhs = (rows_dw**2).sum(axis=1)
    rhs = ((rows_g**2).sum(axis=1) - rows_g.sum(axis=1) ** 2 / fan_in
           - (rows_g * rows_hat).sum(axis=1) ** 2 / fan_in) / sigma**2
    np.testing.assert_allclose(lhs, rhs, rtol=1e-12)
    # the projection only removes: the gradient is never longer than dŵ/σ
    assert np.all(lhs <= (rows_g**2).sum(axis=1) / sigma**2)


def test_given_stats_freeze_the_statistics():
    w = weight((4, 6), seed=14)
    rows = w.reshape(4, -1)
    stats = (rows.mean(axis=1) + 0.1, rows.var(axis=1) * 1.5)
    dy = weight(w.shape, seed=15)
    y, cache = weight_standardization_forward(w, stats=stats)
    dw, _ = weight_standardization_backward(dy, cache)
    np.testing.assert_allclose(y, (rows - stats[0][:, None]) / np.sqrt(stats[1][:, None] + 1e-5), rtol=1e-13)
    np.testing.assert_allclose(dw, dy / np.sqrt(stats[1][:, None] + 1e-5), rtol=1e-13)


def test_layers_accumulate_and_compose_with_a_linear_map():
    """A dense layer y = ŵ x that owns w: dw through the WS layer matches finite differences of the whole chain."""
    rng = np.random.default_rng(16)
    w, x, dy = rng.normal(size=(4, 6)), rng.normal(size=(6, 5)), rng.normal(size=(4, 5))
    ws = nn.ScaledWeightStandardization(4, gamma=NF_GAMMA["relu"])
    ws.params["gain"] = rng.normal(1.0, 0.3, 4)

    def chain(w, gain):
        ws.params["gain"] = gain
        return ws.forward(w) @ x

    gain0 = ws.params["gain"].copy()
    chain(w, gain0)
    ws.zero_grad()
    dw = ws.backward(dy @ x.T)
    dw2 = ws.backward(dy @ x.T)
    np.testing.assert_allclose(dw2, dw)
    dgain = ws.grads["gain"] / 2  # accumulated twice
    report = check_function(chain, {"w": w, "gain": gain0}, {"w": dw, "gain": dgain}, dy,
                            methods=("central", "complex"))
    assert report.passed, "\n" + report.table()


def test_layers_train_equals_eval_and_reexported():
    assert normref.WeightStandardization is nn.WeightStandardization
    assert normref.ScaledWeightStandardization is nn.ScaledWeightStandardization
    w = weight((3, 4, 2, 2), seed=17)
    for layer in (nn.WeightStandardization(3), nn.ScaledWeightStandardization(3)):
        y_train = layer.train().forward(w)
        y_eval = layer.eval().forward(w)
        assert np.array_equal(y_train, y_eval)


def test_float32_stays_float32_and_nothing_is_mutated():
    w = weight((4, 3, 3, 3), seed=18).astype(np.float32)
    gain = np.linspace(0.5, 2.0, 4)  # float64 gain: cast to the weight's dtype, not promoted to
    w0, gain0 = w.copy(), gain.copy()
    for forward, hyper in ((weight_standardization_forward, {}),
                           (weight_standardization_forward, WS_VARIANTS["official"]),
                           (scaled_weight_standardization_forward, {}),
                           (scaled_weight_standardization_forward, {"eps_mode": "outside"})):
        y, cache = forward(w, gain, **hyper)
        dw, dgain = weight_standardization_backward(np.ones_like(y), cache)
        assert y.dtype == dw.dtype == dgain.dtype == np.float32
    assert np.array_equal(w, w0) and np.array_equal(gain, gain0)
    y64, _ = weight_standardization_forward(w.astype(np.float64))
    assert np.max(np.abs(weight_standardization_forward(w)[0] - y64)) < 1e-5


@pytest.mark.parametrize("call,err,match", [
    (lambda: weight_standardization_forward(np.ones((3, 4), dtype=int)), TypeError, "w must have a float"),
    (lambda: weight_standardization_forward(np.ones(5)), ValueError, "w must have 2 or 3 or 4 or 5 dimensions"),
    (lambda: weight_standardization_forward(np.ones((4, 1, 1, 1))), ValueError, "fan-in of at least 2"),
    (lambda: weight_standardization_forward(np.ones((4, 3)), np.ones(3)), ValueError, "gain must have shape"),
    (lambda: weight_standardization_forward(np.ones((4, 3)), eps=-1.0), ValueError, "eps must be"),
    (lambda: weight_standardization_forward(np.ones((4, 3)), eps_mode="middle"), ValueError, "eps_mode"),
    (lambda: scaled_weight_standardization_forward(np.ones((4, 3)), gamma="relu"), TypeError, "gamma"),
    (lambda: weight_standardization_forward(np.ones((4, 3)), stats=(np.ones(3), np.ones(3))), ValueError, "stats"),
    (lambda: nn.WeightStandardization(3).forward(np.ones((4, 3))), ValueError, "out_channels=3"),
    (lambda: nn.WeightStandardization(0), ValueError, "out_channels"),
    (lambda: nn.ScaledWeightStandardization(3, eps_mode="x"), ValueError, "eps_mode"),
    (lambda: nn.WeightStandardization(3).backward(np.ones((3, 4))), RuntimeError, "before forward"),
])
def test_bad_input(call, err, match):
    with pytest.raises(err, match=match):
        call()


def test_backward_rejects_wrong_dy_shape():
    _, cache = weight_standardization_forward(weight((3, 4)))
    with pytest.raises(ValueError, match="dy must have the shape"):
        weight_standardization_backward(np.ones((4, 3)), cache)


def test_relu_gamma_constant_is_the_relu_variance_correction():
    """NF_GAMMA['relu'] ≈ Var(relu(z))^-1/2 = (½(1 - 1/π))^-1/2 for z ~ N(0,1); DeepMind's empirical value differs
    from the analytic one by 6e-4 (the 4th significant digit)."""
    analytic = (0.5 * (1 - 1 / np.pi)) ** -0.5
    assert abs(analytic - 1.7128585504) < 1e-9
    assert 1e-4 < NF_GAMMA["relu"] - analytic < 2e-3


def test_scaled_ws_preserves_signal_through_a_deep_relu_stack():
    """NF-ResNet signal propagation: with scaled WS and the activation scaled by gamma_relu (DeepMind's placement),
    pre-activation variance stays ≈ 1 at depth 30; without gamma it shrinks by Var(relu(z)) ≈ 0.34 per layer."""
    rng = np.random.default_rng(19)
    width, depth = 128, 30
    x0 = rng.standard_normal((256, width))
    ws = nn.ScaledWeightStandardization(width, gain=False)
    final = {}
    for gamma in (NF_GAMMA["relu"], 1.0):
        h = x0
        for _ in range(depth):
            w_hat = ws.forward(rng.normal(0.5, 3.0, (width, width)))  # raw weights with a mean and a large scale
            z = h @ w_hat.T
            h = gamma * np.maximum(z, 0.0)
        final[gamma] = z.var()
    assert 0.7 < final[NF_GAMMA["relu"]] < 1.5
    assert final[1.0] < 1e-10
