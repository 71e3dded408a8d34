"""The model zoo (normref.models): whole-model gradients, the flat-parameter view, structure, and short training runs.

Gradient checks here complement the specs in normref/testing/specs/models.py (which `tests/test_gradcheck.py` and
`normref check` run at tiny sizes): they check the gradient of a real loss (softmax cross-entropy against random
targets) with respect to the flat parameter vector theta, the view landscapes and Hessians use, along random unit
directions v:

    complex step   Im L(theta + i h v) / h,           h = 1e-20   (no cancellation: exact up to rounding)
    central        (L(theta + h v) - L(theta - h v)) / 2h,   h = 1e-5

against <flatten_grads(model), v>. Errors are norm-relative, max|a - b| / max|b| over the directions.
Tolerances: the complex step evaluates the same floating-point operations as the forward, so it agrees with an exact
backward to rounding, observed 1e-16..2e-15; 1e-10 leaves four decades of margin and still fails a 1 % error in any
single layer's backward by eight decades (tested below). Central differences with h = 1e-5 on a unit direction leave
O(h^2 |L'''|) truncation plus O(eps |L| / h) rounding, about 1e-10 here; 1e-6 as in the checker's default.
"""

import copy

import numpy as np
import pytest

from normref.data import make_blobs, make_shapes, make_token_task
from normref.models import (MODEL_NAMES, ZeroPadShortcut, build_mlp, build_model, build_resnet,
                            build_transformer, build_vgg, sinusoidal_table)
from normref.nn import NORM_NAMES, CrossEntropyLoss, flatten_grads, flatten_params, num_params, set_flat_params
from normref.optim import SGD, Adam
from normref.testing.gradcheck import check_layer, norm_rel_error
from normref.train import train

COMPLEX_TOL = 1e-10
CENTRAL_TOL = 1e-6


# -- helpers --------------------------------------------------------------------------------------------------------
def perturb_affine(model, seed=0):
    """gamma = 1 + 0.3 N(0,1), beta = 0.3 N(0,1) (and DyT's alpha, EvoNorm's v likewise around their init), so unit
    scales and zero shifts cannot hide a wrong backward; the other weights keep their initialization."""
    rng = np.random.default_rng(seed)
    for module in model.modules():
        for name, value in module.params.items():
            if name in ("gamma", "alpha", "v"):
                module.params[name] = value + 0.3 * rng.standard_normal(value.shape)
            elif name == "beta":
                module.params[name] = 0.3 * rng.standard_normal(value.shape)
    return model


def flat_directional_check(model, x, y, *, n_directions=3, seed=0):
    """``(analytic, complex, central)`` directional derivatives of the mean cross-entropy along random unit
    directions of the flat parameter vector. Buffers (running statistics, counters) are restored before every
    forward, and parameters and buffers are left as they were."""
    loss = CrossEntropyLoss()
    theta = flatten_params(model)
    # set_flat_params keeps a complex parameter complex even for a real vector: put the original arrays back
    saved = {m: (dict(m.params), copy.deepcopy(m.buffers)) for m in model.modules()}

    def restore(params=False):
        for m, (p, b) in saved.items():
            m.buffers = copy.deepcopy(b)
            if params:
                m.params = dict(p)

    def loss_at(vector):
        set_flat_params(model, vector)
        restore()
        return loss.forward(model.forward(x), y)

    try:
        loss_at(theta)
        model.zero_grad()
        model.backward(loss.backward())
        grad = flatten_grads(model)
        rng = np.random.default_rng(seed)
        dirs = [v / np.linalg.norm(v) for v in rng.standard_normal((n_directions, theta.size))]
        analytic = np.array([grad @ v for v in dirs])
        h = 1e-20
        complex_step = np.array([np.imag(loss_at(theta + 1j * h * v)) / h for v in dirs])
        h = 1e-5
        central = np.array([(np.real(loss_at(theta + h * v)) - np.real(loss_at(theta - h * v))) / (2 * h)
                            for v in dirs])
    finally:
        restore(params=True)
    return analytic, complex_step, central


