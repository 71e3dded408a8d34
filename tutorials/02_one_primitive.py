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
# # 02 · One primitive, five normalizers; the complex step against central differences
#
# Tutorial 01 derived BatchNorm's backward, $dx = \mathrm{rstd}\,(g - c_2 - \hat x c_1)$ with $g = \gamma\,dy$ and
# $c_1, c_2$ the means of $g\hat x$ and $g$ over the set $R$ of values that share one statistic. Nothing in that
# derivation depended on *which* values form $R$. This tutorial:
#
# 1. shows LayerNorm, GroupNorm, InstanceNorm and RMSNorm as choices of axes for the one primitive
#    `normref.ops._normalize.normalize_forward` (and its one backward);
# 2. checks the equivalences that follow: GroupNorm with one group is LayerNorm, GroupNorm with one channel per
#    group is InstanceNorm, RMSNorm is LayerNorm on zero-mean rows (and what that means for the gradient);
# 3. compares the two numerical derivatives `normref`'s checker uses, central differences and the complex step,
#    with an error-versus-step-size plot;
# 4. explains what makes a forward pass complex-step safe, and shows two innocent-looking lines that break it.

# %%
import inspect
import os

import matplotlib.pyplot as plt
import numpy as np

from normref._moments import mean_var
from normref.ops._normalize import normalize_forward
from normref.ops.batch_norm import batch_norm_forward
from normref.ops.group_norm import group_norm_backward, group_norm_forward
from normref.ops.instance_norm import instance_norm_backward, instance_norm_forward
from normref.ops.layer_norm import layer_norm_backward, layer_norm_forward
from normref.ops.rms_norm import rms_norm_backward, rms_norm_forward
from normref.testing.gradcheck import norm_rel_error, numerical_vjp

QUICK = os.environ.get("QUICK", "0") not in ("", "0")  # QUICK=1: fewer step sizes in section 3
OUT = os.environ.get("NORMREF_TUTORIAL_OUT")  # where to save the figure; unset: nothing is written
np.set_printoptions(precision=4, linewidth=110)
rng = np.random.default_rng(0)


def cmp(name, ours, reference, tol=1e-12):
    """Print exact / approx / maxdiff and assert agreement to ``tol`` (norm-relative)."""
    ours, reference = np.asarray(ours), np.asarray(reference)
    assert ours.shape == reference.shape, (name, ours.shape, reference.shape)
    rel = norm_rel_error(ours, reference)
    print(f"{name:<34} exact: {np.array_equal(ours, reference)!s:<5}  approx: {rel < tol!s:<5}  "
          f"maxdiff: {np.max(np.abs(ours - reference)):.1e}")
    assert rel < tol, f"{name}: norm-relative error {rel:.2e} is not below {tol:.0e}"


# %% [markdown]
# ## 1. The primitive and the views
#
# `normalize_forward(x_view, gamma, beta, *, reduce_axes, param_view_shape, eps, center, stats)` standardizes
# `x_view` over `reduce_axes` (two-pass mean and biased variance), then multiplies by `gamma` and adds `beta`, both
# reshaped to `param_view_shape`. `center=False` skips the mean (RMS normalization: the "variance" becomes the
# mean square), and `stats=(mean, var)` freezes the statistics (evaluation mode).
#
# Each op is bookkeeping around it: it picks a **view** of `x` in which every reduced set is a set of whole axes,
# the **reduce axes**, and the **shape its parameters take in that view**. The table below is read from the caches
# the five real forwards return, for an image batch `x` of shape `(N, C, H, W) = (2, 6, 3, 4)`:
#
# * **BatchNorm**: one statistic per channel, over the batch and the pixels.
# * **LayerNorm** (`normalized_shape=(C, H, W)`): one per sample, over everything else; an *elementwise* affine.
# * **GroupNorm** (`G = 3`): view `x` as `(N, G, C/G, H, W)`, one statistic per sample and group; the affine stays
#   per *channel*, so `gamma` becomes `(1, G, C/G, 1, 1)` in the view.
# * **InstanceNorm**: one per sample and channel, over the pixels.
# * **RMSNorm** (`normalized_shape=W`, the usual transformer case of normalizing the last axis): like LayerNorm but
#   uncentered.

