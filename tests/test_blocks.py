"""The building blocks against independent loop implementations, plus dtype, no-mutation, bad-input and numerics tests.

Gradients are checked through the specs (tests/test_gradcheck.py); here the *forwards* are checked against plain
loops written from the definitions, and the properties the docstrings claim are tested.
"""

import numpy as np
import pytest
from scipy import special, stats

from normref import nn
from normref.ops.activations import log_softmax, sigmoid, softmax
from normref.ops.attention import (causal_mask, multihead_attention_backward, multihead_attention_backward_staged,
                                   multihead_attention_forward)
from normref.ops.conv import col2im, conv2d_forward, im2col
from normref.ops.dropout import dropout_mask
from normref.ops.losses import cross_entropy_backward, cross_entropy_forward, mse_forward
from normref.ops.pooling import avg_pool2d_forward, max_pool2d_forward

RNG = np.random.default_rng(2024)


def loop_conv2d(x, w, b, stride, padding):
    """Direct definition: y[n,o,a,b] = sum_{c,i,j} w[o,c,i,j] xp[n,c,a*sh+i,b*sw+j] + b[o]."""
    (sh, sw), (ph, pw) = stride, padding
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    xp = np.zeros((n, c, h + 2 * ph, wd + 2 * pw))
    xp[:, :, ph:ph + h, pw:pw + wd] = x
    ho, wo = (h + 2 * ph - kh) // sh + 1, (wd + 2 * pw - kw) // sw + 1
    y = np.zeros((n, o, ho, wo))
    for a in range(ho):
        for bb in range(wo):
            patch = xp[:, :, a * sh:a * sh + kh, bb * sw:bb * sw + kw]  # (N, C, kh, kw)
            y[:, :, a, bb] = np.einsum("ncij,ocij->no", patch, w) + (0 if b is None else b)
    return y


def loop_pool(x, k, s, p, reduce, pad_value, count_include_pad=True):
    n, c, h, w = x.shape
    xp = np.full((n, c, h + 2 * p, w + 2 * p), pad_value)
    xp[:, :, p:p + h, p:p + w] = x
    real = np.zeros_like(xp)
    real[:, :, p:p + h, p:p + w] = 1
    ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    y = np.zeros((n, c, ho, wo))
    for a in range(ho):
        for b in range(wo):
            win = xp[:, :, a * s:a * s + k, b * s:b * s + k]
            if reduce == "max":
                y[:, :, a, b] = win.max(axis=(2, 3))
            else:
                count = k * k if count_include_pad else real[0, 0, a * s:a * s + k, b * s:b * s + k].sum()
                y[:, :, a, b] = np.where(np.isfinite(win), win, 0).sum(axis=(2, 3)) / count
    return y


@pytest.mark.parametrize("kernel,stride,padding", [((3, 3), (1, 1), (1, 1)), ((3, 2), (2, 1), (1, 0)),
                                                   ((2, 2), (2, 2), (0, 0)), ((1, 1), (1, 1), (0, 0))])
