r"""Curvature from Hessian-vector products: eigenpairs, trace, spectral density, per-layer blocks
(landscape.md §2, §7.3).

Everything here needs only the HVP oracle :meth:`Objective.hvp` (complex step or central differences, named in
every result as ``method``).

* :class:`HessianOperator`: :math:`H` (or a diagonal block :math:`H_{bb}` of one layer's parameters) as a SciPy
  :class:`~scipy.sparse.linalg.LinearOperator`, counting its HVPs.
* :func:`top_eigenpairs` / :func:`most_negative`: ``scipy.sparse.linalg.eigsh`` (implicitly restarted Lanczos) with
  ``which="LA"`` / ``"SA"``, i.e. the largest *algebraic* eigenvalues (not the largest magnitude, which power
  iteration would give: PyHessian's pitfall, §2.2) and the most negative ones directly (no shift needed). Each pair
  is returned with its true residual :math:`\lVert Hv - \lambda v\rVert` (one extra HVP per pair) so convergence is
  verified, not assumed. Blocks of at most ``dense_below`` parameters are solved densely (``eigh`` of the
  symmetrized matrix built from that many HVPs).
* :func:`hutchinson_trace`: :math:`\operatorname{tr} H \approx \frac1n\sum_i v_i^\top H v_i`, Rademacher
  :math:`v_i`, with the standard error (sample std :math:`/\sqrt n`), which PyHessian does not report.
* :func:`slq`: stochastic Lanczos quadrature (Ubaru, Chen & Saad 2017; Ghorbani, Krishnan & Xiao 2019): per run a
  normalized Rademacher start, ``m`` Lanczos steps with *full* reorthogonalization (twice, "twice is enough"),
  stopping early on breakdown (:math:`\beta < 10^{-10}\max|\alpha|`: the Krylov space is invariant and the
  quadrature already exact); nodes = eigenvalues of the tridiagonal :math:`T` by ``eigh_tridiagonal`` (symmetric,
  real: the correct call; PyHessian's general eigensolver and its squared-matrix bug are §2.4's history), weights =
  squared first components of :math:`T`'s eigenvectors. Raw nodes and weights are returned.
* :func:`spectral_density`: Gaussian broadening of the SLQ nodes, normalized to integrate to 1 on its grid, with
  the two published width rules made explicit: ``rule="variance"`` (Ghorbani et al. / PyHessian: the parameter is a
  *variance*, :math:`s^2 = \sigma^2\max(1, \lambda_{hi}-\lambda_{lo})`, :math:`\sigma^2 = 10^{-5}`; grid of 10000
  points on :math:`[\bar\lambda_{min} - 0.01, \bar\lambda_{max} + 0.01]`) and ``rule="std"`` (hessian-eigenthings:
  standard deviation :math:`(\lambda_{max}-\lambda_{min})/m`).
* :func:`per_layer`: top eigenvalue and Hutchinson trace of every layer's diagonal block (PyHessian issues #9/#10).

The trace and SLQ runs are independent probes, so they go through :func:`normref.landscape.engine.run_points`:
any executor, progress, and ``store=DIR`` to resume. An ``eigsh`` call is one sequential Lanczos process; it is not
checkpointed (a few hundred HVPs), but shows progress (HVPs done) on stderr.
"""

from __future__ import annotations

import sys
import time
from typing import NamedTuple

import numpy as np
from scipy.linalg import eigh_tridiagonal
from scipy.sparse.linalg import LinearOperator, eigsh

from .engine import run_points
from .objective import Objective, _fingerprint, layer_blocks


def _block_index(objective: Objective, block) -> np.ndarray | None:
    if block is None:
        return None
    if isinstance(block, str):
        blocks = layer_blocks(objective.model)
        if block not in blocks:
            raise ValueError(f"unknown block {block!r}; layer blocks are {sorted(blocks)}")
        block = blocks[block]
    if isinstance(block, slice):
        return np.arange(objective.num_params)[block]
    index = np.asarray(block)
    if index.dtype == bool:
        index = np.flatnonzero(index)
    return index.astype(np.intp)


