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
# # 04 · Weight Standardization, Batch-Channel Normalization, and signal propagation without activations' statistics
#
# Batch Normalization needs a batch: with one or two samples per device its statistics are either noise or, worse,
# the sample's own. Qiao et al. (arXiv:1903.10520) answer with two pieces that work at batch size 1:
#
# * **Weight Standardization (WS)** standardizes the *weights* of each output unit over its fan-in. It is
#   LayerNorm applied to the weight matrix, costs nothing per sample, and its backward *projects* the gradient.
# * **Batch-Channel Normalization (BCN)** runs a BatchNorm stage whose statistics are slowly *estimated* across
#   steps (not taken from the micro-batch), followed by a GroupNorm stage with a per-group affine.
#
# Brock, De & Smith (NF-ResNets, arXiv:2101.08692) push the weight side further: **scaled WS** plus a fixed gain per
# nonlinearity keeps activations at unit variance through a deep network with no activation normalization at all.
#
# Sections: (1) WS is LayerNorm over the fan-in, and its variants; (2) the gradient projection; (3) micro-batch
# training on synthetic data, BN at batch 1 against BCN + WS; (4) signal propagation through a deep ReLU stack;
# (5) the gradient-check table.

# %%
import os

import numpy as np

from normref import nn
from normref.ops.batch_channel_norm import batch_channel_norm_forward
from normref.ops.instance_norm import instance_norm_forward
from normref.ops.layer_norm import layer_norm_backward, layer_norm_forward
from normref.ops.weight_standardization import (NF_GAMMA, WS_VARIANTS, weight_standardization_backward,
                                                weight_standardization_forward)
from normref.testing.gradcheck import norm_rel_error
from normref.testing.specs import check, get_spec

QUICK = os.environ.get("QUICK", "0") not in ("", "0")
OUT = os.environ.get("NORMREF_TUTORIAL_OUT")
np.set_printoptions(precision=4, linewidth=110)
rng = np.random.default_rng(0)


def cmp(name, ours, reference, tol=1e-12):
    """Print exact / approx / maxdiff and assert agreement to ``tol`` (norm-relative)."""
    ours, reference = np.asarray(ours), np.asarray(reference)
    rel = norm_rel_error(ours, reference)
    print(f"{name:<44} approx: {rel < tol!s:<5}  maxdiff: {np.max(np.abs(ours - reference)):.1e}")
    assert rel < tol, f"{name}: norm-relative error {rel:.2e} is not below {tol:.0e}"


# %% [markdown]
# ## 1. WS is LayerNorm over the fan-in
#
# A conv weight `w` of shape `(O, C_in, kh, kw)` has one *row* per output unit, its `I = C_in·kh·kw` fan-in.
# WS replaces each row by `(w_i − mean w_i)/sqrt(var w_i + eps)`. Viewed as a matrix `(O, I)` that is exactly
# LayerNorm without affine, so forward **and** backward must agree with `layer_norm_forward/backward`:

# %%
w = rng.normal(0.2, 0.05, size=(8, 4, 3, 3))  # a typical small-scale init, with a nonzero mean
dw_hat = rng.standard_normal(w.shape)  # the conv's ordinary weight gradient dL/dŵ
w_hat, cache = weight_standardization_forward(w)
dw, _ = weight_standardization_backward(dw_hat, cache)
y_ln, c_ln = layer_norm_forward(w.reshape(8, -1), normalized_shape=36)
cmp("WS(w) vs LayerNorm over the fan-in", w_hat.reshape(8, -1), y_ln)
cmp("WS backward vs LayerNorm backward", dw.reshape(8, -1), layer_norm_backward(dw_hat.reshape(8, -1), c_ln)[0])

# %% [markdown]
# The reference implementations disagree on two details: biased or unbiased (`torch.std`) standard deviation, and
# `eps` inside the square root or added to the std. normref's default is biased with eps inside (the LayerNorm
# form, smooth everywhere); the others are named in `WS_VARIANTS`. With weights of std 0.05, the fan-in of 36 makes
# the Bessel factor `sqrt(36/35)` the only visible difference; `eps` matters only for nearly constant rows:

