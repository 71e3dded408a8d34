# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # 03 · PowerNorm and Unified Normalization: batch statistics for token data
#
# BatchNorm works well in convolutional networks and badly in transformers, which use LayerNorm instead. PowerNorm
# (Shen et al. 2020) and Unified Normalization (Yang et al. 2022) both argue that the trouble is the *batch
# statistics*: over a batch of sentences they fluctuate far more than over a batch of images. Both then make three
# changes:
#
# 1. drop the mean: divide by the **quadratic mean** $q_c = \operatorname{mean}_p x_{p,c}^2$ instead of the variance;
# 2. **smooth the statistic** over steps: PowerNorm normalizes by a running average $\varphi$ after a warmup, UN by
#    the geometric mean of the last $W$ batch statistics (and skips batches its outlier filter flags);
# 3. replace the backward pass, which through a running statistic is no longer the gradient of the batch, by a
#    **surrogate** with its own running statistic.
#
# This tutorial measures point 1 and 2 on synthetic token data, and then measures point 3: how far the surrogate
# is from the exact gradient of the forward that was actually computed, as an angle, over training steps.
# Both layers ship both gradients in `normref` (`backward="exact"` or `backward="approx"`); the math is in
# `normref.ops.power_norm` and `normref.ops.unified_norm`.

# %%
import os

import numpy as np

import normref
from normref.ops.power_norm import power_norm_backward
from normref.ops.unified_norm import unified_norm_backward

QUICK = os.environ.get("QUICK") == "1"
rng = np.random.default_rng(0)

# %% [markdown]
# ## 1. Why batch statistics fluctuate in transformer-like data
#
# A toy generator of token activations, written inline. What matters is not realism but three properties that
# real transformer activations have and that image features (per channel, over many pixels) mostly lack:
#
# * **few, correlated samples**: a batch holds a handful of sentences, and the tokens of one sentence share a topic
#   vector, so the per-sentence shift does not average out over the tokens;
# * **variable length**: the number of real tokens per batch varies; the rest is padding;
# * **rare large activations**: a few channels carry occasional very large values (the "outlier dimensions" of
#   trained transformers), so one batch's quadratic mean of such a channel can be many times another's.

# %%
C = 16  # channels (the model width)


def token_batch(rng, sentences=8, max_len=12):
    """Activations (sentences, C, max_len) and a padding mask (sentences, max_len), True = padding."""
    lengths = rng.integers(3, max_len + 1, size=sentences)
    topic = 1.5 * rng.standard_normal((sentences, C, 1))  # one shift per sentence, shared by its tokens
    x = topic + rng.standard_normal((sentences, C, max_len))
    spikes = rng.random((sentences, 1, max_len)) < 0.03  # rare tokens with a large value in channels 0-1
    x[:, :2, :] += 12.0 * spikes
    pad = np.arange(max_len)[None, :] >= lengths[:, None]
    x[np.broadcast_to(pad[:, None, :], x.shape)] = 0.0  # padding positions hold zeros
    return x, pad


def image_batch(rng, n=8, pixels=12):
    """Image-like features: many independent positions per channel, no shared shift."""
    return rng.standard_normal((n, C, pixels)), None


def batch_stats(x, pad):
    """Per-channel mean, variance and quadratic mean over the non-padding positions."""
    keep = np.ones((x.shape[0], x.shape[2]), bool) if pad is None else ~pad
    values = x.transpose(1, 0, 2)[:, keep]  # (C, positions)
    return values.mean(axis=1), values.var(axis=1), (values ** 2).mean(axis=1)


def fluctuation(stat):
    """Relative fluctuation across batches: std over batches / mean over batches, averaged over channels."""
    return float(np.mean(stat.std(axis=0) / np.abs(stat.mean(axis=0))))


batches = 60 if QUICK else 300
rows = {}
for name, make in (("image-like", image_batch), ("token-like", token_batch)):
    stats = np.array([batch_stats(*make(rng)) for _ in range(batches)])  # (batches, 3, C)
    rows[name] = stats
    mean, var, quad = stats[:, 0], stats[:, 1], stats[:, 2]
    print(f"{name:<11} batch mean: std across batches {mean.std(axis=0).mean():.3f}   "
          f"relative fluctuation of var {fluctuation(var):.3f}, of quadratic mean {fluctuation(quad):.3f}")

# %% [markdown]
# On image-like data the batch statistics barely move from batch to batch (the variance's relative fluctuation is
# the $\sqrt{2/m}$ of sampling noise): BatchNorm's training-time normalizer is close to the running average it uses
# at inference. On token-like data the batch mean wanders about six times more (shared topic shifts over few
# sentences) and the variance fluctuates between two and three times more, through the rare large values.
#
# Dropping the mean (PowerNorm's and UN's quadratic mean) removes the wandering *shift* that BatchNorm would
# subtract from every token, but not the fluctuation of the *scale*: the quadratic mean, variance plus squared
# mean, fluctuates as much as the variance here. That is what the smoothing over steps is for; here is how much the
# two schemes smooth the token-like statistic:
# PowerNorm's running average $\varphi \leftarrow \alpha\varphi + (1-\alpha)q$ (α weighs the *old* value), and UN's
# geometric mean of the last $W$ values of $q$.

# %%
quad = rows["token-like"][:, 2]  # (batches, C)
phi, running = np.ones(C), []
for q in quad:
    phi = 0.9 * phi + 0.1 * q
    running.append(phi)
window = 4
geometric = [np.exp(np.log(quad[max(0, i - window + 1):i + 1]).mean(axis=0)) for i in range(len(quad))]
burn = 20  # ignore the start, where the averages still remember their initial values
for name, series in (("batch q", quad), ("PowerNorm phi (alpha=0.9)", np.array(running)),
                     (f"UN geometric mean (W={window})", np.array(geometric))):
    print(f"{name:<28} relative fluctuation {fluctuation(np.asarray(series)[burn:]):.3f}")

