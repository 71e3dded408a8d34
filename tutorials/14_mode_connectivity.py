# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 14 · Linear mode connectivity, barriers, and what to do with BatchNorm's statistics
#
# Two trained networks $\theta_A, \theta_B$ are *linearly mode connected* when the loss along the straight line
# $\theta(\alpha) = (1-\alpha)\theta_A + \alpha\theta_B$ has no bump. The bump's height, the **barrier**, has two
# published definitions, both on a grid of $\alpha$:
#
# * Frankle et al. (2020): $\sup_\alpha v(\alpha) - \tfrac12(v(0) + v(1))$, the excess over the endpoints' mean
#   (they use test error, $v = 1 - \text{acc}$);
# * Entezari et al. (2022): $\sup_\alpha [v(\alpha) - ((1-\alpha)v(0) + \alpha v(1))]$, the excess over the chord
#   (they define it for the loss).
#
# A BN network adds a question the weights cannot answer: **which running statistics does the interpolated network
# use?** Keep A's (stale), recompute them on training data at every $\alpha$ (the "BN reset" of REPAIR and Git
# Re-Basin), or interpolate them with the weights (REPAIR's goal statistics: means and standard deviations linear in
# $\alpha$). `normref.landscape.interpolate` makes it a required argument, and the barrier depends on it.

# %%
import os

import numpy as np

from normref.landscape import Objective, barrier, interpolate
from normref.nn import BatchNorm, CrossEntropyLoss, GroupNorm, Linear, Sequential, Tanh, flatten_params, set_flat_params

QUICK = os.environ.get("QUICK", "0") not in ("", "0")  # QUICK=1: fewer SGD steps, coarser alpha grid
OUT = os.environ.get("NORMREF_TUTORIAL_OUT")
np.set_printoptions(precision=4, linewidth=110, suppress=True)
rng = np.random.default_rng(0)

# two interleaved half-moons in 2-D (a problem where different solutions really differ), plus a held-out test set
def moons(n, seed):
    r = np.random.default_rng(seed)
    t = r.uniform(0, np.pi, n)
    label = r.integers(0, 2, n)
    pts = np.where(label[:, None] == 0, np.c_[np.cos(t), np.sin(t)], np.c_[1 - np.cos(t), 0.5 - np.sin(t)])
    return pts + 0.15 * r.normal(size=(n, 2)), label


x, y = moons(256, 0)
x_test, y_test = moons(256, 1)


def make_net(seed, norm="bn"):
    layer = (lambda c: BatchNorm(c)) if norm == "bn" else (lambda c: GroupNorm(1, c))  # GN(1, C): LayerNorm
    return Sequential(Linear(2, 32, rng=seed), layer(32), Tanh(), Linear(32, 32, rng=seed + 1), layer(32), Tanh(),
                      Linear(32, 2, rng=seed + 2))


def sgd(net, seed, steps, lr=0.3, batch=32):
    """Mini-batch SGD on the train-mode loss; then running statistics from mini-batch passes (momentum 0.1)."""
    r, theta = np.random.default_rng(seed), flatten_params(net)
    full = Objective(net, CrossEntropyLoss(), x, y, bn="batch")
    for _ in range(steps):
        idx = r.choice(len(x), batch, replace=False)
        theta = theta - lr * full.with_data(x[idx], y[idx]).grad(theta)[1]
    set_flat_params(net, theta)
    net.train()
    for _ in range(2):
        for i in range(0, len(x), batch):
            net(x[i:i + batch])
    return net.eval()


steps = 150 if QUICK else 800
nets = {"A": sgd(make_net(0), 10, steps), "B": sgd(make_net(100), 11, steps)}
test = Objective(nets["A"], CrossEntropyLoss(), x_test, y_test, bn="recomputed", train_data=x)
for name, net in nets.items():
    own = Objective(net, CrossEntropyLoss(), x_test, y_test, bn="running")
    result = own.evaluate(own.theta0)
    print(f"model {name}: test loss {result['loss']:.4f}, test accuracy {result['accuracy']:.3f}")

# %% [markdown]
# ## 1. The interpolation curve under three BN policies
#
# `interpolate(objective, model_a, model_b, alphas, bn=...)` takes the endpoints' parameters *and* buffers from the
# models. The objective supplies the data (here the test set) and, for `bn="reset"`, the training data the
# statistics are recomputed on.

# %%
alphas = np.linspace(0, 1, 11 if QUICK else 25)
curves = {bn: interpolate(test, nets["A"], nets["B"], alphas, bn=bn, workers=1, progress=False)
          for bn in ("keep", "interpolate", "reset")}
print(f"{'policy':>12} {'loss: Frankle':>14} {'Entezari':>9} {'at alpha':>9} {'error: Frankle':>15} {'Entezari':>9}")
for bn, curve in curves.items():
    bl, be = curve.barriers["loss"], curve.barriers["error"]
    print(f"{bn:>12} {bl.frankle:14.4f} {bl.entezari:9.4f} {bl.alpha_entezari:9.2f} {be.frankle:15.4f} "
          f"{be.entezari:9.4f}")