class HessianOperator(LinearOperator):
    """:math:`H(\\theta)` (or the diagonal block on ``block``) as a LinearOperator of HVPs.

    ``block``: ``None`` (all parameters), a layer name from :func:`normref.landscape.layer_blocks`, a slice, an
    index array or a boolean mask. ``n_hvp`` counts the products; ``progress=True`` prints the count to stderr.
    """

    def __init__(self, objective: Objective, theta=None, *, method="auto", block=None, progress=False):
        self.objective = objective
        self.theta = objective.theta0 if theta is None else np.asarray(theta, dtype=np.float64)
        self.method = objective._resolve_method(method)
        self.index = _block_index(objective, block)
        size = objective.num_params if self.index is None else len(self.index)
        super().__init__(np.float64, (size, size))
        self.n_hvp = 0
        self.progress = progress
        self._start = self._last = time.perf_counter()

    def _matvec(self, v):
        v = np.asarray(v).ravel()
        if np.iscomplexobj(v):  # eigsh never passes complex vectors; keep the operator real-linear anyway
            return self._matvec(v.real) + 1j * self._matvec(v.imag)
        if self.index is None:
            full = v.astype(np.float64)
        else:
            full = np.zeros(self.objective.num_params)
            full[self.index] = v
        hv = self.objective.hvp(self.theta, full, method=self.method, estimate_error=False).value
        self.n_hvp += 1
        now = time.perf_counter()
        if self.progress and now - self._last > 2.0:
            self._last = now
            print(f"hessian ({self.method}): {self.n_hvp} HVPs, {now - self._start:.1f} s", file=sys.stderr,
                  flush=True)
        return hv if self.index is None else hv[self.index]

    def _rmatvec(self, v):
        return self._matvec(v)  # symmetric


def dense_hessian(objective: Objective, theta=None, *, method="auto", block=None) -> np.ndarray:
    """The (block of the) Hessian as a dense matrix, one HVP per column (tiny networks and tests only)."""
    op = HessianOperator(objective, theta, method=method, block=block)
    return np.column_stack([op.matvec(e) for e in np.eye(op.shape[0])])


class Eigenpairs(NamedTuple):
    """``values`` ``(k,)`` (descending for the top, ascending for the most negative); ``vectors`` ``(b, k)``
    unit columns; ``residuals`` ``(k,)`` = ``|H v - lambda v|``; ``n_hvp``; ``method`` of the HVPs."""

    values: np.ndarray
    vectors: np.ndarray
    residuals: np.ndarray
    n_hvp: int
    method: str


def top_eigenpairs(objective: Objective, k=1, *, theta=None, which="LA", method="auto", block=None, tol=1e-10,
                   maxiter=None, seed=0, dense_below=64, progress=False) -> Eigenpairs:
    """The ``k`` largest (``which="LA"``) or most negative (``"SA"``) eigenpairs of the (block) Hessian."""
    if which not in ("LA", "SA"):
        raise ValueError(f'which must be "LA" (largest) or "SA" (most negative), got {which!r}')
    op = HessianOperator(objective, theta, method=method, block=block, progress=progress)
    size = op.shape[0]
    if not 1 <= int(k) < max(size, 2):
        raise ValueError(f"k must be in [1, {size - 1}], got {k}")
    if size <= dense_below:
        h = np.column_stack([op.matvec(e) for e in np.eye(size)])
        values, vectors = np.linalg.eigh(0.5 * (h + h.T))
    else:
        v0 = np.random.default_rng(seed).standard_normal(size)
        values, vectors = eigsh(op, k=int(k), which=which, tol=tol, maxiter=maxiter, v0=v0)
    order = np.argsort(values)
    order = order[::-1][:k] if which == "LA" else order[:k]
    values, vectors = values[order], vectors[:, order]
    residuals = np.array([np.linalg.norm(op.matvec(vectors[:, j]) - values[j] * vectors[:, j])
                          for j in range(len(values))])
    return Eigenpairs(values, vectors, residuals, op.n_hvp, op.method)


def most_negative(objective: Objective, k=1, **kwargs) -> Eigenpairs:
    """The ``k`` smallest (most negative) eigenpairs: :func:`top_eigenpairs` with ``which="SA"``."""
    return top_eigenpairs(objective, k, which="SA", **kwargs)


class Trace(NamedTuple):
    """Hutchinson ``estimate`` of the trace, its ``stderr`` (sample std / sqrt(n)), the ``samples`` ``(n,)``."""

    estimate: float
    stderr: float
    samples: np.ndarray
    method: str


