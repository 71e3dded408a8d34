"""Containers (Sequential, Residual, Flatten), whole-model gradient checks, the flat-parameter view, and .npz state."""

import numpy as np
import pytest

from normref import nn
from normref.testing.gradcheck import check_function, check_layer
from normref.testing.specs.blocks import distinct_input, small_cnn

RNG = np.random.default_rng(11)


def test_sequential_chains_forward_and_reverses_backward():
    a, b = nn.Linear(3, 4, rng=0), nn.Tanh()
    net = nn.Sequential(a, b)
    x = RNG.standard_normal((2, 3))
    y = net(x)
    np.testing.assert_array_equal(y, np.tanh(x @ a.params["weight"].T + a.params["bias"]))
    dy = RNG.standard_normal(y.shape)
    dx = net.backward(dy)
    g = dy * (1 - y**2)  # through Tanh first, then Linear: reverse order
    np.testing.assert_allclose(dx, g @ a.params["weight"], rtol=1e-14)
    np.testing.assert_allclose(a.grads["weight"], g.T @ x, rtol=1e-14)
    assert list(net.children) == ["0", "1"] and net[0] is a and len(net) == 2


def test_residual_backward_is_dy_plus_the_branch():
    fn = nn.Linear(3, 3, rng=0)
    block = nn.Residual(fn)
    x, dy = RNG.standard_normal((4, 3)), RNG.standard_normal((4, 3))
    np.testing.assert_allclose(block(x), x + x @ fn.params["weight"].T + fn.params["bias"], rtol=1e-14)
    np.testing.assert_allclose(block.backward(dy), dy + dy @ fn.params["weight"], rtol=1e-14)


def test_residual_shape_mismatch_needs_a_shortcut():
    block = nn.Residual(nn.Linear(3, 5, rng=0))
    with pytest.raises(ValueError, match="shortcut"):
        block(np.ones((2, 3)))
    with_shortcut = nn.Residual(nn.Linear(3, 5, rng=0), shortcut=nn.Linear(3, 5, bias=False, rng=1))
    assert with_shortcut(np.ones((2, 3))).shape == (2, 5)
    with pytest.raises(TypeError, match="fn must be a normref Module"):
        nn.Residual(lambda x: x)
    with pytest.raises(TypeError, match=r"modules\[1\]"):
        nn.Sequential(nn.ReLU(), np.tanh)


def test_a_module_instance_cannot_be_used_twice():
    """Layers keep the cache of their last forward, so reuse within one pass would give a wrong backward."""
    shared = nn.Linear(3, 3, rng=0)
    with pytest.raises(ValueError, match="appears twice"):
        nn.Sequential(shared, nn.Tanh(), shared)
    with pytest.raises(ValueError, match="appears twice"):
        nn.Residual(nn.Sequential(nn.Tanh(), shared), shortcut=shared)


def test_flatten_round_trip_and_ranges():
    x = RNG.standard_normal((2, 3, 4, 5))
    f = nn.Flatten(1, 2)
    y = f(x)
    assert y.shape == (2, 12, 5)
    np.testing.assert_array_equal(f.backward(y), x)
    with pytest.raises(ValueError, match="start_dim"):
        nn.Flatten(3, 1)(x)


def test_whole_model_gradient_check_uses_directional_probes_for_large_tensors():
    """Conv2d -> BatchNorm -> ReLU -> MaxPool -> Flatten -> Linear, in train and eval, with check_layer.

    With max_elements=100 the input (2·2·8·8 = 256 values) and the Linear weight (4 x 3·4·4 = 192) are checked along
    random directions, the convolution weight (54) and BatchNorm's parameters elementwise."""
    shape = (2, 2, 8, 8)
    rng = np.random.default_rng(3)
    model = small_cnn(shape)
    for _ in range(2):
        model(distinct_input(rng, shape))
    for mode in ("train", "eval"):
        model.train(mode == "train")
        report = check_layer(model, distinct_input(rng, shape), rng=rng, methods=("central", "complex"),
                             max_elements=100, n_directions=3, title=f"small CNN {mode}")
        assert report.passed, report.table()
        methods = {row.tensor: row.method for row in report.rows}
        assert methods["x"].endswith("-dir") and methods["5.weight"].endswith("-dir")
        assert methods["1.gamma"] == "complex"
    # and the check can fail: a 1 % error in one layer's backward is caught through the whole model
    real = model[0].backward
    model[0].backward = lambda dy: 1.01 * real(dy)
    assert not check_layer(model, distinct_input(rng, shape), rng=rng, max_elements=100).passed


def _mlp(dtype=np.float64):
    return nn.Sequential(nn.Linear(4, 6, rng=0, dtype=dtype), nn.BatchNorm(6, dtype=dtype), nn.GELU(),
                         nn.Dropout(0.2, seed=3), nn.Linear(6, 3, rng=1, dtype=dtype))


