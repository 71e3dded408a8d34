"""normref.landscape: the objective and its BN-statistics policies, directions, surfaces, PCA planes, direction bands,
mode connectivity and Santurkar et al.'s smoothness measurements (tiny models, exact comparisons)."""

import pickle

import numpy as np
import pytest

from normref.landscape import (Objective, barrier, direction_band, gradient_step_smoothness, interpolate,
                               interpolate_buffers, pca_plane, project, random_direction, random_directions, surface)
from normref.nn import (BatchNorm, Conv2d, CrossEntropyLoss, Flatten, GroupNorm, Linear, MSELoss, ReLU, Sequential,
                        Tanh, flatten_params, set_flat_params)


def blobs(n=48, seed=0):
    rng = np.random.default_rng(seed)
    centers = 2.0 * rng.normal(size=(3, 4))
    y = rng.integers(0, 3, n)
    return centers[y] + rng.normal(size=(n, 4)), y


def bn_net(seed=0):
    """Linear -> BN -> tanh -> Linear, with running statistics that differ from any one batch's."""
    net = Sequential(Linear(4, 8, rng=seed), BatchNorm(8), Tanh(), Linear(8, 3, rng=seed + 1))
    x, _ = blobs(64, seed=seed + 10)
    net.train()
    for k in range(3):
        net(x[16 * k:16 * (k + 1)] * (1 + k))
    return net.eval()


def manual_loss(net, x, y, train):
    net.train(train)
    return float(CrossEntropyLoss()(net(x), y))


def test_policies_are_the_documented_computations():
    x, y = blobs()
    net = bn_net()
    before = {k: np.copy(v) for k, v in net.named_buffers() if isinstance(v, np.ndarray)}
    theta = flatten_params(net) + 0.3 * np.random.default_rng(1).normal(size=flatten_params(net).size)
    running = Objective(net, CrossEntropyLoss(), x, y, bn="running")
    batch = Objective(net, CrossEntropyLoss(), x, y, bn="batch", ghost_batch_size=16)
    recomputed = Objective(net, CrossEntropyLoss(), x, y, bn="recomputed", train_data=(x, y), recompute_batch_size=20)

    ref = bn_net()  # running: eval with the reference buffers at the moved weights
    set_flat_params(ref, theta)
    assert running.value(theta) == pytest.approx(manual_loss(ref, x, y, False), rel=1e-13)
    # batch: the mean of train-mode losses of the three fixed chunks of 16
    chunks = [manual_loss(ref, x[i:i + 16], y[i:i + 16], True) for i in (0, 16, 32)]
    assert batch.value(theta) == pytest.approx(np.mean(chunks), rel=1e-13)
    # recomputed: reset, cumulative average over chunks of 20, eval
    bn = ref[1]
    bn.reset_running_stats()
    bn.momentum = None
    ref.train()
    for i in range(0, 48, 20):
        ref(x[i:i + 20])
    assert recomputed.value(theta) == pytest.approx(manual_loss(ref, x, y, False), rel=1e-13)
    values = [f.value(theta) for f in (running, batch, recomputed)]
    assert min(abs(a - b) for a, b in [(values[0], values[1]), (values[0], values[2]), (values[1], values[2])]) > 1e-3
    # nothing drifts: repeated evaluation is identical, the caller's model is untouched
    assert batch.value(theta) == values[1] and recomputed.value(theta) == values[2]
    for k, v in net.named_buffers():
        if isinstance(v, np.ndarray):
            assert np.array_equal(v, before[k])


