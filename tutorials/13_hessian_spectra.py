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
# # 13 · Hessian spectra without autograd: HVPs, Lanczos, SLQ
#
# Everything about curvature needs one primitive: the Hessian-vector product $v \mapsto Hv$. `normref` has no
# autograd, only hand-derived backward passes that give $\nabla L$. Two ways turn gradients into HVPs:
#
# * **central differences** of gradients, $[\nabla L(\theta + \varepsilon v) - \nabla L(\theta - \varepsilon v)]/2\varepsilon$:
#   truncation error $\propto \varepsilon^2$, rounding error $\propto u/\varepsilon$, so at best about $u^{2/3}$;
# * the **complex step**, $\operatorname{Im}\nabla L(\theta + ihv)/h$: no subtraction, so no cancellation; with
#   $h = 10^{-30}$ it is exact to rounding. It needs the whole forward and backward to be complex-analytic, which
#   normref's ops are (tutorial 02).
#
# Then: the top and most negative eigenpairs by Lanczos (`scipy.sparse.linalg.eigsh` on a `LinearOperator`), the
# trace by Hutchinson's estimator, and the whole spectral density by stochastic Lanczos quadrature (SLQ).

# %%
import os

import numpy as np

from normref.landscape import (Objective, dense_hessian, hutchinson_trace, lanczos, most_negative, per_layer, slq,
                               top_eigenpairs)
from normref.nn import BatchNorm, CrossEntropyLoss, Linear, ReLU, Sequential, Tanh

QUICK = os.environ.get("QUICK", "0") not in ("", "0")  # QUICK=1: fewer probes, fewer steps
OUT = os.environ.get("NORMREF_TUTORIAL_OUT")
np.set_printoptions(precision=4, linewidth=110, suppress=True)
rng = np.random.default_rng(0)

n = 128
centers = 2.0 * rng.normal(size=(3, 6))
y = rng.integers(0, 3, n)
x = centers[y] + rng.normal(size=(n, 6))


def trained(act, steps=100):
    """An MLP with train-mode BN, trained by full-batch GD; returns the objective at the trained point."""
    net = Sequential(Linear(6, 12, rng=0), BatchNorm(12), act(), Linear(12, 3, rng=1))
    f = Objective(net, CrossEntropyLoss(), x, y, bn="batch")
    theta = f.theta0
    for _ in range(steps):
        theta = theta - 0.5 * f.grad(theta)[1]
    return f, theta


f, theta = trained(Tanh, 40 if QUICK else 200)
print(f"P = {f.num_params} parameters, loss {f.value(theta):.4f}, complex step valid: {f.is_analytic()}")

# %% [markdown]
# ## 1. HVP accuracy: central differences against the complex step
#
# The complex-step HVP is the reference. The central-difference error against the step length follows the
# textbook V: slope 2 (truncation) on the right, slope −1 (rounding) on the left, with the minimum near
# $\varepsilon \approx 10^{-5}$ in float64. Every `HVP` result names its method and carries an error estimate
# (Richardson's for central differences), which we compare with the true error.

# %%
v = rng.normal(size=f.num_params)
reference = f.hvp(theta, v, method="complex")
print(f"complex step: method={reference.method}, h={reference.step:g}, error estimate {reference.error_estimate:.1e}")
steps = np.logspace(-1, -8, 8 if QUICK else 15)
errors, estimates = [], []
for eps in steps:
    fd = f.hvp(theta, v, method="central", step=eps)
    errors.append(np.linalg.norm(fd.value - reference.value) / np.linalg.norm(reference.value))
    estimates.append(fd.error_estimate / np.linalg.norm(reference.value))
for eps, err, est in zip(steps, errors, estimates):
    print(f"eps = {eps:7.0e}: relative error {err:.1e}   (estimated {est:.1e})")
best = steps[int(np.argmin(errors))]
assert 1e-7 <= best <= 1e-3 and min(errors) < 1e-8

# %% [markdown]
# With ReLU the function has kinks: a unit whose pre-activation changes sign inside $\pm\varepsilon v$ makes the
# difference quotient jump. The complex step never crosses a kink (branch decisions use the real part): it returns
# the Hessian of the current activation pattern, as autograd would.

# %%
f_relu, theta_relu = trained(ReLU, 40 if QUICK else 200)
ref_relu = f_relu.hvp(theta_relu, v, method="complex").value
for eps in (1e-1, 1e-2, 1e-3, 1e-6):
    err = np.linalg.norm(f_relu.hvp(theta_relu, v, method="central", step=eps).value - ref_relu)
    print(f"ReLU, eps = {eps:.0e}: relative error {err / np.linalg.norm(ref_relu):.1e}")

# %% [markdown]
# ## 2. Eigenpairs by Lanczos, checked against the dense Hessian
#
# `top_eigenpairs` runs `eigsh(which="LA")`, the largest *algebraic* eigenvalues, and `most_negative` runs
# `which="SA"`. (Power iteration, as in PyHessian, finds the largest *magnitude*, which may be negative, and its
# relative-change stopping rule stops early when the gap is small.) Each pair comes with its true residual
# $\lVert Hv - \lambda v\rVert$. This network is small enough to build $H$ column by column and compare.

