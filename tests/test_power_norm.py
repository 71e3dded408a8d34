"""PowerNorm: the layer against a loop-by-loop transcription of the official code, forward and approximate backward,
over several steps in and after warmup; the exact backward against finite differences (with a padding mask, which
the spec table cannot pass); the relations between the surrogate and the exact gradient; state, errors, dtypes.

The transcription (``RefPowerNorm``) is written here independently of ``normref.ops.power_norm``: scalar loops in the
official code's own layout ``(T, B, C)`` with ``pad_mask (B, T)``, so it also tests the documented layout mapping
(``x.transpose(1, 2, 0)``).
"""

import copy
import math

import numpy as np
import pytest

from normref import PowerNorm
from normref.ops.power_norm import (power_norm_backward, power_norm_backward_approx, power_norm_forward,
                                    update_running_phi)
from normref.testing.gradcheck import check_function, check_layer, norm_rel_error
from normref.testing.specs import get_spec

TIGHT = 1e-12  # loops and vectorized code sum in different orders: a few ulps of O(1) values


class RefPowerNorm:
    """The official MaskPowerNorm + GroupScaling1D + PowerFunction, as scalar loops (code form of the backward)."""

    def __init__(self, C, G, eps, alpha_fwd, alpha_bkw, warmup_iters):
        self.C, self.G, self.eps, self.af, self.ab, self.Tw = C, G, eps, alpha_fwd, alpha_bkw, warmup_iters
        self.phi = [1.0] * C
        self.E = [0.0] * C  # ema_gz, the code's form
        self.nu = [0.0] * C  # the paper's form, nu = (1 - alpha_bkw) E, tracked by its own recurrence
        self.t = 0

    def forward(self, x, pad, gamma, beta):
        T, B, C = x.shape
        m = C // self.G
        xs, s = np.zeros_like(x), np.zeros((T, B, self.G))
        for i in range(T):
            for b in range(B):
                for k in range(self.G):
                    ms = sum(x[i, b, c] ** 2 for c in range(k * m, (k + 1) * m)) / m
                    s[i, b, k] = 1.0 / math.sqrt(ms + 1e-5)
                    for c in range(k * m, (k + 1) * m):
                        xs[i, b, c] = x[i, b, c] * s[i, b, k]
        self.t += 1
        t = self.t
        q = []
        for c in range(C):
            vals = [xs[i, b, c] ** 2 for i in range(T) for b in range(B) if pad is None or not pad[b, i]]
            q.append(sum(vals) / len(vals))
        denom = q if t <= self.Tw else list(self.phi)
        z, y = np.zeros_like(x), np.zeros_like(x)
        for i in range(T):
            for b in range(B):
                for c in range(C):
                    z[i, b, c] = xs[i, b, c] / math.sqrt(denom[c] + self.eps)
                    y[i, b, c] = gamma[c] * z[i, b, c] + beta[c]
        for c in range(C):
            if t < self.Tw:
                self.phi[c] = self.phi[c] * (t - 1) / t + q[c] / t
            self.phi[c] = self.af * self.phi[c] + (1 - self.af) * q[c]
        self.saved = (xs, s, q, z, gamma)
        return y

    def backward(self, dy):
        xs, s, q, z, gamma = self.saved
        T, B, C = dy.shape
        gxs, dgamma, dbeta = np.zeros_like(dy), np.zeros(C), np.zeros(C)
        for c in range(C):
            positions = [(i, b) for i in range(T) for b in range(B)]
            g = {p: gamma[c] * dy[p + (c,)] for p in positions}
            a = {p: g[p] - (1 - self.ab) * self.E[c] * z[p + (c,)] for p in positions}
            # the paper's form: A = g - nu_{t-1} z, nu_t = nu_{t-1} (1 - (1-alpha) Gamma) + (1-alpha) Lambda
            a_paper = {p: g[p] - self.nu[c] * z[p + (c,)] for p in positions}
            assert max(abs(a[p] - a_paper[p]) for p in positions) <= 1e-12 * (1 + max(abs(v) for v in a.values()))
            big_gamma = sum(z[p + (c,)] ** 2 for p in positions) / len(positions)
            big_lambda = sum(g[p] * z[p + (c,)] for p in positions) / len(positions)
            self.nu[c] = self.nu[c] * (1 - (1 - self.ab) * big_gamma) + (1 - self.ab) * big_lambda
            self.E[c] += sum(a[p] * z[p + (c,)] for p in positions) / len(positions)
            for p in positions:
                gxs[p + (c,)] = a[p] / math.sqrt(q[c] + self.eps)
                dgamma[c] += dy[p + (c,)] * z[p + (c,)]
                dbeta[c] += dy[p + (c,)]
        m = C // self.G
        dx = np.zeros_like(dy)
        for i in range(T):
            for b in range(B):
                for k in range(self.G):
                    chans = range(k * m, (k + 1) * m)
                    dot = sum(gxs[i, b, c] * xs[i, b, c] for c in chans) / m
                    for c in chans:
                        dx[i, b, c] = s[i, b, k] * (gxs[i, b, c] - xs[i, b, c] * dot)
        return dx, dgamma, dbeta


