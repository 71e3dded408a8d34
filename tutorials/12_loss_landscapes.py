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
# # 12 · Loss landscapes: directions, filter normalization, and which BatchNorm statistics
#
# A loss-landscape picture is $f(\alpha, \beta) = L(\theta^* + \alpha\delta + \beta\eta)$ for two directions
# $\delta, \eta$ in parameter space. Three choices decide what it shows, and existing tools make two of them silently:
#
# 1. **the directions**: Gaussian, then rescaled filter by filter (Li et al. 2018) so that a step of 1 means "as far as
#    the weights themselves" in every layer; biases and normalizer parameters need their own rule;
# 2. **the grid**: exact coordinates, centre included, indexed `[y, x]`;
# 3. **the BatchNorm statistics** at each perturbed point: the stale running statistics of $\theta^*$ (what
#    `loss-landscape` and PyHessian do), the batch's own statistics (train mode, edge-of-stability code), or
#    statistics recomputed on the training data (REPAIR, SWA). `normref.landscape` makes this a required argument.
#
# This tutorial shows each choice changing the picture, with an assertion wherever a claim is made.

# %%
import os
import tempfile

import numpy as np

from normref.landscape import (Objective, direction_band, pca_plane, project, random_direction, random_directions,
                               surface)
from normref.nn import BatchNorm, CrossEntropyLoss, Linear, Sequential, Tanh, set_flat_params

QUICK = os.environ.get("QUICK", "0") not in ("", "0")  # QUICK=1: coarser grids, fewer training steps
OUT = os.environ.get("NORMREF_TUTORIAL_OUT")  # where to save figures; unset: nothing is written
np.set_printoptions(precision=4, linewidth=110, suppress=True)
rng = np.random.default_rng(0)

# %% [markdown]
# ## 0. A small BN network, trained, with realistic running statistics
#
# Three Gaussian blobs in 2-D, an MLP `Linear → BN → tanh → Linear → BN → tanh → Linear`. We train it by full-batch
# gradient descent on the train-mode loss (`bn="batch"`, using only `Objective.grad`), then give the BN layers
# running statistics the usual way: train-mode forward passes over mini-batches with momentum 0.1.

# %%
n = 240
centers = 2.5 * rng.normal(size=(3, 2))
y = rng.integers(0, 3, n)
x = centers[y] + rng.normal(size=(n, 2))


def make_net(seed=0):
    return Sequential(Linear(2, 16, rng=seed), BatchNorm(16), Tanh(), Linear(16, 16, rng=seed + 1), BatchNorm(16),
                      Tanh(), Linear(16, 3, rng=seed + 2))


net = make_net()
train_f = Objective(net, CrossEntropyLoss(), x, y, bn="batch")
theta = train_f.theta0
for step in range(60 if QUICK else 300):
    loss, g = train_f.grad(theta)
    theta = theta - 0.5 * g
set_flat_params(net, theta)
net.train()
for epoch in range(3):
    for i in range(0, n, 32):
        net(x[i:i + 32])
net.eval()
print(f"train-mode loss after GD: {loss:.4f}")

# %% [markdown]
# ## 1. Directions: why filter normalization
#
# BN removes the scale of the weights feeding it: $L(cW) = L(W)$. So a raw Gaussian step means a large move for a
# layer with small weights and a tiny one for a layer with large weights, and the same network with one layer
# rescaled (the same function!) gives a different picture. Filter normalization rescales every filter (output
# row / channel) $d_i$ of the direction to the norm of the filter $w_i$ it perturbs, which undoes exactly this.
#
# We check it: multiply the first layer's weights by 10 (and its bias, which BN cancels anyway). The function is the
# same; the raw-direction curve is not; the filter-normalized curve is, up to BN's $\epsilon$.