# %%
N, C, H, W = 2, 6, 3, 4
G = 3
eps = 1e-5
x = 3 * rng.standard_normal((N, C, H, W)) + 2
gamma_c = 1 + 0.5 * rng.standard_normal(C)  # per-channel parameters (BN, GN, IN)
beta_c = rng.standard_normal(C)
gamma_w = 1 + 0.5 * rng.standard_normal(W)  # RMSNorm over the last axis

forwards = {
    "BatchNorm": batch_norm_forward(x, gamma_c, beta_c, eps=eps),
    "LayerNorm": layer_norm_forward(x, np.ones((C, H, W)), np.zeros((C, H, W)), normalized_shape=(C, H, W),
                                    eps=eps),
    "GroupNorm": group_norm_forward(x, gamma_c, beta_c, num_groups=G, eps=eps),
    "InstanceNorm": instance_norm_forward(x, gamma_c, beta_c, eps=eps),
    "RMSNorm": rms_norm_forward(x, gamma_w, normalized_shape=W, eps=eps),
}
print(f"{'op':<13} {'view':<17} {'reduce axes':<12} {'statistic':<17} {'gamma in view':<17} {'m':>3}  centered")
for name, (y, cache) in forwards.items():
    m = cache.xhat.size // cache.rstd.size  # values per statistic
    print(f"{name:<13} {str(cache.xhat.shape):<17} {str(cache.reduce_axes):<12} {str(cache.rstd.shape):<17} "
          f"{str(cache.gamma_b.shape):<17} {m:>3}  {cache.center}")
    # Whatever the axes, xhat is standardized over them: mean 0 (when centered) and mean square ~ 1.
    if cache.center:
        assert np.allclose(cache.xhat.mean(axis=cache.reduce_axes), 0, atol=1e-12)
    assert np.allclose((cache.xhat**2).mean(axis=cache.reduce_axes), 1, atol=1e-3)

# %% [markdown]
# Since the ops are only bookkeeping, we can do the bookkeeping ourselves. GroupNorm by hand is a reshape, a call to
# the primitive, and a reshape back:

# %%
view = x.reshape(N, G, C // G, H, W)
y_view, _ = normalize_forward(view, gamma_c, beta_c, reduce_axes=(2, 3, 4), param_view_shape=(1, G, C // G, 1, 1),
                              eps=eps)
cmp("GroupNorm via the primitive", y_view.reshape(x.shape), forwards["GroupNorm"][0])

# %% [markdown]
# And the backward needs no bookkeeping at all: every op's backward is `normalize_backward(dy, cache)`, the fused
# formula of tutorial 01 with its means taken over `cache.reduce_axes`. So one derivation, checked once, covers all
# five layers, and the only thing left to get wrong per layer is the axes. The tests check exactly that, through
# the equivalences below and through gradient checks of every layer.
#
# ## 2. Equivalences
#
# **GroupNorm with one group is LayerNorm over `(C, H, W)`**, with a per-channel affine: give LayerNorm the
# elementwise `gamma` that repeats each channel's value over its pixels. The gradients then agree too, once
# LayerNorm's elementwise `dgamma` is summed over the pixels that share one channel's parameter.
#
# **GroupNorm with one channel per group is InstanceNorm**: identical sets, identical parameters.

# %%
dy = rng.standard_normal(x.shape)
gamma_elem = np.broadcast_to(gamma_c[:, None, None], (C, H, W)).copy()
beta_elem = np.broadcast_to(beta_c[:, None, None], (C, H, W)).copy()

y_gn1, cache_gn1 = group_norm_forward(x, gamma_c, beta_c, num_groups=1, eps=eps)
y_ln, cache_ln = layer_norm_forward(x, gamma_elem, beta_elem, normalized_shape=(C, H, W), eps=eps)
dx_gn1, dgamma_gn1, dbeta_gn1 = group_norm_backward(dy, cache_gn1)
dx_ln, dgamma_ln, dbeta_ln = layer_norm_backward(dy, cache_ln)
cmp("GN(G=1) vs LN(C,H,W): y", y_gn1, y_ln)
cmp("GN(G=1) vs LN(C,H,W): dx", dx_gn1, dx_ln)
cmp("GN(G=1) vs LN(C,H,W): dgamma", dgamma_gn1, dgamma_ln.sum(axis=(1, 2)))
cmp("GN(G=1) vs LN(C,H,W): dbeta", dbeta_gn1, dbeta_ln.sum(axis=(1, 2)))

y_gnc, cache_gnc = group_norm_forward(x, gamma_c, beta_c, num_groups=C, eps=eps)
y_in, cache_in = instance_norm_forward(x, gamma_c, beta_c, eps=eps)
for label, a, b in zip(("y", "dx", "dgamma", "dbeta"), (y_gnc, *group_norm_backward(dy, cache_gnc)),
                       (y_in, *instance_norm_backward(dy, cache_in))):
    cmp(f"GN(G=C) vs IN: {label}", a, b)

# %% [markdown]
# The reduce axis is the *only* difference between BatchNorm and LayerNorm: for a 2-D input `(B, D)`, LayerNorm of
# the rows is BatchNorm of the transpose, whose "channels" are the rows.

# %%
x2 = 3 * rng.standard_normal((5, 7)) + 2
cmp("LN(x) vs BN(x.T).T", layer_norm_forward(x2, normalized_shape=7, eps=eps)[0],
    batch_norm_forward(x2.T, eps=eps)[0].T)

# %% [markdown]
# **RMSNorm is LayerNorm without bias on rows that already have zero mean**: centering does nothing to such rows,
# and then the variance *is* the mean square. The forwards agree there, but the gradients do not, and the
# difference is instructive. Two functions that agree on a subspace (here: rows with zero mean) have gradients
# that agree only *along* that subspace. LayerNorm's $dx$ has zero mean over each row (its $c_2$ term projects the
# mean out: LayerNorm ignores shifts), while RMSNorm's has mean $\mathrm{rstd}\cdot c_2$, because RMSNorm does
# respond to a shift. Removing the row mean from RMSNorm's $dx$ gives LayerNorm's exactly.

# %%
x0 = x - x.mean(axis=-1, keepdims=True)  # every row (over the last axis) has zero mean
y_rms, cache_rms = rms_norm_forward(x0, gamma_w, normalized_shape=W, eps=eps)
y_ln0, cache_ln0 = layer_norm_forward(x0, gamma_w, None, normalized_shape=W, eps=eps)
dx_rms, _ = rms_norm_backward(dy, cache_rms)
dx_ln0, _, _ = layer_norm_backward(dy, cache_ln0)
cmp("RMS vs LN on zero-mean rows: y", y_rms, y_ln0)
print(f"{'RMS vs LN on zero-mean rows: dx':<34} maxdiff: {np.max(np.abs(dx_rms - dx_ln0)):.1e}  (they differ)")
cmp("RMS dx minus its row mean vs LN dx", dx_rms - dx_rms.mean(axis=-1, keepdims=True), dx_ln0)

# %% [markdown]
# ## 3. The complex step against central differences
#
# The gradient checker estimates directional derivatives $D_v L = \langle dy, J v\rangle$ numerically and compares
# them with $\langle dx, v\rangle$ from the hand-written backward. Two estimators, both from Taylor series.
#
# **Central differences.** $f(x \pm hv) = f \pm h f' + \frac{h^2}{2} f'' \pm \frac{h^3}{6} f''' + \dots$, so
#
# $$\frac{f(x+hv) - f(x-hv)}{2h} = f' + \frac{h^2}{6} f''' + O(h^4).$$
#
# The truncation error falls like $h^2$, but the two evaluations agree in more and more leading digits as $h$
# shrinks, and their difference keeps only the rest: each carries a rounding error of about
# $\epsilon_{\text{mach}}|f|$, divided by $2h$. The total, $\approx \frac{h^2}{6}|f'''| + \epsilon_{\text{mach}}|f|/h$,
# is a **V** in log-log axes with its minimum near $h \approx \epsilon_{\text{mach}}^{1/3} \approx 10^{-5}$, where
# it reaches only $\approx \epsilon_{\text{mach}}^{2/3} \approx 10^{-11}$. Below $h \approx \epsilon_{\text{mach}}|x|$
# the step is lost altogether ($x + h = x$ in floating point) and the estimate is 0: relative error 1.
#
# **The complex step** (Squire & Trapp, 1998). Step in the *imaginary* direction instead:
# $f(x + ihv) = f + ih f' - \frac{h^2}{2} f'' - i\frac{h^3}{6} f''' + \dots$, so
#
# $$\frac{\operatorname{Im} f(x + ihv)}{h} = f' - \frac{h^2}{6} f''' + O(h^4).$$
#
# The same truncation error (with the opposite sign), but **no subtraction**: the derivative sits in the imaginary
# part, untouched by the $O(1)$ real part, so there is no cancellation and no rounding term that grows as $h$
# shrinks. Take $h = 10^{-20}$ and the truncation error is $10^{-40}$: the estimate is exact to machine precision.
# The price: one complex forward (about twice a real one), and a forward that accepts complex input and computes
# the analytic continuation of the real function (section 4).
#
# The experiment: LayerNorm on a `(4, 8)` input with random `gamma`, `beta`, `dy` and direction `v`, and the
# checker's own `numerical_vjp` with an explicit step `h`, from $10^{-1}$ down to $10^{-20}$.

# %%
xl = 3 * rng.standard_normal((4, 8)) + 2
gamma_l, beta_l = 1 + 0.5 * rng.standard_normal(8), rng.standard_normal(8)
dy_l, v = rng.standard_normal((4, 8)), rng.standard_normal((4, 8))


def layer_norm(x):
    return layer_norm_forward(x, gamma_l, beta_l, normalized_shape=8, eps=eps)[0]


_, cache_l = layer_norm_forward(xl, gamma_l, beta_l, normalized_shape=8, eps=eps)
exact = float(np.sum(layer_norm_backward(dy_l, cache_l)[0] * v))  # <dx, v> from the hand-derived backward

steps = np.logspace(-1, -20, 20 if QUICK else 58)  # one or three per decade
errors = {}
for method in ("central", "complex"):
    estimates = [numerical_vjp(layer_norm, {"x": xl}, "x", dy_l, method=method, h=h, directions=[v])[0]
                 for h in steps]
    errors[method] = np.abs(np.array(estimates) - exact) / abs(exact)

print(f"directional derivative <dx, v> = {exact:.15f}\n")
print(f"{'h':>8}  {'central rel. error':>18}  {'complex rel. error':>18}")
for h, e_central, e_complex in zip(steps, errors["central"], errors["complex"]):
    print(f"{h:8.0e}  {e_central:18.1e}  {e_complex:18.1e}")

# %% [markdown]
# Read the table (and the figure) from the top. At $h = 10^{-1}$ both estimators carry the same truncation error,
# and both improve by two decades per decade of $h$. Central differences bottom out near $h \approx 10^{-5}$ at
# about $10^{-10}$, then get *worse* as rounding takes over, and return pure zero (error 1) once $h$ drops below the
# spacing of floating-point numbers near $x$. The complex step keeps improving until it reaches machine precision
# around $h \approx 10^{-7}$ and stays there down to $10^{-20}$. That is why the checker's central-difference
# tolerance is $10^{-6}$ while its complex-step tolerance is $10^{-11}$, and why a complex-step pass is a much
# stronger statement: an error of $10^{-9}$ in a backward formula (a missing $\epsilon$ in a denominator, say) is
# invisible to central differences and obvious to the complex step.

# %%
best = int(np.argmin(errors["central"]))
print(f"central differences: best error {errors['central'][best]:.1e} at h = {steps[best]:.0e}")
tiny = steps <= 1e-8
print(f"complex step: worst error for h <= 1e-8 is {errors['complex'][tiny].max():.1e}")
assert 1e-13 < errors["central"][best] < 1e-8 and 1e-7 <= steps[best] <= 1e-3  # the bottom of the V
assert errors["central"][-1] == 1.0  # x + 1e-20 == x: the step is lost
assert errors["complex"][tiny].max() < 1e-13  # flat at machine precision

# %%
fig, ax = plt.subplots(figsize=(6, 4))
ax.loglog(steps, errors["central"], "o-", label="central differences")
ax.loglog(steps, np.maximum(errors["complex"], 1e-17), "s-", label="complex step (an exact 0 drawn at 1e-17)")
truncation = errors["central"][0] * (steps / steps[0]) ** 2  # a slope-2 line through the first point
ax.loglog(steps, truncation, ":", color="gray", label=r"$\propto h^2$ (truncation)")
ax.loglog(steps, 1e-16 / steps, "--", color="gray", label=r"$\epsilon_{mach}/h$ (rounding)")
ax.set(xlabel="step size h", ylabel="relative error of the directional derivative", ylim=(1e-17, 10),
       title="LayerNorm: central differences vs complex step")
ax.invert_xaxis()
ax.legend(loc="lower left", fontsize=8)
fig.tight_layout()
if OUT:  # only when asked: tutorials never write into the repository
    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, "02_step_size.png")
    fig.savefig(path, dpi=120)
    print("saved", path)

# %% [markdown]
# ## 4. What makes a forward complex-step safe
#
# The complex step differentiates whatever function the code computes for complex input. It gives the right
# derivative only if that function is the **analytic continuation** of the real one: the same formula, with complex
# arithmetic, and no operation that is not complex-differentiable. `normref`'s reference ops are written that way:
#
# * the variance is `mean(centered * centered)` (see `mean_var` below), never `np.var`, `np.abs(c)**2` or
#   `c * c.conj()`. For complex input those compute $|c|^2$, which is *real*: the imaginary part that carries the
#   derivative is thrown away. (They are the right definition of a complex variance; they are the wrong
#   continuation of a real one.)
# * `rstd = 1 / np.sqrt(var + eps)` uses the principal complex square root, analytic near the positive real axis,
#   which is where $\sigma^2 + \epsilon$ sits;
# * no branches or clamps on values (`if var > 0`, `np.maximum`, `abs`), and no cast to a real dtype.
#
# Functions that are genuinely non-smooth (a `max`, a ReLU, a clip) cannot be complex-stepped at the kinks at all,
# and the compiled Numba/CUDA kernels are real-typed. A layer's spec says whether it is complex-safe
# (`LayerSpec.complex_safe`), and the checker runs the complex step on the NumPy reference only.

# %%
print(inspect.getsource(mean_var))

# %% [markdown]
# Two LayerNorm forwards that are correct for real input (they agree with `normref`'s to rounding) but not complex
# safe. Central differences cannot tell them apart from the real thing; the complex step can, and says they are
# wrong. (The backward is fine; what is wrong is the complex-step *check* of these forwards: a reason to write the
# reference so that the strongest check applies.)

# %%
def layer_norm_np_var(x):  # np.var conjugates: var = mean(|x - mu|^2)
    mu = x.mean(axis=-1, keepdims=True)
    return gamma_l * (x - mu) / np.sqrt(np.var(x, axis=-1, keepdims=True) + eps) + beta_l


def layer_norm_abs(x):  # abs(c)**2 equals c*c only for real c
    c = x - x.mean(axis=-1, keepdims=True)
    return gamma_l * c / np.sqrt((np.abs(c) ** 2).mean(axis=-1, keepdims=True) + eps) + beta_l


print(f"{'forward':<22} {'real forward maxdiff':>21} {'central err':>12} {'complex err':>12}")
for name, f in (("normref layer_norm", layer_norm), ("np.var variance", layer_norm_np_var),
                ("abs(c)**2 variance", layer_norm_abs)):
    row = [np.max(np.abs(f(xl) - layer_norm(xl)))]
    for method in ("central", "complex"):
        estimate = numerical_vjp(f, {"x": xl}, "x", dy_l, method=method, directions=[v])[0]  # default steps
        row.append(abs(estimate - exact) / abs(exact))
    print(f"{name:<22} {row[0]:21.1e} {row[1]:12.1e} {row[2]:12.1e}")
    assert row[0] < 1e-13 and row[1] < 1e-8  # all three are correct real functions
    assert (row[2] < 1e-13) == (f is layer_norm)  # only the analytic one survives the complex step

# %% [markdown]
# ## Summary
#
# * BatchNorm, LayerNorm, GroupNorm, InstanceNorm and RMSNorm are one standardization over different axes (a view
#   of `x`, the reduce axes, the parameters' shape in the view), with one fused backward. GroupNorm with one group
#   is LayerNorm with a per-channel affine; with one channel per group it is InstanceNorm.
# * Functions that agree on a subspace have gradients that agree along it: RMSNorm and LayerNorm coincide on
#   zero-mean rows, and their `dx` differ exactly by the row mean.
# * Central differences are limited by a truncation/rounding trade-off to about $10^{-10}$; the complex step has no
#   subtraction and reaches machine precision for any tiny $h$.
# * It needs an analytic forward: variance as `c * c`, not `np.var` or `abs`. `normref`'s reference ops are written
#   that way so that every layer gets the strong check.
