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
# # 11 · Scale invariance: why a normalized weight's effective step size shrinks, and what SGDP/AdamP change
#
# A weight followed by a normalizer does not care about its own length: BatchNorm after `Linear(W)` gives the same
# output for `W` and `c·W`. That one fact has three consequences for training, which this tutorial *measures* on
# normref's own layers (every number below is computed, none is typed in):
#
# 1. the gradient is **orthogonal** to the weight, and it scales like `1/‖W‖`;
# 2. plain SGD therefore **grows** the norm, `‖W_{t+1}‖² = ‖W_t‖² + η²‖g_t‖²`, and the step that matters, the change
#    of *direction*, is `≈ η‖∇L(Ŵ)‖/‖W‖²`: the **effective step size** `η/‖W‖²` shrinks as the norm grows;
# 3. momentum and Adam make the update non-orthogonal, so the norm grows at *first* order in `η` and the
#    slowdown comes early. **SGDP/AdamP** (Heo et al., ICLR 2021) detect scale-invariant weights with a cosine test
#    and remove the radial component of the update, so the norm stays nearly constant.
#
# The optimizers are `normref.optim.SGD`, `Adam`, `SGDP`, `AdamP`; their update rules are in the module docstrings
# and `tests/test_optim.py` checks them against transcriptions of the published rules.

# %%
import os

import numpy as np

from normref import nn
from normref.optim import SGD, SGDP, Adam, AdamP, cosine_rows

QUICK = os.environ.get("QUICK", "0") not in ("", "0")
np.set_printoptions(precision=4, linewidth=110)

N, D_IN, HIDDEN, CLASSES = 512, 16, 32, 3


