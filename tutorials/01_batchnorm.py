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
# # 01 · BatchNorm by hand: the staged graph, per-node gradients, the fused formula
#
# Batch Normalization (Ioffe & Szegedy, 2015) standardizes every channel with the mean and variance of the current
# batch, then applies a learned per-channel scale $\gamma$ and shift $\beta$. This tutorial derives its backward
# pass the long way and then the short way, and checks every step numerically:
#
# 1. the forward as a chain of six named nodes;
# 2. each node's local gradient, derived on paper and compared with central differences *of that node alone*;
# 3. the fused one-line backward that the nodes collapse into (the formula `normref` actually runs);
# 4. the gradient-check table that `normref check` prints for every layer;
# 5. why a *sum* loss ($dy = 1$) makes BatchNorm's $dx$ vanish, and so why every check here uses a random $dy$;
# 6. training versus evaluation: running statistics, `momentum`, and the unbiased running variance.
#
# Run it as a script (`python tutorials/01_batchnorm.py`) or open it as a notebook with jupytext. Every comparison
# below is also an assertion: if a derivation were wrong, the script would stop at that line.

# %%
import inspect
import os

import numpy as np

import normref
from normref.ops._normalize import normalize_backward
from normref.ops.batch_norm import batch_norm_backward, batch_norm_backward_staged, batch_norm_forward
from normref.testing.gradcheck import check_layer, norm_rel_error

QUICK = os.environ.get("QUICK", "0") not in ("", "0")  # QUICK=1: fewer training steps in section 6
np.set_printoptions(precision=4, suppress=False, linewidth=110)
rng = np.random.default_rng(0)

# %% [markdown]
# ## The setting
#
# A batch of $N = 6$ samples with $C = 3$ channels, `x` of shape `(N, C)`. BatchNorm keeps one statistic per
# channel $c$, computed over the set $R$ of the $m = N$ values in that channel's column. (For images `(N, C, H, W)`
# nothing changes except that $R$ covers $N \cdot H \cdot W$ values: the reduction axes become `(0, 2, 3)`.)
#
# The inputs are chosen to make bugs visible rather than to be convenient. `x` has a large offset
# (`5·randn + 12`), so a forgotten centering step shows up immediately; `gamma` and `beta` are random, never the
# initial ones and zeros, because $\gamma = 1$ lets a missing factor of $\gamma$ go unnoticed; and the upstream
# gradient `dy` is random for a reason that section 5 makes precise.

# %%
N, C = 6, 3
eps = 1e-5
x = 5 * rng.standard_normal((N, C)) + 12  # (N, C)
gamma = 1 + 0.5 * rng.standard_normal(C)  # (C,)
beta = rng.standard_normal(C)  # (C,)
dy = rng.standard_normal((N, C))  # (N, C): the gradient of some loss L with respect to y


# %% [markdown]
# Two helpers. `cmp` reports how close two arrays are in three ways: *exact* (bitwise equal), *approx* (norm-relative
# error $\max|a-b| / \max|b|$ below $10^{-6}$, the tolerance `normref` asserts on for central differences) and
# *maxdiff*; it stops the script when *approx* is false.
#
# `numgrad` is the whole idea of a numerical gradient check in one short loop (`normref.testing.gradcheck.
# numerical_vjp` is the library's version, with a complex-step option and state restoring). The loss is $L = \langle dy, y\rangle
# = \sum dy \odot y$, whose gradient with respect to $y$ is exactly $dy$; for any intermediate array $v$ we write
# the rest of the forward as a function `tail(v) -> y` (everything *upstream* of $v$ held fixed) and estimate
# $\partial L/\partial v_i$ by the central difference
#
# $$\frac{\partial L}{\partial v_i} \approx \frac{L(v + h e_i) - L(v - h e_i)}{2h},$$
#
# whose error is $O(h^2)$ from truncation plus $O(\epsilon_{\text{mach}}/h)$ from rounding; $h = 10^{-6}$ balances
# the two for values of order 1 to 10 (tutorial 02 plots this trade-off).