class _Probe:
    """Point function ``(i,) -> {"vHv": v_i^T H v_i}`` with Rademacher ``v_i`` drawn from ``(seed, i)``."""

    def __init__(self, objective, theta, method, index, seed):
        self.objective, self.theta, self.method, self.index, self.seed = objective, theta, method, index, seed

    def __call__(self, point):
        op = HessianOperator(self.objective, self.theta, method=self.method, block=self.index)
        v = np.random.default_rng([self.seed, int(point[0])]).choice([-1.0, 1.0], size=op.shape[0])
        return {"vHv": float(v @ op.matvec(v))}


def hutchinson_trace(objective: Objective, n=32, *, theta=None, method="auto", block=None, seed=0, store=None,
                     executor=None, workers=1, progress=False, blas_threads=None) -> Trace:
    """Hutchinson's trace estimate with ``n`` Rademacher probes (independent points: any executor, resumable)."""
    theta = objective.theta0 if theta is None else np.asarray(theta, dtype=np.float64)
    method = objective._resolve_method(method)
    index = _block_index(objective, block)
    meta = {"kind": "hutchinson", "objective": objective.describe(), "theta": _fingerprint(theta), "seed": seed,
            "method": method, "block": None if index is None else _fingerprint(index)}
    rows = run_points(_Probe(objective, theta, method, index, seed), [(i,) for i in range(int(n))], store=store,
                      meta=meta, executor=executor, workers=workers, progress=progress, label="hutchinson",
                      blas_threads=blas_threads)
    samples = np.array([r["vHv"] for r in rows])
    stderr = float(samples.std(ddof=1) / np.sqrt(len(samples))) if len(samples) > 1 else float("nan")
    return Trace(float(samples.mean()), stderr, samples, method)


def lanczos(matvec, v0, m: int, *, breakdown=1e-10):
    """``m`` Lanczos steps with full (double) reorthogonalization.

    Returns ``(alpha (j,), beta (j-1,), Q (n, j))`` with ``j <= m`` (fewer on breakdown), such that
    ``Q.T @ H @ Q = tridiag(beta, alpha, beta)``.
    """
    q = np.asarray(v0, dtype=np.float64)
    q = q / np.linalg.norm(q)
    basis, alphas, betas = [q], [], []
    for j in range(int(m)):
        w = matvec(basis[-1])
        alpha = float(basis[-1] @ w)
        alphas.append(alpha)
        q_mat = np.array(basis)
        for _ in range(2):  # full reorthogonalization, twice
            w = w - q_mat.T @ (q_mat @ w)
        beta = float(np.linalg.norm(w))
        if j == m - 1 or beta < breakdown * max(max(abs(a) for a in alphas), 1e-300):
            break
        betas.append(beta)
        basis.append(w / beta)
    return np.array(alphas), np.array(betas), np.array(basis).T


class _SLQRun:
    """Point function ``(r,) -> nodes and weights`` of one SLQ run with a Rademacher start from ``(seed, r)``."""

    def __init__(self, objective, theta, method, index, seed, m):
        self.objective, self.theta, self.method, self.index, self.seed, self.m = (objective, theta, method, index,
                                                                                  seed, m)

    def __call__(self, point):
        op = HessianOperator(self.objective, self.theta, method=self.method, block=self.index)
        v0 = np.random.default_rng([self.seed, int(point[0])]).choice([-1.0, 1.0], size=op.shape[0])
        alphas, betas, _ = lanczos(op.matvec, v0, min(self.m, op.shape[0]))
        nodes, vecs = eigh_tridiagonal(alphas, betas) if len(alphas) > 1 else (alphas, np.ones((1, 1)))
        weights = vecs[0] ** 2
        out = {f"node{i}": float(x) for i, x in enumerate(nodes)}
        out.update({f"weight{i}": float(w) for i, w in enumerate(weights)})
        return out


class SLQ(NamedTuple):
    """Stochastic Lanczos quadrature: ``nodes`` and ``weights``, one array per run (lengths may differ on
    breakdown); ``m`` the requested steps; ``method`` of the HVPs. Each run's weights sum to 1."""

    nodes: list
    weights: list
    m: int
    method: str

    def density(self, **kwargs):
        """:func:`spectral_density` of these nodes and weights."""
        return spectral_density(self.nodes, self.weights, m=self.m, **kwargs)


