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
# # 06 · Region Normalization: what a hole does to BatchNorm's statistics
#
# In image inpainting the network sees an image whose holes are filled with a constant (white, or the mean colour).
# Region Normalization (Yu et al., AAAI 2020) argues that normalizing such a feature map with *one* mean and variance
# is wrong: the hole pixels shift the mean and inflate the variance, so the *valid* pixels come out of BatchNorm
# neither centred nor of unit variance. RN normalizes the hole region and the valid region separately.
#
# This tutorial
#
# 1. derives the shift that a hole of area fraction $\rho$ causes, and measures it against the formula;
# 2. shows what BatchNorm and RN-B then do to the valid pixels;
# 3. looks at the two details of the official code that the library reproduces (the global bias, the effective
#    epsilon);
# 4. runs RN-L, whose mask is learned from the features, and gradient-checks both layers.

# %%
import os

import matplotlib.pyplot as plt
import numpy as np

import normref
from normref.ops.batch_norm import batch_norm_forward
from normref.ops.region_norm import region_stats, rn_b_forward
from normref.testing.gradcheck import check_layer, norm_rel_error

QUICK = os.environ.get("QUICK", "0") not in ("", "0")
rng = np.random.default_rng(0)

# %% [markdown]
# ## 1. The shift, on paper
#
# Take one channel. Valid pixels have mean $\mu_v$ and variance $\sigma_v^2$; a fraction $\rho$ of the pixels is
# a hole filled with the constant $h$. BatchNorm's statistics are those of the *mixture*:
#
# $$\mu = (1-\rho)\,\mu_v + \rho\,h,\qquad
#   \sigma^2 = (1-\rho)\,\sigma_v^2 + \rho(1-\rho)\,(h-\mu_v)^2 .$$
#
# The variance formula is the law of total variance: the within-region variances (0 inside a constant hole) plus
# the variance of the region means. It is the same "mixture variance" as TTN's test-time term (see
# `normref.ops.test_time_bn`). After BatchNorm, the valid pixels therefore have
#
# $$\text{mean} = \frac{\mu_v-\mu}{\sigma} = \frac{\rho\,(\mu_v-h)}{\sigma},\qquad
#   \text{std} = \frac{\sigma_v}{\sigma} .$$
#
# Both drift away from (0, 1) as the hole grows, and the drift is larger the further the fill value is from the
# content.

# %%
def feature_map_with_hole(ratio, *, n=4, c=3, size=32, fill=1.0, mu_v=-0.5, sigma_v=0.5):
    """Valid pixels ~ N(mu_v, sigma_v²); a random set of a `ratio` fraction of the pixels is filled with `fill`."""
    x = rng.normal(mu_v, sigma_v, size=(n, c, size, size))
    hole = np.zeros((n, 1, size, size))
    flat = hole.reshape(-1)
    flat[rng.choice(flat.size, int(round(ratio * flat.size)), replace=False)] = 1.0
    x = np.where(hole == 1, fill, x)
    return x, hole


def predicted(ratio, fill=1.0, mu_v=-0.5, sigma_v=0.5):
    mean = (1 - ratio) * mu_v + ratio * fill
    var = (1 - ratio) * sigma_v**2 + ratio * (1 - ratio) * (fill - mu_v) ** 2
    return mean, var


ratios = [0.0, 0.1, 0.3, 0.5] if QUICK else [0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]
size = 16 if QUICK else 48
rows = []
print(f"{'hole ratio':>10} {'BN mean':>9} {'predicted':>9} {'BN var':>8} {'predicted':>9}   "
      f"{'valid after BN: mean':>20} {'std':>6}   {'after RN-B: mean':>16} {'std':>6}")