# %%
def cmp(name, ours, reference, tol=1e-6):
    """Print exact / approx / maxdiff for two arrays and assert that they agree to ``tol`` (norm-relative)."""
    ours, reference = np.asarray(ours), np.asarray(reference)
    assert ours.shape == reference.shape, (name, ours.shape, reference.shape)
    rel = norm_rel_error(ours, reference)
    print(f"{name:<26} exact: {np.array_equal(ours, reference)!s:<5}  approx: {rel < tol!s:<5}  "
          f"maxdiff: {np.max(np.abs(ours - reference)):.1e}   norm-rel: {rel:.1e}")
    assert rel < tol, f"{name}: norm-relative error {rel:.2e} is not below {tol:.0e}"


def numgrad(tail, v, dy, h=1e-6):
    """Central-difference estimate of d<dy, tail(v)>/dv, one element of v at a time."""
    v = np.array(v, dtype=float)  # a private copy that we perturb in place
    grad = np.zeros_like(v)
    for i in np.ndindex(v.shape):
        vi = v[i]
        v[i] = vi + h
        plus = np.sum(dy * tail(v))
        v[i] = vi - h
        minus = np.sum(dy * tail(v))
        v[i] = vi  # restore before the next element
        grad[i] = (plus - minus) / (2 * h)
    return grad


# %% [markdown]
# ## 1. The forward pass as a staged graph
#
# Six nodes, each an elementary operation with a name. Shapes keep the reduced axis as size 1 (`keepdims`), so
# that per-channel quantities broadcast against `(N, C)` arrays without reshaping:
#
# | node | value | shape |
# |---|---|---|
# | 1 | $\mu = \frac1m \sum_R x$ | `(1, C)` |
# | 2 | $x_c = x - \mu$ | `(N, C)` |
# | 3 | $\sigma^2 = \frac1m \sum_R x_c^2$ (biased: divide by $m$, not $m-1$) | `(1, C)` |
# | 4 | $\mathrm{rstd} = (\sigma^2 + \epsilon)^{-1/2}$ | `(1, C)` |
# | 5 | $\hat x = x_c \cdot \mathrm{rstd}$ | `(N, C)` |
# | 6 | $y = \gamma \hat x + \beta$ | `(N, C)` |
#
# Node 3 squares the *centered* values: this is the two-pass variance, which never forms the cancellation-prone
# $E[x^2] - E[x]^2$. The library's forward, `batch_norm_forward`, must produce the same `y`.

# %%
m = x.shape[0]  # values per channel
mu = x.mean(axis=0, keepdims=True)  # node 1: (1, C)
xc = x - mu  # node 2: (N, C)
var = (xc**2).mean(axis=0, keepdims=True)  # node 3: (1, C)
rstd = (var + eps) ** -0.5  # node 4: (1, C)
xhat = xc * rstd  # node 5: (N, C)
y = gamma * xhat + beta  # node 6: (N, C)

y_lib, cache = batch_norm_forward(x, gamma, beta, eps=eps)
cmp("y (staged vs normref)", y, y_lib)
print("per-channel mean of xhat:", xhat.mean(axis=0), "\nper-channel var of xhat: ", xhat.var(axis=0))


# %% [markdown]
# To check a node's gradient on its own we need "the rest of the forward" starting from that node. Each `from_*`
# function below recomputes everything downstream of one node while every upstream value stays frozen at what the
# forward computed. `from_x` is the whole layer.

# %%
def from_xhat(xhat_):
    return gamma * xhat_ + beta


def from_rstd(rstd_):
    return from_xhat(xc * rstd_)


def from_var(var_):
    return from_rstd((var_ + eps) ** -0.5)


def from_xc(xc_):  # x_c feeds two nodes: the variance (3) and xhat (5)
    var_ = (xc_**2).mean(axis=0, keepdims=True)
    return from_xhat(xc_ * (var_ + eps) ** -0.5)


def from_mu(mu_):
    return from_xc(x - mu_)


def from_x(x_):
    return from_xc(x_ - x_.mean(axis=0, keepdims=True))


