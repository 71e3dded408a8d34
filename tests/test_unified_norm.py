"""Unified Normalization: the layer against a loop-by-loop transcription of the official code (forward, outlier
filter, gradient compensation, windowed backward statistics) over ten steps with an outlier step; the exact backward
against finite differences in every regime (with padding); window 1, where the code's rule is exact; state, errors,
dtypes.

``RefUN`` is written here independently of ``normref.ops.unified_norm``, with scalar loops, in the code's own
layout ``(B, N, C)`` and ``pad_mask (B, N)``; the layer gets ``x.transpose(0, 2, 1)`` (the documented mapping).
"""

import copy
import math

import numpy as np
import pytest

from normref import UnifiedNorm
from normref.ops.unified_norm import (UnifiedNormGradState, initial_grad_state, initial_state,
                                      unified_norm_backward, unified_norm_backward_approx, unified_norm_forward,
                                      update_state)
from normref.testing.gradcheck import check_function, check_layer, norm_rel_error
from normref.testing.specs import get_spec

TIGHT = 1e-12  # different summation orders: a few ulps


class RefUN:
    """UN1d / UN2dFunction of the official code, as scalar loops."""

    def __init__(self, C, wf, wb, warmup, filt, eps, momentum, floor):
        self.C, self.wf, self.wb, self.Tw, self.filt, self.eps, self.m, self.floor = \
            C, wf, wb, warmup, filt, eps, momentum, floor
        self.rv, self.E = [1.0] * C, [0.0] * C
        self.bx = [[0.0] * C for _ in range(wf)]
        self.bg = [[0.0] * C for _ in range(wb)]
        self.t, self.skips = 0, 0

    def forward(self, x, pad, gamma, beta):
        B, N, C = x.shape
        self.t += 1
        t = self.t
        skip = self.wf <= 1
        kept = [(b, n) for b in range(B) for n in range(N) if pad is None or not pad[b, n]]
        x2 = [sum(x[b, n, c] ** 2 for b, n in kept) / len(kept) for c in range(C)]
        roots = [math.sqrt(v) for row in self.bx for v in row]
        mu = sum(roots) / len(roots)
        rho = sum((v - mu) ** 2 for v in roots) / (len(roots) - 1)
        k = t % self.wf
        self.bx[k] = list(x2)
        outlier = False
        if t >= self.Tw and self.filt:
            for c in range(C):
                am = sum(self.bx[j][c] for j in range(self.wf)) / self.wf
                gm = math.exp(sum(math.log(self.bx[j][c]) for j in range(self.wf)) / self.wf)
                if am - gm > rho * self.wf:
                    outlier = True
            if outlier:
                self.bx[k] = list(self.rv)
                skip = True
                self.skips += 1
        if t <= self.wf or t < self.Tw or skip:
            var = list(x2)
        else:
            var = [math.exp(sum(math.log(self.bx[j][c]) for j in range(self.wf)) / self.wf) for c in range(C)]
        r = []
        for c in range(C):
            rc = math.sqrt(var[c] + self.eps) / math.sqrt(self.rv[c] + self.eps)
            if t <= max(self.floor, self.Tw) or skip:
                rc = 1.0
            else:
                rc = min(max(rc, 1 / 5), 5)
            r.append(rc)
        z, y = np.zeros_like(x), np.zeros_like(x)
        for b in range(B):
            for n in range(N):
                for c in range(C):
                    z[b, n, c] = x[b, n, c] / math.sqrt(var[c] + self.eps)
                    y[b, n, c] = gamma[c] * z[b, n, c] + beta[c]
        for c in range(C):
            self.rv[c] = self.m * self.rv[c] + (1 - self.m) * var[c]
        self.saved = (z, var, r, skip, gamma)
        return y, outlier

    def backward(self, dy):
        z, var, r, skip, gamma = self.saved
        B, N, C = dy.shape
        t = self.t
        positions = [(b, n) for b in range(B) for n in range(N)]
        g = np.zeros_like(dy)
        for b, n in positions:
            for c in range(C):
                g[b, n, c] = dy[b, n, c] * gamma[c] * r[c]
        gz = [sum(g[b, n, c] * z[b, n, c] for b, n in positions) / len(positions) for c in range(C)]
        self.bg[t % self.wb] = list(self.E) if skip else list(gz)
        if t <= self.wb or t < self.Tw or skip:
            mean_gz = list(gz)
        else:
            mean_gz = [sum(self.bg[j][c] for j in range(self.wb)) / self.wb for c in range(C)]
        self.E = [self.E[c] * self.m + (1 - self.m) * mean_gz[c] for c in range(C)]
        dx, dgamma, dbeta = np.zeros_like(dy), np.zeros(C), np.zeros(C)
        for b, n in positions:
            for c in range(C):
                sub = mean_gz[c] if skip else self.E[c]
                dx[b, n, c] = (g[b, n, c] - sub * z[b, n, c]) / math.sqrt(var[c] + self.eps)
                dgamma[c] += dy[b, n, c] * r[c] * z[b, n, c]
                dbeta[c] += dy[b, n, c]
        return dx, dgamma, dbeta


