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
# # 05 · EvoNorm: normalization and activation in one layer
#
# Liu, Brock, Simonyan & Le (arXiv:2004.02967) searched over small computation graphs for a layer that replaces the
# usual `BatchNorm → ReLU` pair and found two that stuck:
#
# * **EvoNorm-B0**, batch-dependent: `y = γ·x / max(sqrt(var_batch + ε), v·x + sqrt(var_instance + ε)) + β`;
# * **EvoNorm-S0**, sample-dependent: `y = γ·x·sigmoid(v·x) / sqrt(var_group + ε) + β`.
#
# Neither subtracts a mean. The nonlinearity comes from the `max` in B0 and from the swish-like `x·sigmoid(v·x)` in
# S0. Sections: (1) the shape of B0's nonlinearity and which branch of the max is active; (2) the kink, what a
# gradient does at a tie; (3) S0 as swish over a group std, and its `v = 0` relation to GroupNorm; (4) train and
# eval for B0, and the momentum/decay conventions; (5) the gradient checks.

# %%
import os

import numpy as np

from normref import nn
from normref.ops.evonorm import default_groups, evonorm_b0_forward, evonorm_backward, evonorm_s0_forward
from normref.ops.group_norm import group_norm_forward
from normref.testing.gradcheck import norm_rel_error
from normref.testing.specs import check, get_spec

QUICK = os.environ.get("QUICK", "0") not in ("", "0")
np.set_printoptions(precision=4, linewidth=110)
rng = np.random.default_rng(0)


def cmp(name, ours, reference, tol=1e-12):
    ours, reference = np.asarray(ours), np.asarray(reference)
    rel = norm_rel_error(ours, reference)
    print(f"{name:<48} approx: {rel < tol!s:<5}  maxdiff: {np.max(np.abs(ours - reference)):.1e}")
    assert rel < tol, f"{name}: norm-relative error {rel:.2e} is not below {tol:.0e}"


# %% [markdown]
# ## 1. B0's nonlinearity
#
# Fix one channel's statistics, batch std `L` and instance std `s`, and look at `y = x / max(L, v·x + s)` as a
# function of `x` (with `v = 1`). Where the batch branch wins, `y = x/L`: linear, BN without centering. Where the
# instance branch wins (large positive `x`), `y = x/(v·x + s)` bends over and saturates at `1/v`. So B0 is linear
# for negative inputs and compressive for large positive ones, which is how a single division can stand in for
# BN + ReLU. In a batch, the branch is chosen *per element*:

# %%
L_, s_, v_ = 1.0, 0.5, 1.0
for x_ in (-4.0, -1.0, 0.0, 0.5, 1.0, 4.0, 40.0):
    den = max(L_, v_ * x_ + s_)
    print(f"x = {x_:>6}:  L = {L_}, v·x + s = {v_ * x_ + s_:>6.2f}  ->  y = {x_ / den:.4f}"
          f"  ({'instance' if v_ * x_ + s_ > L_ else 'batch'} branch)")

x = rng.standard_normal((8, 4, 6, 6))
v = np.array([1.0, 0.5, -0.5, 3.0])
y, cache = evonorm_b0_forward(x, None, None, v)
print("fraction of elements on the instance branch, per channel:", cache.mask_r.mean(axis=(0, 2, 3)))
assert 0 < cache.mask_r.mean() < 1

# %% [markdown]
# ## 2. The kink: gradients at a tie
#
# `max` has no derivative where its arguments are equal. TF sends the whole gradient to the first argument of
# `tf.maximum` (the batch std); recent PyTorch splits it in half; normref selects the instance branch only when it
# is *strictly* larger, so a tie goes to the batch std like TF. Below, `v` of channel 0 is chosen so that one
# element sits exactly on a tie; the one-sided finite differences then disagree, and the analytic gradient equals
# the one from the side the forward chose. This is why the tests draw inputs away from ties.

# %%
x = rng.standard_normal((4, 1, 5))
x[0, 0, 0] = 1.3
big_l = np.sqrt(x.var() + 1e-5)
inst = np.sqrt(x[0].var() + 1e-5)
v_tie = np.array([(big_l - inst) / x[0, 0, 0]])  # v·x + s = L exactly at element (0, 0, 0)
dy = rng.standard_normal(x.shape)