# %% [markdown]
# ## 2. The backward pass, node by node
#
# Notation: for any array $v$ in the graph, $dv$ means $\partial L / \partial v$, an array of $v$'s shape. We start
# from $dy$ (given) and walk the nodes in reverse. Each node contributes its *local* gradient times the gradient
# flowing into it (the chain rule). Two rules do all the bookkeeping:
#
# * **broadcast in the forward → sum in the backward.** A `(1, C)` value used by all $N$ rows receives the sum of
#   the $N$ gradients it produced;
# * **fan-out → accumulate.** A value used by two nodes receives the *sum* of the two gradients ($x_c$ below; the
#   same rule makes `Module.backward` add into `.grads`).
#
# ### Node 6: $y = \gamma\hat x + \beta$
#
# $\partial y_{nc} / \partial \hat x_{nc} = \gamma_c$, so $d\hat x = \gamma\, dy$. The parameters are broadcast
# over the batch, so their gradients sum over it: $d\gamma_c = \sum_n dy_{nc}\,\hat x_{nc}$ and
# $d\beta_c = \sum_n dy_{nc}$.

# %%
dxhat = gamma * dy  # (N, C)
dgamma = (dy * xhat).sum(axis=0)  # (C,)
dbeta = dy.sum(axis=0)  # (C,)

cmp("dxhat", dxhat, numgrad(from_xhat, xhat, dy))
cmp("dgamma", dgamma, numgrad(lambda gamma_: gamma_ * xhat + beta, gamma, dy))
cmp("dbeta", dbeta, numgrad(lambda beta_: gamma * xhat + beta_, beta, dy))

# %% [markdown]
# ### Node 5: $\hat x = x_c \cdot \mathrm{rstd}$
#
# A product, so each factor's gradient is the other factor times $d\hat x$. For $\mathrm{rstd}$, a `(1, C)` value
# broadcast over the batch, that means a sum:
#
# $$d\,\mathrm{rstd} = \sum_R x_c\, d\hat x, \qquad dx_c \mathrel{+}= \mathrm{rstd}\cdot d\hat x .$$
#
# The "$\mathrel{+}=$" is the fan-out rule: $x_c$ also feeds node 3, and that path will add a second term. The first
# term alone is the derivative *along this path*, i.e. with $\mathrm{rstd}$ frozen, and we can check exactly that.

# %%
drstd = (xc * dxhat).sum(axis=0, keepdims=True)  # (1, C)
dxc = rstd * dxhat  # (N, C), first of two contributions

cmp("drstd", drstd, numgrad(from_rstd, rstd, dy))
cmp("dxc, path via node 5 only", dxc, numgrad(lambda xc_: from_xhat(xc_ * rstd), xc, dy))

# %% [markdown]
# ### Node 4: $\mathrm{rstd} = (\sigma^2 + \epsilon)^{-1/2}$
#
# A power: $\dfrac{\partial\,\mathrm{rstd}}{\partial \sigma^2} = -\tfrac12 (\sigma^2+\epsilon)^{-3/2}
# = -\tfrac12\,\mathrm{rstd}^3$, so
#
# $$d\sigma^2 = -\tfrac12\,\mathrm{rstd}^3\, d\,\mathrm{rstd}.$$
#
# Writing it with $\mathrm{rstd}^3$ rather than a new power of $\sigma^2 + \epsilon$ reuses the value the forward
# already computed: what the backward needs is $\hat x$ and $\mathrm{rstd}$, which is exactly what the cache keeps.

# %%
dvar = -0.5 * rstd**3 * drstd  # (1, C)
cmp("dvar", dvar, numgrad(from_var, var, dy))

# %% [markdown]
# ### Node 3: $\sigma^2 = \frac1m \sum_R x_c^2$
#
# $\partial\sigma^2 / \partial x_{c,n} = 2 x_{c,n} / m$: each element receives $d\sigma^2$ (broadcast back over
# the batch) times that. This is the second path into $x_c$, so it *adds*:
#
# $$dx_c \mathrel{+}= \frac{2}{m}\, x_c\, d\sigma^2 .$$
#
# Now $dx_c$ is complete, and it must match the numerical gradient of the full downstream graph `from_xc`, which
# moves the variance and $\hat x$ together.

# %%
dxc = dxc + 2.0 / m * xc * dvar  # (N, C), both paths
cmp("dxc, both paths", dxc, numgrad(from_xc, xc, dy))

