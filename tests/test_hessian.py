"""normref.landscape curvature: HVPs by complex step vs finite differences of gradients (no autodiff anywhere), the
scale-invariance identity of BN, Lanczos eigenpairs vs dense eigh, Hutchinson, SLQ quadrature, per-layer blocks and
sharpness tracking under full-batch GD (with resume)."""

import numpy as np
import pytest

from normref.landscape import (Objective, dense_hessian, gd_sharpness, hutchinson_trace, lanczos, layer_blocks,
                               most_negative, per_layer, slq, spectral_density, top_eigenpairs)
from normref.nn import BatchNorm, CrossEntropyLoss, Linear, Module, ReLU, Sequential, Tanh


def blobs(n=48, seed=0):
    rng = np.random.default_rng(seed)
    centers = 2.0 * rng.normal(size=(3, 4))
    y = rng.integers(0, 3, n)
    return centers[y] + rng.normal(size=(n, 4)), y


def objective(bn="batch", eps=1e-5, act=Tanh, steps=40, dtype=np.float64):
    """A trained Linear-BN-act-Linear net (P = 83, above the dense cut-off of the eigen solvers)."""
    x, y = blobs()
    net = Sequential(Linear(4, 8, rng=0, dtype=dtype), BatchNorm(8, eps=eps, dtype=dtype), act(),
                     Linear(8, 3, rng=1, dtype=dtype))
    f = Objective(net, CrossEntropyLoss(), x, y, bn="batch", ghost_batch_size=24)
    theta = f.theta0
    for _ in range(steps):
        theta = theta - 0.5 * f.grad(theta)[1]
    return f.replace(bn=bn, ghost_batch_size=24 if bn == "batch" else None), theta


@pytest.mark.parametrize("bn", ["batch", "running"])
def test_complex_step_hvp_matches_central_differences_of_gradients(bn):
    f, theta = objective(bn)
    v = np.random.default_rng(0).normal(size=theta.size)
    exact = f.hvp(theta, v, method="complex")
    fd = f.hvp(theta, v, method="central")
    assert exact.method == "complex" and fd.method == "central" and f.hvp(theta, v).method == "complex"
    err = np.linalg.norm(fd.value - exact.value)
    assert err / np.linalg.norm(exact.value) < 1e-8
    # the central-difference error estimate is honest: within a factor 30 of the true error, and small
    assert err < 30 * fd.error_estimate and fd.error_estimate < 1e-7 * np.linalg.norm(exact.value)
    assert exact.error_estimate < 1e-14 * np.linalg.norm(exact.value) * 10
    # linearity in v, and symmetry of the operator: u.Hv = v.Hu
    u = np.random.default_rng(1).normal(size=theta.size)
    hu = f.hvp(theta, u, method="complex").value
    assert np.allclose(f.hvp(theta, 2 * v - u, method="complex").value, 2 * exact.value - hu, rtol=0, atol=1e-12)
    assert abs(u @ exact.value - v @ hu) < 1e-13 * np.linalg.norm(u) * np.linalg.norm(exact.value)


def test_float32_model_keeps_its_dtype_and_uses_the_float32_step():
    f, theta = objective("batch", dtype=np.float32, steps=0)
    v = np.random.default_rng(0).normal(size=theta.size)
    exact = f.hvp(theta, v, method="complex")
    fd = f.hvp(theta, v, method="central")
    assert fd.step == 1e-2 and all(p.dtype == np.float32 for _, p in f.model.named_parameters())
    assert np.linalg.norm(fd.value - exact.value) / np.linalg.norm(exact.value) < 1e-2


def test_bn_scale_invariance_identity_needs_eps_zero():
    """L(c W1, c b1) = L(W1, b1) for the Linear feeding train-mode BN with eps = 0, hence H [w; 0] = -[grad_w; 0]."""
    for eps, bound in ((0.0, 1e-11), (1e-5, None)):
        f, theta = objective("batch", eps=eps)
        loss, g = f.grad(theta)
        block = layer_blocks(f.model)["0"]  # weight and bias of the first Linear
        u = np.zeros_like(theta)
        u[block] = theta[block]
        hu = f.hvp(theta, u).value
        target = np.zeros_like(theta)
        target[block] = -g[block]
        rel = np.linalg.norm(hu - target) / np.linalg.norm(g[block])
        assert abs(g[block] @ theta[block]) < 1e-12 * np.linalg.norm(g) * np.linalg.norm(theta) or eps > 0
        if bound is not None:
            assert rel < bound
        else:
            assert rel > 1e-9  # the BN epsilon breaks exact scale invariance (landscape.md §6)