# %% [markdown]
# ## 2. The exact gradient against the surrogate, measured over training steps
#
# During warmup PowerNorm divides by the batch statistic $q(x)$, and the exact gradient subtracts the projection
# $z\,\Lambda$ with the current $\Lambda_c = \operatorname{mean}_p(g z)$; the surrogate subtracts $\nu z$, where
# $\nu$ is a running estimate of $\Lambda$ from *previous* steps. After warmup the forward divides by the constant
# $\varphi$, whose exact gradient is simply $g/\sqrt{\varphi+\epsilon}$; the surrogate still subtracts $\nu z$
# and, following the official code, divides by the batch $\sqrt{q+\epsilon}$. UN's rule works the same way with
# a windowed EMA of $\Lambda$ and a gradient compensation factor $r$.
#
# A small regression model, a linear map followed by the normalizer, is trained with the surrogate (as the papers
# do). At every step we also compute the exact gradient from the same forward (`power_norm_backward` and
# `unified_norm_backward` are pure functions of the cache, so this does not disturb the layer), and report the angle
# between the two gradients of the weight matrix.

# %%
D = 12  # input width
steps = 80 if QUICK else 600
warmup = 20 if QUICK else 150


def angle_deg(a, b):
    cos = np.sum(a * b) / (np.linalg.norm(a) * np.linalg.norm(b))
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))


def train(layer, exact_backward, rng, lr=0.05):
    """SGD with the layer's surrogate; returns the angle (degrees) between surrogate and exact dW at every step."""
    W = rng.standard_normal((D, C)) / np.sqrt(D)
    target_map = rng.standard_normal((D, C)) / np.sqrt(D)
    angles = []
    for _ in range(steps):
        tokens, pad = token_batch(rng)
        inputs = tokens[:, :D, :]  # (sentences, D, T): reuse the generator for the inputs
        h = np.einsum("ndt,dc->nct", inputs, W)  # the linear map, channel-first (N, C, T)
        y = layer(h, pad_mask=pad)
        target = np.tanh(np.einsum("ndt,dc->nct", inputs, target_map))
        keep = (~pad)[:, None, :]
        dy = (y - target) * keep / keep.sum()  # mean squared error over real tokens
        dh_exact, _, _ = exact_backward(dy, layer.cache)  # pure: the layer's buffers are untouched
        dh = layer.backward(dy)  # the surrogate; updates the backward statistic
        dW, dW_exact = (np.einsum("ndt,nct->dc", inputs, g) for g in (dh, dh_exact))
        angles.append(angle_deg(dW, dW_exact))
        W -= lr * dW
        for name in layer.params:
            layer.params[name] = layer.params[name] - lr * layer.grads[name]
        layer.zero_grad()
    return np.array(angles)


pn = normref.PowerNorm(C, warmup_iters=warmup, group_num=4, backward="approx")
un = normref.UnifiedNorm(C, window_size=4, warmup_iters=warmup, outlier_filtration=True,
                         compensation_floor=warmup, backward="approx")
results = {"PowerNorm": train(pn, power_norm_backward, np.random.default_rng(1)),
           "UnifiedNorm": train(un, unified_norm_backward, np.random.default_rng(1))}

edges = np.linspace(0, steps, 6).astype(int)
print("angle between surrogate and exact dW, in degrees (mean over the steps in each range)")
print(f"{'steps':<12}" + "".join(f"{name:>14}" for name in results))
for lo, hi in zip(edges[:-1], edges[1:]):
    tag = f"{lo + 1}-{hi}" + ("*" if lo < warmup else "")
    print(f"{tag:<12}" + "".join(f"{a[lo:hi].mean():>14.1f}" for a in results.values()))
print(f"(* ranges that include warmup steps 1-{warmup}; UN skipped {un.buffers['skip_counter']} outlier steps)")

# %% [markdown]
# The surrogate is not a rounding-level perturbation of the exact gradient: in this toy setting the two weight
# gradients stay roughly ten degrees apart once warmed up, more during warmup (where the exact gradient uses the
# current batch's $\Lambda$ and the surrogate a lagged average of past ones), and the gap does not shrink with
# training. Whether that is a bug or a feature is
# the papers' argument: the surrogate is meant to approximate the gradient *through the running statistic* over
# many steps (which the exact within-step gradient ignores), not the within-step gradient. What the measurement does
# show is that the two must not be confused: a gradient check of PowerNorm or UN against finite differences is only
# meaningful with `backward="exact"`, and that is how `normref check` runs them. The surrogates are checked instead
# against line-by-line transcriptions of the published rules (`tests/test_power_norm.py`,
# `tests/test_unified_norm.py`).
#
# One special case ties the two together, and is a test: with PowerNorm's `alpha_bkw = 0` the backward statistic
# becomes exactly the current $\Lambda$ (for `eps = 0` and no padding), one step late; a second backward through the
# same batch is then the exact gradient. With UN's window of 1, every step takes the batch statistic and the rule
# *is* the exact gradient.

# %%
layer = normref.UnifiedNorm(C, window_size=1, warmup_iters=1, backward="approx")
x, pad = token_batch(np.random.default_rng(2))
dy = np.random.default_rng(3).standard_normal(x.shape)
layer(x)  # no padding mask: with padding the rule averages over all positions, the statistic over real ones
exact, _, _ = unified_norm_backward(dy, layer.cache)
print(f"UN, window 1: angle between rule and exact gradient = {angle_deg(layer.backward(dy), exact):.2e} degrees")