# %% [markdown]
# ### Node 2: $x_c = x - \mu$
#
# $\partial x_c / \partial x = 1$ and $\partial x_c / \partial \mu = -1$, with $\mu$ broadcast over the batch:
#
# $$dx \mathrel{+}= dx_c, \qquad d\mu = -\sum_R dx_c .$$
#
# A remark that explains a shortcut some codebases take (tinygrad detaches $\mu$ inside the variance). Moving $\mu$
# also moves the variance, but the variance's contribution to $d\mu$ is $-\frac2m\,d\sigma^2 \sum_R x_c = 0$,
# because centered values sum to zero. So $d\mu = -\mathrm{rstd}\sum_R d\hat x$: the path through the variance
# carries nothing into $\mu$.

# %%
dx = dxc.copy()  # (N, C), first of two contributions: x -> xc directly
dmu = -dxc.sum(axis=0, keepdims=True)  # (1, C)

cmp("dx, path via node 2 only", dx, numgrad(lambda x_: from_xc(x_ - mu), x, dy))
cmp("dmu", dmu, numgrad(from_mu, mu, dy))
cmp("dmu, variance path dropped", -(rstd * dxhat).sum(axis=0, keepdims=True), dmu)

# %% [markdown]
# ### Node 1: $\mu = \frac1m\sum_R x$
#
# Each $x_n$ contributes $1/m$ to the mean, so $dx \mathrel{+}= d\mu / m$ (broadcast). That completes $dx$, which
# must now match central differences of the whole layer.

# %%
dx = dx + dmu / m  # (N, C), complete
cmp("dx (staged, complete)", dx, numgrad(from_x, x, dy))

# %% [markdown]
# `normref` ships this derivation as `batch_norm_backward_staged`, used by the tests as a second opinion on the fused
# backward. It runs the same six steps in the same order; the only difference is that it recovers $x_c$ from the
# cache as $\hat x / \mathrm{rstd}$ instead of keeping it, so it agrees with our `dx` to rounding, not bitwise.

# %%
print(inspect.getsource(batch_norm_backward_staged))
cmp("dx (normref staged)", batch_norm_backward_staged(dy, cache), dx)

# %% [markdown]
# ## 3. The fused formula
#
# Substitute the nodes into one another. Write $g = \gamma\, dy$ (which is $d\hat x$) and, per channel, two means
# over $R$:
#
# $$c_1 = \tfrac1m \textstyle\sum_R g\,\hat x, \qquad c_2 = \tfrac1m \sum_R g .$$
#
# * Node 5: $d\,\mathrm{rstd} = \sum_R x_c\, g = \frac{m\,c_1}{\mathrm{rstd}}$ (since $x_c = \hat x /
#   \mathrm{rstd}$).
# * Node 4: $d\sigma^2 = -\frac12 \mathrm{rstd}^3 \cdot \frac{m c_1}{\mathrm{rstd}} = -\frac{m}{2}\,\mathrm{rstd}^2
#   c_1$.
# * Nodes 5 + 3: $dx_c = \mathrm{rstd}\, g + \frac{2}{m} x_c \cdot \left(-\frac m2 \mathrm{rstd}^2 c_1\right)
#   = \mathrm{rstd}\,(g - \hat x\, c_1)$.
# * Node 2: $d\mu = -\sum_R dx_c = -\mathrm{rstd}\,(m c_2 - c_1 \sum_R \hat x) = -m\,\mathrm{rstd}\,c_2$, using
#   $\sum_R \hat x = 0$.
# * Node 1: $dx = dx_c + d\mu/m$, which gives
#
# $$\boxed{\;dx = \mathrm{rstd}\,\bigl(g - c_2 - \hat x\, c_1\bigr)\;}$$
#
# Read it as a projection: from $g$, remove its per-channel mean ($c_2$) and its component along $\hat x$
# ($c_1$, since $\frac1m\sum_R \hat x^2 \approx 1$), then scale by $\mathrm{rstd}$. It needs only $\hat x$ and
# $\mathrm{rstd}$ from the forward and two reductions, and it is the same for every normalizer in `normref`: only
# the set $R$ changes (tutorial 02).