def to_ours(a):  # (B, N, C) -> (B, C, N)
    return a.transpose(0, 2, 1)


SCALES = np.array([1.0, 1.5, 2.0])  # similar channel scales: the outlier threshold rho·W_f stays small


def step_input(rng, step, outlier_step=7):
    x = rng.standard_normal((4, 5, 3)) * SCALES * rng.uniform(0.8, 1.25)
    return 20.0 * x if step == outlier_step else x


@pytest.mark.parametrize("use_pad", [False, True])
@pytest.mark.parametrize("windows,warmup", [((3, 2), 3), ((2, 4), 2)])
def test_forward_and_approx_backward_match_transcription_over_steps(windows, warmup, use_pad):
    """Ten steps with T_w <= 3 and a compensation floor of 4 (the code's 1000, made small): warmup, smoothed steps
    with r != 1, an outlier at step 7 (input scaled by 20), and the clipped r after it. The second window pair
    makes the boundaries t <= W_f (at t = T_w = W_f) and t <= W_b (with W_b > T_w) matter."""
    rng = np.random.default_rng(0)
    C, eps, momentum = 3, 1e-5, 0.8
    layer = UnifiedNorm(C, window_size=windows, warmup_iters=warmup, outlier_filtration=True, eps=eps,
                        momentum=momentum, compensation_floor=4, backward="approx")
    layer.params["gamma"] = 1.0 + 0.5 * rng.standard_normal(C)
    layer.params["beta"] = rng.standard_normal(C)
    ref = RefUN(C, *windows, warmup, True, eps, momentum, 4)
    pad = None
    if use_pad:
        pad = np.zeros((4, 5), bool)
        pad[1, 3:] = True
    seen = set()
    for step in range(1, 11):
        x, dy = step_input(rng, step), rng.standard_normal((4, 5, 3))
        y = to_ours(layer(to_ours(x), pad_mask=pad))
        y_ref, outlier = ref.forward(x, pad, layer.params["gamma"], layer.params["beta"])
        cache = layer.cache
        assert cache.outlier == outlier, f"outlier flag, step {step}"
        assert outlier or step != 7  # the scaled batch is always caught (later steps may be flagged too)
        seen.add("outlier" if outlier else "smoothed" if np.ndim(cache.stat_weight) else "raw")
        if np.any(cache.r != 1.0):
            seen.add("compensated")
        assert norm_rel_error(y, y_ref) < TIGHT, f"forward, step {step}"
        layer.zero_grad()
        dx = to_ours(layer.backward(to_ours(dy)))
        dx_ref, dgamma_ref, dbeta_ref = ref.backward(dy)
        assert norm_rel_error(dx, dx_ref) < TIGHT, f"dx, step {step}"
        assert norm_rel_error(layer.grads["gamma"], dgamma_ref) < TIGHT, f"dgamma, step {step}"
        assert norm_rel_error(layer.grads["beta"], dbeta_ref) < TIGHT
        for name, value in (("running_var", ref.rv), ("ema_gz", ref.E), ("buffer_x2", ref.bx),
                            ("buffer_gz", ref.bg)):
            assert norm_rel_error(layer.buffers[name], np.array(value)) < TIGHT, f"{name}, step {step}"
        assert layer.buffers["skip_counter"] == ref.skips and layer.buffers["iters"] == step
    assert seen == {"raw", "smoothed", "outlier", "compensated"}  # every branch of the rule was exercised


def test_window_one_rule_is_the_exact_gradient():
    """W_f = W_b = 1: every step is skipped and r = 1, so the code's rule is the exact gradient (no padding)."""
    rng = np.random.default_rng(1)
    layer = UnifiedNorm(3, window_size=1, warmup_iters=1, compensation_floor=0, backward="approx")
    for _ in range(4):
        x, dy = 2.0 * rng.standard_normal((6, 3, 2)), rng.standard_normal((6, 3, 2))
        layer(x)
        exact, _, _ = unified_norm_backward(dy, layer.cache)
        layer.zero_grad()
        assert norm_rel_error(layer.backward(dy), exact) < 1e-13