def test_conv2d_matches_the_definition(kernel, stride, padding):
    x = RNG.standard_normal((2, 3, 7, 6))
    w = RNG.standard_normal((4, 3) + kernel)
    b = RNG.standard_normal(4)
    y, _ = conv2d_forward(x, w, b, stride=stride, padding=padding)
    np.testing.assert_allclose(y, loop_conv2d(x, w, b, stride, padding), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kernel,stride,padding", [(3, 1, 1), ((3, 2), (2, 1), (1, 0)), (2, 2, 0), (3, 2, 2)])
def test_col2im_is_the_adjoint_of_im2col(kernel, stride, padding):
    """<im2col(x), c> = <x, col2im(c)> for random x and c: col2im is im2col's transpose."""
    x = RNG.standard_normal((2, 3, 6, 7))
    cols = im2col(x, kernel, stride, padding)
    c = RNG.standard_normal(cols.shape)
    lhs = np.sum(cols * c)
    rhs = np.sum(x * col2im(c, x.shape, kernel, stride, padding))
    assert abs(lhs - rhs) <= 1e-12 * abs(lhs)


def test_col2im_adds_overlaps():
    """With a 3x3 kernel, stride 1 and no padding on a 3x4 image, col2im(1) counts the windows covering each pixel."""
    cols = np.ones((1, 1, 3, 3, 1, 2))
    counts = col2im(cols, (1, 1, 3, 4), 3)[0, 0]
    assert counts.tolist() == [[1, 2, 2, 1]] * 3


@pytest.mark.parametrize("k,s,p", [(2, 2, 0), (3, 2, 1), (3, 1, 1), (2, 1, 0)])
def test_max_pool_matches_the_definition(k, s, p):
    x = RNG.standard_normal((2, 3, 6, 7))
    y, _ = max_pool2d_forward(x, kernel_size=k, stride=s, padding=p)
    np.testing.assert_array_equal(y, loop_pool(x, k, s, p, "max", -np.inf))


@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("k,s,p", [(2, 2, 0), (3, 2, 1), (3, 1, 1)])
def test_avg_pool_matches_the_definition(k, s, p, count_include_pad):
    x = RNG.standard_normal((2, 3, 6, 7))
    y, _ = avg_pool2d_forward(x, kernel_size=k, stride=s, padding=p, count_include_pad=count_include_pad)
    np.testing.assert_allclose(y, loop_pool(x, k, s, p, "avg", 0.0, count_include_pad), rtol=1e-13)


def test_max_pool_gradient_goes_to_the_winner_and_overlaps_add():
    layer = nn.MaxPool2d(3, stride=1)
    x = np.zeros((1, 1, 3, 4))
    x[0, 0, 1, 1] = 5.0  # the max of both overlapping windows
    layer(x)
    dx = layer.backward(np.array([[[[1.0, 10.0]]]]))
    expected = np.zeros((1, 1, 3, 4))
    expected[0, 0, 1, 1] = 11.0
    np.testing.assert_array_equal(dx, expected)


def test_gelu_exact_and_tanh_form():
    x = np.linspace(-6, 6, 101)
    np.testing.assert_allclose(nn.GELU()(x), x * stats.norm.cdf(x), rtol=1e-13, atol=1e-300)
    # the tanh form approximates the exact one to a few 1e-4 (Hendrycks & Gimpel 2016)
    assert np.max(np.abs(nn.GELU("tanh")(x) - nn.GELU()(x))) < 1e-3
    # far tail: erfc keeps relative precision where 1 + erf(x/sqrt2) rounds to 0
    assert nn.GELU()(np.array([-12.0]))[0] == pytest.approx(-12.0 * stats.norm.cdf(-12.0), rel=1e-12)


def test_sigmoid_is_stable_and_accurate():
    x = np.array([-1000.0, -40.0, 0.0, 40.0, 1000.0])
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        s = sigmoid(x)
    np.testing.assert_allclose(s, special.expit(x), rtol=1e-15)
    layer = nn.Sigmoid()
    layer(np.array([-40.0, 40.0]))
    d = layer.backward(np.ones(2))
    # sigma(x) sigma(-x) keeps relative precision at both ends (sigma(1 - sigma) would give 0 at +40)
    np.testing.assert_allclose(d, special.expit(40.0) * special.expit(-40.0), rtol=1e-13)


def test_silu_tanh_relu_values():
    x = np.array([-2.0, -0.5, 0.5, 3.0])
    np.testing.assert_allclose(nn.SiLU()(x), x * special.expit(x), rtol=1e-15)
    np.testing.assert_allclose(nn.Tanh()(x), np.tanh(x), rtol=1e-15)
    np.testing.assert_array_equal(nn.ReLU()(x), [0.0, 0.0, 0.5, 3.0])


def test_softmax_and_cross_entropy_are_stable_for_huge_logits():
    z = np.array([[1000.0, 999.0, -1000.0], [-1e4, -1e4 + 1, -1e4 - 2]])
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        p = softmax(z)
        loss, cache = cross_entropy_forward(z, np.array([1, 2]))
    shifted = z - z.max(axis=1, keepdims=True)
    np.testing.assert_allclose(p, np.exp(shifted) / np.exp(shifted).sum(1, keepdims=True), rtol=1e-15)
    expected = -np.mean([np.log(p[0, 1]), np.log(p[1, 2])])
    assert float(loss) == pytest.approx(expected, rel=1e-13)
    assert np.all(np.isfinite(log_softmax(z)))


def test_cross_entropy_gradient_rows_sum_to_zero_and_reductions():
    z = RNG.standard_normal((5, 4))
    t = np.array([0, 3, 1, 1, 2])
    per, _ = cross_entropy_forward(z, t, reduction="none")
    total, _ = cross_entropy_forward(z, t, reduction="sum")
    mean, cache = cross_entropy_forward(z, t)
    assert float(total) == pytest.approx(per.sum()) and float(mean) == pytest.approx(per.mean())
    (dz,) = cross_entropy_backward(1.0, cache)
    np.testing.assert_allclose(dz.sum(axis=1), 0, atol=1e-16)
    np.testing.assert_allclose(dz, (softmax(z) - np.eye(4)[t]) / 5, rtol=1e-13)


def test_mse_loss_module_interface():
    mse = nn.MSELoss()
    pred, target = np.array([1.0, 3.0]), np.array([0.0, 1.0])
    assert float(mse(pred, target)) == 2.5
    np.testing.assert_allclose(mse.backward(), [1.0, 2.0])
    np.testing.assert_allclose(mse.backward(2.0), [2.0, 4.0])
    assert mse_forward(pred, target, reduction="none")[0].tolist() == [1.0, 4.0]


def naive_attention(x, w_in, b_in, w_out, b_out, h, causal):
    n, t, e = x.shape
    d = e // h
    y = np.zeros_like(x)
    for s in range(n):
        heads = []
        for head in range(h):
            rows = lambda block: slice(block * e + head * d, block * e + (head + 1) * d)  # noqa: E731
            q = x[s] @ w_in[rows(0)].T + b_in[rows(0)]
            k = x[s] @ w_in[rows(1)].T + b_in[rows(1)]
            v = x[s] @ w_in[rows(2)].T + b_in[rows(2)]
            scores = q @ k.T / np.sqrt(d)
            if causal:
                scores = np.where(np.tri(t, dtype=bool), scores, -np.inf)
            a = np.exp(scores - scores.max(axis=1, keepdims=True))
            heads.append((a / a.sum(axis=1, keepdims=True)) @ v)
        y[s] = np.concatenate(heads, axis=1) @ w_out.T + b_out
    return y


@pytest.mark.parametrize("causal", [False, True])
def test_attention_matches_a_per_head_loop(causal):
    e, h = 6, 3
    x = RNG.standard_normal((2, 5, e))
    params = (RNG.standard_normal((3 * e, e)), RNG.standard_normal(3 * e), RNG.standard_normal((e, e)),
              RNG.standard_normal(e))
    y, _ = multihead_attention_forward(x, *params, num_heads=h, causal=causal)
    np.testing.assert_allclose(y, naive_attention(x, *params, h, causal), rtol=1e-12, atol=1e-12)


def test_causal_attention_ignores_the_future():
    attn = nn.MultiheadSelfAttention(4, 2, causal=True, rng=0)
    x = RNG.standard_normal((1, 6, 4))
    y = attn(x)
    x2 = x.copy()
    x2[0, 4:] += 10.0
    y2 = attn(x2)
    np.testing.assert_array_equal(y[0, :4], y2[0, :4])
    assert not np.allclose(y[0, 4:], y2[0, 4:])
    assert causal_mask(3).tolist() == [[True, False, False], [True, True, False], [True, True, True]]


@pytest.mark.parametrize("causal", [False, True])
def test_attention_staged_and_fused_backward_agree(causal):
    x = RNG.standard_normal((2, 4, 6))
    params = (RNG.standard_normal((18, 6)), RNG.standard_normal(18), RNG.standard_normal((6, 6)), None)
    _, cache = multihead_attention_forward(x, *params, num_heads=2, causal=causal)
    dy = RNG.standard_normal(x.shape)
    fused = multihead_attention_backward(dy, cache)
    staged = multihead_attention_backward_staged(dy, cache)
    assert fused[4] is None and staged[4] is None
    for a, b in zip(fused[:4], staged[:4]):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_embedding_scatter_adds_repeated_tokens():
    emb = nn.Embedding(5, 3, padding_idx=4, rng=0)
    assert not emb.params["weight"][4].any()
    idx = np.array([[1, 1, 4], [0, 1, 2]])
    y = emb(idx)
    np.testing.assert_array_equal(y, emb.params["weight"][idx])
    dy = RNG.standard_normal((2, 3, 3))
    assert emb.backward(dy) is None
    expected = np.zeros((5, 3))
    for (i, j), token in np.ndenumerate(idx):
        if token != 4:
            expected[token] += dy[i, j]
    np.testing.assert_allclose(emb.grads["weight"], expected, rtol=1e-15)


def test_dropout_is_seeded_replayable_and_unbiased():
    x = np.ones((200, 50))
    a, b = nn.Dropout(0.3, seed=7), nn.Dropout(0.3, seed=7)
    ya, yb = a(x), b(x)
    np.testing.assert_array_equal(ya, yb)  # same seed, same mask
    assert not np.array_equal(a(x), ya)  # the next step draws a new mask
    assert a.buffers["step"] == 2
    a.buffers["step"] = 0
    np.testing.assert_array_equal(a(x), ya)  # restoring the counter replays the mask
    kept = ya != 0
    assert abs(kept.mean() - 0.7) < 0.02
    assert set(np.unique(ya)) == {0.0, 1 / 0.7}
    np.testing.assert_array_equal(a.backward(x), ya)  # for a fixed mask the map is diagonal
    a.eval()
    np.testing.assert_array_equal(a(x), x)
    assert dropout_mask((3,), 0.0, 1, 0).all() and not dropout_mask((3,), 1.0, 1, 0).any()
    assert not nn.Dropout(1.0)(x).any()


FLOAT32_CASES = [
    (lambda: nn.Linear(4, 3, rng=0), (2, 4)),
    (lambda: nn.Conv2d(2, 3, 3, stride=2, padding=1, rng=0), (2, 2, 5, 5)),
    (lambda: nn.MaxPool2d(2), (1, 2, 4, 4)),
    (lambda: nn.AvgPool2d(3, 2, 1), (1, 2, 5, 5)),
    (lambda: nn.GlobalAvgPool(), (2, 3, 4, 4)),
    (lambda: nn.ReLU(), (3, 4)),
    (lambda: nn.GELU(), (3, 4)),
    (lambda: nn.GELU("tanh"), (3, 4)),
    (lambda: nn.SiLU(), (3, 4)),
    (lambda: nn.Tanh(), (3, 4)),
    (lambda: nn.Sigmoid(), (3, 4)),
    (lambda: nn.Dropout(0.5), (3, 4)),
    (lambda: nn.MultiheadSelfAttention(4, 2, causal=True, rng=0), (2, 3, 4)),
    (lambda: nn.Flatten(), (2, 3, 4)),
    (lambda: nn.Sequential(nn.Conv2d(2, 2, 3, padding=1, rng=0), nn.BatchNorm(2), nn.ReLU(), nn.Flatten()),
     (2, 2, 3, 3)),
]


@pytest.mark.parametrize("make,shape", FLOAT32_CASES, ids=[f"{type(m()).__name__}-{i}" for i, (m, _) in
                                                            enumerate(FLOAT32_CASES)])
def test_float32_stays_float32_and_nothing_is_mutated(make, shape):
    layer = make()  # float64 parameters
    x = RNG.standard_normal(shape).astype(np.float32)
    x_copy = x.copy()
    params = {name: v.copy() for name, v in layer.named_parameters()}
    y = layer(x)
    assert y.dtype == np.float32
    dy = RNG.standard_normal(y.shape).astype(np.float32)
    dy_copy = dy.copy()
    dx = layer.backward(dy)
    assert dx.dtype == np.float32 and dx.shape == x.shape
    np.testing.assert_array_equal(x, x_copy)
    np.testing.assert_array_equal(dy, dy_copy)
    for name, value in layer.named_parameters():
        np.testing.assert_array_equal(value, params[name])


def test_losses_and_embedding_keep_float32():
    ce = nn.CrossEntropyLoss()
    z = RNG.standard_normal((3, 4)).astype(np.float32)
    assert ce(z, np.array([0, 1, 2])).dtype == np.float32 and ce.backward().dtype == np.float32
    emb = nn.Embedding(4, 2, dtype=np.float32, rng=0)
    assert emb(np.array([1, 2])).dtype == np.float32


BAD_INPUTS = [
    (lambda: nn.Linear(4, 3)(np.ones((2, 5))), ValueError, "in_features=4"),
    (lambda: nn.Linear(4, 3)(np.ones((2, 4), dtype=int)), TypeError, "x must have a float"),
    (lambda: nn.Linear(0, 3), ValueError, "in_features"),
    (lambda: nn.Conv2d(3, 2, 3)(np.ones((1, 2, 5, 5))), ValueError, "in_channels=3"),
    (lambda: nn.Conv2d(2, 2, 3)(np.ones((2, 5, 5))), ValueError, "x must have 4 dimensions"),
    (lambda: nn.Conv2d(2, 2, 7)(np.ones((1, 2, 5, 5))), ValueError, "kernel_size"),
    (lambda: nn.Conv2d(2, 2, 3, stride=0), ValueError, "stride"),
    (lambda: nn.Conv2d(2, 2, (3, 3, 3)), TypeError, "kernel_size"),
    (lambda: nn.MaxPool2d(2, padding=2)(np.ones((1, 1, 4, 4))), ValueError, "padding"),
    (lambda: nn.GlobalAvgPool()(np.ones((2, 3))), ValueError, "x must have"),
    (lambda: nn.GELU("fast"), ValueError, "approximate"),
    (lambda: nn.Dropout(1.5), ValueError, "p must lie"),
    (lambda: nn.Dropout(0.5, seed=1.5), TypeError, "seed"),
    (lambda: nn.Embedding(5, 2)(np.array([0, 5])), ValueError, "indices must lie in"),
    (lambda: nn.Embedding(5, 2)(np.array([0.0, 1.0])), TypeError, "indices must be an integer"),
    (lambda: nn.MultiheadSelfAttention(6, 4), ValueError, "num_heads"),
    (lambda: nn.MultiheadSelfAttention(6, 2)(np.ones((2, 6))), ValueError, "x must have 3 dimensions"),
    (lambda: nn.CrossEntropyLoss()(np.ones((2, 3)), np.array([0, 3])), ValueError, "targets must lie in"),
    (lambda: nn.CrossEntropyLoss()(np.ones((2, 3)), np.array([0.0, 1.0])), TypeError, "targets must be an integer"),
    (lambda: nn.CrossEntropyLoss()(np.ones((2, 3)), np.array([0])), ValueError, "targets must have shape"),
    (lambda: nn.CrossEntropyLoss(reduction="avg"), ValueError, "reduction"),
    (lambda: nn.CrossEntropyLoss(np.ones(3)), TypeError, "pass class weights as weight="),
    (lambda: nn.CrossEntropyLoss(weight=np.ones(2))(np.ones((2, 3)), np.array([0, 1])), ValueError,
     r"weight must have shape \(C,\) = \(3,\)"),
    (lambda: nn.CrossEntropyLoss(weight=np.ones((1, 3))), ValueError, r"weight must have shape \(C,\)"),
    (lambda: nn.CrossEntropyLoss(weight=np.array([1.0, -0.5, 1.0])), ValueError, "weight must be finite and non-neg"),
    (lambda: nn.CrossEntropyLoss(weight=np.array([1, 2, 3])), TypeError, "weight must have a float"),
    (lambda: nn.CrossEntropyLoss(ignore_index=2.0), TypeError, "ignore_index must be an int"),
    (lambda: nn.CrossEntropyLoss(label_smoothing=1.5), ValueError, "label_smoothing must lie in"),
    (lambda: nn.CrossEntropyLoss(label_smoothing=-0.1), ValueError, "label_smoothing must lie in"),
    (lambda: nn.CrossEntropyLoss(label_smoothing="0.1"), TypeError, "label_smoothing must be a real"),
    (lambda: nn.CrossEntropyLoss()(np.ones((2, 3)), np.array([0, -1])), ValueError,
     r"targets must lie in \[0, 3\) .* or equal ignore_index=-100, got \[-1\]"),
    (lambda: nn.CrossEntropyLoss(ignore_index=-1)(np.ones((2, 3)), np.array([0, -2])), ValueError,
     "or equal ignore_index=-1"),
    (lambda: nn.CrossEntropyLoss()(np.ones((2, 3, 4)), np.array([0, 1])), ValueError,
     r"targets must have shape \(N, d1, ..., dk\) = \(2, 4\)"),
    (lambda: nn.CrossEntropyLoss(ignore_index=0)(np.ones((2, 3)), np.full((2, 3), 1 / 3)), ValueError,
     "ignore_index is not supported with class-probability targets"),
    (lambda: nn.CrossEntropyLoss()(np.ones((2, 3)), np.ones((2, 4))), TypeError, "or a floating-point array"),
    (lambda: nn.CrossEntropyLoss()(np.ones(3), np.array(0)), ValueError, "logits must have 2 or more dimensions"),
    (lambda: nn.MSELoss()(np.ones(3), np.ones(4)), ValueError, "target must have the shape of pred"),
    (lambda: nn.Linear(3, 2).backward(np.ones((1, 2))), RuntimeError, "before forward"),
]


@pytest.mark.parametrize("call,error,fragment", BAD_INPUTS, ids=[b[2] for b in BAD_INPUTS])
def test_bad_inputs_name_the_argument(call, error, fragment):
    with pytest.raises(error, match=fragment):
        call()


def test_bad_dy_is_rejected():
    layer = nn.Conv2d(2, 3, 3, rng=0)
    layer(np.ones((1, 2, 4, 4)))
    with pytest.raises(ValueError, match="dy must have the shape"):
        layer.backward(np.ones((1, 3, 3, 3)))