def slq(objective: Objective, m=80, n_v=4, *, theta=None, method="auto", block=None, seed=0, store=None,
        executor=None, workers=1, progress=False, blas_threads=None) -> SLQ:
    """SLQ with ``n_v`` runs of ``m`` Lanczos steps (independent runs: any executor, resumable)."""
    theta = objective.theta0 if theta is None else np.asarray(theta, dtype=np.float64)
    method = objective._resolve_method(method)
    index = _block_index(objective, block)
    meta = {"kind": "slq", "objective": objective.describe(), "theta": _fingerprint(theta), "seed": seed, "m": m,
            "method": method, "block": None if index is None else _fingerprint(index)}
    rows = run_points(_SLQRun(objective, theta, method, index, seed, int(m)), [(r,) for r in range(int(n_v))],
                      store=store, meta=meta, executor=executor, workers=workers, progress=progress, label="SLQ",
                      blas_threads=blas_threads)
    nodes = [np.array([r[f"node{i}"] for i in range(len(r) // 2)]) for r in rows]
    weights = [np.array([r[f"weight{i}"] for i in range(len(r) // 2)]) for r in rows]
    return SLQ(nodes, weights, int(m), method)


def spectral_density(nodes, weights, *, rule="variance", sigma_squared=1e-5, m=None, grid=None, num=10000):
    """Gaussian-broadened density ``(t, phi)`` from SLQ nodes/weights (lists of per-run arrays).

    ``rule="variance"``: kernel variance ``sigma_squared * max(1, lam_hi - lam_lo)`` (Ghorbani et al./PyHessian);
    ``rule="std"``: kernel std ``(max node - min node) / m`` (hessian-eigenthings; ``m`` = Lanczos steps).
    ``phi`` is renormalized so that ``sum(phi) * dt = 1`` on the grid (default: ``num`` points on
    ``[mean min node - 0.01, mean max node + 0.01]``).
    """
    nodes = [np.asarray(x, dtype=np.float64) for x in nodes]
    weights = [np.asarray(w, dtype=np.float64) for w in weights]
    lam_hi = float(np.mean([x.max() for x in nodes])) + 0.01
    lam_lo = float(np.mean([x.min() for x in nodes])) - 0.01
    t = np.linspace(lam_lo, lam_hi, int(num)) if grid is None else np.asarray(grid, dtype=np.float64)
    if rule == "variance":
        var = sigma_squared * max(1.0, lam_hi - lam_lo)
    elif rule == "std":
        if m is None:
            raise ValueError('rule="std" needs m, the number of Lanczos steps')
        spread = max(x.max() for x in nodes) - min(x.min() for x in nodes)
        var = (spread / m) ** 2 if spread > 0 else 1e-12
    else:
        raise ValueError(f'rule must be "variance" or "std", got {rule!r}')
    phi = np.zeros_like(t)
    for x, w in zip(nodes, weights):
        phi += (w[:, None] * np.exp(-(t[None, :] - x[:, None]) ** 2 / (2 * var))).sum(0) / np.sqrt(2 * np.pi * var)
    phi /= len(nodes)
    dt = t[1] - t[0] if len(t) > 1 else 1.0
    total = phi.sum() * dt
    return t, phi / total if total > 0 else phi


def per_layer(objective: Objective, *, theta=None, method="auto", n_trace=16, seed=0, tol=1e-8,
              progress=False) -> dict:
    """``{layer: {"size", "top_eigenvalue", "trace", "trace_stderr"}}`` for every layer's diagonal block."""
    out = {}
    for name in layer_blocks(objective.model):
        top = top_eigenpairs(objective, 1, theta=theta, method=method, block=name, tol=tol, seed=seed)
        tr = hutchinson_trace(objective, n_trace, theta=theta, method=method, block=name, seed=seed,
                              progress=False)
        out[name] = {"size": int(top.vectors.shape[0]), "top_eigenvalue": float(top.values[0]),
                     "trace": tr.estimate, "trace_stderr": tr.stderr}
        if progress:
            print(f"per-layer curvature: {name} done", file=sys.stderr, flush=True)
    return out