def test_eigenpairs_match_dense_eigh_and_report_residuals():
    f, theta = objective("batch")
    h = dense_hessian(f, theta)
    assert np.abs(h - h.T).max() < 1e-13 * np.abs(h).max()
    evals = np.linalg.eigvalsh(h)
    top = top_eigenpairs(f, 3, theta=theta)
    assert top.method == "complex" and top.n_hvp > 3
    assert np.allclose(top.values, evals[::-1][:3], rtol=1e-9)
    assert np.all(top.residuals < 1e-8 * abs(evals).max())
    neg = most_negative(f, 2, theta=theta)
    assert evals[0] < 0 and np.allclose(neg.values, evals[:2], rtol=1e-7, atol=1e-10)
    v = neg.vectors[:, 0]
    assert v @ h @ v == pytest.approx(evals[0], rel=1e-7)


def test_central_difference_eigenvalues_are_close_and_labelled():
    f, theta = objective("running")
    top_c = top_eigenpairs(f, 2, theta=theta, method="complex")
    top_fd = top_eigenpairs(f, 2, theta=theta, method="central", tol=1e-8)
    assert top_fd.method == "central"
    assert np.allclose(top_fd.values, top_c.values, rtol=1e-7)


def test_hutchinson_trace_is_unbiased_with_an_honest_standard_error():
    f, theta = objective("batch")
    trace = np.trace(dense_hessian(f, theta))
    est = hutchinson_trace(f, 200, theta=theta, seed=3)
    assert len(est.samples) == 200 and est.stderr > 0
    assert abs(est.estimate - trace) < 4 * est.stderr
    # Rademacher variance identity: Var(v^T H v) = 2 (|H|_F^2 - sum_j H_jj^2)
    h = dense_hessian(f, theta)
    var = 2 * (np.sum(h * h) - np.sum(np.diag(h) ** 2))
    assert est.samples.var(ddof=1) == pytest.approx(var, rel=0.35)


def test_lanczos_and_slq_are_gauss_quadrature():
    f, theta = objective("batch")
    h = dense_hessian(f, theta)
    evals = np.linalg.eigvalsh(h)
    v0 = np.random.default_rng(0).choice([-1.0, 1.0], size=h.shape[0])
    alphas, betas, q = lanczos(lambda v: h @ v, v0, 20)
    assert np.abs(q.T @ q - np.eye(q.shape[1])).max() < 1e-12  # full reorthogonalization
    t = np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)
    assert np.abs(q.T @ h @ q - t).max() < 1e-11
    result = slq(f, m=20, n_v=2, theta=theta, seed=0)
    assert result.method == "complex" and len(result.nodes) == 2
    for r, (nodes, weights) in enumerate(zip(result.nodes, result.weights)):
        v = np.random.default_rng([0, r]).choice([-1.0, 1.0], size=h.shape[0]) / np.sqrt(h.shape[0])
        assert weights.sum() == pytest.approx(1.0)
        for j in (1, 2, 3):  # an m-point Gauss rule is exact for polynomials of degree < 2m
            assert np.sum(weights * nodes ** j) == pytest.approx(v @ np.linalg.matrix_power(h, j) @ v, rel=1e-9)
    full = slq(f, m=h.shape[0], n_v=1, theta=theta)
    assert full.nodes[0].max() == pytest.approx(evals[-1], rel=1e-9)
    assert full.nodes[0].min() == pytest.approx(evals[0], rel=1e-6, abs=1e-9)
    for rule in ("variance", "std"):
        grid, phi = result.density(rule=rule)
        assert np.all(phi >= 0) and np.sum(phi) * (grid[1] - grid[0]) == pytest.approx(1.0)
        assert grid[np.argmax(phi)] < evals[-1]  # the bulk, not the outliers, holds the mass
    with pytest.raises(ValueError, match="rule"):
        spectral_density(result.nodes, result.weights, rule="width")


