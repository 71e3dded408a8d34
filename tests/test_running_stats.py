"""Running statistics of BatchNorm and InstanceNorm, against values computed independently here (PyTorch semantics).

PyTorch's conventions, written out in the test rather than taken from normref: ``momentum`` weighs the *new* batch,
``running = (1 - momentum)·running + momentum·batch``; the stored variance is the unbiased one (``ddof=1``) while
the forward normalizes with the biased one; ``momentum=None`` is the cumulative average of all batches so far; the
buffers start at mean 0 and variance 1. InstanceNorm with tracking feeds the buffers with the batch average of the
per-instance means and of the per-instance unbiased variances.
"""

import numpy as np
import pytest

from normref import nn, ops
from normref.ops.running_stats import RunningStats, initial_running_stats, update_running_stats

EPS = 1e-5


@pytest.fixture
def rng():
    return np.random.default_rng(2024)


def batches(rng, shape, steps):
    """Batches whose per-channel mean and spread change from step to step, so the EMA weights matter."""
    c = shape[1]
    extra = (1,) * (len(shape) - 2)
    return [rng.normal(rng.uniform(-5, 5, c).reshape((1, c) + extra), rng.uniform(0.5, 4, c).reshape((1, c) + extra),
                       shape) for _ in range(steps)]


def bn_axes(x):
    return (0,) + tuple(range(2, x.ndim))


@pytest.mark.parametrize("shape", [(8, 3), (4, 3, 5), (2, 3, 4, 2)])
@pytest.mark.parametrize("momentum", [0.1, 0.35, 1.0, 0.0])
def test_batch_norm_ema_over_several_steps(rng, shape, momentum):
    bn = nn.BatchNorm(shape[1], momentum=momentum)
    mean, var = np.zeros(shape[1]), np.ones(shape[1])  # PyTorch's initial buffers
    for step, x in enumerate(batches(rng, shape, 4), start=1):
        bn.forward(x)
        mean = (1 - momentum) * mean + momentum * x.mean(axis=bn_axes(x))
        var = (1 - momentum) * var + momentum * x.var(axis=bn_axes(x), ddof=1)
        np.testing.assert_allclose(bn.buffers["running_mean"], mean, rtol=1e-13, atol=1e-15)
        np.testing.assert_allclose(bn.buffers["running_var"], var, rtol=1e-13)
        assert bn.buffers["num_batches_tracked"] == step


def test_running_var_is_unbiased_with_the_factor_m_over_m_minus_1(rng):
    """With momentum 1 the buffer is the last batch's variance: biased·m/(m-1), m = N·H·W values per channel."""
    x = rng.normal(3.0, 2.0, (2, 3, 4, 5))
    m = 2 * 4 * 5
    bn = nn.BatchNorm(3, momentum=1.0)
    bn.forward(x)
    biased = x.var(axis=(0, 2, 3))
    np.testing.assert_allclose(bn.buffers["running_var"], biased * m / (m - 1), rtol=1e-13)
    assert not np.allclose(bn.buffers["running_var"], biased, rtol=1e-3)  # the factor is really applied
    # The pure update can store the biased variance instead (the Flax / EvoNorm-reference convention).
    _, cache = ops.batch_norm_forward(x)
    batch_mean, batch_var, count = ops.batch_norm_batch_stats(cache)
    assert count == m
    biased_run = update_running_stats(initial_running_stats(3), batch_mean, batch_var, count, momentum=1.0,
                                      unbiased=False)
    np.testing.assert_allclose(biased_run.running_var, biased, rtol=1e-13)


def test_momentum_none_is_the_cumulative_average(rng):
    """momentum=None: step t weighs the batch by 1/t, so after k steps the buffers are plain averages of k batches."""
    shape = (6, 4, 3)
    bn = nn.BatchNorm(4, momentum=None)
    means, variances = [], []
    for step, x in enumerate(batches(rng, shape, 5), start=1):
        bn.forward(x)
        means.append(x.mean(axis=(0, 2)))
        variances.append(x.var(axis=(0, 2), ddof=1))
        np.testing.assert_allclose(bn.buffers["running_mean"], np.mean(means, axis=0), rtol=1e-13, atol=1e-15)
        np.testing.assert_allclose(bn.buffers["running_var"], np.mean(variances, axis=0), rtol=1e-13)
        assert bn.buffers["num_batches_tracked"] == step