# %%
f = Objective(net, CrossEntropyLoss(), x, y, bn="batch")
scaled_theta = f.theta0.copy()
scaled_theta[:16 * 2 + 16] *= 10.0  # weight (16, 2) and bias (16,) of the first Linear
scaled_net = make_net()
set_flat_params(scaled_net, scaled_theta)
g_scaled = Objective(scaled_net, CrossEntropyLoss(), x, y, bn="batch")
print(f"same function: L = {f.value(f.theta0):.10f} vs {g_scaled.value(g_scaled.theta0):.10f}")
assert abs(f.value(f.theta0) - g_scaled.value(g_scaled.theta0)) < 1e-6

xs = np.linspace(-1, 1, 9 if QUICK else 41)
curves = {}
for label, norm in (("raw", "none"), ("filter", "filter")):
    # the same Gaussian draw (seed 1) for both networks; only the normalization differs
    d_orig = random_direction(f, seed=1, norm=norm)
    d_scaled = random_direction(g_scaled, seed=1, norm=norm)
    curves[label] = (surface(f, d_orig, xs, workers=1, progress=False).loss,
                     surface(g_scaled, d_scaled, xs, workers=1, progress=False).loss)
    gap = np.max(np.abs(curves[label][0] - curves[label][1]))
    print(f"{label:>6} directions: max |curve(original) - curve(rescaled)| = {gap:.2e}")
assert np.max(np.abs(curves["raw"][0] - curves["raw"][1])) > 1e-2
assert np.max(np.abs(curves["filter"][0] - curves["filter"][1])) < 1e-3

# %% [markdown]
# Biases and normalizer parameters (γ, β) have no filters. Li et al.'s README zeroes them (`--xignore biasbn`);
# their code's default sets the direction *equal to the parameter* there; the `loss-landscapes` package moves each
# by its own magnitude. Here each is a named choice: `bias=` and `norm_params=` take `"zero"`, `"copy"`,
# `"normalize"` or `"keep"`:

# %%
for policy in ("zero", "copy", "normalize", "keep"):
    d = random_direction(f, seed=1, norm_params=policy)
    gamma = d[16 * 2 + 16:16 * 2 + 32]  # the first BN's gamma
    print(f"norm_params={policy!r:<12} first BN gamma direction: {gamma[:4]} ...")

# %% [markdown]
# ## 2. The BatchNorm-statistics policy changes the surface
#
# The same direction, three policies:
#
# * `"running"`: eval mode with the running statistics of $\theta^*$, which go stale as soon as the weights move;
# * `"batch"`: every evaluation normalizes with the batch's own statistics (here: the whole set, one batch);
# * `"recomputed"`: at every point, reset the statistics and recompute them on the training data, then eval.

# %%
direction = random_directions(f, 1, seed=2)
wide = np.linspace(-2, 2, 9 if QUICK else 41)
policies = {bn: Objective(net, CrossEntropyLoss(), x, y, bn=bn, train_data=x) for bn in
            ("running", "batch", "recomputed")}
lines = {bn: surface(obj, direction, wide, workers=1, progress=False) for bn, obj in policies.items()}
for bn, line in lines.items():
    print(f"{bn:>10}: loss at alpha = -2, 0, +2: {line.loss[0]:.4f} {line.loss[len(wide) // 2]:.4f} "
          f"{line.loss[-1]:.4f}")