def to_ours(a):  # (T, B, C) -> (B, C, T)
    return a.transpose(1, 2, 0)


def from_ours(a):  # (B, C, T) -> (T, B, C)
    return a.transpose(2, 0, 1)


def make_pad(B, T):
    pad = np.zeros((B, T), bool)
    pad[0, T - 2:] = True  # sample 0 is two tokens shorter
    pad[2, T - 1] = True
    return pad


@pytest.mark.parametrize("use_pad", [False, True])
@pytest.mark.parametrize("warmup_iters", [3, 0])
def test_forward_and_approx_backward_match_transcription_over_steps(use_pad, warmup_iters):
    """Seven steps: warmup (t <= 3, with t = 3 the step where the cumulative average stops) and after warmup."""
    rng = np.random.default_rng(0)
    T, B, C, G = 5, 3, 4, 2
    alpha_fwd, alpha_bkw, eps = 0.8, 0.7, 1e-3
    layer = PowerNorm(C, eps=eps, alpha_fwd=alpha_fwd, alpha_bkw=alpha_bkw, warmup_iters=warmup_iters, group_num=G,
                      backward="approx")
    layer.params["gamma"] = 1.0 + 0.5 * rng.standard_normal(C)
    layer.params["beta"] = rng.standard_normal(C)
    ref = RefPowerNorm(C, G, eps, alpha_fwd, alpha_bkw, warmup_iters)
    pad = make_pad(B, T) if use_pad else None
    for step in range(1, 8):
        # channel scales drift between steps, so that batch and running statistics differ
        x = rng.standard_normal((T, B, C)) * rng.uniform(0.5, 3.0, size=C) + rng.uniform(-1, 1, size=C)
        dy = rng.standard_normal((T, B, C))
        y = from_ours(layer(to_ours(x), pad_mask=pad))
        y_ref = ref.forward(x, pad, layer.params["gamma"], layer.params["beta"])
        assert norm_rel_error(y, y_ref) < TIGHT, f"forward, step {step}"
        assert norm_rel_error(layer.buffers["running_phi"], np.array(ref.phi)) < TIGHT
        assert layer.cache.batch_stats == (step <= warmup_iters)
        layer.zero_grad()
        dx = from_ours(layer.backward(to_ours(dy)))
        dx_ref, dgamma_ref, dbeta_ref = ref.backward(dy)
        assert norm_rel_error(dx, dx_ref) < TIGHT, f"dx, step {step}"
        assert norm_rel_error(layer.grads["gamma"], dgamma_ref) < TIGHT
        assert norm_rel_error(layer.grads["beta"], dbeta_ref) < TIGHT
        assert norm_rel_error(layer.buffers["ema_gz"], np.array(ref.E)) < TIGHT, f"ema_gz, step {step}"
        assert layer.buffers["iters"] == step