# %%
for name, hyper in WS_VARIANTS.items():
    out, _ = weight_standardization_forward(w, **hyper)
    print(f"{name:<10} {hyper}  std of row 0 after WS: {out[0].std():.6f}")

# %% [markdown]
# ## 2. The WS gradient is a projection
#
# Write `ŵ = (w − μ)/σ` for one row (eps = 0) and `g = dL/dŵ`. Differentiating through μ and σ gives
# `dL/dw = (g − mean(g) − ŵ·mean(g ŵ))/σ`. Because `ŵ` has mean 0 and `‖ŵ‖² = I`, the bracket is `g` with its
# components along `1` and along `ŵ` removed, an orthogonal projection. Hence
# `‖dL/dw‖² = (‖g‖² − ⟨1,g⟩²/I − ⟨ŵ,g⟩²/I)/σ²`: the gradient reaching `w` is never larger than `g/σ`, which is the
# paper's argument that WS shrinks the Lipschitz constant of the loss. Numerically, per row:

# %%
w_hat0, cache0 = weight_standardization_forward(w, eps=0.0)
dw0, _ = weight_standardization_backward(dw_hat, cache0)
rows_g, rows_hat, rows_dw = dw_hat.reshape(8, -1), w_hat0.reshape(8, -1), dw0.reshape(8, -1)
sigma, fan_in = w.reshape(8, -1).std(axis=1), 36
removed_ones = rows_g.sum(axis=1) ** 2 / fan_in
removed_what = (rows_g * rows_hat).sum(axis=1) ** 2 / fan_in
print("<dw, 1> per row:   ", rows_dw.sum(axis=1))
print("<dw, ŵ> per row:   ", (rows_dw * rows_hat).sum(axis=1))
print("‖dw‖·σ / ‖g‖ per row:", np.linalg.norm(rows_dw, axis=1) * sigma / np.linalg.norm(rows_g, axis=1))
cmp("‖dw‖² vs (‖g‖² − two removed terms)/σ²", (rows_dw**2).sum(axis=1),
    ((rows_g**2).sum(axis=1) - removed_ones - removed_what) / sigma**2)
assert np.max(np.abs(rows_dw.sum(axis=1))) < 1e-9 and np.max(np.abs((rows_dw * rows_hat).sum(axis=1))) < 1e-9

# %% [markdown]
# ## 3. Micro-batch training: BN at batch size 1 against BCN + WS
#
# A tiny synthetic task that isolates the failure mode. Each sample is a sequence of `L = 8` positions with
# `D = 4` features; its class `k` (of 3) sets the **mean** of the sequence, `x = μ_k + noise`. The model is a
# pointwise linear layer (a 1×1 convolution, `C = 8` channels), a normalization, ReLU, average pooling over
# positions, and a linear classifier.
#
# With one sample per step, BatchNorm's "batch" statistics are that sample's per-channel mean and variance over its
# positions: BN at batch 1 *is* InstanceNorm, and it subtracts exactly the per-sample mean that carries the class.
# Training cannot learn the task, and the running statistics used at test time describe a different function than
# the one trained. BCN with estimated statistics normalizes every sample with slowly updated population estimates,
# so the per-sample mean survives the BN stage; its GroupNorm stage (2 groups of 4 channels) then keeps the
# differences between channels within a group. BCN with *batch* statistics at batch 1 fails like BN (its BN stage
# is the same InstanceNorm). The first layer's weight goes through WS in the BCN models.

# %%
K, D, L, C, G = 3, 4, 8, 8, 2
centers = rng.normal(0.0, 1.0, size=(K, D))


def make_data(n, seed):
    r = np.random.default_rng(seed)
    labels = r.integers(0, K, n)
    x = centers[labels][:, :, None] + r.standard_normal((n, D, L))
    return x, labels