gap = np.abs(lines["running"].loss - lines["recomputed"].loss)
centre_gap, far_gap = gap[len(wide) // 2], gap[np.abs(wide) >= 1.5].max()
print(f"|running - recomputed|: {centre_gap:.4f} at the centre, up to {far_gap:.4f} for |alpha| >= 1.5")
assert far_gap > 5 * centre_gap  # stale statistics: far from theta*, a different function

# %% [markdown]
# At the centre the three differ only by how well the running averages match the data; away from it, the stale
# statistics of the `"running"` policy describe a network that no longer exists, and the curve departs from the
# recomputed one (higher or lower, depending on the direction: try other seeds). Which one is "right" depends on the
# question: `"running"` is the deployed
# network's loss, `"recomputed"` is the best the perturbed weights can do at test time, `"batch"` is the function
# SGD actually differentiates. The point is to choose, and to say which.
#
# ## 3. A 2D plane, stored incrementally and resumable
#
# `surface(..., store=DIR)` writes one small file per finished point (atomically) and a `meta.json`; a second call
# with the same arguments recomputes only what is missing (here: nothing; a crashed run would resume). Any
# `concurrent.futures.Executor` can evaluate the points (default: a process pool; here `workers=1`).

# %%
plane_dirs = random_directions(f, 2, seed=3)
grid = np.linspace(-1, 1, 7 if QUICK else 31)
with tempfile.TemporaryDirectory() as store:
    planes = {bn: surface(policies[bn], plane_dirs, grid, grid, workers=1, progress=False,
                          store=os.path.join(store, bn)) for bn in ("running", "recomputed")}
    again = surface(policies["running"], plane_dirs, grid, grid, workers=1, store=os.path.join(store, "running"))
assert np.array_equal(again.loss, planes["running"].loss)
print(planes["running"], "min", planes["running"].loss.min(), "max", planes["running"].loss.max())

# %% [markdown]
# ## 4. How much does the picture depend on the direction?
#
# One seed is one sample. `direction_band` draws several and reports quantiles (loss-landscape issue #31):

# %%
band = direction_band(policies["recomputed"], xs, seeds=range(4 if QUICK else 12), workers=1, progress=False)
lo, med, hi = (band.quantiles[q]["loss"] for q in (0.1, 0.5, 0.9))
print("alpha = 1: 10% / 50% / 90% over seeds:", lo[-1], med[-1], hi[-1])
assert np.all(lo <= med) and np.all(med <= hi)

# %% [markdown]
# ## 5. A trajectory on its PCA plane, and how far it is from that plane
#
# The PCA of the checkpoints $\theta_t - \theta^*$ gives the plane that explains the most of the trajectory; the
# trajectory is drawn at its least-squares coordinates. What the usual figure omits is the residual: a checkpoint far
# off the plane does not sit on the plotted surface, so its loss and the contour under it disagree.

# %%
theta_t, checkpoints = train_f.theta0, []
for step in range(40 if QUICK else 200):
    if step % 4 == 0:
        checkpoints.append(theta_t.copy())
    theta_t = theta_t - 0.5 * train_f.grad(theta_t)[1]
checkpoints.append(theta_t)
checkpoints = np.array(checkpoints)
plane = pca_plane(checkpoints)
proj = project(checkpoints, plane.center, plane.vectors)
print("explained variance ratio:", plane.explained_variance_ratio)
print("relative off-plane distance of the first checkpoints:", proj.relative_off_plane[:4])
assert proj.off_plane[-1] == 0.0 and plane.explained_variance_ratio.sum() <= 1.0

# %%
try:
    import matplotlib.pyplot as plt
except ImportError:  # pragma: no cover
    plt = None
if plt is not None:
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for bn, line in lines.items():
        axes[0].plot(wide, line.loss, label=bn)
    axes[0].set(xlabel=r"$\alpha$ (filter-normalized)", ylabel="loss", title="one direction, three BN policies")
    axes[0].legend()
    for ax, bn in zip(axes[1:], ("running", "recomputed")):
        X, Y = planes[bn].meshgrid()
        cs = ax.contour(X, Y, planes[bn].loss, levels=12)
        ax.clabel(cs, fontsize=7)
        ax.plot(0, 0, "k+")
        ax.set(title=f'2D plane, bn="{bn}"', xlabel=r"$\alpha$", ylabel=r"$\beta$")
    fig.tight_layout()
    if OUT:
        os.makedirs(OUT, exist_ok=True)
        fig.savefig(os.path.join(OUT, "12_landscapes.png"), dpi=120)
        print("saved", os.path.join(OUT, "12_landscapes.png"))