def test_the_surrogate_is_not_the_exact_gradient():
    """The transcription tests could pass with an exact backward; make sure the surrogate really differs."""
    rng = np.random.default_rng(1)
    layer = PowerNorm(4, group_num=2, warmup_iters=10, backward="approx")
    for _ in range(3):
        layer(rng.standard_normal((6, 4, 3)))
        layer.backward(rng.standard_normal((6, 4, 3)))
    x, dy = rng.standard_normal((6, 4, 3)), rng.standard_normal((6, 4, 3))
    layer(x)
    approx = layer.backward(dy)
    exact, _, _ = power_norm_backward(dy, layer.cache)
    assert norm_rel_error(approx, exact) > 1e-2


def _fd_check(x, gamma, beta, hyper, title):
    """Finite differences and the complex step of the op with everything but (x, gamma, beta) fixed."""
    rng = np.random.default_rng(5)
    y, cache = power_norm_forward(x, gamma, beta, **hyper)
    dy = rng.standard_normal(y.shape)
    dx, dgamma, dbeta = power_norm_backward(dy, cache)

    def f(x, gamma, beta):
        return power_norm_forward(x, gamma, beta, **hyper)[0]

    return check_function(f, {"x": x, "gamma": gamma, "beta": beta}, {"x": dx, "gamma": dgamma, "beta": dbeta}, dy,
                          methods=("central", "complex"), title=title)


@pytest.mark.parametrize("warm", [True, False])
def test_exact_backward_with_pad_mask_matches_finite_differences(warm):
    rng = np.random.default_rng(2)
    x = 3.0 * rng.standard_normal((3, 4, 5)) + 1.0
    gamma, beta = 1.0 + 0.5 * rng.standard_normal(4), rng.standard_normal(4)
    pad = make_pad(3, 5)
    stats = None if warm else (None, rng.uniform(0.5, 2.0, 4))
    report = _fd_check(x, gamma, beta, dict(group_num=2, eps=1e-3, pad_mask=pad, stats=stats), "masked")
    assert report.passed, report.table()


def test_exact_backward_without_group_scaling_groups_and_spatial_dims():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 6, 3, 2)) + 2.0
    report = _fd_check(x, 1.0 + rng.standard_normal(6), rng.standard_normal(6), dict(group_num=3), "4-d")
    assert report.passed, report.table()


def test_spec_configurations_are_the_intended_regimes():
    """The two specs really check warmup (batch statistic) and post-warmup (running statistic)."""
    rng = np.random.default_rng(0)
    for name, batch_stats in (("PowerNorm", True), ("PowerNorm-post", False)):
        spec = get_spec(name)
        layer = spec.build(spec.shapes[0], True, rng=rng)
        layer(spec.make_input(rng, spec.shapes[0]))
        assert layer.cache.batch_stats is batch_stats


def _warm_cache(rng, eps, **fwd):
    x = rng.standard_normal((8, 4, 3)) * 2.0
    return x, power_norm_forward(x, 1.0 + 0.5 * rng.standard_normal(4), rng.standard_normal(4), group_num=2,
                                 eps=eps, **fwd)[1]


def test_alpha_bkw_zero_tracks_the_current_statistic_one_step_late():
    """In warmup with alpha_bkw = 0 (and eps = 0, no padding, so Gamma = 1) the update sets nu to the current
    Lambda exactly, so a second backward through the same cache (gradient accumulation) is the exact gradient;
    the first one, which still uses the previous nu, is not."""
    rng = np.random.default_rng(4)
    _, cache = _warm_cache(rng, eps=0.0)
    dy = rng.standard_normal((8, 4, 3))
    exact, _, _ = power_norm_backward(dy, cache)
    ema = rng.standard_normal(4)  # whatever the previous steps left
    first, _, _, ema = power_norm_backward_approx(dy, cache, ema, alpha_bkw=0.0)
    second, _, _, ema_again = power_norm_backward_approx(dy, cache, ema, alpha_bkw=0.0)
    assert norm_rel_error(first, exact) > 1e-2
    assert norm_rel_error(second, exact) < 1e-12
    assert norm_rel_error(ema_again, ema) < 1e-12  # nu is a fixed point once it equals Lambda