# %%
g = gamma * dy  # (N, C)
c1 = (g * xhat).mean(axis=0, keepdims=True)  # (1, C)
c2 = g.mean(axis=0, keepdims=True)  # (1, C)
dx_fused = rstd * (g - c2 - xhat * c1)  # (N, C)

dx_lib, dgamma_lib, dbeta_lib = batch_norm_backward(dy, cache)
cmp("dx fused vs staged", dx_fused, dx)
cmp("dx normref vs fused", dx_lib, dx_fused)
cmp("dgamma normref", dgamma_lib, dgamma)
cmp("dbeta normref", dbeta_lib, dbeta)

# %% [markdown]
# `batch_norm_backward` is a call into the shared primitive `normalize_backward`. Here is that function: the boxed
# formula, the RMS variant without $c_2$, and the frozen-statistics case that section 6 needs.

# %%
print(inspect.getsource(normalize_backward))

# %% [markdown]
# ## 4. The gradient-check table
#
# Everything above, automated: `normref.gradcheck.check_layer` takes a layer and an input, gives the layer random
# parameters, draws a random `dy`, runs the layer's own `backward`, and compares every gradient (input and
# parameters) against two numerical estimates: central differences, and the *complex step*
# $\operatorname{Im} f(x + i h e_k)/h$, which has no subtraction and is therefore exact to machine precision
# (tutorial 02 explains it). The error column is the norm-relative error. This is the table `normref check` prints
# for every layer, mode and backend.

# %%
bn = normref.BatchNorm(C)
report = check_layer(bn, x, methods=("central", "complex"), title="BatchNorm(3), training mode, x of shape (6, 3)")
print(report)
assert report.passed

# %% [markdown]
# ## 5. Why a sum loss makes BatchNorm's $dx$ vanish
#
# A tempting shortcut in a gradient test is the loss $L = \sum y$, i.e. $dy = 1$. For BatchNorm it is useless: then
# $g = \gamma$ is constant within each channel, so
#
# $$c_2 = \gamma, \qquad c_1 = \gamma\cdot\tfrac1m\textstyle\sum_R \hat x = 0, \qquad
# dx = \mathrm{rstd}\,(\gamma - \gamma - 0) = 0$$
#
# for *every* $\gamma$. The facts behind it are the two constraints that normalization imposes on each channel,
#
# $$\textstyle\sum_R \hat x = 0, \qquad \sum_R \hat x^2 = m\,\frac{\sigma^2}{\sigma^2 + \epsilon} \approx m .$$
#
# Geometrically, $\hat x$ lives on a sphere inside a hyperplane; the vectors $\mathbf 1$ and $\hat x$ are normal to
# that surface, and the backward (a projection) removes exactly those two components of $g$. Any $dy$ in the span of
# $\mathbf 1$ and $\hat x$ per channel gives $dx = 0$: the sum loss ($dy = 1$), and also the sum of squares
# $L = \sum y^2$ ($dy = 2y = 2\gamma\hat x + 2\beta$), which is exactly constant when $\epsilon = 0$ and nearly so
# otherwise.

# %%
print("sum over R of xhat:  ", xhat.sum(axis=0))
print("sum over R of xhat^2:", (xhat**2).sum(axis=0), "  m·var/(var+eps):", (m * var / (var + eps)).ravel())
print()
for scale in (1.0, 10.0, -3.0):
    _, cache_s = batch_norm_forward(x, scale * gamma, beta, eps=eps)
    dx_sum, _, _ = batch_norm_backward(np.ones_like(x), cache_s)
    print(f"L = sum(y),   gamma = {scale:5.1f}·gamma:  max|dx| = {np.max(np.abs(dx_sum)):.1e}")
    assert np.max(np.abs(dx_sum)) < 1e-12
for eps_try in (eps, 0.0):
    y_s, cache_s = batch_norm_forward(x, gamma, beta, eps=eps_try)
    dx_sq, _, _ = batch_norm_backward(2 * y_s, cache_s)
    print(f"L = sum(y^2), eps = {eps_try:.0e}:          max|dx| = {np.max(np.abs(dx_sq)):.1e}")