def test_chunking_changes_memory_not_values_and_gradients_match_complex_step():
    x, y = blobs()
    net = bn_net()
    whole = Objective(net, CrossEntropyLoss(), x, y, bn="running")
    chunked = Objective(net, CrossEntropyLoss(), x, y, bn="running", batch_size=7)
    theta = whole.theta0
    (l1, g1), (l2, g2) = whole.grad(theta), chunked.grad(theta)
    assert l1 == pytest.approx(l2, rel=1e-14) and np.allclose(g1, g2, rtol=0, atol=1e-14)
    assert chunked.evaluate(theta)["accuracy"] == whole.evaluate(theta)["accuracy"]
    for f in (whole, Objective(net, CrossEntropyLoss(), x, y, bn="batch", ghost_batch_size=12)):
        v = np.random.default_rng(2).normal(size=theta.size)
        loss, g = f.grad(theta)
        directional = np.imag(f.grad(theta + 1e-30j * v)[0]) / 1e-30
        assert directional == pytest.approx(g @ v, rel=1e-12)


def test_objective_validates_and_pickles_small():
    x, y = blobs()
    net = bn_net()
    with pytest.raises(ValueError, match="bn must be one of"):
        Objective(net, CrossEntropyLoss(), x, y, bn="eval")
    with pytest.raises(ValueError, match="train_data"):
        Objective(net, CrossEntropyLoss(), x, y, bn="recomputed")
    with pytest.raises(ValueError, match="reduction"):
        Objective(net, CrossEntropyLoss(reduction="sum"), x, y, bn="running")
    f = Objective(net, CrossEntropyLoss(), x, y, bn="batch")
    f.grad(f.theta0)
    size = len(pickle.dumps(f))
    assert size < 3 * (x.nbytes + y.nbytes + 3 * f.theta0.nbytes) + 20000  # no forward caches travel
    g = pickle.loads(pickle.dumps(f))
    assert g.value(f.theta0) == f.value(f.theta0)


def test_filter_normalization_and_the_one_d_policies():
    net = Sequential(Conv2d(2, 3, 3, rng=0), BatchNorm(3), ReLU(), Flatten(), Linear(12, 2, rng=1))
    theta = flatten_params(net)
    d = random_direction(net, seed=5)
    conv_w, conv_b = theta[:54].reshape(3, 2, 3, 3), theta[54:57]
    dw = d[:54].reshape(3, 2, 3, 3)
    assert np.allclose(np.linalg.norm(dw.reshape(3, -1), axis=1), np.linalg.norm(conv_w.reshape(3, -1), axis=1))
    lin = slice(63, 87)
    assert np.allclose(np.linalg.norm(d[lin].reshape(2, 12), axis=1),
                       np.linalg.norm(theta[lin].reshape(2, 12), axis=1))
    assert not d[54:63].any() and not d[87:].any()  # conv bias, BN gamma/beta, linear bias: zero by default
    layer = random_direction(net, seed=5, norm="layer")
    assert np.linalg.norm(layer[:54]) == pytest.approx(np.linalg.norm(conv_w))
    raw = random_direction(net, seed=5, norm="none")  # the same draw, unscaled
    assert np.allclose(layer[:54] / np.linalg.norm(layer[:54]), raw[:54] / np.linalg.norm(raw[:54]))
    assert not np.allclose(dw.ravel() / np.linalg.norm(dw), raw[:54] / np.linalg.norm(raw[:54]))
    copy = random_direction(net, seed=5, bias="copy", norm_params="keep")
    assert np.array_equal(copy[54:57], conv_b) and copy[57:63].any() and not np.allclose(copy[57:60], 1.0)
    normalized = random_direction(net, seed=5, norm_params="normalize")
    assert np.linalg.norm(normalized[57:60]) == pytest.approx(np.linalg.norm(theta[57:60]))  # gamma = ones
    assert np.array_equal(random_direction(net, seed=5), d)
    assert not np.allclose(random_direction(net, seed=6), d)
    # direction k of a seed does not depend on how many are drawn
    assert np.array_equal(random_directions(net, 3, seed=1).vectors[1], random_directions(net, 2, seed=1).vectors[1])
    with pytest.raises(ValueError, match="bias"):
        random_direction(net, seed=0, bias="ignore")