def test_the_rule_differs_from_the_exact_gradient_when_smoothing():
    rng = np.random.default_rng(2)
    layer = UnifiedNorm(3, window_size=2, warmup_iters=2, compensation_floor=0, backward="approx")
    for _ in range(5):
        layer(rng.standard_normal((6, 3)))
        layer.backward(rng.standard_normal((6, 3)))
    dy = rng.standard_normal((6, 3))
    layer(rng.standard_normal((6, 3)))
    exact, _, _ = unified_norm_backward(dy, layer.cache)
    assert norm_rel_error(layer.backward(dy), exact) > 1e-2


def _run_to(rng, steps, **layer_kw):
    layer = UnifiedNorm(3, backward="exact", **layer_kw)
    for step in range(1, steps + 1):
        layer(to_ours(step_input(rng, step, outlier_step=-1)))
    return layer


@pytest.mark.parametrize("regime", ["warmup", "smoothed", "outlier", "eval"])
def test_exact_backward_matches_finite_differences_with_padding(regime):
    rng = np.random.default_rng(3)
    layer = _run_to(rng, 5, window_size=3, warmup_iters=3, outlier_filtration=True, compensation_floor=0)
    state = initial_state(3, 3) if regime == "warmup" else \
        type(initial_state(3, 3))(**{k: layer.buffers[k] for k in initial_state(3, 3)._fields})
    x = to_ours(step_input(rng, 0, outlier_step=0 if regime == "outlier" else -1))
    pad = np.zeros((4, 5), bool)
    pad[0, 2:] = True
    kw = dict(warmup_iters=3, outlier_filtration=True, compensation_floor=0, pad_mask=pad)
    kw.update(dict(stats=(None, layer.buffers["running_var"])) if regime == "eval" else dict(state=state))
    gamma, beta = 1.0 + 0.5 * rng.standard_normal(3), rng.standard_normal(3)
    y, cache = unified_norm_forward(x, gamma, beta, **kw)
    expected_weight = {"warmup": 1.0, "outlier": 1.0, "eval": 0.0}
    if regime == "smoothed":
        assert np.ndim(cache.stat_weight) and not cache.skip
    else:
        assert np.all(cache.stat_weight == expected_weight[regime])
    assert cache.outlier == (regime == "outlier")
    dy = rng.standard_normal(y.shape)
    dx, dgamma, dbeta = unified_norm_backward(dy, cache)

    def f(x, gamma, beta):
        return unified_norm_forward(x, gamma, beta, **kw)[0]

    report = check_function(f, {"x": x, "gamma": gamma, "beta": beta}, {"x": dx, "gamma": dgamma, "beta": dbeta},
                            dy, methods=("central", "complex"), title=regime)
    assert report.passed, report.table()


def test_spec_configurations_are_the_intended_regimes():
    rng = np.random.default_rng(0)
    layer = get_spec("UnifiedNorm").build((4, 3, 5), True, rng=rng)
    layer(rng.standard_normal((4, 3, 5)))
    assert layer.cache.skip and np.all(layer.cache.stat_weight == 1.0)
    spec = get_spec("UnifiedNorm-GM")
    for shape in spec.shapes:
        rng = np.random.default_rng(0)  # the generator check() uses for build and input
        layer = spec.build(shape, True, rng=rng)
        layer(spec.make_input(rng, shape))
        assert layer.cache.iters == 4 and not layer.cache.skip and np.ndim(layer.cache.stat_weight) == len(shape)


def test_default_compensation_floor_is_the_codes_1000():
    rng = np.random.default_rng(4)
    layer = UnifiedNorm(3, window_size=2, warmup_iters=2, backward="approx")
    assert layer.compensation_floor == 1000
    state = type(initial_state(3, 2))(iters=999, running_var=np.full(3, 9.0), buffer_x2=np.ones((2, 3)),
                                      skip_counter=0)
    for iters, compensated in ((999, False), (1000, True)):  # steps t = 1000 and t = 1001
        _, cache = unified_norm_forward(rng.standard_normal((5, 3)), state=state._replace(iters=iters),
                                        warmup_iters=2)
        assert bool(np.any(cache.r != 1.0)) is compensated