def test_eval_after_training_uses_the_running_statistics(rng):
    shape = (5, 3, 4)
    bn = nn.BatchNorm(3, momentum=0.3)
    bn.params["gamma"], bn.params["beta"] = rng.normal(1, 0.5, 3), rng.normal(0, 0.5, 3)
    for x in batches(rng, shape, 3):
        bn.forward(x)
    buffers = {k: np.copy(v) for k, v in bn.buffers.items()}
    bn.eval()
    x = rng.normal(1.0, 3.0, shape)
    y = bn.forward(x)
    # By hand: the running (unbiased) variance is used as is, per channel, broadcast over N and L.
    rm, rv = buffers["running_mean"][:, None], buffers["running_var"][:, None]
    gamma, beta = bn.params["gamma"][:, None], bn.params["beta"][:, None]
    expected = gamma * (x - rm) / np.sqrt(rv + EPS) + beta
    np.testing.assert_allclose(y, expected, rtol=1e-13, atol=1e-13)
    # The batch's own statistics would give something else; eval leaves the buffers alone.
    y_batch, _ = ops.batch_norm_forward(x, bn.params["gamma"], bn.params["beta"])
    assert np.abs(y - y_batch).max() > 1e-2
    for key, value in buffers.items():
        np.testing.assert_array_equal(bn.buffers[key], value)
    # Eval's backward treats the statistics as constants: dx = gamma·dy/sqrt(running_var + eps).
    dy = rng.standard_normal(shape)
    bn.zero_grad()
    np.testing.assert_allclose(bn.backward(dy), gamma * dy / np.sqrt(rv + EPS), rtol=1e-13)
    np.testing.assert_allclose(bn.grads["gamma"], (dy * (x - rm) / np.sqrt(rv + EPS)).sum(axis=(0, 2)), rtol=1e-12)
    np.testing.assert_allclose(bn.grads["beta"], dy.sum(axis=(0, 2)), rtol=1e-12)


def test_eval_does_not_count_batches(rng):
    bn = nn.BatchNorm(3)
    bn.forward(rng.standard_normal((4, 3)))
    bn.eval()
    bn.forward(rng.standard_normal((4, 3)))
    assert bn.buffers["num_batches_tracked"] == 1


def test_eval_normalizes_a_single_sample_with_running_stats(rng):
    """One value per channel cannot be batch-normalized, but it can be evaluated with the running statistics."""
    bn = nn.BatchNorm(3)
    bn.forward(rng.normal(2.0, 3.0, (6, 3)))
    bn.eval()
    x = rng.standard_normal((1, 3))
    expected = (x - bn.buffers["running_mean"]) / np.sqrt(bn.buffers["running_var"] + EPS)
    np.testing.assert_allclose(bn.forward(x), expected, rtol=1e-13)