class TinyNet:
    """pointwise linear (optionally through WS) → norm → ReLU → mean over positions → linear → logits."""

    def __init__(self, norm, use_ws, seed):
        r = np.random.default_rng(seed)
        self.w1 = r.normal(0.0, 1.0 / np.sqrt(D), (C, D))
        self.w2 = r.normal(0.0, 1.0 / np.sqrt(C), (K, C))
        self.norm, self.ws = norm, (nn.WeightStandardization(C) if use_ws else None)

    def forward(self, x):
        self.x = x
        self.w1_used = self.ws.forward(self.w1) if self.ws else self.w1
        h = np.einsum("cd,ndl->ncl", self.w1_used, x)  # (N, C, L)
        self.a = self.norm.forward(h)
        self.r = np.maximum(self.a, 0.0)
        self.pooled = self.r.mean(axis=2)  # (N, C)
        return self.pooled @ self.w2.T  # (N, K)

    def backward(self, dlogits):
        dw2 = dlogits.T @ self.pooled
        dr = np.repeat((dlogits @ self.w2)[:, :, None], L, axis=2) / L
        dh = self.norm.backward(dr * (self.a > 0))
        dw1 = np.einsum("ncl,ndl->cd", dh, self.x)
        if self.ws:
            dw1 = self.ws.backward(dw1)
        return dw1, dw2


def cross_entropy(logits, labels):
    z = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    dlogits = p.copy()
    dlogits[np.arange(len(labels)), labels] -= 1.0
    return -np.log(p[np.arange(len(labels)), labels]).mean(), dlogits / len(labels)


def train(net, batch, steps, lr, seed):
    x_all, y_all = make_data(batch * steps, seed)
    for step in range(steps):
        sl = slice(step * batch, (step + 1) * batch)
        net.norm.train()
        _, dlogits = cross_entropy(net.forward(x_all[sl]), y_all[sl])
        dw1, dw2 = net.backward(dlogits)
        net.w1 -= lr * dw1
        net.w2 -= lr * dw2
        for name, grad in net.norm.grads.items():  # the norm's own affine parameters
            net.norm.params[name] -= lr * grad
        net.norm.zero_grad()
    x_test, y_test = make_data(600, seed + 1)
    net.norm.eval()
    return (net.forward(x_test).argmax(axis=1) == y_test).mean()


steps = 300 if QUICK else 1500
configs = {
    "BN, batch 16 (the large-batch reference)": (lambda: nn.BatchNorm(C), False, 16),
    "BN, batch 1": (lambda: nn.BatchNorm(C), False, 1),
    "BCN (batch statistics) + WS, batch 1": (lambda: nn.BatchChannelNorm(C, G), True, 1),
    "BCN (estimated statistics) + WS, batch 1": (
        lambda: nn.BatchChannelNorm(C, G, estimate=True, moving_speed=0.05), True, 1),
}
accuracy = {}
for name, (make_norm, use_ws, batch) in configs.items():
    accuracy[name] = np.mean([train(TinyNet(make_norm(), use_ws, seed), batch, steps, 0.05, seed)
                              for seed in range(2)])
    print(f"{name:<44} test accuracy {accuracy[name]:.3f}   (chance 0.333, {steps} steps)")
assert accuracy["BN, batch 1"] < 0.5
assert accuracy["BCN (estimated statistics) + WS, batch 1"] > accuracy["BN, batch 1"] + 0.2

# %% [markdown]
# The two models that take statistics from a batch of one stay near chance, and *why* is a one-line identity: with a
# single sample and one channel per group, BCN with batch statistics is InstanceNorm (up to `eps`;
# `normref.ops.batch_channel_norm` derives the exact form, `IN` with `eps' = eps²/(1+eps)` divided by
# `sqrt(1+eps)`). With 2 groups of 4 channels, as trained above, the BN stage is still InstanceNorm and removes the
# per-sample mean before the GroupNorm stage sees it.

# %%
x1 = rng.normal(2.0, 3.0, size=(1, C, L))
y_bcn, _ = batch_channel_norm_forward(x1, None, rng.standard_normal(C), num_groups=C, eps=1e-5)
y_in, _ = instance_norm_forward(x1, eps=1e-10 / (1 + 1e-5))
cmp("BCN(N=1, G=C) vs IN_eps'/sqrt(1+eps)", y_bcn, y_in / np.sqrt(1 + 1e-5))