def test_alpha_bkw_one_is_the_stop_gradient_in_warmup_and_exact_after_with_the_forward_denominator():
    rng = np.random.default_rng(5)
    x, cache = _warm_cache(rng, eps=1e-5)
    dy = rng.standard_normal(x.shape)
    ema = rng.standard_normal(4)
    # warmup, alpha_bkw = 1: the gradient with the batch statistic held fixed
    frozen_cache = power_norm_forward(x, cache.norm.gamma_b.ravel(), None, group_num=2,
                                      stats=(None, cache.batch_q.ravel()))[1]
    frozen, _, _ = power_norm_backward(dy, frozen_cache)
    approx, _, _, _ = power_norm_backward_approx(dy, cache, ema, alpha_bkw=1.0)
    assert norm_rel_error(approx, frozen) < 1e-12
    # after warmup, alpha_bkw = 1 and the paper-recalled denominator: exactly the exact gradient
    _, post = _warm_cache(rng, eps=1e-5, stats=(None, rng.uniform(0.5, 2.0, 4)))
    exact, _, _ = power_norm_backward(dy, post)
    for denominator, close in (("forward", True), ("batch", False)):
        approx, _, _, _ = power_norm_backward_approx(dy, post, ema, alpha_bkw=1.0, denominator=denominator)
        assert (norm_rel_error(approx, exact) < 1e-12) is close


def test_update_running_phi_cumulative_then_ema():
    phi, q = np.array([1.0, 4.0]), np.array([3.0, 2.0])
    # t = 1 < T_w: cumulative average gives q, then the EMA keeps q
    assert np.allclose(update_running_phi(phi, q, step=1, alpha_fwd=0.9, warmup_iters=5), q)
    # t = T_w: the cumulative step is skipped
    assert np.allclose(update_running_phi(phi, q, step=5, alpha_fwd=0.9, warmup_iters=5), 0.9 * phi + 0.1 * q)
    assert np.allclose(update_running_phi(phi, q, step=3, alpha_fwd=0.5, warmup_iters=5),
                       0.5 * (phi * 2 / 3 + q / 3) + 0.5 * q)


def test_gradient_accumulation_updates_ema_gz_each_backward_and_eval_is_exact():
    rng = np.random.default_rng(6)
    layer = PowerNorm(4, group_num=2, backward="approx")
    x, dy = rng.standard_normal((5, 4)), rng.standard_normal((5, 4))
    layer(x)
    layer.backward(dy)
    once = layer.buffers["ema_gz"].copy()
    layer.backward(dy)
    assert not np.allclose(layer.buffers["ema_gz"], once)
    layer.eval()
    y = layer(x)
    before = layer.buffers["ema_gz"].copy()
    dx = layer.backward(dy)
    assert np.array_equal(layer.buffers["ema_gz"], before)
    assert norm_rel_error(dx, power_norm_backward(dy, layer.cache)[0]) == 0.0
    assert y.shape == x.shape


def test_check_layer_restores_backward_updated_state():
    rng = np.random.default_rng(7)
    layer = PowerNorm(4, group_num=2, backward="approx")
    layer(rng.standard_normal((5, 4, 3)))
    layer.backward(rng.standard_normal((5, 4, 3)))
    saved = copy.deepcopy(layer.buffers)
    report = check_layer(layer, rng.standard_normal((5, 4, 3)))
    assert not report.passed  # the surrogate is not the gradient of the forward
    for key, value in saved.items():
        assert np.array_equal(layer.buffers[key], value), key