# %% [markdown]
# So a test with $dy = 1$ compares (numerically) zero with (numerically) zero, and cannot fail. To see it, take a
# *wrong* backward that forgets the path through the variance, $dx = \mathrm{rstd}\,(g - c_2)$, a classic slip.
# Under $dy = 1$ it also returns zero, and an absolute-tolerance comparison passes it along with the correct one.
# Under a random $dy$ the bug is off by tens of percent while the correct formula agrees to $10^{-9}$.

# %%
def wrong_backward(dy_, cache_):
    """BatchNorm's backward without the variance path (a deliberate bug)."""
    g_ = cache_.gamma_b * dy_
    return cache_.rstd * (g_ - g_.mean(axis=0, keepdims=True))


passes_loose_test = {}  # (dy, backward) -> does allclose(analytic, numeric, atol=1e-6) hold?
for label, dy_try in (("dy = 1", np.ones_like(x)), ("dy = random", dy)):
    numeric = numgrad(from_x, x, dy_try)
    for name, backward in (("correct", lambda d: batch_norm_backward(d, cache)[0]),
                           ("wrong", lambda d: wrong_backward(d, cache))):
        analytic = backward(dy_try)
        passes_loose_test[label, name] = np.allclose(analytic, numeric, atol=1e-6)
        print(f"{label:<11}  {name:<8} allclose(atol=1e-6): {passes_loose_test[label, name]!s:<5}   "
              f"max|numeric| = {np.max(np.abs(numeric)):.1e}   "
              f"norm-rel error = {norm_rel_error(analytic, numeric):.1e}")
assert passes_loose_test["dy = 1", "wrong"] and not passes_loose_test["dy = random", "wrong"]
assert passes_loose_test["dy = 1", "correct"] and passes_loose_test["dy = random", "correct"]

# %% [markdown]
# With $dy = 1$ the "numerical gradient" is rounding noise of order $10^{-9}$, so even the norm-relative error is
# meaningless there (noise divided by noise). This is why `normref`'s checker always draws a random `dy`, and random
# $\gamma$, $\beta$ as well: with $\gamma = 1$, LayerNorm and GroupNorm have the same blind spot under a sum loss.
# Several well-known reference test suites compare BatchNorm or LayerNorm gradients with exactly these vacuous
# settings.
#
# ## 6. Training and evaluation: running statistics
#
# In training, BatchNorm normalizes with the batch's own statistics, and its output for one sample depends on the
# other samples in the batch. At evaluation time there may be no batch (one image at a time), so the layer keeps
# running estimates and normalizes with them instead. `normref.BatchNorm` follows PyTorch exactly:
#
# $$\bar\mu \leftarrow (1 - \text{momentum})\,\bar\mu + \text{momentum}\cdot\mu_B, \qquad
# \bar\sigma^2 \leftarrow (1 - \text{momentum})\,\bar\sigma^2 + \text{momentum}\cdot\sigma_B^2\,\frac{m}{m-1},$$
#
# starting from $\bar\mu = 0$, $\bar\sigma^2 = 1$, with `momentum = 0.1`. Three conventions to keep straight:
#
# * `momentum` is the weight of the **new** batch. (An optimizer's momentum, and Flax's BatchNorm `momentum = 0.99`,
#   weigh the *old* value.) `momentum=None` means a plain cumulative average over all batches seen.
# * The layer normalizes with the **biased** variance $\sigma_B^2$ (divide by $m$), as the paper does, but stores
#   the **unbiased** estimate $\sigma_B^2\, m/(m-1)$ in `running_var`. With $m = 6$ that factor is 1.2.
# * The update is a separate pure function (`normref.ops.running_stats.update_running_stats`); the op itself never
#   mutates anything. The layer calls it after each training forward.

# %%
steps = 3 if QUICK else 30
batches = [5 * rng.standard_normal((N, C)) + 12 for _ in range(steps)]
bn = normref.BatchNorm(C)  # momentum=0.1
bn_cumulative = normref.BatchNorm(C, momentum=None)
running_mean, running_var = np.zeros(C), np.ones(C)
for xb in batches:
    bn(xb)
    bn_cumulative(xb)
    running_mean = 0.9 * running_mean + 0.1 * xb.mean(axis=0)
    running_var = 0.9 * running_var + 0.1 * xb.var(axis=0, ddof=1)  # ddof=1: the unbiased variance