for ratio in ratios:
    x, hole = feature_map_with_hole(ratio, size=size)
    mean, var = x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3))
    p_mean, p_var = predicted(ratio)
    valid = hole[:, 0] == 0
    y_bn, _ = batch_norm_forward(x)
    y_rn, _ = rn_b_forward(x, mask=hole)
    bn_valid = np.moveaxis(y_bn, 1, 0)[:, valid]  # (C, number of valid pixels)
    rn_valid = np.moveaxis(y_rn, 1, 0)[:, valid]
    rows.append((ratio, mean.mean(), var.mean(), bn_valid.mean(), bn_valid.std(), rn_valid.mean(), rn_valid.std()))
    print(f"{ratio:>10.2f} {mean.mean():>9.4f} {p_mean:>9.4f} {var.mean():>8.4f} {p_var:>9.4f}   "
          f"{bn_valid.mean():>20.3f} {bn_valid.std():>6.3f}   {rn_valid.mean():>16.1e} {rn_valid.std():>6.3f}")
    # With the *sample's* valid-pixel moments and its exact hole fraction the mixture formulas are identities
    # (the law of total variance holds exactly for empirical moments); the population values above differ from
    # the measurement only by the sampling noise of the valid pixels.
    values = np.moveaxis(x, 1, 0)[:, valid]
    rho = 1 - valid.mean()
    exact_mean, exact_var = predicted(rho, mu_v=values.mean(axis=1), sigma_v=values.std(axis=1))
    assert np.allclose(mean, exact_mean, rtol=0, atol=1e-12) and np.allclose(var, exact_var, rtol=1e-12)
    # RN-B standardizes the valid region exactly, whatever the hole ratio
    assert abs(rn_valid.mean()) < 1e-12 and abs(rn_valid.std() - 1) < 1e-3

# %% [markdown]
# The measured BatchNorm statistics follow the mixture formulas (exactly, with the sample's own valid-pixel
# moments). With a hole of a third of the image the valid
# pixels leave BatchNorm with a mean near −0.6 and a standard deviation near 0.5 instead of (0, 1): the next layer
# sees a feature distribution that depends on the size of the hole. RN-B gives (0, 1) at every ratio.

# %%
table = np.array(rows)
fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
dense = np.linspace(0, max(ratios), 50)
axes[0].plot(table[:, 0], table[:, 1], "o", label="measured mean")
axes[0].plot(dense, predicted(dense)[0], "-", label=r"$(1-\rho)\mu_v + \rho h$")
axes[0].plot(table[:, 0], table[:, 2], "s", label="measured variance")
axes[0].plot(dense, predicted(dense)[1], "--", label=r"$(1-\rho)\sigma_v^2 + \rho(1-\rho)(h-\mu_v)^2$")
axes[0].set_xlabel(r"hole ratio $\rho$")
axes[0].set_title("BatchNorm's statistics")
axes[0].legend(fontsize=7)
axes[1].plot(table[:, 0], table[:, 3], "o-", label="BN: mean of valid pixels")
axes[1].plot(table[:, 0], table[:, 4], "s-", label="BN: std of valid pixels")
axes[1].plot(table[:, 0], table[:, 5], "o--", label="RN-B: mean")
axes[1].plot(table[:, 0], table[:, 6], "s--", label="RN-B: std")
axes[1].set_xlabel(r"hole ratio $\rho$")
axes[1].set_title("valid pixels after normalization")
axes[1].legend(fontsize=7)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 2. RN-B, and two details of the official code
#
# RN-B takes the mask at forward time (1 = hole, which the code calls the *foreground*), computes one mean and
# variance per region and channel over the whole batch ("BN-style", as the code does), and applies a region-wise
# scale. `region_stats` shows the statistics it uses:

# %%
x, hole = feature_map_with_hole(0.3, size=size)
for region, (mean, var, count) in sorted(region_stats(x, hole).items()):
    print(f"region M={region}: {count:5d} positions per channel, mean {np.round(mean, 3)}, var {np.round(var, 4)}")

# %% [markdown]
# **The bias.** The code computes `(x̂·M)(1+γ_f) + β_f + (x̂·(1−M))(1+γ_b) + β_b`: each bias is added outside its
# mask, so both reach every pixel. Only the *scales* are region-wise; the bias is the global $\beta_f + \beta_b$.
# The paper describes region-wise biases. The library follows the code by default and offers
# `regionwise_bias=True`:

# %%
layer = normref.RegionNormB(3)
layer.params.update(gamma_f=np.full(3, 0.5), beta_f=np.full(3, 2.0), gamma_b=np.zeros(3), beta_b=np.full(3, -1.0))
y_code = layer(x, hole)
layer.regionwise_bias = True
y_paper = layer(x, hole)
valid = hole[:, 0] == 0
for label, y in (("code bias (beta_f + beta_b = 1)", y_code), ("paper bias (beta_b = -1)", y_paper)):
    print(f"mean of the valid pixels, {label:<32}: {np.moveaxis(y, 1, 0)[:, valid].mean():+.6f}")

# %% [markdown]
# **The epsilon.** The code never gathers a region: it fills the outside of the region with the region's mean,
# runs an ordinary `BatchNorm2d` over all $P$ positions and rescales by $\sqrt{|S_r|/P}$. The filled map has variance
# $\sigma_r^2|S_r|/P$, so the result is $(x-\mu_r)/\sqrt{\sigma_r^2 + \epsilon P/|S_r|}$: a small region gets a
# *larger* effective epsilon. normref gathers each region into a `(C, |S_r|)` view, runs the shared normalize
# primitive with that effective epsilon, and so reproduces the code exactly. It matters only for tiny variances:

# %%
def code_path(x, mask, eps=1e-5):
    """The official computation, transcribed: fill with the region mean, BN over everything, rescale, sum."""
    n, _, h, w = x.shape
    out = np.zeros_like(x)
    for label in (mask, 1 - mask):
        count = max(label.sum(), 1.0)
        mu = (x * label).sum(axis=(0, 2, 3)) / count
        filled = x * label + (1 - label) * mu[None, :, None, None]
        batch_mean = filled.mean(axis=(0, 2, 3), keepdims=True)
        normed = (filled - batch_mean) / np.sqrt(filled.var(axis=(0, 2, 3), keepdims=True) + eps)
        out += normed * np.sqrt(count / (n * h * w)) * label
    return out


for scale in (1.0, 1e-3):
    y, _ = rn_b_forward(scale * x, mask=hole)
    print(f"input scale {scale:g}: normref vs the code path, norm-relative difference "
          f"{norm_rel_error(y, code_path(scale * x, hole)):.1e}")
    assert norm_rel_error(y, code_path(scale * x, hole)) < 1e-12

# %% [markdown]
# ## 3. RN-L: a mask learned from the features
#
# Deeper in the network there is no hole mask to pass. RN-L computes a spatial response map
# $s = \mathrm{sigmoid}(\mathrm{conv}_{7\times7}([\mathrm{mean}_c x;\ \max_c x]))$, thresholds it (
# $s \ge 0.8$, no gradient through the threshold) to get the regions, and uses two more $7\times7$ convolutions of
# $s$ as a pixel-wise scale and shift. Because $s$ also sets the affine, the gradient reaches $x$ twice: through the
# region normalization and through $s$ (the channel mean, and the channel max via its arg-max). The library brings a
# minimal same-padding convolution with its backward for these three kernels.

# %%
rn_l = normref.RegionNormL(3, threshold=0.5, seed=1)
features = 0.3 * rng.standard_normal((2, 3, 12, 12))
features[:, :, 3:8, 4:9] += 1.5  # a bright square (the untrained kernels need not single it out: training does)
y = rn_l(features)
mask = rn_l.last_mask()
print("fraction of pixels in the s >= 0.5 region:", mask.mean().round(3))
print("mask of sample 0 (1 = region M=1):")
print(mask[0, 0].astype(int))

# %% [markdown]
# ## 4. Gradient checks
#
# RN-B's backward is region-wise BatchNorm's; RN-L's adds the convolutions, the sigmoid and the mean/max pooling.
# Both are exact (away from the threshold and from ties in the max), so the complex step matches them to rounding.
# `normref check --layer RegionNormB --layer RegionNormL` runs the same checks over all modes.

# %%
rn_b = normref.RegionNormB(3)
rn_b.set_mask(hole[:2, :, :8, :8])
report = check_layer(rn_b, 5 * rng.standard_normal((2, 3, 8, 8)) + 12, methods=("central", "complex"),
                     title="RegionNormB")
print(report)
assert report.passed
small = 0.1 * rng.standard_normal((2, 3, 6, 6)) + 0.1
report = check_layer(normref.RegionNormL(3, threshold=0.5), small, methods=("complex",), title="RegionNormL")
print(report)
assert report.passed