def test_flat_params_order_round_trip_and_no_aliasing():
    model = _mlp()
    names = [name for name, _ in model.named_parameters()]
    assert names == ["0.weight", "0.bias", "1.gamma", "1.beta", "4.weight", "4.bias"]
    theta = nn.flatten_params(model)
    assert theta.dtype == np.float64 and theta.shape == (nn.num_params(model),) == (24 + 6 + 6 + 6 + 18 + 3,)
    layout = nn.param_layout(model)
    for (name, value), (lname, shape, sl) in zip(model.named_parameters(), layout):
        assert name == lname and value.shape == shape
        np.testing.assert_array_equal(theta[sl].reshape(shape), value)
    new = RNG.standard_normal(theta.shape)
    nn.set_flat_params(model, new)
    np.testing.assert_array_equal(nn.flatten_params(model), new)
    new[0] = 123.0  # the model holds copies, not views of the caller's vector
    assert model[0].params["weight"][0, 0] != 123.0
    with pytest.raises(ValueError, match=r"shape \(63,\)"):
        nn.set_flat_params(model, np.zeros(62))
    with pytest.raises(TypeError, match="model must be a normref Module"):
        nn.flatten_params([1, 2])


def test_flat_params_keep_float32_and_flat_grads_follow_the_same_order():
    model = _mlp(np.float32)
    nn.set_flat_params(model, RNG.standard_normal(nn.num_params(model)))
    assert all(v.dtype == np.float32 for _, v in model.named_parameters())
    assert nn.flatten_params(model).dtype == np.float64
    model.zero_grad()
    model(RNG.standard_normal((5, 4)).astype(np.float32))
    model.backward(RNG.standard_normal((5, 3)).astype(np.float32))
    grads = nn.flatten_grads(model)
    for (name, grad), (_, _, sl) in zip(model.named_grads(), nn.param_layout(model)):
        np.testing.assert_array_equal(grads[sl], grad.ravel())


def test_flat_gradient_is_the_gradient_of_the_loss_in_flat_coordinates():
    """<flatten_grads, v> equals the complex-step derivative of the loss along v, through set_flat_params."""
    model = _mlp()
    x, t = RNG.standard_normal((6, 4)), np.array([0, 1, 2, 2, 1, 0])
    loss_fn = nn.CrossEntropyLoss()
    theta = nn.flatten_params(model)
    seed_step = model[3].buffers["step"]

    def loss_at(vec):
        model[3].buffers["step"] = seed_step  # the same dropout mask at every evaluation
        nn.set_flat_params(model, vec)
        return loss_fn(model(x), t)

    loss_at(theta)
    model.zero_grad()
    model.backward(loss_fn.backward())
    grad = nn.flatten_grads(model)
    report = check_function(lambda theta: np.asarray(loss_at(theta)).reshape(1), {"theta": theta}, {"theta": grad},
                            np.ones(1), methods=("central", "complex"), max_elements=0, n_directions=4)
    assert report.passed, report.table()


def test_save_and_load_npz_round_trip_with_buffers(tmp_path):
    model = _mlp()
    for _ in range(3):
        model(RNG.standard_normal((8, 4)))
    path = tmp_path / "model.npz"
    nn.save_npz(model, path)
    other = _mlp()
    nn.set_flat_params(other, np.zeros(nn.num_params(other)))
    nn.load_npz(other, path)
    np.testing.assert_array_equal(nn.flatten_params(other), nn.flatten_params(model))
    for (name, a), (_, b) in zip(model.named_buffers(), other.named_buffers()):
        assert type(a) is type(b), name
        np.testing.assert_array_equal(a, b)
    assert other[1].buffers["num_batches_tracked"] == 3 and isinstance(other[1].buffers["num_batches_tracked"], int)
    assert other[3].buffers["step"] == 3
    x = RNG.standard_normal((5, 4))
    np.testing.assert_array_equal(model(x), other(x))  # same parameters, statistics and dropout mask
    model.eval(), other.eval()
    np.testing.assert_array_equal(model(x), other(x))


def test_load_npz_rejects_another_architecture(tmp_path):
    path = tmp_path / "model.npz"
    nn.save_npz(_mlp(), path)
    with pytest.raises(ValueError, match="missing"):
        nn.load_npz(nn.Sequential(nn.Linear(4, 6, rng=0)), path)
    wider = nn.Sequential(nn.Linear(4, 7, rng=0), nn.BatchNorm(7), nn.GELU(), nn.Dropout(0.2), nn.Linear(7, 3))
    with pytest.raises(ValueError, match="shape"):
        nn.load_npz(wider, path)


def test_gradient_descent_in_flat_coordinates_lowers_the_loss():
    """The flat view is enough to train: a few plain gradient steps on a small classification problem."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 4))
    t = (x[:, 0] + x[:, 1] > 0).astype(int)
    model = nn.Sequential(nn.Linear(4, 8, rng=0), nn.ReLU(), nn.Linear(8, 2, rng=1))
    loss_fn = nn.CrossEntropyLoss()
    losses = []
    for _ in range(30):
        losses.append(float(loss_fn(model(x), t)))
        model.zero_grad()
        model.backward(loss_fn.backward())
        nn.set_flat_params(model, nn.flatten_params(model) - 0.5 * nn.flatten_grads(model))
    assert losses[-1] < 0.5 * losses[0]