# %% [markdown]
# ## 4. Signal propagation without normalizing activations (NF-ResNets)
#
# Scaled WS divides each standardized row by `sqrt(I)` as well: `ŵ_i = gain_i·(w_i − μ_i)/(σ_i·sqrt(I))`, so
# `‖ŵ_i‖ = |gain_i|`. For an input with i.i.d. unit-variance entries, `ŵ_i·h` then has unit variance, *and* the zero
# row mean cancels any common mean of `h`, the mean shift that ReLU outputs carry. ReLU of a unit Gaussian has
# variance `½(1 − 1/π) ≈ 0.341`, so each layer must multiply the activation by `γ = 0.341^{-1/2} ≈ 1.713`
# (DeepMind's table, measured empirically, has 1.7139588594436646 for ReLU). Below, a deep stack
# `z_{l+1} = ŵ_{l+1}·act(z_l)` with raw weights drawn from N(0.5, 3²) (a mean and a wrong scale on purpose) and
# four treatments; the numbers are the variance of the pre-activations `z` at each depth.

# %%
width, depth, batch = (64, 20, 128) if QUICK else (256, 50, 512)
report_at = [1, 2, 5, 10, depth]


def propagate(kind):
    r = np.random.default_rng(1)
    h = r.standard_normal((batch, width))
    ws = nn.ScaledWeightStandardization(width, gain=False)
    out = {}
    for layer in range(1, depth + 1):
        raw = r.normal(0.5, 3.0, (width, width))
        if kind == "raw weights":
            w_used = raw
        elif kind == "He init, no WS":
            w_used = r.normal(0.0, np.sqrt(2.0 / width), (width, width))
        else:
            w_used = ws.forward(raw)
        z = h @ w_used.T
        gamma = NF_GAMMA["relu"] if kind == "scaled WS + γ_relu" else 1.0
        h = gamma * np.maximum(z, 0.0)
        if layer in report_at:
            out[layer] = (z.mean(), z.var())
    return out


results = {kind: propagate(kind) for kind in ("raw weights", "He init, no WS", "scaled WS, no γ",
                                              "scaled WS + γ_relu")}
print(f"{'depth':<22}" + "".join(f"{d:>12}" for d in report_at))
for kind, out in results.items():
    print(f"{kind:<22}" + "".join(f"{out[d][1]:>12.3g}" for d in report_at))
final = {kind: out[depth][1] for kind, out in results.items()}
assert final["raw weights"] > 1e20 and final["scaled WS, no γ"] < 1e-6
assert 0.5 < final["scaled WS + γ_relu"] < 2.0

# %% [markdown]
# Raw weights explode (a row of `width` entries of size 3 multiplies the scale by about `3·sqrt(width)` per layer,
# and their mean adds a term proportional to the mean of `h`); He init keeps the second moment of `z` roughly
# constant, but ReLU outputs are positive, so part of it becomes a mean shared by all samples and the variance
# drifts; scaled WS without γ loses the factor 0.34 per layer; with γ the variance stays at 1 for any depth. The
# optional figure plots the same runs.

# %%
if OUT:
    import matplotlib.pyplot as plt

    os.makedirs(OUT, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4))
    for kind, out in results.items():
        ax.semilogy(report_at, [max(out[d][1], 1e-300) for d in report_at], marker="o", label=kind)
    ax.set_xlabel("depth")
    ax.set_ylabel("Var(pre-activation)")
    ax.set_title("Signal propagation through a ReLU stack")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(OUT, "04_signal_propagation.png"), dpi=100)
    plt.close(fig)

# %% [markdown]
# ## 5. The checks behind all of this
#
# `normref check` runs the same gradient checker on every layer: here WS (plain, and the official code's unbiased,
# eps-outside variant with a gain), scaled WS with DeepMind's floor, and BCN with batch and with (frozen) estimated
# statistics. The estimated-statistics BCN is *stop-gradient*: its backward is the exact gradient of the function
# with the estimates held fixed, which is what the checker compares against.

# %%
for name, mode, affine in (("WeightStandardization", "train", False), ("WeightStandardization-official", "train", True),
                           ("ScaledWeightStandardization", "train", True), ("BatchChannelNorm", "train", True),
                           ("BatchChannelNorm-est", "train", True)):
    report = check(get_spec(name), mode=mode, affine=affine)
    print(report.table(), end="\n\n")
    assert report.passed