def test_per_layer_blocks_are_the_diagonal_blocks():
    f, theta = objective("batch")
    h = dense_hessian(f, theta)
    blocks = layer_blocks(f.model)
    assert list(blocks) == ["0", "1", "3"]
    table = per_layer(f, theta=theta, n_trace=8)
    for name, sl in blocks.items():
        sub = h[sl, sl]
        assert table[name]["size"] == sub.shape[0]
        assert table[name]["top_eigenvalue"] == pytest.approx(np.linalg.eigvalsh(sub)[-1], rel=1e-8)
    block_h = dense_hessian(f, theta, block="3")
    assert np.allclose(block_h, h[blocks["3"], blocks["3"]], atol=1e-13)
    with pytest.raises(ValueError, match="unknown block"):
        top_eigenpairs(f, 1, block="9")


class AbsAct(Module):
    """|x|: not complex-analytic (np.abs of a complex number is its modulus)."""

    def forward(self, x):
        self.x = x
        return np.abs(x)

    def backward(self, dy):
        return dy * np.sign(np.real(self.x))


def test_auto_falls_back_to_central_when_the_model_is_not_analytic():
    x, y = blobs()
    f = Objective(Sequential(Linear(4, 6, rng=0), AbsAct(), Linear(6, 3, rng=1)), CrossEntropyLoss(), x, y,
                  bn="running")
    assert not f.is_analytic()
    v = np.random.default_rng(0).normal(size=f.num_params)
    assert f.hvp(f.theta0, v).method == "central"
    smooth, _ = objective("running", steps=0)
    assert smooth.is_analytic()


def test_relu_network_complex_step_is_the_activation_pattern_hessian():
    """ReLU: the complex step equals central differences with a step too small to flip any unit."""
    f, theta = objective("batch", act=ReLU, steps=5)
    v = np.random.default_rng(0).normal(size=theta.size)
    exact = f.hvp(theta, v, method="complex").value
    tiny = f.hvp(theta, v, method="central", step=1e-6).value
    assert np.linalg.norm(tiny - exact) / np.linalg.norm(exact) < 1e-6


def test_recomputed_policy_refuses_hvps():
    x, y = blobs()
    f = Objective(Sequential(Linear(4, 3, rng=0), BatchNorm(3)), CrossEntropyLoss(), x, y, bn="recomputed",
                  train_data=x)
    with pytest.raises(ValueError, match="recomputed"):
        f.hvp(f.theta0, np.ones(f.num_params))


def test_gd_sharpness_tracks_the_top_eigenvalue_and_resumes(tmp_path):
    f, theta = objective("batch", steps=0)
    full = gd_sharpness(f, lr=0.5, steps=12, every=4, progress=False)
    assert full.threshold == 4.0 and list(full.eig_steps) == [0, 4, 8] and full.loss.shape == (12,)
    assert full.sharpness[0, 0] == pytest.approx(top_eigenpairs(f, 1).values[0], rel=1e-8)
    assert full.loss[-1] < full.loss[0]
    # replay GD by hand: the eigenvalue at step 8 is that of theta_8
    th = f.theta0
    for _ in range(8):
        th = th - 0.5 * f.grad(th)[1]
    assert full.sharpness[2, 0] == pytest.approx(top_eigenpairs(f, 1, theta=th).values[0], rel=1e-8)
    path = tmp_path / "eos.npz"
    part = gd_sharpness(f, lr=0.5, steps=6, every=4, store=path, progress=False)  # "interrupted" after 6 steps
    assert len(part.loss) == 6
    resumed = gd_sharpness(f, lr=0.5, steps=12, every=4, store=path, progress=False)
    assert np.array_equal(resumed.loss, full.loss) and np.array_equal(resumed.sharpness, full.sharpness)
    assert np.array_equal(resumed.theta, full.theta)
    with pytest.raises(ValueError, match="different run"):
        gd_sharpness(f, lr=0.1, steps=12, every=4, store=path, progress=False)