@pytest.mark.parametrize("layer_cls", [nn.BatchNorm, nn.InstanceNorm])
def test_without_tracking_eval_uses_batch_statistics(rng, layer_cls):
    layer = layer_cls(3, track_running_stats=False, affine=True)
    assert layer.buffers == {}
    x = rng.normal(4.0, 2.0, (4, 3, 5))
    axes = (0, 2) if layer_cls is nn.BatchNorm else (2,)
    expected = (x - x.mean(axis=axes, keepdims=True)) / np.sqrt(x.var(axis=axes, keepdims=True) + EPS)
    y_train = layer.forward(x)
    layer.eval()
    y_eval = layer.forward(x)
    np.testing.assert_allclose(y_train, expected, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(y_eval, expected, rtol=1e-12, atol=1e-13)
    assert layer.buffers == {}


@pytest.mark.parametrize("momentum", [0.1, None])
def test_instance_norm_tracking_averages_per_instance_unbiased_variances(rng, momentum):
    shape = (4, 3, 6, 2)
    layer = nn.InstanceNorm(3, momentum=momentum, track_running_stats=True)
    mean, var = np.zeros(3), np.ones(3)
    for step, x in enumerate(batches(rng, shape, 3), start=1):
        x = x + rng.normal(0, 2, (4, 1, 1, 1))  # instances differ, so the two averages are not trivially equal
        y = layer.forward(x)
        # Training still normalizes each instance with its own statistics.
        per_instance = (x - x.mean(axis=(2, 3), keepdims=True)) / np.sqrt(x.var(axis=(2, 3), keepdims=True) + EPS)
        np.testing.assert_allclose(y, per_instance, rtol=1e-12, atol=1e-13)
        w = 1.0 / step if momentum is None else momentum
        mean = (1 - w) * mean + w * x.mean(axis=(2, 3)).mean(axis=0)
        var = (1 - w) * var + w * x.var(axis=(2, 3), ddof=1).mean(axis=0)
        np.testing.assert_allclose(layer.buffers["running_mean"], mean, rtol=1e-13, atol=1e-15)
        np.testing.assert_allclose(layer.buffers["running_var"], var, rtol=1e-13)
        assert layer.buffers["num_batches_tracked"] == step
    # The average of per-instance variances is not the variance over (N, H, W) (that would be BatchNorm's).
    assert not np.allclose(var, (1 - 0.1) * 1 + 0.1 * x.var(axis=(0, 2, 3), ddof=1))
    # Eval normalizes every instance with the running per-channel statistics.
    layer.eval()
    x = rng.normal(1.0, 2.0, shape)
    expected = (x - mean[:, None, None]) / np.sqrt(var[:, None, None] + EPS)
    np.testing.assert_allclose(layer.forward(x), expected, rtol=1e-12, atol=1e-13)


def test_update_is_pure(rng):
    running = RunningStats(rng.standard_normal(3), rng.uniform(1, 2, 3), 4)
    copies = [np.copy(running.running_mean), np.copy(running.running_var)]
    batch_mean, batch_var = rng.standard_normal(3), rng.uniform(1, 2, 3)
    batch_copies = [np.copy(batch_mean), np.copy(batch_var)]
    new = update_running_stats(running, batch_mean, batch_var, 10, momentum=0.2)
    np.testing.assert_array_equal(running.running_mean, copies[0])
    np.testing.assert_array_equal(running.running_var, copies[1])
    np.testing.assert_array_equal(batch_mean, batch_copies[0])
    np.testing.assert_array_equal(batch_var, batch_copies[1])
    assert running.num_batches_tracked == 4 and new.num_batches_tracked == 5
    np.testing.assert_allclose(new.running_var, 0.8 * copies[1] + 0.2 * batch_var * 10 / 9, rtol=1e-14)


def test_buffers_keep_the_layer_dtype(rng):
    bn = nn.BatchNorm(3, dtype=np.float32)
    bn.forward(rng.standard_normal((4, 3)))  # float64 batch into float32 buffers
    assert bn.buffers["running_mean"].dtype == np.float32 and bn.buffers["running_var"].dtype == np.float32


def test_against_torch_float64(rng):
    """Optional cross-check with PyTorch (not a dependency): BatchNorm2d and InstanceNorm1d with tracking."""
    torch = pytest.importorskip("torch", reason="the PyTorch cross-check needs the optional extra 'torch': "
                                                 "pip install -e '.[torch]'")
    shape = (3, 4, 5, 2)
    ref = torch.nn.BatchNorm2d(4, momentum=0.2).double()
    ours = nn.BatchNorm(4, momentum=0.2)
    for x in batches(rng, shape, 3):
        y_ref = ref(torch.from_numpy(x)).detach().numpy()
        np.testing.assert_allclose(ours.forward(x), y_ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(ours.buffers["running_mean"], ref.running_mean.numpy(), rtol=1e-12)
    np.testing.assert_allclose(ours.buffers["running_var"], ref.running_var.numpy(), rtol=1e-12)
    ref.eval(), ours.eval()
    x = rng.standard_normal(shape)
    np.testing.assert_allclose(ours.forward(x), ref(torch.from_numpy(x)).detach().numpy(), rtol=1e-10, atol=1e-12)

    ref_in = torch.nn.InstanceNorm1d(4, track_running_stats=True).double()
    ours_in = nn.InstanceNorm(4, track_running_stats=True)
    for x in batches(rng, (3, 4, 7), 2):
        ref_in(torch.from_numpy(x)), ours_in.forward(x)
    np.testing.assert_allclose(ours_in.buffers["running_var"], ref_in.running_var.numpy(), rtol=1e-12)