# the endpoints: "interpolate" uses each model's own statistics there, "keep" puts A's statistics into B
own_b = Objective(nets["B"], CrossEntropyLoss(), x_test, y_test, bn="running")
loss_b = own_b.value(own_b.theta0)
print(f"loss of B with its own statistics {loss_b:.4f}; at alpha = 1: interpolate "
      f"{curves['interpolate'].values['loss'][-1]:.4f}, keep (A's statistics) {curves['keep'].values['loss'][-1]:.4f}")
assert np.isclose(curves["interpolate"].values["loss"][-1], loss_b, rtol=1e-12)
assert not np.isclose(curves["keep"].values["loss"][-1], loss_b, rtol=1e-3)

# %% [markdown]
# The "keep" curve does not even end at model B: A's running statistics normalize B's activations, so its
# right endpoint is a different network, and any barrier computed from it mixes two effects. "interpolate" and
# "reset" both end at the true endpoints (reset up to the difference between the running averages and the exact
# training-set statistics). Between them, the question is whether the interpolated network's activations really
# have the interpolated statistics; in deep networks they do not ("variance collapse", REPAIR), and resetting fixes
# that by measuring them.
#
# ## 2. Without running statistics the question disappears
#
# LayerNorm (here GroupNorm with one group) normalizes every example by its own statistics: there is nothing to keep,
# interpolate or reset, and the three curves are the same function.

# %%
ln = {k: sgd(make_net(s, "ln"), 20 + s, steps) for k, s in (("A", 0), ("B", 100))}
ln_test = Objective(ln["A"], CrossEntropyLoss(), x_test, y_test, bn="recomputed", train_data=x)
ln_curves = {bn: interpolate(ln_test, ln["A"], ln["B"], alphas, bn=bn, workers=1, progress=False).values["loss"]
             for bn in ("keep", "interpolate", "reset")}
assert np.allclose(ln_curves["keep"], ln_curves["reset"], rtol=1e-13)
assert np.allclose(ln_curves["keep"], ln_curves["interpolate"], rtol=1e-13)
ln_barrier = barrier(alphas, ln_curves["keep"])
print(f"LN network: loss barrier (Entezari) {ln_barrier.entezari:.4f}, identical under all three policies")

# %% [markdown]
# ## 3. Why a barrier means negative curvature: the midpoint identity
#
# Expanding $L$ around the midpoint $\bar\theta$ with $\Delta = \theta_B - \theta_A$,
# $L(\bar\theta) - \tfrac12[L(\bar\theta - \Delta/2) + L(\bar\theta + \Delta/2)] = -\tfrac18\Delta^\top H(\bar\theta)
# \Delta + O(\lVert\Delta\rVert^4)$: a positive midpoint barrier needs negative curvature along the line. We check it
# with the exact (complex-step) HVP, shrinking $\Delta$ to watch the $O(\lVert\Delta\rVert^4)$ term vanish
# (train-mode statistics, so that the loss is one smooth function of the weights).

# %%
smooth = Objective(nets["A"], CrossEntropyLoss(), x, y, bn="batch")
theta_a = smooth.theta0
theta_b = Objective(nets["B"], CrossEntropyLoss(), x, y, bn="batch").theta0
mid, delta = 0.5 * (theta_a + theta_b), theta_b - theta_a
for s in (1.0, 1e-1, 1e-2, 1e-3, 1e-4):
    d = s * delta
    bump = smooth.value(mid) - 0.5 * (smooth.value(mid - d / 2) + smooth.value(mid + d / 2))
    predicted = -0.125 * d @ smooth.hvp(mid, d).value
    print(f"scale {s:6.0e}: midpoint bump {bump: .3e}, -1/8 d'Hd {predicted: .3e}")
assert abs(bump - predicted) < 1e-2 * abs(predicted)

# %% [markdown]
# The identity is local: at the full distance between two independent solutions the higher-order terms dominate
# (the quadratic model is off by an order of magnitude), and only for short segments does the curvature at the
# midpoint predict the bump. Barriers between far-apart solutions are a global property of the landscape.

# %%
try:
    import matplotlib.pyplot as plt
except ImportError:  # pragma: no cover
    plt = None
if plt is not None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for bn, curve in curves.items():
        axes[0].plot(alphas, curve.values["loss"], "o-", ms=3, label=f"BN, {bn}")
    axes[0].plot(alphas, ln_curves["keep"], "k--", label="LN (any policy)")
    axes[0].set(xlabel=r"$\alpha$", ylabel="test loss", title=r"$(1-\alpha)\theta_A + \alpha\theta_B$")
    axes[0].legend(fontsize=8)
    for bn, curve in curves.items():
        axes[1].plot(alphas, curve.values["error"], "o-", ms=3, label=f"BN, {bn}")
    axes[1].set(xlabel=r"$\alpha$", ylabel="test error", title="error along the line")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    if OUT:
        os.makedirs(OUT, exist_ok=True)
        fig.savefig(os.path.join(OUT, "14_mode_connectivity.png"), dpi=120)
        print("saved", os.path.join(OUT, "14_mode_connectivity.png"))