def loss(x):
    return float(np.sum(dy * evonorm_b0_forward(x, None, None, v_tie)[0]))


_, cache = evonorm_b0_forward(x, None, None, v_tie)
dx = evonorm_backward(dy, cache)[0]
h = 1e-7
e = np.zeros_like(x)
e[0, 0, 0] = 1.0
right = (loss(x + h * e) - loss(x)) / h
left = (loss(x) - loss(x - h * e)) / h
branch = "instance" if cache.mask_r[0, 0, 0] else "batch"
print(f"one-sided FD from the right {right:.6f}, from the left {left:.6f}; "
      f"analytic ({branch} branch) {dx[0, 0, 0]:.6f}")
assert abs(right - left) > 1e-3 and min(abs(dx[0, 0, 0] - right), abs(dx[0, 0, 0] - left)) < 1e-4

# %% [markdown]
# ## 3. S0: swish over a group standard deviation
#
# With `v = 1`, `x·sigmoid(x)` is swish (SiLU), and S0 is swish divided by the std of the sample's channel group.
# With `v = 0`, `sigmoid(0) = 1/2` and S0 becomes `(γ/2)·x/std_group + β`: **GroupNorm without the centering**,
# which normref's GroupNorm reproduces when handed a zero mean and the group variance as given statistics:

# %%
x = rng.normal(1.5, 2.0, size=(2, 6, 4, 4))
gamma, beta = rng.normal(1, 0.3, 6), rng.normal(0, 1, 6)
y0, _ = evonorm_s0_forward(x, gamma, beta, np.zeros(6), num_groups=3)
var_g = x.reshape(2, 3, -1).var(axis=2)
gn, _ = group_norm_forward(x, gamma / 2, beta, num_groups=3, stats=(np.zeros((2, 3)), var_g))
cmp("S0(v=0) vs GroupNorm(γ/2, mean 0, own variance)", y0, gn)

# %% [markdown]
# The group count: TF starts at 32 and decrements until it divides `C`; timm requires divisibility. normref's op
# takes an explicit `num_groups` that must divide `C`, and `EvoNormS0(C)` (with `num_groups=None`) applies TF's
# rule, so an explicitly requested count is never silently changed:

# %%
print({c: default_groups(c) for c in (16, 48, 64, 96, 100)})

# %% [markdown]
# ## 4. B0 in training and evaluation
#
# In training, B0 divides by the batch std (the gradient flows through it) and updates a running variance; in
# evaluation it uses the running variance. The TF reference writes the update as `mv -= (1 − 0.9)(mv − var)`
# (*decay* 0.9, the weight of the old value, biased variance); normref uses PyTorch's `momentum = 0.1`, the weight
# of the new batch, i.e. the same EMA, and stores the unbiased variance by default (timm; `unbiased=False` gives
# TF's):

# %%
layer = nn.EvoNormB0(4, unbiased=False)
mv = np.ones(4)
for step in range(3 if QUICK else 10):
    xb = rng.normal(0.0, 1.0 + step, size=(8, 4, 5, 5))
    layer.forward(xb)
    mv -= (1 - 0.9) * (mv - xb.var(axis=(0, 2, 3)))  # the TF reference's update, transcribed
cmp("running_var vs TF's decay-0.9 transcription", layer.buffers["running_var"], mv)
layer.eval()
x_test = rng.standard_normal((2, 4, 5, 5))
y_eval = layer.forward(x_test)
y_train_like, _ = evonorm_b0_forward(x_test, layer.params["gamma"], layer.params["beta"], layer.params["v"])
print(f"eval (running var) vs batch-statistics output on the same input: max diff "
      f"{np.max(np.abs(y_eval - y_train_like)):.3f}")

# %% [markdown]
# ## 5. Gradient checks
#
# The B0 backward routes `−g·x/d²` to whichever branch won, then through the instance std (per sample and channel)
# or the batch std (per channel, training only); the S0 backward differentiates swish and the group std. Both are
# exact, checked here by central differences and by the complex step (the `max` chooses its branch by real part,
# so the complex step stays on the branch the real forward took).

# %%
for name, mode in (("EvoNormB0", "train"), ("EvoNormB0", "eval"), ("EvoNormS0", "train")):
    report = check(get_spec(name), mode=mode, affine=True)
    print(report.table(), end="\n\n")
    assert report.passed