print(f"after {steps} training batches: num_batches_tracked = {bn.buffers['num_batches_tracked']}")
cmp("running_mean", bn.buffers["running_mean"], running_mean, tol=1e-14)
cmp("running_var (unbiased)", bn.buffers["running_var"], running_var, tol=1e-14)
cmp("momentum=None: mean", bn_cumulative.buffers["running_mean"],
    np.mean([xb.mean(axis=0) for xb in batches], axis=0), tol=1e-14)
cmp("momentum=None: var", bn_cumulative.buffers["running_var"],
    np.mean([xb.var(axis=0, ddof=1) for xb in batches], axis=0), tol=1e-14)
print("running_mean:", bn.buffers["running_mean"], "  (the data's true mean is 12)")

# %% [markdown]
# In eval mode the forward is node 6 applied to $(x - \bar\mu)/\sqrt{\bar\sigma^2 + \epsilon}$: the statistics
# are constants, not functions of $x$. With an exponential moving average started at $(0, 1)$ and momentum 0.1,
# the running mean has reached only $1 - 0.9^t$ of the data's mean after $t$ steps, so early in training the two
# modes disagree badly. Later the running statistics settle near the population's, but the *batch* statistics of
# a batch of six stay noisy, so the two outputs still differ: the train/eval gap of small batches.

# %%
bn.params["gamma"], bn.params["beta"] = gamma.copy(), beta.copy()
bn.eval()  # (a training-mode call here would fold x into the running statistics once more)
y_eval = bn(x)
y_eval_by_hand = gamma * (x - running_mean) / np.sqrt(running_var + eps) + beta
cmp("y in eval mode", y_eval, y_eval_by_hand, tol=1e-14)
# y from section 1 is the training-mode output for x with the same gamma and beta
print(f"max |y_train - y_eval| on the same batch after {steps} steps: {np.max(np.abs(y - y_eval)):.2f}")

# %% [markdown]
# With constant statistics, nodes 1 to 4 drop out of the graph, and only the affine path through node 5 remains:
# $dx = \mathrm{rstd}\cdot\gamma\, dy$. Nothing to project out, so now a sum loss would *not* give zero. The
# checker verifies the eval-mode backward the same way; it snapshots and restores the running buffers around every
# probe, because each training-mode forward would otherwise update them.

# %%
dx_sum_loss = bn.backward(np.ones_like(x))  # the last forward was the eval-mode one above
cmp("eval: dx under dy = 1", dx_sum_loss, np.broadcast_to(gamma / np.sqrt(running_var + eps), x.shape), tol=1e-14)

report_eval = check_layer(bn, x, methods=("central", "complex"), title="BatchNorm(3), eval mode (running statistics)")
print(report_eval)
assert report_eval.passed and not bn.training

# %% [markdown]
# ## Summary
#
# * The staged graph has six nodes; each local gradient is one line, and two bookkeeping rules (sum over broadcast
#   axes, accumulate at fan-out) do the rest.
# * They collapse to $dx = \mathrm{rstd}\,(g - c_2 - \hat x c_1)$ with $g = \gamma\,dy$, $c_2$ the mean of $g$ and
#   $c_1$ the mean of $g\hat x$ over the reduced set.
# * Because $\sum_R \hat x = 0$ and $\sum_R \hat x^2 \approx m$, a loss whose gradient is in the span of $\mathbf 1$
#   and $\hat x$ (the sum, the sum of squares) gives $dx = 0$: gradient tests must use a random $dy$ and random
#   $\gamma$.
# * In eval mode the statistics are constants and $dx = \mathrm{rstd}\,\gamma\,dy$; the running mean is an EMA with
#   the new batch weighted by `momentum`, and the running variance is unbiased.
#
# Next: tutorial 02 shows that LayerNorm, GroupNorm, InstanceNorm and RMSNorm are this same computation over
# different axes, and why the complex step beats central differences.