def test_gaussian_not_uniform_and_orthogonalization_reports_the_cosine():
    net = Sequential(Linear(50, 40, rng=0), Tanh(), Linear(40, 3, rng=1))
    raw = random_directions(net, 2, seed=0, norm="none", bias="keep").vectors
    assert abs(raw.mean()) < 0.05 and (raw < 0).mean() == pytest.approx(0.5, abs=0.03)
    dirs = random_directions(net, 2, seed=0, orthogonalize=True)
    plain = random_directions(net, 2, seed=0)
    assert abs(dirs.vectors[0] @ dirs.vectors[1]) < 1e-10 * np.linalg.norm(dirs.vectors[0]) ** 2
    assert dirs.cosines[0, 1] == pytest.approx(plain.vectors[0] @ plain.vectors[1] /
                                               np.prod(np.linalg.norm(plain.vectors, axis=1)))
    assert np.allclose(np.linalg.norm(dirs.vectors, axis=1), np.linalg.norm(plain.vectors, axis=1))


def test_surface_grid_is_indexed_y_x_with_the_centre_on_the_grid():
    x, y = blobs()
    f = Objective(bn_net(), CrossEntropyLoss(), x, y, bn="running")
    dirs = random_directions(f, 2, seed=3)
    xs, ys = np.linspace(-1, 1, 5), np.array([-0.5, 0.0, 0.25])
    s = surface(f, dirs, xs, ys, workers=1, progress=False)
    assert s.loss.shape == (3, 5) and s.accuracy.shape == (3, 5)
    assert s.loss[1, 2] == f.value(f.theta0)
    assert s.loss[2, 4] == pytest.approx(f.value(f.theta0 + 1.0 * dirs.vectors[0] + 0.25 * dirs.vectors[1]),
                                         rel=1e-14)
    assert s.meta["objective"]["bn"] == "running" and s.meta["directions"]["norm"] == "filter"
    line = surface(f, dirs.vectors[0], xs, workers=1, progress=False)
    assert np.allclose(line.loss, s.loss[1], rtol=1e-14)
    with pytest.raises(ValueError, match="coordinate"):
        surface(f, dirs, xs, workers=1, progress=False)


def test_surface_save_load_and_csv(tmp_path):
    x, y = blobs()
    f = Objective(bn_net(), CrossEntropyLoss(), x, y, bn="batch")
    s = surface(f, random_directions(f, 2, seed=0), np.linspace(-1, 1, 3), np.linspace(-1, 1, 2), workers=1,
                progress=False, store=tmp_path / "run")
    loaded = type(s).load(tmp_path / "run" / "surface.npz")
    assert np.array_equal(loaded.loss, s.loss) and loaded.meta == s.meta and np.array_equal(loaded.y, s.y)
    s.to_csv(tmp_path / "s.csv")
    table = np.loadtxt(tmp_path / "s.csv", delimiter=",", skiprows=1)
    assert table.shape == (6, 4) and np.allclose(table[:, 2], s.loss.ravel())


def test_the_policy_changes_the_surface():
    """The point of an explicit policy: stale running statistics and batch statistics give different pictures."""
    x, y = blobs()
    net = bn_net()
    dirs = random_directions(net, 1, seed=0)
    xs = np.linspace(-1, 1, 5)
    curves = {bn: surface(Objective(net, CrossEntropyLoss(), x, y, bn=bn, train_data=x), dirs, xs, workers=1,
                          progress=False).loss for bn in ("running", "batch", "recomputed")}
    assert np.max(np.abs(curves["running"] - curves["batch"])) > 1e-2
    assert np.max(np.abs(curves["running"] - curves["recomputed"])) > 1e-2