def make_data(seed=0):
    """Three overlapping Gaussian blobs in 16 dimensions (hard enough that training keeps going)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(CLASSES, D_IN)) * 0.8
    labels = rng.integers(0, CLASSES, size=N)
    return centers[labels] + rng.normal(size=(N, D_IN)), labels


def make_net(norm="batch", eps=1e-5, seed=0):
    """Linear (no bias: the normalizer would remove it) → normalizer → ReLU → Linear."""
    normalizer = nn.BatchNorm(HIDDEN, eps=eps) if norm == "batch" else nn.LayerNorm(HIDDEN, eps=eps)
    return nn.Sequential(nn.Linear(D_IN, HIDDEN, bias=False, rng=seed), normalizer, nn.ReLU(),
                         nn.Linear(HIDDEN, CLASSES, rng=seed + 1))


X, Y = make_data()
criterion = nn.CrossEntropyLoss()


def loss_and_grads(net, x=X, y=Y):
    """Forward, backward; returns the loss (gradients are left in net's grads)."""
    net.zero_grad()
    loss = float(criterion(net(x), y))
    net.backward(criterion.backward())
    return loss


# %% [markdown]
# ## 1. The loss does not see the weight's scale
#
# Scale the first layer's weight by `c` (all of it, or each output row by its own `c_r`: BatchNorm normalizes each
# channel separately, so each row is invariant on its own) and recompute the loss. BatchNorm's `eps` inside
# `sqrt(var + eps)` is the only thing that can tell the scales apart: `(c·z)/sqrt(c²σ² + eps)` differs from
# `z/sqrt(σ² + eps)` by about `eps/(2σ²)·|1 − 1/c²|`, so small `c` shows it most. With `eps = 1e-12` the
# invariance holds to rounding.

# %%
for eps in (1e-5, 1e-12):
    net = make_net(eps=eps)
    w = net[0].params["weight"]
    base = loss_and_grads(net)
    sigma2 = (X @ w.T).var(axis=0).mean()
    print(f"BatchNorm eps = {eps:g}   (mean pre-activation variance σ² = {sigma2:.3f})")
    rows_c = np.random.default_rng(1).uniform(0.2, 5.0, size=(HIDDEN, 1))
    for label, scale in [("c = 0.1", 0.1), ("c = 0.5", 0.5), ("c = 2", 2.0), ("c = 10", 10.0),
                         ("c_r per row in [0.2, 5]", rows_c)]:
        net[0].params["weight"] = w * scale
        rel = abs(loss_and_grads(net) - base) / base
        print(f"   {label:<26} |L(cW) − L(W)| / L(W) = {rel:.1e}")
        assert rel < (1e-3 if eps == 1e-5 else 1e-10)
    net[0].params["weight"] = w

# %% [markdown]
# ## 2. The gradient is orthogonal to the weight, and scales like 1/‖W‖
#
# Differentiating `L(cW) = L(W)` in `c` at `c = 1` gives `⟨∇L(W), W⟩ = 0`; per row, when each row is invariant.
# Differentiating in `W` gives `c·∇L(cW) = ∇L(W)`. Measured (float64, `eps = 1e-12`):

# %%
net = make_net(eps=1e-12)
loss_and_grads(net)
w, g = net[0].params["weight"], net[0].grads["weight"]
cos = cosine_rows(g, w, 1e-30)
print(f"per-row |cos(g_r, w_r)|: max {cos.max():.1e}   (a random direction in R^{D_IN} gives ~{1 / np.sqrt(D_IN):.2f})")
assert cos.max() < 1e-9
for c in (0.5, 4.0):
    net[0].params["weight"] = c * w
    loss_and_grads(net)
    ratio = np.linalg.norm(net[0].grads["weight"]) / np.linalg.norm(g)
    print(f"‖∇L({c}·W)‖ / ‖∇L(W)‖ = {ratio:.6f}   (1/c = {1 / c:.6f})")
    assert abs(ratio * c - 1) < 1e-8
net[0].params["weight"] = w

# %% [markdown]
# ## 3. Plain SGD grows the norm, and the effective step size shrinks
#
# With `g ⟂ W`, one SGD step `W − ηg` has `‖W − ηg‖² = ‖W‖² + η²‖g‖²`: the norm can only grow. Meanwhile the
# direction moves by the angle `≈ η‖g‖/‖W‖ = η‖∇L(Ŵ)‖/‖W‖²`. Train only the first layer (so that nothing else
# changes the picture) with full-batch SGD, no momentum, no weight decay, and check the identity at every step:

# %%
STEPS = 60 if QUICK else 400
LR = 2.0


def train(net, opt, steps=STEPS, batch=None, seed=0, name="0.weight", record=()):
    """Run `steps` optimizer steps; return per-step ‖W‖², η²‖g‖², angle moved, loss, and projections."""
    rng = np.random.default_rng(seed)
    module = net[0]
    hist = {k: [] for k in ("norm2", "eta2_g2", "angle", "loss", "proj", "proj_last")}
    for _ in range(steps):
        idx = rng.choice(N, size=batch, replace=False) if batch else slice(None)
        loss = loss_and_grads(net, X[idx], Y[idx])
        w0, g = module.params["weight"], module.grads["weight"]
        opt.step()
        w1 = module.params["weight"]
        cos_angle = np.sum(w0 * w1) / (np.linalg.norm(w0) * np.linalg.norm(w1))
        hist["norm2"].append(np.sum(w0 * w0))
        hist["eta2_g2"].append(opt.lr ** 2 * np.sum(g * g))
        hist["angle"].append(np.arccos(min(1.0, cos_angle)))
        hist["loss"].append(loss)
        last = getattr(opt, "last_projection", {})
        hist["proj"].append(last.get(name))
        hist["proj_last"].append(last.get("3.weight"))
    hist["final_norm2"] = np.sum(module.params["weight"] ** 2)
    return hist


net = make_net(eps=1e-12)
h = train(net, SGD(net, lr=LR, params=["0.weight"]))
norm2 = np.array(h["norm2"] + [h["final_norm2"]])
residual = np.abs(np.diff(norm2) - np.array(h["eta2_g2"])) / np.array(h["eta2_g2"])
print(f"max over {STEPS} steps of |Δ‖W‖² − η²‖g‖²| / η²‖g‖² = {residual.max():.1e}")
assert residual.max() < 1e-6
print(f"{'step':>5} {'‖W‖':>8} {'η/‖W‖²':>9} {'angle moved':>12} {'loss':>8}")
for t in np.unique(np.linspace(0, STEPS - 1, 6).astype(int)):
    print(f"{t:>5} {np.sqrt(norm2[t]):8.3f} {LR / norm2[t]:9.4f} {h['angle'][t]:12.2e} {h['loss'][t]:8.4f}")
assert norm2[-1] > norm2[0]

# %% [markdown]
# **Scaling the weight is the same as dividing the learning rate by c².** Start one run from `c·W` with learning
# rate `η` and another from `W` with `η/c²`. Since `∇L(cW) = ∇L(W)/c`, the first run's iterates are exactly `c`
# times the second's, so their *directions* coincide step for step. This is why the norm is a hidden learning-rate
# schedule for every scale-invariant weight:

# %%
c = 3.0
net_a, net_b = make_net(eps=1e-12), make_net(eps=1e-12)
net_a[0].params["weight"] = c * net_a[0].params["weight"]
opt_a, opt_b = SGD(net_a, lr=LR, params=["0.weight"]), SGD(net_b, lr=LR / c ** 2, params=["0.weight"])
worst = 0.0
for _ in range(STEPS // 4):
    for net_, opt_ in ((net_a, opt_a), (net_b, opt_b)):
        loss_and_grads(net_)
        opt_.step()
    wa, wb = net_a[0].params["weight"], net_b[0].params["weight"]
    worst = max(worst, np.abs(wa / np.linalg.norm(wa) - wb / np.linalg.norm(wb)).max())
print(f"SGD(η) from {c}·W vs SGD(η/{c ** 2:g}) from W: max difference of the directions over {STEPS // 4} steps "
      f"= {worst:.1e}")
assert worst < 1e-10

# %% [markdown]
# ## 4. Momentum and Adam grow the norm faster; SGDP and AdamP do not
#
# Plain SGD's growth is second order in `η`. With momentum the update is the buffer, a sum of *past* gradients,
# each orthogonal to a *past* weight but not to the current one; Adam divides each coordinate by its own scale,
# which rotates the update away from the tangent plane. Both give a radial component, and the norm grows at first
# order. SGDP/AdamP run the cosine test on the raw gradient (channel view, then layer view, threshold
# `δ/√(row length)`), and when it passes they project the update onto the tangent plane.
#
# Now train the whole network (all parameters, mini-batches of 64, the default BatchNorm `eps = 1e-5`) with each
# optimizer, and measure the first layer's norm growth, its effective step size, the training loss, and how often
# the projection fired on the scale-invariant first layer and on the last layer (which is *not* scale invariant).

# %%
runs = [
    ("SGD          (μ=0)", lambda net: SGD(net, lr=0.2)),
    ("SGD          (μ=0.9)", lambda net: SGD(net, lr=0.2, momentum=0.9)),
    ("SGDP         (μ=0.9)", lambda net: SGDP(net, lr=0.2, momentum=0.9)),
    ("SGD+wd 5e-4  (μ=0.9)", lambda net: SGD(net, lr=0.2, momentum=0.9, weight_decay=5e-4)),
    ("SGDP+wd 5e-4 (μ=0.9)", lambda net: SGDP(net, lr=0.2, momentum=0.9, weight_decay=5e-4)),
    ("Adam", lambda net: Adam(net, lr=0.01)),
    ("AdamP", lambda net: AdamP(net, lr=0.01)),
]
results = {}
print(f"{'optimizer':<22} {'‖W_T‖/‖W_0‖':>12} {'η/‖W‖² (T/0)':>13} {'loss (last 10)':>15} "
      f"{'projected 0.weight':>19} {'projected 3.weight':>19}")


def fired(history, projects):
    """Fraction of steps on which the projection fired, and in which views ('n/a' for SGD/Adam)."""
    if not projects:
        return "n/a"
    views = sorted({p for p in history if p is not None})
    return f"{np.mean([p is not None for p in history]):.0%} {','.join(views)}".strip()


for label, make_opt in runs:
    net = make_net()
    opt = make_opt(net)
    projects = hasattr(opt, "last_projection")
    h = train(net, opt, batch=64)
    growth = np.sqrt(h["final_norm2"] / h["norm2"][0])
    results[label] = growth
    print(f"{label:<22} {growth:12.3f} {1 / growth ** 2:13.3f} {np.mean(h['loss'][-10:]):15.4f} "
          f"{fired(h['proj'], projects):>19} {fired(h['proj_last'], projects):>19}")
assert results["SGD          (μ=0.9)"] > results["SGDP         (μ=0.9)"]
assert results["Adam"] > results["AdamP"]

# %% [markdown]
# Reading the table: under SGD with momentum and under Adam the first layer's norm grows, and its effective step
# size `η/‖W‖²` (relative to the start) drops by the square of that growth. Under SGDP/AdamP the norm grows far
# less: the projected update is orthogonal, so what is left of the growth is the second-order `η²‖d‖²` term
# (and, with weight decay, `wd_ratio` keeps a fraction of the decay). The projection fires on every step for the
# first layer, in the channel view, because BatchNorm makes each row invariant on its own. On the last layer, which
# feeds the softmax directly, the gradient has a real radial component and the test fails on almost every step; the
# few percent of passes are mini-batches whose gradient happens to be nearly orthogonal to the weight by chance.
#
# The measurements depend on the learning rate and the number of steps; `QUICK=1` runs 60 steps, the full run
# 400.

# %% [markdown]
# ## 5. LayerNorm: invariance of the whole layer, not of each row
#
# LayerNorm normalizes each *sample* over the 32 hidden units, so scaling one row of `W` changes the output;
# only scaling all of `W` at once leaves it unchanged. The gradient is then orthogonal to `W` as a whole but not
# row by row, and AdamP's test falls through from the channel view to the layer view:

# %%
net = make_net(norm="layer")
loss_and_grads(net)
w, g = net[0].params["weight"], net[0].grads["weight"]
per_row = cosine_rows(g, w, 1e-8)
whole = cosine_rows(g.reshape(1, -1), w.reshape(1, -1), 1e-8)[0]
print(f"channel view: max_r |cos(g_r, w_r)| = {per_row.max():.3f}  vs threshold δ/√{D_IN} = {0.1 / np.sqrt(D_IN):.4f}")
print(f"layer view:   |cos(g, W)|          = {whole:.1e}  vs threshold δ/√{w.size} = {0.1 / np.sqrt(w.size):.4f}")
opt = AdamP(net, lr=0.01)
opt.step()
print("AdamP's choice per parameter:", opt.last_projection)
assert opt.last_projection["0.weight"] == "layer" and opt.last_projection["3.weight"] is None

# %% [markdown]
# ## Summary
#
# * For a weight followed by a normalizer, `L(cW) = L(W)`; measured to ~1e-12 with a negligible `eps`, and to
#   `~eps/σ²` with BatchNorm's default.
# * Hence `⟨∇L, W⟩ = 0` and `‖∇L(cW)‖ = ‖∇L(W)‖/c`, and SGD obeys `‖W_{t+1}‖² = ‖W_t‖² + η²‖g_t‖²` exactly: the norm
#   grows and the effective step size `η/‖W‖²` shrinks; scaling `W` by `c` is dividing `η` by `c²`.
# * Momentum and Adam add a radial component and grow the norm faster; SGDP/AdamP project it out for the weights
#   that pass the cosine test (channel view for BatchNorm, layer view for LayerNorm), leave the others alone, and
#   scale the weight decay of the projected weights by `wd_ratio`.