def test_dtype_is_preserved_and_nothing_is_mutated():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((4, 4, 3)).astype(np.float32)
    gamma, beta = np.ones(4, np.float32) * 1.5, np.zeros(4, np.float32)
    ema = np.full(4, 0.25)
    copies = [a.copy() for a in (x, gamma, beta, ema)]
    y, cache = power_norm_forward(x, gamma, beta, group_num=2)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    dx, dgamma, _ = power_norm_backward(dy, cache)
    dxa, _, _, ema_new = power_norm_backward_approx(dy, cache, ema)
    assert y.dtype == dx.dtype == dgamma.dtype == dxa.dtype == np.float32
    assert ema_new.dtype == np.float64
    for a, b in zip((x, gamma, beta, ema), copies):
        assert np.array_equal(a, b)
    layer = PowerNorm(4, group_num=2, backward="exact")
    assert layer(x).dtype == np.float32 and layer.buffers["running_phi"].dtype == np.float64


def test_affine_false_and_eval_formula():
    rng = np.random.default_rng(9)
    layer = PowerNorm(4, affine=False, warmup_iters=1, backward="exact")
    assert layer.params == {}
    layer(rng.standard_normal((6, 4)))
    layer.eval()
    x = rng.standard_normal((6, 4))
    xs = x / np.sqrt((x ** 2).mean(axis=1, keepdims=True) + 1e-5)  # GroupScaling with one group
    expected = xs / np.sqrt(layer.buffers["running_phi"] + 1e-5)
    assert norm_rel_error(layer(x), expected) < 1e-14


@pytest.mark.parametrize("call,exc,match", [
    (lambda: power_norm_forward(np.ones(4)), ValueError, "dimensions"),
    (lambda: power_norm_forward(np.ones((3, 4), int)), TypeError, "float"),
    (lambda: power_norm_forward(np.ones((3, 4)), group_num=3), ValueError, "num_groups"),
    (lambda: power_norm_forward(np.ones((3, 4)), np.ones(3)), ValueError, "gamma"),
    (lambda: power_norm_forward(np.ones((3, 4, 2)), pad_mask=np.zeros((3, 2))), TypeError, "pad_mask"),
    (lambda: power_norm_forward(np.ones((3, 4, 2)), pad_mask=np.zeros((2, 3), bool)), ValueError, "pad_mask"),
    (lambda: power_norm_forward(np.ones((3, 4, 2)), pad_mask=np.ones((3, 2), bool)), ValueError, "padding"),
    (lambda: power_norm_forward(np.ones((3, 4)), stats=(None, np.ones(3))), ValueError, "stats"),
    (lambda: power_norm_forward(np.ones((3, 4)), eps=-1.0), ValueError, "eps"),
    (lambda: PowerNorm(4, backward="fast"), ValueError, "backward"),
    (lambda: PowerNorm(4), TypeError, "backward"),
    (lambda: PowerNorm(4, alpha_fwd=1.5, backward="exact"), ValueError, "alpha_fwd"),
    (lambda: PowerNorm(4, warmup_iters=-1, backward="exact"), ValueError, "warmup_iters"),
    (lambda: PowerNorm(4, backward="exact")(np.ones((3, 5))), ValueError, "channels"),
    (lambda: PowerNorm(4, backward="exact").backward(np.ones((3, 4))), RuntimeError, "before forward"),
    (lambda: update_running_phi(np.ones(2), np.ones(2), step=0), ValueError, "step"),
])
def test_bad_input_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_bad_approx_arguments():
    _, cache = power_norm_forward(np.random.default_rng(0).standard_normal((4, 4)))
    dy = np.ones((4, 4))
    with pytest.raises(ValueError, match="ema_gz"):
        power_norm_backward_approx(dy, cache, np.zeros(3))
    with pytest.raises(ValueError, match="denominator"):
        power_norm_backward_approx(dy, cache, np.zeros(4), denominator="running")
    with pytest.raises(ValueError, match="alpha_bkw"):
        power_norm_backward_approx(dy, cache, np.zeros(4), alpha_bkw=2.0)