# %%
H = dense_hessian(f, theta)
evals = np.linalg.eigvalsh(H)
top = top_eigenpairs(f, 4, theta=theta)
neg = most_negative(f, 2, theta=theta)
print("top-4 (Lanczos):", top.values, f"  {top.n_hvp} HVPs, residuals {top.residuals.max():.1e}")
print("top-4 (dense):  ", evals[::-1][:4])
print("most negative:  ", neg.values, "dense:", evals[:2])
assert np.allclose(top.values, evals[::-1][:4], rtol=1e-8)
assert np.allclose(neg.values, evals[:2], rtol=1e-6, atol=1e-10)

# %% [markdown]
# ## 3. Trace: Hutchinson's estimator with its standard error
#
# $\operatorname{tr} H = \mathbb{E}[v^\top H v]$ for Rademacher $v$. The estimate is reported with its standard
# error, so "is the trace different between these two models?" has an answer.

# %%
trace = hutchinson_trace(f, 30 if QUICK else 200, theta=theta, seed=0)
print(f"Hutchinson: {trace.estimate:.3f} ± {trace.stderr:.3f}   exact: {np.trace(H):.3f}")
assert abs(trace.estimate - np.trace(H)) < 4 * trace.stderr

# %% [markdown]
# ## 4. The spectral density by stochastic Lanczos quadrature
#
# $m$ Lanczos steps from a random start $q_1$ build an orthonormal basis $Q$ with $Q^\top H Q = T$, tridiagonal. The
# eigenvalues $\theta_k$ of $T$ (nodes) and the squared first components $\tau_k$ of its eigenvectors (weights) are an
# $m$-point Gauss quadrature for the spectral measure seen from $q_1$: $\sum_k \tau_k\theta_k^j = q_1^\top H^j q_1$
# exactly for $j < 2m$. Averaging over random starts and broadening each node into a Gaussian gives the density.

# %%
q1 = rng.choice([-1.0, 1.0], size=f.num_params)
alphas, betas, Q = lanczos(lambda u: H @ u, q1, 10)
T = np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)
nodes, vecs = np.linalg.eigh(T)
weights = vecs[0] ** 2
q1 = q1 / np.linalg.norm(q1)
for j in (1, 2, 5):
    print(f"j = {j}: sum tau theta^j = {np.sum(weights * nodes ** j):.10f}   q1' H^j q1 = "
          f"{q1 @ np.linalg.matrix_power(H, j) @ q1:.10f}")
    assert np.isclose(np.sum(weights * nodes ** j), q1 @ np.linalg.matrix_power(H, j) @ q1, rtol=1e-9)

result = slq(f, m=30 if QUICK else 60, n_v=3 if QUICK else 10, theta=theta, seed=0)
grid, density = result.density(rule="variance")  # Ghorbani et al.: sigma^2 = 1e-5 * max(1, range), a variance
grid_std, density_std = result.density(rule="std")  # hessian-eigenthings: std = range / m
print(f"SLQ: {len(result.nodes)} runs of {result.m} steps ({result.method} HVPs); largest node "
      f"{max(nd.max() for nd in result.nodes):.4f} vs lambda_max {evals[-1]:.4f}")
assert abs(max(nd.max() for nd in result.nodes) - evals[-1]) < 1e-6 * evals[-1]

# %% [markdown]
# ## 5. Per-layer curvature
#
# The diagonal block $H_{\ell\ell}$ of one layer's parameters answers "which layer is sharp?" (PyHessian issues #9
# and #10). Any of the functions above takes `block="<layer name>"`; `per_layer` tabulates them.

# %%
for name, row in per_layer(f, theta=theta, n_trace=8 if QUICK else 32).items():
    print(f"layer {name!r:>5}: {row['size']:3d} params, top eigenvalue {row['top_eigenvalue']:.4f}, "
          f"trace {row['trace']:.3f} ± {row['trace_stderr']:.3f}")

# %%
try:
    import matplotlib.pyplot as plt
except ImportError:  # pragma: no cover
    plt = None
if plt is not None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    axes[0].loglog(steps, errors, "o-", label="central differences (true error)")
    axes[0].loglog(steps, estimates, "x:", label="its Richardson estimate")
    axes[0].axhline(reference.error_estimate / np.linalg.norm(reference.value), color="k", ls="--",
                    label="complex step (rounding level)")
    axes[0].set(xlabel=r"step $\varepsilon$", ylabel="relative HVP error", title="HVP accuracy")
    axes[0].invert_xaxis()
    axes[0].legend(fontsize=8)
    axes[1].semilogy(grid, density + 1e-7, label="variance rule (PyHessian)")
    axes[1].semilogy(grid_std, density_std + 1e-7, label="std rule (eigenthings)")
    for lam in evals[::-1][:4]:
        axes[1].axvline(lam, color="gray", lw=0.5)
    axes[1].set(xlabel="eigenvalue", ylabel="density", title="SLQ spectral density (gray: top-4 exact)")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    if OUT:
        os.makedirs(OUT, exist_ok=True)
        fig.savefig(os.path.join(OUT, "13_hessian.png"), dpi=120)
        print("saved", os.path.join(OUT, "13_hessian.png"))