def _tokens(b=4, t=6, vocab=11, seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, vocab, size=(b, t))
    tokens[0, t // 2:] = 0  # padding at the end of one sequence
    return tokens


# one representative case per model family and normalizer kind; inputs and random targets
FLAT_CASES = {
    "mlp-tanh-batch": (lambda: build_mlp(5, 3, (8, 6), "batch", activation="tanh"), (8, 5)),
    "mlp-tanh-layer": (lambda: build_mlp(5, 3, (8, 6), "layer", activation="tanh"), (8, 5)),
    "mlp-tanh-none": (lambda: build_mlp(5, 3, (8, 6), None, activation="tanh"), (8, 5)),
    "vgg-batch": (lambda: build_vgg(2, 3, 4, widths=(4, 6), norm="batch"), (4, 2, 4, 4)),
    "vgg-group": (lambda: build_vgg(2, 3, 4, widths=(8,), norm="group"), (4, 2, 4, 4)),
    "vgg-none": (lambda: build_vgg(2, 3, 4, widths=(4,), norm=None), (4, 2, 4, 4)),
    "resnet-batch": (lambda: build_resnet(2, 3, widths=(4, 8), norm="batch"), (4, 2, 4, 4)),
    "resnet-batch-noskip": (lambda: build_resnet(2, 3, widths=(4, 8), norm="batch", skip=False), (4, 2, 4, 4)),
    "resnet-layer": (lambda: build_resnet(2, 3, widths=(4, 8), norm="layer"), (4, 2, 4, 4)),
    "resnet-none": (lambda: build_resnet(2, 3, widths=(4, 8), norm=None), (4, 2, 4, 4)),
}
TRANSFORMER_NORMS = ["layer", "rms", "batch", "power", "unified", "dyt"]
for _norm in TRANSFORMER_NORMS:
    FLAT_CASES[f"transformer-{_norm}"] = (
        lambda n=_norm: build_transformer(11, 3, 6, norm=n, d_model=8, num_layers=2, pad_id=0), None)


def _case_input(shape, seed=1):
    if shape is None:
        return _tokens()
    return np.random.default_rng(seed).standard_normal(shape)


# -- whole-model gradients through the flat-parameter view -----------------------------------------------------------
@pytest.mark.parametrize("case", list(FLAT_CASES))
def test_flat_gradient_matches_complex_step_and_central_differences(case):
    build, shape = FLAT_CASES[case]
    model = perturb_affine(build())
    x = _case_input(shape)
    y = np.random.default_rng(2).integers(0, 3, size=len(x))
    analytic, complex_step, central = flat_directional_check(model, x, y)
    # ReLU and max-pool (VGG, ResNet) are piecewise analytic and branch on the real part: the complex step
    # differentiates the active piece, exact unless a pre-activation sits exactly on a kink (probability zero)
    assert norm_rel_error(analytic, complex_step) < COMPLEX_TOL, (analytic, complex_step)
    assert norm_rel_error(analytic, central) < CENTRAL_TOL, (analytic, central)
    assert np.max(np.abs(analytic)) > 1e-3  # not vacuous


def test_flat_check_catches_a_wrong_layer_backward():
    """A 1 % error in one normalizer's dx deep in the transformer fails both comparisons."""
    model = perturb_affine(build_transformer(11, 3, 6, norm="layer", d_model=8, num_layers=2, pad_id=0))
    norm = model.children["blocks"][0].children["norm1"]
    real = norm.backward
    norm.backward = lambda dy: 1.01 * real(dy)
    analytic, complex_step, central = flat_directional_check(model, _tokens(), np.array([0, 1, 2, 0]))
    assert norm_rel_error(analytic, complex_step) > 1e3 * COMPLEX_TOL
    assert norm_rel_error(analytic, central) > CENTRAL_TOL


def test_flat_check_restores_the_model():
    model = build_transformer(11, 3, 6, norm="power", d_model=8, num_layers=1, pad_id=0)
    before = model.state_dict()
    flat_directional_check(model, _tokens(), np.array([0, 1, 2, 0]))
    after = model.state_dict()
    for name, value in before.items():
        np.testing.assert_array_equal(after[name], value, err_msg=name)
    assert flatten_params(model).dtype == np.float64 and all(
        np.isrealobj(v) for _, v in model.named_parameters())


# -- the checker on models large enough for directional checks -------------------------------------------------------
@pytest.mark.parametrize("name,build,x", [
    ("mlp", lambda: build_mlp(20, 3, (32,), "batch", activation="tanh"), lambda r: r.standard_normal((6, 20))),
    ("vgg", lambda: build_vgg(1, 3, 4, widths=(8,), norm="group"), lambda r: r.standard_normal((2, 1, 4, 4))),
    ("resnet", lambda: build_resnet(1, 3, widths=(8,), norm="batch"), lambda r: r.standard_normal((2, 1, 4, 4))),
    ("transformer", lambda: build_transformer(5, 3, 4, norm="unified", d_model=16, num_layers=1),
     lambda r: r.standard_normal((2, 4, 16))),
], ids=["mlp", "vgg", "resnet", "transformer"])
def test_check_layer_uses_directions_on_large_tensors(name, build, x):
    """Tensors above 256 entries are checked along random directions (central and complex step)."""
    rng = np.random.default_rng(0)
    report = check_layer(build(), x(rng), rng=rng, methods=("central", "complex"))
    assert report.passed, report.table()
    assert any(row.method.endswith("-dir") for row in report.rows)


# -- the norm switch ------------------------------------------------------------------------------------------------
def _tiny(model_name, norm):
    if model_name == "mlp":
        return build_model("mlp", norm, in_features=4, num_classes=3, hidden=(8,)), np.ones((4, 4))
    if model_name in ("vgg", "cnn"):
        return (build_model(model_name, norm, in_channels=1, num_classes=3, image_size=4, widths=(8,)),
                np.random.default_rng(0).standard_normal((2, 1, 4, 4)))
    if model_name == "resnet":
        return (build_model("resnet", norm, in_channels=1, num_classes=3, widths=(8,)),
                np.random.default_rng(0).standard_normal((2, 1, 4, 4)))
    return build_model("transformer", norm, vocab_size=11, num_classes=3, max_len=6, d_model=8), _tokens()


@pytest.mark.parametrize("model_name", MODEL_NAMES)
def test_every_model_takes_every_normalizer(model_name):
    for norm in NORM_NAMES + (None,):
        if model_name == "mlp" and norm in ("instance", "evonorm_b0", "evonorm_s0"):
            with pytest.raises(ValueError, match="spatial"):
                _tiny(model_name, norm)
            continue
        model, x = _tiny(model_name, norm)
        logits = model(x)
        assert logits.shape == (len(x), 3) and np.all(np.isfinite(logits)), norm
        model.backward(np.ones_like(logits))
        assert any(np.abs(g).max() > 0 for _, g in model.named_grads()), norm


def test_build_model_registry():
    assert set(MODEL_NAMES) == {"mlp", "vgg", "cnn", "resnet", "transformer"}
    mlp = build_model("mlp", in_features=4, num_classes=3, hidden=(8,))
    assert type(mlp[1]).__name__ == "BatchNorm"                            # the builder's default norm
    transformer = build_model("transformer", vocab_size=5, num_classes=2, max_len=4)
    assert type(transformer.children["norm"]).__name__ == "LayerNorm"
    cnn = build_model("cnn", in_channels=1, num_classes=2, image_size=4, widths=(2,), norm="group", seed=3)
    vgg = build_vgg(1, 2, 4, widths=(2,), norm="group", seed=3)
    np.testing.assert_array_equal(flatten_params(cnn), flatten_params(vgg))
    with pytest.raises(ValueError, match="unknown model"):
        build_model("lenet")
    with pytest.raises(ValueError, match="unknown normalizer"):
        build_model("mlp", norm="batchy", in_features=4, num_classes=3)


def test_bad_arguments():
    with pytest.raises(ValueError, match="activation"):
        build_mlp(4, 3, activation="swishy")
    with pytest.raises(ValueError, match="must not decrease"):
        build_resnet(1, 3, widths=(8, 4))
    with pytest.raises(ValueError, match="positions"):
        build_transformer(5, 2, 4, positions="rotary")
    with pytest.raises(ValueError, match="pad_id"):
        build_transformer(5, 2, 4, pad_id=5)
    model = build_transformer(5, 2, 4)
    with pytest.raises(ValueError, match="T <= 4"):
        model(np.ones((2, 5), dtype=np.int64))
    with pytest.raises(TypeError, match="token ids or float"):
        model(np.ones((2, 4), dtype=bool))
    with pytest.raises(ValueError, match=r"\(B, T, 16\)"):
        model(np.ones((2, 4, 8)))
    with pytest.raises(ValueError, match="no valid"):
        build_transformer(5, 2, 4, pad_id=0)(np.zeros((1, 4), dtype=np.int64))


# -- the ResNet's skip switch ---------------------------------------------------------------------------------------
def test_resnet_with_and_without_skips_share_their_parameters():
    skip = build_resnet(1, 3, widths=(4, 8), blocks_per_stage=2, norm="batch", seed=5)
    plain = build_resnet(1, 3, widths=(4, 8), blocks_per_stage=2, norm="batch", seed=5, skip=False)
    assert [(n, v.shape) for n, v in skip.named_parameters()] == [(n, v.shape) for n, v in plain.named_parameters()]
    np.testing.assert_array_equal(flatten_params(skip), flatten_params(plain))
    x = np.random.default_rng(0).standard_normal((4, 1, 6, 6))
    assert np.max(np.abs(skip(x) - plain(x))) > 1e-2                       # the shortcuts matter
    # switching the flag turns one network into the other
    for block in skip.modules():
        if hasattr(block, "skip"):
            block.skip = False
    np.testing.assert_allclose(skip(x), plain(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cin,cout,stride,shape", [(2, 4, 2, (2, 2, 5, 5)), (3, 3, 1, (1, 3, 4, 4)),
                                                   (2, 5, 2, (1, 2, 4, 6))])
def test_zero_pad_shortcut_backward_is_the_adjoint(cin, cout, stride, shape):
    """<S x, u> = <x, S^T u> for random x and u: the backward of a linear map is its transpose."""
    rng = np.random.default_rng(0)
    s = ZeroPadShortcut(cin, cout, stride)
    x = rng.standard_normal(shape)
    y = s(x)
    u = rng.standard_normal(y.shape)
    assert y.shape == (shape[0], cout, -(-shape[2] // stride), -(-shape[3] // stride))
    assert np.sum(y * u) == pytest.approx(np.sum(x * s.backward(u)), rel=1e-13)
    assert not y[:, cin:].any()


# -- the Transformer ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("norm", ["batch", "power"])
def test_transformer_batch_normalizers_use_every_position_per_channel(norm):
    """BN/PowerNorm inside the transformer take statistics per channel over all B·T positions (channels last)."""
    model = build_transformer(11, 3, 6, norm=norm, d_model=8)
    layer = model.children["blocks"][0].children["norm1"]
    h = 3.0 + 2.0 * np.random.default_rng(0).standard_normal((4, 6, 8)) * np.arange(1, 9)
    out = layer(h)
    if norm == "batch":                                                    # zero mean, unit variance per channel
        np.testing.assert_allclose(out.mean(axis=(0, 1)), 0.0, atol=1e-10)
        np.testing.assert_allclose(out.var(axis=(0, 1)), 1.0, rtol=1e-3)
    else:                                                                  # unit quadratic mean per channel
        np.testing.assert_allclose((out ** 2).mean(axis=(0, 1)), 1.0, rtol=1e-3)


def test_transformer_batch_norm_zeroes_the_gradient_of_stream_biases():
    """With BN at every reader of the residual stream, a per-channel shift of the stream is removed: the biases that
    add to it get an exactly zero training-mode gradient; the others do not."""
    model = perturb_affine(build_transformer(11, 3, 6, norm="batch", d_model=8, num_layers=2))
    logits = model(_tokens())
    model.backward(np.random.default_rng(0).standard_normal(logits.shape))
    grads = dict(model.named_grads())
    scale = max(np.abs(g).max() for g in grads.values())
    for name, g in grads.items():
        if name.endswith(("out_proj_bias", "mlp.2.bias")):
            assert np.abs(g).max() < 1e-12 * scale, name
        elif name.endswith(("in_proj_bias", "mlp.0.bias")):
            assert np.abs(g).max() > 1e-6 * scale, name


def test_transformer_pads_do_not_reach_real_positions_with_a_causal_mask():
    """Causal attention, per-position LayerNorm and the masked pooling: more padding at the end changes nothing."""
    model = build_transformer(11, 3, 10, norm="layer", d_model=8, pad_id=0, causal=True, seed=1)
    tokens = np.array([[3, 4, 5, 6], [7, 8, 9, 2]])
    short = model(np.concatenate([tokens, np.zeros((2, 2), np.int64)], axis=1))
    long = model(np.concatenate([tokens, np.zeros((2, 6), np.int64)], axis=1))
    np.testing.assert_allclose(short, long, rtol=1e-12, atol=1e-12)
    bidirectional = build_transformer(11, 3, 10, norm="layer", d_model=8, pad_id=0, seed=1)
    pad2 = bidirectional(np.concatenate([tokens, np.zeros((2, 2), np.int64)], axis=1))
    pad6 = bidirectional(np.concatenate([tokens, np.zeros((2, 6), np.int64)], axis=1))
    assert np.max(np.abs(pad2 - pad6)) > 1e-6                              # without the mask, pads are attended to


def test_transformer_takes_token_ids_or_embeddings():
    model = build_transformer(11, 3, 6, norm="rms", d_model=8, pad_id=0, positions="sinusoidal")
    assert num_params(model) == num_params(build_transformer(11, 3, 6, norm="rms", d_model=8)) - 6 * 8
    tokens = _tokens()
    table = model.children["token_embedding"].params["weight"]
    from_ids = model(tokens)
    assert model.backward(np.ones_like(from_ids)) is None
    grad_table = model.children["token_embedding"].grads["weight"].copy()
    model.zero_grad()
    from_embeddings = model(table[tokens], tokens != 0)
    np.testing.assert_allclose(from_ids, from_embeddings, rtol=1e-13, atol=1e-13)
    dh = model.backward(np.ones_like(from_embeddings))
    assert dh.shape == (4, 6, 8) and not model.children["token_embedding"].grads["weight"].any()
    expected = np.zeros_like(table)
    np.add.at(expected, tokens, dh)                                        # the token table's scatter-add
    np.testing.assert_allclose(grad_table, expected, rtol=1e-12, atol=1e-14)


def test_sinusoidal_table_matches_the_formula():
    p = sinusoidal_table(7, 6)
    t, i = 5, 2
    assert p[t, 2 * i] == pytest.approx(np.sin(t / 10000 ** (2 * i / 6)))
    assert p[t, 2 * i + 1] == pytest.approx(np.cos(t / 10000 ** (2 * i / 6)))
    assert sinusoidal_table(3, 5).shape == (3, 5)                          # odd widths end with a sine


# -- short training runs --------------------------------------------------------------------------------------------
def _full_batch_loss(model, data):
    return float(CrossEntropyLoss()(model.forward(data.x), data.y))


@pytest.mark.parametrize("name", ["mlp", "vgg", "resnet", "resnet-noskip", "transformer"])
def test_one_epoch_lowers_the_loss(name):
    if name == "mlp":
        data = make_blobs(128, 3, dim=4, spread=0.8, seed=0)
        model = build_mlp(4, 3, (16,), "batch", seed=0)
        opt = SGD(model, lr=0.1, momentum=0.9)
    elif name == "transformer":
        data = make_token_task(128, 8, vocab_size=32, num_classes=2, topic_tokens=4, topic_rate=0.5, seed=0)
        model = build_transformer(32, 2, 8, norm="layer", d_model=8, num_layers=1, pad_id=0, seed=0)
        opt = Adam(model, lr=1e-2)
    else:
        data = make_shapes(96, 8, seed=0)
        if name == "vgg":
            model = build_vgg(1, 6, 8, widths=(4,), norm="batch", seed=0)
        else:
            model = build_resnet(1, 6, widths=(4, 8), norm="batch", skip=name == "resnet", seed=0)
        opt = SGD(model, lr=0.05, momentum=0.9)
    before = _full_batch_loss(model, data)
    history = train(model, data, opt, epochs=1, batch_size=16, quiet=True)
    after = _full_batch_loss(model, data)
    assert len(history["step_loss"]) == -(-len(data) // 16)
    assert after < before, (before, after)


# -- the command line -----------------------------------------------------------------------------------------------
def test_cli_trains_the_zoo_models(capsys):
    from normref.cli import main

    assert main(["train", "--model", "transformer", "--data", "tokens", "--norm", "rms", "--widths", "8",
                 "--epochs", "1", "--batch-size", "128", "--optimizer", "adam", "--lr", "3e-3", "--quiet"]) == 0
    assert "transformer/rms on tokens: test loss" in capsys.readouterr().out
    assert main(["train", "--model", "resnet", "--no-skip", "--data", "images", "--widths", "4", "--epochs", "1",
                 "--batch-size", "128", "--quiet"]) == 0
    assert "resnet/batch on images" in capsys.readouterr().out


@pytest.mark.parametrize("args,message", [
    (["--model", "transformer", "--data", "blobs"], "transformer trains on --data tokens"),
    (["--model", "mlp", "--data", "tokens"], "transformer trains on --data tokens"),
    (["--model", "resnet", "--data", "spirals"], "needs image data"),
    (["--model", "vgg", "--data", "images", "--no-skip"], "--no-skip applies to --model resnet only"),
    (["--model", "transformer", "--data", "tokens", "--widths", "8", "16"], "one value for the transformer"),
])
def test_cli_rejects_models_and_data_that_do_not_fit(args, message, capsys):
    from normref.cli import main

    assert main(["train", "--quiet"] + args) == 2
    assert message in capsys.readouterr().err