def test_pca_plane_recovers_a_planar_trajectory_and_reports_the_off_plane_distance():
    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.normal(size=(30, 2)))[0].T
    center = rng.normal(size=30)
    t = np.linspace(0, 1, 12)
    coords = np.stack([np.cos(3 * t) * (1 - t), 0.4 * np.sin(5 * t) * (1 - t)], axis=1)
    traj = center + coords @ basis
    plane = pca_plane(traj)
    assert plane.explained_variance_ratio.sum() == pytest.approx(1.0)
    proj = project(traj, plane.center, plane.vectors)
    assert proj.off_plane.max() < 1e-12
    assert np.allclose(np.abs(proj.coords @ plane.vectors), np.abs(traj - center), atol=1e-12)
    normal = np.linalg.qr(np.column_stack([basis.T, rng.normal(size=30)]))[0][:, 2]
    bumped = traj + np.outer(0.1 * t, normal)
    proj2 = project(bumped, center, basis)
    assert np.allclose(proj2.off_plane, 0.1 * t, atol=1e-12)
    assert np.allclose(proj2.coords, coords, atol=1e-12)


def test_direction_band_quantiles_over_seeds():
    x, y = blobs()
    f = Objective(bn_net(), CrossEntropyLoss(), x, y, bn="running")
    xs = np.linspace(-1, 1, 5)
    band = direction_band(f, xs, seeds=range(4), workers=1, progress=False)
    assert band.values["loss"].shape == (4, 5)
    for k, seed in enumerate(range(4)):
        d = random_directions(f, 1, seed=seed).vectors[0]
        assert band.values["loss"][k, 4] == pytest.approx(f.value(f.theta0 + d), rel=1e-14)
    lo, mid, hi = (band.quantiles[q]["loss"] for q in (0.1, 0.5, 0.9))
    assert np.all(lo <= mid) and np.all(mid <= hi) and np.any(hi - lo > 1e-3)
    assert np.allclose(band.values["loss"][:, 2], f.value(f.theta0))  # all lines meet at the centre


def test_barrier_definitions_by_hand():
    a = np.linspace(0, 1, 5)
    v = np.array([1.0, 2.0, 2.7, 3.1, 3.0])
    b = barrier(a, v)
    assert b.frankle == pytest.approx(3.1 - 2.0) and b.alpha_frankle == 0.75  # minus the endpoint mean
    chord = 1.0 + 2.0 * a  # minus the linear interpolation of the endpoints: [0, .5, .7, .6, 0]
    assert b.entezari == pytest.approx(0.7) and b.alpha_entezari == 0.5
    assert b.midpoint == pytest.approx(2.7 - 2.0) and b.entezari == pytest.approx(np.max(v - chord))
    with pytest.raises(ValueError, match="0 and 1"):
        barrier([0.0, 0.5], [1.0, 1.0])


def trained_pair(seed_a=0, seed_b=1):
    x, y = blobs(96)
    nets = []
    for seed in (seed_a, seed_b):
        net = bn_net(seed)
        f = Objective(net, CrossEntropyLoss(), x, y, bn="batch", ghost_batch_size=32)
        theta = f.theta0
        for _ in range(30):
            theta = theta - 0.5 * f.grad(theta)[1]
        set_flat_params(net, theta)
        net.train()
        bn = net[1]
        bn.reset_running_stats()
        bn.momentum = None
        net(x)  # the reset statistics of the whole training set (what bn="recomputed" computes)
        bn.momentum = 0.1
        nets.append(net.eval())
    return x, y, nets