def test_state_update_and_gradient_state_are_pure_and_restored_by_check_layer():
    rng = np.random.default_rng(5)
    state, gstate = initial_state(3, 2), initial_grad_state(3, 2)
    copies = copy.deepcopy((state, gstate))
    x = rng.standard_normal((5, 3))
    _, cache = unified_norm_forward(x, state=state, warmup_iters=2)
    new = update_state(state, cache, momentum=0.9)
    unified_norm_backward_approx(rng.standard_normal((5, 3)), cache, gstate)
    for a, b in zip(state + gstate, copies[0] + copies[1]):
        assert np.array_equal(a, b)
    assert new.iters == 1 and np.allclose(new.running_var, 0.9 + 0.1 * (x ** 2).mean(axis=0))
    layer = UnifiedNorm(3, window_size=2, warmup_iters=2, backward="approx")
    for _ in range(3):
        layer(rng.standard_normal((5, 3)))
        layer.backward(rng.standard_normal((5, 3)))
    saved = copy.deepcopy(layer.buffers)
    assert not check_layer(layer, rng.standard_normal((5, 3))).passed
    for key, value in saved.items():
        assert np.array_equal(layer.buffers[key], value), key


def test_dtype_preserved_and_inputs_not_mutated():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((4, 3, 2)).astype(np.float32)
    x_copy = x.copy()
    for kind in ("exact", "approx"):
        layer = UnifiedNorm(3, window_size=2, warmup_iters=2, compensation_floor=0, backward=kind)
        for _ in range(4):  # the last step is smoothed and compensated
            y = layer(x)
            dx = layer.backward(np.ones_like(y))
        assert y.dtype == dx.dtype == np.float32 and np.array_equal(x, x_copy)
    assert all(np.asarray(layer.buffers[k]).dtype == np.float64 for k in ("running_var", "ema_gz", "buffer_x2",
                                                                          "buffer_gz"))
    layer.eval()
    assert layer(x).dtype == np.float32


def test_eval_formula_and_eval_backward_is_exact():
    rng = np.random.default_rng(7)
    layer = UnifiedNorm(3, window_size=2, warmup_iters=2, affine=False, backward="approx")
    for _ in range(3):
        layer(rng.standard_normal((5, 3)))
    layer.eval()
    x = rng.standard_normal((5, 3))
    assert norm_rel_error(layer(x), x / np.sqrt(layer.buffers["running_var"] + 1e-5)) < 1e-14
    before = copy.deepcopy(layer.buffers)
    dy = rng.standard_normal((5, 3))
    assert norm_rel_error(layer.backward(dy), dy / np.sqrt(layer.buffers["running_var"] + 1e-5)) < 1e-14
    assert np.array_equal(layer.buffers["ema_gz"], before["ema_gz"])


@pytest.mark.parametrize("call,exc,match", [
    (lambda: unified_norm_forward(np.ones(3)), ValueError, "dimensions"),
    (lambda: unified_norm_forward(np.ones((2, 3), np.int64)), TypeError, "float"),
    (lambda: unified_norm_forward(np.ones((2, 3)), state=initial_state(4, 2)), ValueError, "running_var"),
    (lambda: unified_norm_forward(np.ones((2, 3)), state=(0, 1, 2, 3)), TypeError, "UnifiedNormState"),
    (lambda: unified_norm_forward(np.ones((2, 3)), state=initial_state(3, 2), stats=(None, np.ones(3))),
     ValueError, "not both"),
    (lambda: unified_norm_forward(np.ones((2, 3, 2)), pad_mask=np.ones((2, 2), bool)), ValueError, "padding"),
    (lambda: unified_norm_forward(np.ones((2, 3)), compensation_floor=-1), ValueError, "compensation_floor"),
    (lambda: unified_norm_backward_approx(np.ones((2, 3)), unified_norm_forward(np.ones((2, 3)))[1],
                                          initial_grad_state(3, 2)), ValueError, "training step"),
    (lambda: unified_norm_backward_approx(np.ones((2, 3)), unified_norm_forward(
        np.ones((2, 3)), state=initial_state(3, 2))[1], UnifiedNormGradState(np.zeros(2), np.zeros((2, 2)))),
     ValueError, "grad_state"),
    (lambda: UnifiedNorm(3, window_size=4, warmup_iters=2, backward="exact"), ValueError, "warmup_iters"),
    (lambda: UnifiedNorm(3, window_size=(2, 0), backward="exact"), ValueError, "window_size"),
    (lambda: UnifiedNorm(3, window_size="4", backward="exact"), TypeError, "window_size"),
    (lambda: UnifiedNorm(3, momentum=2.0, backward="exact"), ValueError, "momentum"),
    (lambda: UnifiedNorm(3, backward="paper"), ValueError, "backward"),
    (lambda: UnifiedNorm(3, backward="exact")(np.ones((2, 4))), ValueError, "channels"),
])
def test_bad_input_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