def test_interpolation_endpoints_and_bn_modes():
    x, y, (a, b) = trained_pair()
    f = Objective(a, CrossEntropyLoss(), x, y, bn="recomputed", train_data=x)
    alphas = np.linspace(0, 1, 5)
    curves = {bn: interpolate(f, a, b, alphas, bn=bn, workers=1, progress=False) for bn in
              ("keep", "reset", "interpolate")}
    at_a = Objective(a, CrossEntropyLoss(), x, y, bn="running").evaluate(flatten_params(a))
    at_b = Objective(b, CrossEntropyLoss(), x, y, bn="running").evaluate(flatten_params(b))
    assert curves["keep"].values["loss"][0] == pytest.approx(at_a["loss"], rel=1e-13)
    assert curves["interpolate"].values["loss"][0] == pytest.approx(at_a["loss"], rel=1e-13)
    assert curves["interpolate"].values["loss"][-1] == pytest.approx(at_b["loss"], rel=1e-13)
    assert curves["keep"].values["loss"][-1] != pytest.approx(at_b["loss"], rel=1e-3)  # A's stats on B: stale
    assert curves["reset"].values["loss"][0] == pytest.approx(at_a["loss"], rel=1e-10)  # stats were a reset already
    assert np.max(np.abs(curves["reset"].values["loss"] - curves["keep"].values["loss"])) > 1e-2
    for curve in curves.values():
        assert set(curve.barriers) == {"loss", "error"}
        assert curve.barriers["loss"] == barrier(alphas, curve.values["loss"])
        assert np.allclose(curve.values["error"], 1 - curve.values["accuracy"])
    with pytest.raises(ValueError, match="bn must be"):
        interpolate(f, a, b, alphas, bn="states")


def test_interpolated_statistics_follow_repair_goal_statistics():
    bufs_a = {"1.running_mean": np.array([0.0, 2.0]), "1.running_var": np.array([1.0, 4.0]),
              "1.num_batches_tracked": 3}
    bufs_b = {"1.running_mean": np.array([2.0, 0.0]), "1.running_var": np.array([9.0, 16.0]),
              "1.num_batches_tracked": 7}
    mid = interpolate_buffers(bufs_a, bufs_b, 0.5)
    assert np.allclose(mid["1.running_mean"], [1.0, 1.0])
    assert np.allclose(mid["1.running_var"], [4.0, 9.0])  # std (1+3)/2 = 2, (2+4)/2 = 3
    assert mid["1.num_batches_tracked"] == 3


def test_santurkar_measurements_on_a_quadratic_are_exact():
    """A linear model with MSE: the gradient is affine, g(x - eta g) = g - eta H g, so every eta gives beta = |Hg|/|g|
    and the loss along the gradient is the quadratic's exact value."""
    rng = np.random.default_rng(0)
    x, target = rng.normal(size=(40, 5)), rng.normal(size=(40, 2))
    f = Objective(Linear(5, 2, rng=0), MSELoss(), x, target, bn="running")
    etas = np.array([0.05, 0.1, 0.4])
    s = gradient_step_smoothness(f, etas=etas)
    loss0, g = f.grad(f.theta0)
    hg = f.hvp(f.theta0, g).value
    assert np.allclose(s.betas, np.linalg.norm(hg) / np.linalg.norm(g), rtol=1e-10)
    assert s.beta_eff == pytest.approx(np.linalg.norm(hg) / np.linalg.norm(g), rel=1e-10)
    assert np.allclose(s.losses, loss0 - etas * (g @ g) + 0.5 * etas ** 2 * (g @ hg), rtol=1e-12)
    assert np.allclose(s.grad_changes, etas * np.linalg.norm(hg), rtol=1e-10)
    assert s.loss_range == (s.losses.min(), s.losses.max()) and s.settings["bn"] == "running"


def test_santurkar_with_bn_uses_batch_statistics_of_the_same_batch():
    x, y = blobs()
    net = Sequential(Linear(4, 8, rng=0), GroupNorm(2, 8), Tanh(), Linear(8, 3, rng=1))
    f = Objective(bn_net(), CrossEntropyLoss(), x, y, bn="batch")
    s = gradient_step_smoothness(f)
    assert s.settings["bn"] == "batch" and len(s.etas) == 8 and s.etas[0] == 0.05 and s.etas[-1] == 0.4
    loss, g = f.grad(f.theta0)
    assert s.losses[-1] == pytest.approx(f.value(f.theta0 - 0.4 * g), rel=1e-14)
    assert np.all(np.isfinite(s.betas)) and s.beta_eff == s.betas.max()
    other = gradient_step_smoothness(Objective(net, CrossEntropyLoss(), x, y, bn="batch"))
    assert other.beta_eff != s.beta_eff
